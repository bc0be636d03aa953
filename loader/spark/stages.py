"""What Spark's executors run for a load: the loader's own spill stage (spill.BatchEncoder, one Spark task
per EncodeTask or DataFrame partition) -> rows (range, view, task, seq, the spilled columns) -> Spark: one
partition per key range, sorted by (range, view, task, seq) -> the loader's own sst stage (sst.write_range)
per range, handed each view's rows per encode task in read order, exactly as the local engine reads its
spill files. So the version is the local engine's byte for byte (but for the SST files' own properties).
Reports (rows read, checksums, statistics, results, a QuiverError: the job never retries a bad row) travel
pickled; the driver unpickles only what its own job's tasks sent.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from quiver.base.errors import QuiverError
from quiver.loader.partition import Partitioner
from quiver.loader.spill import BatchEncoder, EncodeTask, SpillRows, read_row_groups, task_encoder
from quiver.loader.sst import PartitionTask, write_range
from quiver.snapshot.schema import EntityDef, ViewDef

PART, VIEW, TASK, SEQ, REPORT = "__part", "__view", "__task", "__seq", "__report"
REPORT_PART = -1   # rows that carry a report, not data
MARKER_VIEW = -1   # a row that only says "this key range exists" (it holds kept views' rows)
_VIEW_COLUMN = re.compile(r"__v[0-9]+:")
REPORT_SCHEMA = pa.schema([pa.field("part", pa.int32()), pa.field("report", pa.binary())])


def _column(view_index: int, name: str) -> str:
    return f"__v{view_index}:{name}"


def _spark_friendly(t: pa.DataType) -> pa.DataType:
    """Spark has no fixed-size lists or large binaries: the same values in types it has."""
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_type)
    return pa.binary() if pa.types.is_large_binary(t) else t


def shuffle_schema(entity: EntityDef, views: tuple[ViewDef, ...]) -> pa.Schema:
    """Every re-encoded view of a group in one schema: range, view, task and sequence; the spilled rows'
    common part (the key column, __key, __value, __file); each event-timestamp view's normalized columns
    under its own names (they go to its offline Parquet after dedup); a report; every field nullable."""
    key = pa.field(entity.name, pa.int64() if entity.key_type == "int64" else pa.string())
    fields = [pa.field(PART, pa.int32()), pa.field(VIEW, pa.int16()), pa.field(TASK, pa.int32()),
              pa.field(SEQ, pa.int64()), key, pa.field("__key", pa.binary()), pa.field("__value", pa.binary()),
              pa.field("__file", pa.int32())]
    for j, v in enumerate(views):
        fields += [pa.field(_column(j, f.name), _spark_friendly(f.type)) for f in list(SpillRows(entity, v).kept)[1:]]
    return pa.schema([*fields, pa.field(REPORT, pa.binary())])


def report_batch(schema: pa.Schema, report: dict[str, Any] | None, part: int = REPORT_PART,
                 view: int = 0) -> pa.RecordBatch:
    cols = [pa.array([part], pa.int32()), pa.array([view], pa.int16())]
    cols += [pa.nulls(1, f.type) for f in list(schema)[2:-1]]
    data = None if report is None else pickle.dumps(report)
    return pa.RecordBatch.from_arrays(cols + [pa.array([data], pa.binary())], schema=schema)


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
    return pa.RecordBatch.from_arrays(cols + [pa.nulls(n, pa.binary())], schema=schema)


@dataclass(frozen=True)
class EncodeJob:
    """One input of the spill stage: a loader EncodeTask, or (task None) a DataFrame's view."""
    view: ViewDef
    view_index: int                    # the view's place in the group's shuffle schema
    order: int                         # where its errors sort: file tasks in task order, DataFrames after
    boundaries: list[int] | list[bytes]
    task: EncodeTask | None = None
    where: str = ""                    # a DataFrame's name in messages, as a path names a file
    offline_dir: str = ""              # a DataFrame's offline folder ("" when the sst stage writes them)
    view_rows: int = 0                 # the statistics' sample rate
    statistics: bool = True


