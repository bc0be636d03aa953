"""What Spark's executors run for a load: the local loader's own stages, fed by Spark's shuffle instead
of spill files on one machine.

    encode (one Spark task per loader EncodeTask, or per DataFrame partition)
        the loader's normalize, ViewRow encoder and key ranges   -> rows (range, view, origin, key, value, ...)
    Spark: one partition per key range of the storage group; sort by (range, view, origin)
    write (per key range): the range's rows, in the local loader's order, as its spill files on local
        disk, then the loader's own sst.partition_task: dedup, kept views, EntityRow assembly, SST
        files, offline Parquet                                   -> one report row per key range

The rows of a range reach partition_task exactly as a local load spills them (one file per view and
encode task, rows in read order), so its stable sort keeps the same row of equal keys and timestamps
and the version is the local engine's byte for byte (but for the SST files' own properties).

Statistics are gathered where the local loader gathers them, by its own accumulators
(quality/statistics.py): the encode tasks for views that keep every row, partition_task after dedup for
the others. Each task's report carries its accumulators, pickled; the driver merges them in the local
loader's order (loader/spark/build.py).

A LoadError does not fail the Spark job: it travels to the driver as a report row (the driver raises
the first one in the local loader's order), so the job never retries a bad row and the message the
driver raises is the loader's own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from quiver.loader import errors
from quiver.loader.errors import LoadError, SourceError, disk_full
from quiver.loader.normalize import normalize, normalized_schema
from quiver.loader.partition import Partitioner
from quiver.loader.sources import open_parquet
from quiver.loader.spill import (
    OFFLINE_ROW_GROUP,
    EncodeTask,
    SpillRows,
    offline_writer,
    source_columns,
    spills_all_columns,
)
from quiver.loader.sst import KeptViews, PartitionResult, PartitionTask, SstFile, partition_task
from quiver.quality.statistics import ViewAccumulator
from quiver.snapshot.manifest import file_checksum
from quiver.snapshot.schema import EntityDef, ViewDef

PART, VIEW, TASK, SEQ, REPORT = "__part", "__view", "__task", "__seq", "__report"
REPORT_PART = -1   # rows that carry a report (rows read, checksums, an error), not data
MARKER_VIEW = -1   # a row that only says "this key range exists" (it holds kept views' rows)
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------
# The rows between the two stages: one schema per storage group
# ---------------------------------------------------------------------------------------------

def _spark_friendly(t: pa.DataType) -> pa.DataType:
    """Spark has no fixed-size lists or large binaries: the same values in types it has."""
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_type)
    if pa.types.is_large_binary(t):
        return pa.binary()
    return t


def _column(view_index: int, name: str) -> str:
    return f"__v{view_index}:{name}"


_VIEW_COLUMN = re.compile(r"__v[0-9]+:")


def shuffle_schema(entity: EntityDef, views: tuple[ViewDef, ...]) -> pa.Schema:
    """Every re-encoded view of a group in one schema: the spilled rows' common part (the key column,
    __key, __value, __file), each event-timestamp view's normalized columns under its own names
    (they go to its offline Parquet after dedup), the key range, view and origin; every field nullable."""
    key = pa.field(entity.name, pa.int64() if entity.key_type == "int64" else pa.string())
    fields = [pa.field(PART, pa.int32()), pa.field(VIEW, pa.int16()), pa.field(TASK, pa.int32()),
              pa.field(SEQ, pa.int64()), pa.field(key.name, key.type), pa.field("__key", pa.binary()),
              pa.field("__value", pa.binary()), pa.field("__file", pa.int32())]
    for j, v in enumerate(views):
        for f in list(SpillRows(entity, v).kept)[1:]:
            fields.append(pa.field(_column(j, f.name), _spark_friendly(f.type)))
    fields.append(pa.field(REPORT, pa.string()))
    return pa.schema(fields)


def report_batch(schema: pa.Schema, report: dict[str, Any], part: int = REPORT_PART,
                 view: int = 0) -> pa.RecordBatch:
    cols = [pa.array([part], pa.int32()), pa.array([view], pa.int16())]
    cols += [pa.nulls(1, f.type) for f in list(schema)[2:-1]]
    return pa.RecordBatch.from_arrays(cols + [pa.array([json.dumps(report) if report else None], pa.string())],
                                      schema=schema)


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


def packed(statistics: object) -> str:
    """Statistics accumulators (quality/statistics.py) in a report: they hold numpy arrays and Arrow
    tables, not JSON, so they travel pickled (the driver unpickles only what its own job's tasks sent)."""
    return base64.b64encode(pickle.dumps(statistics, protocol=pickle.HIGHEST_PROTOCOL)).decode()


def unpacked(text: str) -> Any:
    return pickle.loads(base64.b64decode(text))


def _shuffle_rows(spilled: pa.RecordBatch, parts: np.ndarray, view_index: int, task: int, seq: int,
                  schema: pa.Schema) -> pa.RecordBatch:
    n = spilled.num_rows
    by_name = dict(zip(spilled.schema.names, spilled.columns, strict=True))
    prefix = _column(view_index, "")
    cols: list[pa.Array] = [pa.array(parts.astype(np.int32)), pa.array(np.full(n, view_index, np.int16)),
                            pa.array(np.full(n, task, np.int32)), pa.array(np.arange(seq, seq + n, dtype=np.int64))]
    for f in list(schema)[4:-1]:
        if f.name.startswith(prefix):
            col = by_name.get(f.name.removeprefix(prefix))
        else:
            col = None if _VIEW_COLUMN.match(f.name) else by_name[f.name]
        cols.append(col.cast(f.type) if col is not None else pa.nulls(n, f.type))
    return pa.RecordBatch.from_arrays(cols + [pa.nulls(n, pa.string())], schema=schema)


# ---------------------------------------------------------------------------------------------
# Stage 1: read, normalize, encode
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncodeJob:
    """One loader EncodeTask and where its view sits in the group."""
    task: EncodeTask
    view_index: int


def _encoded(job: EncodeJob, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """spill.encode_task, yielding its spilled rows (with their key range) instead of writing them to
    per-range files; writes the task's offline rows the same way. Ends with a report of the rows read
    and the offline file's checksum."""
    t = job.task
    pf = open_parquet(t.path, t.view)
    part = Partitioner(t.boundaries, t.entity.key_type == "int64")
    rows = SpillRows(t.entity, t.view)
    offline: pq.ParquetWriter | None = None
    if t.offline_path:
        Path(t.offline_path).parent.mkdir(parents=True, exist_ok=True)
        offline = offline_writer(t.offline_path, normalized_schema(t.entity, t.view))
    seq = 0
    # the statistics spill.encode_task gathers, of the same batches: views that keep every row
    stats = ViewAccumulator(t.view, t.view_rows) if t.statistics and not spills_all_columns(t.view) else None
    try:
        batches = pf.iter_batches(batch_size=t.batch_rows, row_groups=list(t.row_groups),
                                  columns=source_columns(t.entity, t.view))
        for raw in batches:
            batch = normalize(t.entity, t.view, raw, t.path)
            if offline is not None:
                offline.write_batch(batch, row_group_size=OFFLINE_ROW_GROUP)
            if stats is not None:
                stats.add(batch)
            yield _shuffle_rows(rows.of(batch, t.file_index), part.assign(batch.column(0)), job.view_index,
                                t.task_id, seq, schema)
            seq += batch.num_rows
    except (pa.ArrowException, OSError) as e:
        if disk_full(e):
            raise
        raise SourceError(f"{t.path}: view {t.view.name!r}: cannot read row groups {list(t.row_groups)}: "
                          f"{e} (truncated or corrupt file?)") from None
    finally:
        if offline is not None:
            offline.close()
    sums = {t.offline_path: file_checksum(t.offline_path)} if t.offline_path else {}
    report = {"view": t.view.name, "rows_in": seq, "checksums": sums, "task": t.task_id}
    yield report_batch(schema, report | ({"statistics": packed(stats)} if stats is not None else {}))


def encode_stage(jobs: list[EncodeJob],
                 schema: pa.Schema) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function over a DataFrame of job indices (a group's tasks, in the local
    loader's order: an error names the first failing one)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pa.set_cpu_count(1)   # Spark already runs a task per core
        for b in batches:
            for i in b.column(0).to_pylist():
                try:
                    yield from _encoded(jobs[i], schema)
                except LoadError as e:
                    yield report_batch(schema, {"order": i, **error_report(e)})
    return run


def _digest(spilled: pa.RecordBatch, ts: str) -> int:
    """An order-free digest of rows: the sum of a 64-bit hash of each row's key, value and event
    timestamp. A DataFrame has no file checksum: this stands in for one in the version id."""
    keys, values = spilled.column("__key").to_pylist(), spilled.column("__value").to_pylist()
    stamps = spilled.column(ts).cast(pa.int64()).to_pylist() if ts else [0] * len(keys)
    total = 0
    for k, v, t in zip(keys, values, stamps, strict=True):
        h = hashlib.blake2b(len(k).to_bytes(4, "little") + k + v + t.to_bytes(8, "little", signed=True),
                            digest_size=8)
        total += int.from_bytes(h.digest(), "little")
    return total & _MASK64


@dataclass(frozen=True)
class FrameJob:
    """A DataFrame's view: the encode stage over the Arrow batches Spark hands each partition."""
    entity: EntityDef
    view: ViewDef
    view_index: int
    boundaries: list[int] | list[bytes]
    where: str              # names the DataFrame in messages, as a file path names a file
    offline_dir: str        # "" when the view drops duplicates (its range tasks write the offline rows)
    batch_rows: int
    order: int              # after every file task of the group, for the order errors are raised in
    view_rows: int = 0      # the DataFrame's rows: the statistics' sample rate, as a view's source rows
    statistics: bool = True


def frame_stage(job: FrameJob, schema: pa.Schema) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The same normalize, encode and key ranges over a DataFrame; offline rows (when the view keeps
    every row) in one file per partition; a report with the rows read and their digest."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        pa.set_cpu_count(1)
        context = TaskContext.get()
        task = context.partitionId() if context is not None else 0
        part = Partitioner(job.boundaries, job.entity.key_type == "int64")
        rows = SpillRows(job.entity, job.view)
        offline_path = str(Path(job.offline_dir) / f"part-t{task:05d}.parquet") if job.offline_dir else ""
        offline: pq.ParquetWriter | None = None
        seq = digest = 0
        stats = ViewAccumulator(job.view, job.view_rows) \
            if job.statistics and not spills_all_columns(job.view) else None
        try:
            for big in batches:
                for raw in pa.Table.from_batches([big]).to_batches(max_chunksize=job.batch_rows):
                    batch = normalize(job.entity, job.view, raw, job.where)
                    if stats is not None:
                        stats.add(batch)
                    if offline_path:
                        if offline is None:
                            Path(job.offline_dir).mkdir(parents=True, exist_ok=True)
                            offline = offline_writer(offline_path, normalized_schema(job.entity, job.view))
                        offline.write_batch(batch, row_group_size=OFFLINE_ROW_GROUP)
                    spilled = rows.of(batch, 0)
                    digest = (digest + _digest(spilled, job.view.event_timestamp)) & _MASK64
                    yield _shuffle_rows(spilled, part.assign(batch.column(0)), job.view_index, task, seq, schema)
                    seq += batch.num_rows
        except LoadError as e:
            yield report_batch(schema, {"order": job.order + task, **error_report(e)})
            return
        finally:
            if offline is not None:
                offline.close()
        sums = {offline_path: file_checksum(offline_path)} if offline is not None else {}
        report = {"view": job.view.name, "rows_in": seq, "digest": digest, "checksums": sums,
                  "task": job.order + task}
        yield report_batch(schema, report | ({"statistics": packed(stats)} if stats is not None else {}))
    return run


def range_markers(schema: pa.Schema, ranges: int) -> list[pa.RecordBatch]:
    """One row per key range: a range that holds only kept views' rows still gets its task."""
    return [report_batch(schema, {}, part=p, view=MARKER_VIEW) for p in range(ranges)]


# ---------------------------------------------------------------------------------------------
# Stage 2: per key range, the loader's partition_task
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RangeJob:
    """What the write stage needs besides the rows (picklable, sent with the function)."""
    group: str
    views: tuple[ViewDef, ...]             # the group's views in schema order
    encoded: tuple[ViewDef, ...]           # the re-encoded ones, in the order of their VIEW index
    entity: EntityDef
    bounds: tuple[tuple[bytes | None, bytes | None], ...]   # each range's (lower, upper)
    sst_dir: str
    offline_dir: str                       # out/offline: views that drop duplicates write <view>/part-<range>
    source_paths: dict[str, tuple[str, ...]]
    compression: str
    kept: KeptViews | None
    local_dir: str                         # the executor's own disk for the range's spill files ("": temp)
    view_rows: dict[str, int]              # rows in a view's sources: the statistics' sample rate
    statistics: bool


REPORT_SCHEMA = pa.schema([pa.field("part", pa.int32()), pa.field("report", pa.string())])


def result_to_json(r: PartitionResult) -> dict[str, Any]:
    """The report a write task sends back; its statistics (views with an event timestamp, after dedup)
    pickled."""
    d = asdict(replace(r, statistics={}))
    d["statistics"] = packed(r.statistics)
    d["sst_files"] = [{**s, "first_key": base64.b64encode(s["first_key"]).decode(),
                       "last_key": base64.b64encode(s["last_key"]).decode()} for s in d["sst_files"]]
    return d


def result_from_json(d: dict[str, Any]) -> PartitionResult:
    ssts = [SstFile(s["path"], base64.b64decode(s["first_key"]), base64.b64decode(s["last_key"]), s["size"],
                    s["checksum"]) for s in d["sst_files"]]
    return PartitionResult(d["rows"], d["view_rows"], d["dropped"], ssts, d["checksums"], unpacked(d["statistics"]))


def _spill_files(job: RangeJob, spill: Path, pieces: list[pa.RecordBatch]) -> None:
    """The range's rows as a local load spills them: <spill>/<view>/t<task>.arrow, in read order (Spark
    sorted them by view, task and sequence)."""
    table = pa.Table.from_batches(pieces)
    views = table.column(VIEW).to_numpy(zero_copy_only=False)
    tasks = table.column(TASK).fill_null(-1).to_numpy()
    cuts = np.flatnonzero((np.diff(views) != 0) | (np.diff(tasks) != 0)) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(views)], strict=True):
        j = int(views[lo])
        if j == MARKER_VIEW:
            continue
        view = job.encoded[j]
        spilled = SpillRows(job.entity, view)
        own = set(spilled.kept.names[1:])   # the view's normalized columns after the key, under its names
        rows = table.slice(lo, hi - lo)
        cols = [rows.column(_column(j, f.name) if f.name in own else f.name).cast(f.type) for f in spilled.schema]
        d = spill / view.name
        d.mkdir(parents=True, exist_ok=True)
        with ipc.new_file(str(d / f"t{int(tasks[lo]):05d}.arrow"), spilled.schema) as w:
            w.write_table(pa.Table.from_arrays(cols, schema=spilled.schema))


def _write_range(job: RangeJob, part: int, pieces: list[pa.RecordBatch]) -> dict[str, Any]:
    has_rows = any(bool((b.column(VIEW).to_numpy(zero_copy_only=False) != MARKER_VIEW).any()) for b in pieces)
    if not has_rows and job.kept is None:
        return {}   # no rows in this range: the local loader runs no task for it either
    base = Path(tempfile.mkdtemp(prefix="quiver-range-", dir=job.local_dir or None))
    try:
        spill = base / f"p{part:05d}"
        spill.mkdir()
        _spill_files(job, spill, pieces)
        lower, upper = job.bounds[part]
        offline = {v.name: str(Path(job.offline_dir) / v.name / f"part-{part:05d}.parquet")
                   for v in job.encoded if v.event_timestamp}
        task = PartitionTask(job.group, job.views, job.entity, str(spill), lower, upper, job.sst_dir, offline,
                             job.source_paths, job.compression, job.kept, job.view_rows, job.statistics)
        try:
            return result_to_json(partition_task(task))
        except LoadError as e:
            return error_report(e)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def write_stage(job: RangeJob) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function over the sorted partitions: one report row per key range, and the
    encode stage's reports passed through."""

    def report(part: int, r: dict[str, Any]) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.array([part], pa.int32()), pa.array([json.dumps(r)])],
                                          schema=REPORT_SCHEMA)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pa.set_cpu_count(1)
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
                    if current is not None:
                        yield report(current, _write_range(job, current, pieces))
                    current, pieces = p, []
                pieces.append(b.slice(lo, hi - lo))
        if current is not None:
            yield report(current, _write_range(job, current, pieces))
    return run
