"""The work a load hands to its worker processes. Module-level functions, so they pickle under
the spawn start method; each raises LoadError subclasses with file, view and key named."""

import ctypes
import ctypes.util
import os
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from rocksdict import IngestExternalFileOptions, Rdict, SstFileWriter

from quiver.loader.encode import ViewEncoder
from quiver.loader.errors import DataError, SourceError
from quiver.loader.normalize import normalize, normalized_schema
from quiver.loader.partition import Partitioner, encoded_keys
from quiver.loader.sources import open_parquet
from quiver.loader.statistics import ViewAccumulator
from quiver.process import die_with_parent
from quiver.snapshot import rocks
from quiver.snapshot.manifest import file_checksum
from quiver.snapshot.schema import EntityDef, ViewDef

SST_ROLL_BYTES = 256 << 20
PUT_ROWS = 8192             # values turned into Python bytes at a time for the SST writer
OFFLINE_COMPRESSION = "zstd"
OFFLINE_ROW_GROUP = 1 << 17
_INTERNAL = ["__key", "__value", "__file"]


@dataclass(frozen=True)
class Sample:
    keys: pa.Array        # every stride-th key of one file
    spill_bytes: int      # in-memory bytes of the spilled rows of its first batch...
    spill_rows: int       # ...and how many rows that batch had


SIZE_ROWS = 2048


def sample_keys(entity: EntityDef, view: ViewDef, path: str, stride: int) -> Sample:
    """Every stride-th key of one file (reads the key column only), and the spilled size of its first
    rows: partitions are sized by what a worker will hold in memory, not by Parquet's encoded size
    (a dictionary-encoded column is a fraction of its decoded width)."""
    pf = open_parquet(path, view)
    key_col = view.entity_column or entity.name
    parts = []
    try:
        for batch in pf.iter_batches(batch_size=1 << 16, columns=[key_col]):
            keys = batch.column(0)
            parts.append(keys.take(pa.array(np.arange(0, len(keys), stride))))
        head = next(pf.iter_batches(batch_size=SIZE_ROWS, columns=source_columns(entity, view)), None)
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{path}: view {view.name!r}: cannot read column {key_col!r}: {e}") from None
    t = pa.int64() if entity.key_type == "int64" else pa.string()
    sample = pa.concat_arrays([p.cast(t) for p in parts if len(p)]) if parts else pa.array([], t)
    if head is None or head.num_rows == 0:
        return Sample(sample, 0, 0)
    batch = normalize(entity, view, head, path)
    spilled = SpillRows(entity, view).of(batch, 0)
    return Sample(sample, spilled.nbytes, spilled.num_rows)


def source_columns(entity: EntityDef, view: ViewDef) -> list[str]:
    return sorted({view.entity_column or entity.name, *([view.event_timestamp] if view.event_timestamp else []),
                   *(f.column for f in view.features)})


def _return_memory() -> None:
    """Give the allocators' freed pages back between tasks, so a worker's RSS is what it holds now,
    not the high-water mark of every task it ran: Arrow's pool, and glibc's heap (the values handed
    to the SST writer are Python bytes, allocated by malloc)."""
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (musl has none)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def worker_init(parent_pid: int) -> None:
    """Each encode task keeps one spill file open per key range: lift the soft open-files limit to
    the hard one, so a large load's hundreds of ranges do not hit the usual 1024. The load already
    runs a process per core, so Arrow's own pool gets one thread, not one per core in each worker."""
    die_with_parent(parent_pid)
    pa.set_cpu_count(1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
    spill_dir: str
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


def encode_task(t: EncodeTask) -> EncodeResult:
    """Reads some row groups, normalizes, encodes and spills rows to their key-range partitions;
    writes the offline rows when the view keeps every row."""
    pf = open_parquet(t.path, t.view)
    part = Partitioner(t.boundaries, t.entity.key_type == "int64")
    rows = SpillRows(t.entity, t.view)
    offline: pq.ParquetWriter | None = None
    if t.offline_path:
        Path(t.offline_path).parent.mkdir(parents=True, exist_ok=True)
        offline = offline_writer(t.offline_path, normalized_schema(t.entity, t.view))
    writers: dict[int, ipc.RecordBatchFileWriter] = {}
    counts = [0] * part.count
    # statistics of the rows the version serves: all of them here; after dedup in partition_task otherwise
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
            keys = batch.column(0)
            full = rows.of(batch, t.file_index)
            assignment = part.assign(keys)
            order = np.argsort(assignment, kind="stable")
            sorted_parts = assignment[order]
            cuts = np.flatnonzero(np.diff(sorted_parts)) + 1
            taken = full.take(pa.array(order))
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(order)], strict=True):
                p = int(sorted_parts[lo])
                if p not in writers:
                    d = Path(t.spill_dir) / f"p{p:05d}"
                    d.mkdir(parents=True, exist_ok=True)
                    writers[p] = ipc.new_file(str(d / f"t{t.task_id:05d}.arrow"), rows.schema)
                writers[p].write_batch(taken.slice(lo, hi - lo))
                counts[p] += int(hi - lo)
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{t.path}: view {t.view.name!r}: cannot read row groups {list(t.row_groups)}: "
                          f"{e} (truncated or corrupt file?)") from None
    finally:
        for w in writers.values():
            w.close()
        if offline is not None:
            offline.close()
    _return_memory()
    return EncodeResult(counts, {t.offline_path: file_checksum(t.offline_path)} if t.offline_path else {}, stats)


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


