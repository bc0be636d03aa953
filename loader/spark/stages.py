"""What Spark's executors run for a load: the local loader's own reading, normalizing, encoding,
dedup and writers, fed by Spark instead of spill files.

    encode (one Spark task per loader encode task)       -> rows (key range, key, value, ...)
    Spark: range-partition by key range, sort by key     -> each key range, sorted, in one task
    write (per key range): dedup, SST files, offline Parquet -> one report row per key range

A LoadError does not fail the Spark job: it travels to the driver as a report row (the first one in
task or key-range order is raised there, as the local loader would), so the job never retries a bad
row and the message the driver raises is the loader's own, byte for byte.

Nothing here imports pyspark: these functions run inside mapInArrow on Arrow batches.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from quiver.loader import errors, tasks
from quiver.loader.errors import LoadError, SourceError
from quiver.loader.normalize import normalize, normalized_schema
from quiver.loader.partition import Partitioner
from quiver.loader.sources import open_parquet
from quiver.snapshot.manifest import file_checksum
from quiver.snapshot.schema import EntityDef, ViewDef

PART, TASK, SEQ, REPORT = "__part", "__task", "__seq", "__report"
REPORT_PART = -1   # rows that carry a report (checksums, an error), not data


# ---------------------------------------------------------------------------------------------
# The rows between the two stages
# ---------------------------------------------------------------------------------------------

def _spark_friendly(t: pa.DataType) -> pa.DataType:
    """Spark has no fixed-size lists or large binaries: the same values in types it has."""
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_type)
    if pa.types.is_large_binary(t):
        return pa.binary()
    return t


def shuffle_schema(entity: EntityDef, view: ViewDef) -> pa.Schema:
    """The loader's spilled rows (tasks.SpillRows) plus the key range, the rows' origin (the local
    loader's tie order among equal keys and timestamps) and a report column; every field nullable."""
    spilled = tasks.SpillRows(entity, view).schema
    fields = [pa.field(PART, pa.int32()), pa.field(TASK, pa.int32()), pa.field(SEQ, pa.int64())]
    fields += [pa.field(f.name, _spark_friendly(f.type)) for f in spilled]
    fields.append(pa.field(REPORT, pa.string()))
    return pa.schema(fields)


def report_batch(schema: pa.Schema, report: dict[str, Any]) -> pa.RecordBatch:
    cols = [pa.array([REPORT_PART], pa.int32())] + [pa.nulls(1, f.type) for f in schema][1:-1]
    return pa.RecordBatch.from_arrays(cols + [pa.array([json.dumps(report)])], schema=schema)


def error_report(e: LoadError) -> dict[str, Any]:
    return {"error": [type(e).__name__, str(e)]}


def raise_reported(report: dict[str, Any]) -> None:
    """The one place a LoadError that happened on an executor is raised again, as itself."""
    if "error" in report:
        name, message = report["error"]
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, LoadError)):
            cls = LoadError
        raise cls(message)


# ---------------------------------------------------------------------------------------------
# Stage 1: read, normalize, encode (one loader EncodeTask per Spark task)
# ---------------------------------------------------------------------------------------------

def _encoded(t: tasks.EncodeTask, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """tasks.encode_task, yielding its spilled rows (with their key range) instead of writing them
    to per-range files; writes the task's offline rows the same way."""
    pf = open_parquet(t.path, t.view)
    part = Partitioner(t.boundaries, t.entity.key_type == "int64")
    rows = tasks.SpillRows(t.entity, t.view)
    offline: pq.ParquetWriter | None = None
    if t.offline_path:
        Path(t.offline_path).parent.mkdir(parents=True, exist_ok=True)
        offline = tasks.offline_writer(t.offline_path, normalized_schema(t.entity, t.view))
    seq = 0
    try:
        batches = pf.iter_batches(batch_size=t.batch_rows, row_groups=list(t.row_groups),
                                  columns=tasks.source_columns(t.entity, t.view))
        for raw in batches:
            batch = normalize(t.entity, t.view, raw, t.path)
            if offline is not None:
                offline.write_batch(batch, row_group_size=tasks.OFFLINE_ROW_GROUP)
            yield _with_origin(rows.of(batch, t.file_index), part.assign(batch.column(0)), t.task_id, seq, schema)
            seq += batch.num_rows
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{t.path}: view {t.view.name!r}: cannot read row groups {list(t.row_groups)}: "
                          f"{e} (truncated or corrupt file?)") from None
    finally:
        if offline is not None:
            offline.close()
    if t.offline_path:
        yield report_batch(schema, {"checksums": {t.offline_path: file_checksum(t.offline_path)}})


