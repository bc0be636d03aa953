"""Stage 2, encode and spill: read a view's Parquet row groups in batches, normalize and validate them,
encode one ViewRow per row, and spill (key, value) rows to the key range of the view's storage group
they fall in. Views that keep every row write their offline Parquet here too."""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from quiver.loader.encode import ViewEncoder
from quiver.loader.errors import SourceError, disk_full
from quiver.loader.normalize import normalize, normalized_schema
from quiver.loader.partition import Partitioner, encoded_keys
from quiver.loader.sources import SourceFile, open_parquet
from quiver.loader.worker import return_memory
from quiver.quality.statistics import ViewAccumulator
from quiver.snapshot.manifest import file_checksum
from quiver.snapshot.schema import EntityDef, ViewDef

OFFLINE_COMPRESSION = "zstd"
OFFLINE_ROW_GROUP = 1 << 17
TASKS_PER_WORKER = 4


def source_columns(entity: EntityDef, view: ViewDef) -> list[str]:
    return sorted({view.entity_column or entity.name, *([view.event_timestamp] if view.event_timestamp else []),
                   *(f.column for f in view.features)})


class SpillRows:
    """A normalized batch as the rows spilled to key-range partitions: the kept columns, the RocksDB
    key, the encoded value and the source file's index (named in a duplicate-key error)."""

    def __init__(self, entity: EntityDef, view: ViewDef) -> None:
        self.encoder = ViewEncoder(view)
        normalized = normalized_schema(entity, view)
        self.kept = normalized if spills_all_columns(view) else pa.schema([normalized.field(0)])
        self.schema = self.kept.append(pa.field("__key", pa.binary())).append(
            pa.field("__value", pa.large_binary())).append(pa.field("__file", pa.int32()))

    def of(self, batch: pa.RecordBatch, file_index: int) -> pa.RecordBatch:
        keys = batch.column(0)
        extra = [encoded_keys(keys), self.encoder.encode(batch),
                 pa.array(np.full(len(keys), file_index, np.int32))]
        return pa.RecordBatch.from_arrays(batch.columns[:len(self.kept)] + extra, schema=self.schema)


@dataclass(frozen=True)
class EncodeTask:
    view: ViewDef
    entity: EntityDef
    path: str
    file_index: int
    row_groups: tuple[int, ...]
    spill_dir: str           # the group's spill folder: rows go to <spill_dir>/p<range>/<view>/
    task_id: int
    boundaries: list[int] | list[bytes]
    batch_rows: int
    offline_path: str   # where this task writes its offline rows; "" when the partitions must (dedup)
    view_rows: int = 0  # the view's rows in all its sources: sets the statistics' sample rate
    statistics: bool = True


def spills_all_columns(view: ViewDef) -> bool:
    """Views with an event timestamp drop older duplicates after the global sort, so their offline
    rows are written from the sorted partitions; other views keep every row (a duplicate fails the
    load), so each encode task writes its offline rows at once and spills only keys and values."""
    return bool(view.event_timestamp)


@dataclass(frozen=True)
class EncodeResult:
    counts: list[int]              # rows spilled per partition
    checksums: dict[str, str]      # file written -> checksum, taken while it is in the page cache
    statistics: ViewAccumulator | None = None   # of the rows it read, for views that keep every row