def _spill(job: EncodeJob, entity: EntityDef, raw: Iterator[pa.RecordBatch], encoder: BatchEncoder, task: int,
           order: int, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The spill stage over one input: its shuffle rows (`task` their TASK column), then its report; a
    QuiverError becomes the report."""
    part = Partitioner(job.boundaries, entity.key_type == "int64")
    try:
        for batch in raw:
            seq = encoder.read
            normalized, spilled = encoder.encode(batch)
            yield _shuffle_rows(spilled, part.assign(normalized.column(0)), job.view_index, task, seq, schema)
    except QuiverError as e:
        yield report_batch(schema, {"order": order, "error": e})
        return
    finally:
        checksums, stats = encoder.close()
    yield report_batch(schema, {"view": job.view.name, "rows_in": encoder.read, "checksums": checksums,
                                "order": order, "statistics": stats, "digest": encoder.digest})


def spill_stage(jobs: list[EncodeJob], entity: EntityDef,
                schema: pa.Schema) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function over a DataFrame of job indices (file tasks, one Spark task each)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pa.set_cpu_count(1)   # Spark already runs a task per core
        for b in batches:
            for i in b.column(0).to_pylist():
                t = jobs[i].task
                assert t is not None
                yield from _spill(jobs[i], entity, read_row_groups(t), task_encoder(t), t.task_id, jobs[i].order,
                                  schema)
    return run


def frame_stage(job: EncodeJob, entity: EntityDef, batch_rows: int,
                schema: pa.Schema) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function over a DataFrame's own partitions: offline rows (when the view keeps every
    row) in one file per partition."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        pa.set_cpu_count(1)
        context = TaskContext.get()
        task = context.partitionId() if context is not None else 0
        offline = f"{job.offline_dir}/part-t{task:05d}.parquet" if job.offline_dir else ""
        encoder = BatchEncoder(entity, job.view, job.where, 0, offline, job.view_rows, job.statistics, digest=True)
        raw = (b for big in batches for b in pa.Table.from_batches([big]).to_batches(max_chunksize=batch_rows))
        yield from _spill(job, entity, raw, encoder, task, job.order + task, schema)
    return run


def _range_rows(entity: EntityDef, encoded: tuple[ViewDef, ...],
                pieces: list[pa.RecordBatch]) -> dict[str, list[pa.Table]]:
    """A range's shuffled rows as the local engine's spill files hold them: per view, one table per
    encode task, in read order (Spark sorted them by view, task and sequence)."""
    table = pa.Table.from_batches(pieces)
    views = table.column(VIEW).to_numpy(zero_copy_only=False)
    tasks = table.column(TASK).fill_null(-1).to_numpy()
    cuts = np.flatnonzero((np.diff(views) != 0) | (np.diff(tasks) != 0)) + 1
    out: dict[str, list[pa.Table]] = {}
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(views)], strict=True):
        j = int(views[lo])
        if j == MARKER_VIEW:
            continue
        spilled = SpillRows(entity, encoded[j])
        own = set(spilled.kept.names[1:])   # the view's normalized columns after the key, under its names
        rows = table.slice(lo, hi - lo)
        cols = [rows.column(_column(j, f.name) if f.name in own else f.name).cast(f.type) for f in spilled.schema]
        out.setdefault(encoded[j].name, []).append(pa.Table.from_arrays(cols, schema=spilled.schema))
    return out


def _write_range(task: PartitionTask, encoded: tuple[ViewDef, ...], pieces: list[pa.RecordBatch]) -> dict[str, Any]:
    rows = _range_rows(task.entity, encoded, pieces)
    if not rows and task.kept is None:
        return {}   # no rows in this range: the local engine runs no task for it either
    try:
        return {"result": write_range(task, lambda view: rows.pop(view.name, []))}
    except QuiverError as e:
        return {"error": e}


def sst_stage(tasks: list[PartitionTask],
              encoded: tuple[ViewDef, ...]) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function over the sorted partitions: one report row per key range, and the spill
    stage's reports passed through."""

    def report(part: int, data: bytes) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.array([part], pa.int32()), pa.array([data], pa.binary())],
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
                    yield from (report(p, r) for r in b.column(REPORT).slice(lo, hi - lo).to_pylist())
                    continue
                if p != current:
                    if current is not None:
                        yield report(current, pickle.dumps(_write_range(tasks[current], encoded, pieces)))
                    current, pieces = p, []
                pieces.append(b.slice(lo, hi - lo))
        if current is not None:
            yield report(current, pickle.dumps(_write_range(tasks[current], encoded, pieces)))
    return run