@dataclass(frozen=True)
class PartitionTask:
    view: ViewDef
    entity: EntityDef
    spill_dir: str          # .../p<part>
    sst_dir: str
    offline_path: str       # "" when the encode tasks wrote the offline rows
    source_paths: tuple[str, ...]
    compression: str
    view_rows: int = 0
    statistics: bool = True


@dataclass(frozen=True)
class SstFile:
    path: str
    first_key: bytes        # with the last key, names the file again once RocksDB has renamed it
    last_key: bytes
    size: int
    checksum: str


@dataclass(frozen=True)
class PartitionResult:
    rows: int
    dropped: int
    sst_files: list[SstFile]
    checksums: dict[str, str]      # the offline file, when this range wrote it
    statistics: ViewAccumulator | None = None   # of the range's rows after dedup (views with an event timestamp)


def _sorted_deduplicated(t: PartitionTask, table: pa.Table) -> tuple[pa.Table, int]:
    key = t.entity.name
    order = [(key, "ascending")] + ([(t.view.event_timestamp, "descending")] if t.view.event_timestamp else [])
    table = table.take(pc.sort_indices(table, sort_keys=order))
    keys = table.column(key)
    if len(keys) < 2:
        return table, 0
    same = pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1)).combine_chunks().to_numpy(zero_copy_only=False)
    if not same.any():
        return table, 0
    if not t.view.event_timestamp:
        i = int(np.flatnonzero(same)[0]) + 1
        dup = keys[i].as_py()
        n = int(np.sum(same))
        files = sorted({t.source_paths[f] for f in pc.filter(table.column("__file"),
                                                              pc.equal(keys, keys[i])).to_pylist()})
        raise DataError(f"view {t.view.name!r}: entity key {dup!r} appears more than once ({n} duplicate row(s) in "
                        f"this key range) in {', '.join(files)}; declare an event_timestamp column to keep the "
                        f"latest row")
    keep = np.concatenate([[True], ~same])
    return table.filter(pa.array(keep)), int(np.sum(same))


def partition_task(t: PartitionTask) -> PartitionResult:
    """Sorts one key range, drops older duplicates, writes its SST file(s) and its offline Parquet."""
    files = sorted(Path(t.spill_dir).glob("*.arrow"))
    tables = [ipc.open_file(str(f)).read_all() for f in files]
    # no combine_chunks: the sort's take makes the one contiguous copy this needs
    table, dropped = _sorted_deduplicated(t, pa.concat_tables(tables))
    del tables
    Path(t.sst_dir).mkdir(parents=True, exist_ok=True)
    ssts = _write_ssts(t, table.select(["__key", "__value"]))
    checksums = {}
    stats = None
    if t.offline_path:
        Path(t.offline_path).parent.mkdir(parents=True, exist_ok=True)
        rows_kept = table.drop_columns(_INTERNAL)
        with offline_writer(t.offline_path, normalized_schema(t.entity, t.view)) as w:
            w.write_table(rows_kept, row_group_size=OFFLINE_ROW_GROUP)
        checksums[t.offline_path] = file_checksum(t.offline_path)
        if t.statistics:
            stats = ViewAccumulator(t.view, t.view_rows)
            for batch in rows_kept.to_batches(max_chunksize=1 << 14):
                stats.add(batch)
        del rows_kept
    for f in files:
        os.unlink(f)
    rows = table.num_rows
    del table
    _return_memory()
    return PartitionResult(rows, dropped, ssts, checksums, stats)


def _write_ssts(t: PartitionTask, table: pa.Table) -> list[SstFile]:
    """Sorted (key, value) rows into SST files of up to SST_ROLL_BYTES each."""
    out: list[SstFile] = []
    opts = rocks.writer_options(t.compression)
    part = Path(t.spill_dir).name
    writer: SstFileWriter | None = None
    path, first, last = "", b"", b""

    def finish(w: SstFileWriter) -> None:
        w.finish()
        out.append(SstFile(path, first, last, os.path.getsize(path), file_checksum(path)))

    for batch in table.to_batches(max_chunksize=PUT_ROWS):
        keys = batch.column(0).to_pylist()
        values = batch.column(1).to_pylist()
        if not keys:
            continue
        if writer is None:
            path = str(Path(t.sst_dir) / f"{part}-{len(out):03d}.sst")
            writer = SstFileWriter(opts)
            writer.open(path)
            first = keys[0]
        for k, v in zip(keys, values, strict=True):
            writer[k] = v
        last = keys[-1]
        if writer.file_size() > SST_ROLL_BYTES:
            finish(writer)
            writer = None
    if writer is not None:
        finish(writer)
    return out


def ingest_task(db_dir: str, sst_files: list[SstFile]) -> dict[str, str]:
    """One fresh RocksDB per view; its key ranges are disjoint, so every file lands in L6. Returns
    the checksum of each ingested file under its new name (RocksDB renumbers the files it moves in,
    so they are matched by key range and size)."""
    db = Rdict(db_dir, rocks.empty_db_options())
    try:
        io = IngestExternalFileOptions()
        io.set_move_files(True)
        if sst_files:
            db.ingest_external_file([f.path for f in sst_files], io)
        db.flush()
        by_range = {(f.first_key, f.last_key, f.size): f.checksum for f in sst_files}
        live = db.live_files()
    finally:
        db.close()
    out = {}
    for f in live:
        checksum = by_range.get((f["start_key"], f["end_key"], f["size"]))
        if checksum is not None:
            out[os.path.join(db_dir, f["name"].lstrip("/"))] = checksum
    return out