class BatchEncoder:
    """The encode stage over one input's raw batches, whoever reads them (a row-group task here, a
    DataFrame partition on Spark): normalize and validate each, write the offline rows when the view keeps
    every row, gather their statistics, and return the rows to spill. `close()` -> (checksums of the
    offline file written, the statistics). `digest`: also an order-free digest of the rows (a source
    with no file to checksum, a DataFrame, is identified by it in the version id)."""

    def __init__(self, entity: EntityDef, view: ViewDef, where: str, file_index: int, offline_path: str,
                 view_rows: int, statistics: bool, digest: bool = False) -> None:
        self.entity, self.view, self.where, self.file_index = entity, view, where, file_index
        self.offline_path = offline_path
        self.rows = SpillRows(entity, view)
        self.read = 0
        self.digest: int | None = 0 if digest else None
        self.offline: pq.ParquetWriter | None = None
        # statistics of the rows the version serves: all of them here; after dedup in the sst stage otherwise
        self.stats = ViewAccumulator(view, view_rows) if statistics and not spills_all_columns(view) else None

    def encode(self, raw: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """(the normalized batch, its rows to spill)."""
        batch = normalize(self.entity, self.view, raw, self.where)
        if self.offline_path:
            if self.offline is None:
                Path(self.offline_path).parent.mkdir(parents=True, exist_ok=True)
                self.offline = offline_writer(self.offline_path, normalized_schema(self.entity, self.view))
            self.offline.write_batch(batch, row_group_size=OFFLINE_ROW_GROUP)
        if self.stats is not None:
            self.stats.add(batch)
        self.read += batch.num_rows
        spilled = self.rows.of(batch, self.file_index)
        if self.digest is not None:
            self.digest = (self.digest + rows_digest(spilled, self.view.event_timestamp)) & _MASK64
        return batch, spilled

    def close(self) -> tuple[dict[str, str], ViewAccumulator | None]:
        if self.offline is None:
            return {}, self.stats
        self.offline.close()
        self.offline = None
        return {self.offline_path: file_checksum(self.offline_path)}, self.stats


_MASK64 = (1 << 64) - 1


def rows_digest(spilled: pa.RecordBatch, ts: str) -> int:
    """The sum of a 64-bit hash of each spilled row's key, value and event timestamp: the same rows in any
    order and any split give the same digest."""
    keys, values = spilled.column("__key").to_pylist(), spilled.column("__value").to_pylist()
    stamps = spilled.column(ts).cast(pa.int64()).to_pylist() if ts else [0] * len(keys)
    total = 0
    for k, v, t in zip(keys, values, stamps, strict=True):
        h = hashlib.blake2b(len(k).to_bytes(4, "little") + k + v + t.to_bytes(8, "little", signed=True),
                            digest_size=8)
        total += int.from_bytes(h.digest(), "little")
    return total & _MASK64


def read_row_groups(t: EncodeTask) -> Iterator[pa.RecordBatch]:
    """A task's row groups in batches; a file that cannot be read is a SourceError naming it."""
    pf = open_parquet(t.path, t.view)
    try:
        yield from pf.iter_batches(batch_size=t.batch_rows, row_groups=list(t.row_groups),
                                   columns=source_columns(t.entity, t.view))
    except (pa.ArrowException, OSError) as e:
        if disk_full(e):
            raise
        raise SourceError(f"{t.path}: view {t.view.name!r}: cannot read row groups {list(t.row_groups)}: "
                          f"{e} (truncated or corrupt file?)") from None


def task_encoder(t: EncodeTask) -> BatchEncoder:
    return BatchEncoder(t.entity, t.view, t.path, t.file_index, t.offline_path, t.view_rows, t.statistics)


def encode_task(t: EncodeTask) -> EncodeResult:
    """The local engine's encode task: some row groups encoded and spilled, by key range, to
    <spill_dir>/p<range>/<view>/t<task>.arrow."""
    part = Partitioner(t.boundaries, t.entity.key_type == "int64")
    encoder = task_encoder(t)
    writers: dict[int, ipc.RecordBatchFileWriter] = {}
    counts = [0] * part.count
    try:
        for raw in read_row_groups(t):
            batch, full = encoder.encode(raw)
            assignment = part.assign(batch.column(0))
            order = np.argsort(assignment, kind="stable")
            sorted_parts = assignment[order]
            cuts = np.flatnonzero(np.diff(sorted_parts)) + 1
            taken = full.take(pa.array(order))
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(order)], strict=True):
                p = int(sorted_parts[lo])
                if p not in writers:
                    d = Path(t.spill_dir) / f"p{p:05d}" / t.view.name
                    d.mkdir(parents=True, exist_ok=True)
                    writers[p] = ipc.new_file(str(d / f"t{t.task_id:05d}.arrow"), encoder.rows.schema)
                writers[p].write_batch(taken.slice(lo, hi - lo))
                counts[p] += int(hi - lo)
    finally:
        for w in writers.values():
            w.close()
        checksums, stats = encoder.close()
    return_memory()
    return EncodeResult(counts, checksums, stats)


def offline_writer(path: str, schema: pa.Schema) -> pq.ParquetWriter:
    """Floats (scalars and embeddings) are written byte-stream-split, not dictionary-encoded: a
    dictionary of random floats never pays and costs a hash per value (it was a third of a load's
    CPU); every other column keeps Parquet's dictionary, which falls back by itself when it grows."""
    floats, others = [], []
    for f in schema:
        t = f.type.value_type if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type) else f.type
        if pa.types.is_floating(t):
            floats.append(f.name if t is f.type else f"{f.name}.list.element")
        else:
            others.append(f.name)
    return pq.ParquetWriter(path, schema, compression=OFFLINE_COMPRESSION, use_dictionary=others,
                            use_byte_stream_split=floats)




def encode_tasks(entity: EntityDef, view: ViewDef, files: list[SourceFile], spill: Path, offline_dir: Path,
                 bounds: list[int] | list[bytes], batch_rows: int, workers: int,
                 statistics: bool = True) -> list[EncodeTask]:
    """A view's row groups cut into about TASKS_PER_WORKER tasks per worker."""
    out: list[EncodeTask] = []
    total_groups = sum(f.row_groups for f in files)
    per_task = max(1, -(-total_groups // (workers * TASKS_PER_WORKER)))
    for i, f in enumerate(files):
        for start in range(0, f.row_groups, per_task):
            groups = tuple(range(start, min(f.row_groups, start + per_task)))
            offline = "" if spills_all_columns(view) else str(offline_dir / f"part-t{len(out):05d}.parquet")
            out.append(EncodeTask(view, entity, f.path, i, groups, str(spill), len(out), bounds, batch_rows,
                                  offline, sum(f.rows for f in files), statistics))
    return out