def _with_origin(spilled: pa.RecordBatch, parts: np.ndarray, task: int, seq: int,
                 schema: pa.Schema) -> pa.RecordBatch:
    n = spilled.num_rows
    cols = [pa.array(parts.astype(np.int32)), pa.array(np.full(n, task, np.int32)),
            pa.array(np.arange(seq, seq + n, dtype=np.int64))]
    cols += [c.cast(f.type) for c, f in zip(spilled.columns, list(schema)[3:-1], strict=True)]
    return pa.RecordBatch.from_arrays(cols + [pa.nulls(n, pa.string())], schema=schema)


def encode_stage(encode_tasks: list[tasks.EncodeTask],
                 schema: pa.Schema) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function over a DataFrame of task indices."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pa.set_cpu_count(1)   # Spark already runs a task per core
        for b in batches:
            for i in b.column(0).to_pylist():
                try:
                    yield from _encoded(encode_tasks[i], schema)
                except LoadError as e:
                    yield report_batch(schema, {"task": i, **error_report(e)})
    return run


def _digest(spilled: pa.RecordBatch, ts: str) -> int:
    """An order-free digest of rows: the sum of a 64-bit hash of each row's key, value and event
    timestamp. A DataFrame has no file checksum, so this stands in for one in the version id."""
    keys, values = spilled.column("__key").to_pylist(), spilled.column("__value").to_pylist()
    stamps = spilled.column(ts).cast(pa.int64()).to_pylist() if ts else [0] * len(keys)
    total = 0
    for k, v, t in zip(keys, values, stamps, strict=True):
        h = hashlib.blake2b(len(k).to_bytes(4, "little") + k + v + t.to_bytes(8, "little", signed=True),
                            digest_size=8)
        total += int.from_bytes(h.digest(), "little")
    return total & 0xFFFFFFFFFFFFFFFF


def frame_stage(entity: EntityDef, view: ViewDef, boundaries: list[int] | list[bytes], where: str,
                offline_dir: str, batch_rows: int,
                schema: pa.Schema) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The encode stage for a DataFrame the caller holds: the same normalize, encode and key ranges
    over the Arrow batches Spark hands each partition; offline rows (when the view keeps every row)
    in one file per partition; a report with the partition's row count and digest."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        pa.set_cpu_count(1)
        task = TaskContext.get().partitionId()  # type: ignore[union-attr]
        part = Partitioner(boundaries, entity.key_type == "int64")
        rows = tasks.SpillRows(entity, view)
        offline_path = str(Path(offline_dir) / f"part-t{task:05d}.parquet") if offline_dir else ""
        offline: pq.ParquetWriter | None = None
        seq = digest = 0
        try:
            for big in batches:
                for raw in pa.Table.from_batches([big]).to_batches(max_chunksize=batch_rows):
                    batch = normalize(entity, view, raw, where)
                    if offline_path:
                        if offline is None:
                            Path(offline_dir).mkdir(parents=True, exist_ok=True)
                            offline = tasks.offline_writer(offline_path, normalized_schema(entity, view))
                        offline.write_batch(batch, row_group_size=tasks.OFFLINE_ROW_GROUP)
                    spilled = rows.of(batch, 0)
                    digest = (digest + _digest(spilled, view.event_timestamp)) & 0xFFFFFFFFFFFFFFFF
                    yield _with_origin(spilled, part.assign(batch.column(0)), task, seq, schema)
                    seq += batch.num_rows
        except LoadError as e:
            yield report_batch(schema, {"task": task, **error_report(e)})
            return
        finally:
            if offline is not None:
                offline.close()
        sums = {offline_path: file_checksum(offline_path)} if offline is not None else {}
        yield report_batch(schema, {"task": task, "rows_in": seq, "digest": digest, "checksums": sums})
    return run


# ---------------------------------------------------------------------------------------------
# Stage 2: per key range, sorted: dedup, SST files, offline Parquet
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RangeJob:
    """What the write stage needs besides the rows (picklable, sent with the function)."""
    view: ViewDef
    entity: EntityDef
    sst_dir: str
    offline_dir: str          # "" when the encode tasks wrote the offline rows
    source_paths: tuple[str, ...]
    compression: str


REPORT_SCHEMA = pa.schema([pa.field("part", pa.int32()), pa.field("report", pa.string())])


def _sst_json(f: tasks.SstFile) -> dict[str, Any]:
    return {"path": f.path, "first": base64.b64encode(f.first_key).decode(),
            "last": base64.b64encode(f.last_key).decode(), "size": f.size, "checksum": f.checksum}


def sst_from_json(d: dict[str, Any]) -> tasks.SstFile:
    return tasks.SstFile(d["path"], base64.b64decode(d["first"]), base64.b64decode(d["last"]), d["size"],
                         d["checksum"])


def _write_range(job: RangeJob, part: int, pieces: list[pa.RecordBatch]) -> dict[str, Any]:
    """tasks.partition_task on rows Spark sorted: the same dedup, SST writer and offline writer."""
    spilled = tasks.SpillRows(job.entity, job.view).schema
    table = pa.Table.from_batches(pieces).select(spilled.names)
    table = pa.Table.from_arrays([c.cast(f.type) for c, f in zip(table.columns, spilled, strict=True)],
                                 schema=spilled)
    t = tasks.PartitionTask(job.view, job.entity, str(Path(job.sst_dir) / f"p{part:05d}"), job.sst_dir,
                            str(Path(job.offline_dir) / f"part-{part:05d}.parquet") if job.offline_dir else "",
                            job.source_paths, job.compression)
    try:
        table, dropped = tasks._sorted_deduplicated(t, table)
    except LoadError as e:
        return error_report(e)
    Path(job.sst_dir).mkdir(parents=True, exist_ok=True)
    ssts = tasks._write_ssts(t, table.select(["__key", "__value"]))
    checksums = {}
    if t.offline_path:
        Path(t.offline_path).parent.mkdir(parents=True, exist_ok=True)
        with tasks.offline_writer(t.offline_path, normalized_schema(job.entity, job.view)) as w:
            w.write_table(table.drop_columns(["__key", "__value", "__file"]), row_group_size=tasks.OFFLINE_ROW_GROUP)
        checksums[t.offline_path] = file_checksum(t.offline_path)
    return {"rows": table.num_rows, "dropped": dropped, "ssts": [_sst_json(s) for s in ssts], "checksums": checksums}


def write_stage(job: RangeJob) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function over the sorted partitions: one report row per key range, and the
    encode stage's reports passed through."""

    def report(part: int, r: dict[str, Any]) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.array([part], pa.int32()), pa.array([json.dumps(r)])],
                                          schema=REPORT_SCHEMA)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pa.set_cpu_count(1)
        os.makedirs(job.sst_dir, exist_ok=True)
        current: int | None = None
        pieces: list[pa.RecordBatch] = []
        for b in batches:
            parts = b.column(PART).to_numpy(zero_copy_only=False)
            cuts = np.flatnonzero(np.diff(parts)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(parts)], strict=True):
                p = int(parts[lo])
                if p == REPORT_PART:
                    for r in b.column(REPORT).slice(lo, hi - lo).to_pylist():
                        yield report(p, json.loads(r))
                    continue
                if p != current:
                    if pieces:
                        assert current is not None
                        yield report(current, _write_range(job, current, pieces))
                    current, pieces = p, []
                pieces.append(b.slice(lo, hi - lo))
        if pieces:
            assert current is not None
            yield report(current, _write_range(job, current, pieces))
    return run
