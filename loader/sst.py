"""Stage 3, sort and write: one key range of one storage group. Each re-encoded view's spilled rows are
sorted and their older duplicates dropped; the views kept from the previous version are cut out of its
stored values for the same range; the group's EntityRow values are assembled in key order and written to
SST files (with the serving options baked in), and the offline Parquet of views that drop duplicates."""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
from rocksdict import AccessType, Options, Rdict, ReadOptions, SstFileWriter

from quiver.loader.entity_row import assemble, split
from quiver.loader.errors import DataError, SourceError
from quiver.loader.normalize import normalized_schema
from quiver.loader.spill import OFFLINE_ROW_GROUP, offline_writer
from quiver.loader.wire import binary_parts
from quiver.loader.worker import return_memory
from quiver.quality.statistics import ViewAccumulator
from quiver.snapshot import rocks
from quiver.snapshot.manifest import file_checksum
from quiver.snapshot.schema import EntityDef, ViewDef

SST_ROLL_BYTES = 256 << 20
PUT_ROWS = 8192             # values turned into Python bytes at a time for the SST writer
_INTERNAL = ["__key", "__value", "__file"]


@dataclass(frozen=True)
class KeptViews:
    """Views whose stored bytes come from the previous version's group, not from Parquet."""

    db_dir: str                     # the previous version's online/<group>/
    group_views: tuple[str, ...]    # that group's views, in the order of its stored values
    names: tuple[str, ...]          # the views kept


@dataclass(frozen=True)
class PartitionTask:
    group: str
    views: tuple[ViewDef, ...]      # the group's views in schema order
    entity: EntityDef
    index: int                      # the key range's number: names its SST files
    spill_dir: str                  # the local engine's .../spill/<group>/p<range>: one folder per view
    lower: bytes | None             # the range's keys: lower <= key < upper (None: unbounded)
    upper: bytes | None
    sst_dir: str
    offline_paths: dict[str, str]   # view -> offline file this range writes (views that drop duplicates)
    source_paths: dict[str, tuple[str, ...]]
    compression: str
    kept: KeptViews | None = None
    view_rows: dict[str, int] = field(default_factory=dict)   # rows in a view's sources: the statistics' sample rate
    statistics: bool = True


@dataclass(frozen=True)
class SstFile:
    path: str
    first_key: bytes        # with the last key, names the file again once RocksDB has renamed it
    last_key: bytes
    size: int
    checksum: str


@dataclass
class PartitionResult:
    rows: int                                   # keys written: entities in at least one view
    view_rows: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    sst_files: list[SstFile] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)  # offline files written here
    statistics: dict[str, ViewAccumulator] = field(default_factory=dict)  # views with an event timestamp, deduped


def sorted_deduplicated(view: ViewDef, entity: EntityDef, table: pa.Table,
                        source_paths: tuple[str, ...]) -> tuple[pa.Table, int]:
    """Rows by key; of duplicate keys the latest event timestamp is kept, or the load fails naming the
    key and its files when the view has no event timestamp."""
    key = entity.name
    order = [(key, "ascending")] + ([(view.event_timestamp, "descending")] if view.event_timestamp else [])
    table = table.take(pc.sort_indices(table, sort_keys=order))
    keys = table.column(key)
    if len(keys) < 2:
        return table, 0
    same = pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1)).combine_chunks().to_numpy(zero_copy_only=False)
    if not same.any():
        return table, 0
    if not view.event_timestamp:
        i = int(np.flatnonzero(same)[0]) + 1
        dup = keys[i].as_py()
        n = int(np.sum(same))
        files = sorted({source_paths[f] for f in pc.filter(table.column("__file"),
                                                            pc.equal(keys, keys[i])).to_pylist()})
        raise DataError(f"view {view.name!r}: entity key {dup!r} appears more than once ({n} duplicate row(s) in "
                        f"this key range) in {', '.join(files)}; declare an event_timestamp column to keep the "
                        f"latest row")
    keep = np.concatenate([[True], ~same])
    return table.filter(pa.array(keep)), int(np.sum(same))


def spilled(spill_dir: str, view: ViewDef) -> list[pa.Table]:
    """The local engine's spill files of one view in one key range, in encode-task order; removed as read."""
    files = sorted((Path(spill_dir) / view.name).glob("*.arrow"))
    tables = [ipc.open_file(str(f)).read_all() for f in files]
    for f in files:
        os.unlink(f)
    return tables


def _encoded_view(t: PartitionTask, view: ViewDef, tables: list[pa.Table],
                  result: PartitionResult) -> tuple[pa.Array, pa.Array]:
    """(keys, values) of one re-encoded view in this range, sorted; its offline rows written."""
    # no combine_chunks: the sort's take makes the one contiguous copy this needs
    table, result.dropped[view.name] = sorted_deduplicated(view, t.entity, pa.concat_tables(tables),
                                                           t.source_paths[view.name])
    path = t.offline_paths.get(view.name, "")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        rows = table.drop_columns(_INTERNAL)
        with offline_writer(path, normalized_schema(t.entity, view)) as w:
            w.write_table(rows, row_group_size=OFFLINE_ROW_GROUP)
        result.checksums[path] = file_checksum(path)
        if t.statistics:   # of the rows kept after dedup: what the version serves
            stats = result.statistics[view.name] = ViewAccumulator(view, t.view_rows.get(view.name, 0))
            for batch in rows.to_batches(max_chunksize=1 << 14):
                stats.add(batch)
        del rows
    return table.column("__key").combine_chunks(), table.column("__value").combine_chunks()


def previous_values(kept: KeptViews, lower: bytes | None, upper: bytes | None) -> tuple[pa.Array, pa.Array]:
    """(keys, stored values) of the previous version's group in [lower, upper), in key order."""
    opts = Options(raw_mode=True)
    opts.set_db_log_dir(os.environ.get("TMPDIR", "/tmp"))  # never write into a published version
    db = Rdict(kept.db_dir, opts, access_type=AccessType.read_only())
    keys: list[bytes] = []
    values: list[bytes] = []
    try:
        ro = ReadOptions()  # bounds are raw bytes: the DB was opened in raw mode
        ro.fill_cache(False)  # type: ignore[call-arg]  # the stub lacks its argument; a bulk scan
        ro.set_readahead_size(2 << 20)
        if upper is not None:
            ro.set_iterate_upper_bound(upper)
        for k, v in db.items(from_key=lower if lower is not None else b"", read_opt=ro):
            keys.append(k)  # type: ignore[arg-type]
            values.append(v)
    except Exception as e:  # RocksDB reports corruption as plain exceptions
        raise SourceError(f"{kept.db_dir}: cannot read the previous version's stored values: {e}") from None
    finally:
        db.close()
    return pa.array(keys, pa.binary()), pa.array(values, pa.large_binary())


def _kept_views(t: PartitionTask, result: PartitionResult) -> dict[str, tuple[pa.Array, pa.Array]]:
    assert t.kept is not None
    keys, values = previous_values(t.kept, t.lower, t.upper)
    try:
        parts = split(values, len(t.kept.group_views))
    except ValueError as e:
        raise SourceError(f"{t.kept.db_dir}: {e}; reload with --no-reuse") from None
    out = {}
    for name in t.kept.names:
        col = parts[t.kept.group_views.index(name)]
        valid = col.is_valid()
        out[name] = (keys.filter(valid), col.filter(valid))
        result.dropped[name] = 0
    return out


Columns = dict[str, tuple[pa.Array, pa.Array]]   # view -> (sorted encoded keys, ViewRow bytes)


def _fixed8(keys: pa.Array) -> np.ndarray | None:
    """int64 entities' keys (8 big-endian bytes each) as uint64, in the same order; None for other keys."""
    offsets, data = binary_parts(keys.cast(pa.large_binary()))
    if int(offsets[-1] - offsets[0]) != 8 * len(keys):
        return None
    return data[offsets[0]:offsets[-1]].view(">u8")


def group_values(views: tuple[ViewDef, ...], columns: Columns) -> tuple[pa.Array, pa.Array]:
    """The group's (keys, EntityRow values) in key order from each view's sorted (keys, ViewRows)."""
    present = [v.name for v in views if v.name in columns]
    if len(present) == 1:
        keys = columns[present[0]][0]
        aligned = [columns[v.name][1] if v.name in columns else pa.nulls(len(keys), pa.large_binary())
                   for v in views]
        return keys, assemble(aligned)
    ints = {name: _fixed8(columns[name][0]) for name in present}
    if all(k is not None for k in ints.values()):
        union = np.unique(np.concatenate([k for k in ints.values() if k is not None]))
        keys = pa.Array.from_buffers(pa.binary(8), len(union), [None, pa.py_buffer(union.astype(">u8"))])
        rank = {name: np.searchsorted(union, k) for name, k in ints.items() if k is not None}
    else:
        raw = pc.unique(pa.concat_arrays([columns[n][0].cast(pa.binary()) for n in present]))
        keys = raw.take(pc.sort_indices(raw))  # binary sorts bytewise: RocksDB's order
        rank = {n: pc.index_in(columns[n][0].cast(pa.binary()), value_set=keys).to_numpy() for n in present}
    aligned = []
    for v in views:
        if v.name not in columns:
            aligned.append(pa.nulls(len(keys), pa.large_binary()))
            continue
        values = columns[v.name][1]
        if len(values) == len(keys):  # the view holds every key of the range: already aligned
            aligned.append(values)
            continue
        row = np.full(len(keys), -1, dtype=np.int64)
        row[rank[v.name]] = np.arange(len(values))
        aligned.append(values.take(pa.array(row, mask=row < 0)))
    return keys.cast(pa.binary()), assemble(aligned)


def partition_task(t: PartitionTask) -> PartitionResult:
    """The local engine's task: one key range of one group, its rows read from its spill files."""
    return write_range(t, lambda view: spilled(t.spill_dir, view))


def write_range(t: PartitionTask, rows: Callable[[ViewDef], list[pa.Table]]) -> PartitionResult:
    """Sorts one key range of one group and writes its SST file(s) and offline Parquet. `rows(view)`: a
    re-encoded view's spilled rows (SpillRows' schema) in encode-task and read order, as either engine
    delivers them (asked for one view at a time, to bound memory); the order decides which of equal keys
    and timestamps is kept."""
    result = PartitionResult(0)
    columns: dict[str, tuple[pa.Array, pa.Array]] = {}
    for view in t.views:
        if t.kept is not None and view.name in t.kept.names:
            continue
        tables = rows(view)
        if tables:
            columns[view.name] = _encoded_view(t, view, tables, result)
        del tables
    if t.kept is not None:
        columns |= _kept_views(t, result)
    for view in t.views:
        result.view_rows[view.name] = len(columns[view.name][0]) if view.name in columns else 0
    if columns:
        keys, values = group_values(t.views, columns)
        del columns
        Path(t.sst_dir).mkdir(parents=True, exist_ok=True)
        result.rows = len(keys)
        result.sst_files = _write_ssts(t, keys, values)
    return_memory()
    return result


class RollingSstWriter:
    """Sorted (key, value) rows into SST files of up to SST_ROLL_BYTES each, `<folder>/<prefix>NNN.sst`
    (`digits` wide), checked for the roll after each batch of rows; `finish()` -> the files written."""

    def __init__(self, folder: str | Path, prefix: str, digits: int, compression: str) -> None:
        self.folder, self.prefix, self.digits = Path(folder), prefix, digits
        self.opts = rocks.writer_options(compression)
        self.files: list[SstFile] = []
        self.writer: SstFileWriter | None = None
        self.path, self.first, self.last = "", b"", b""

    def add(self, keys: list[bytes], values: list[bytes]) -> None:
        if not keys:
            return
        if self.writer is None:
            self.path = str(self.folder / f"{self.prefix}{len(self.files):0{self.digits}d}.sst")
            self.writer = SstFileWriter(self.opts)
            self.writer.open(self.path)
            self.first = keys[0]
        for k, v in zip(keys, values, strict=True):
            self.writer[k] = v
        self.last = keys[-1]
        if self.writer.file_size() > SST_ROLL_BYTES:
            self._close()

    def _close(self) -> None:
        assert self.writer is not None
        self.writer.finish()
        self.writer = None
        self.files.append(SstFile(self.path, self.first, self.last, os.path.getsize(self.path),
                                  file_checksum(self.path)))

    def finish(self) -> list[SstFile]:
        if self.writer is not None:
            self._close()
        return self.files


def _write_ssts(t: PartitionTask, keys: pa.Array, values: pa.Array) -> list[SstFile]:
    """Sorted (key, value) rows into SST files of up to SST_ROLL_BYTES each."""
    out = RollingSstWriter(t.sst_dir, f"p{t.index:05d}-", 3, t.compression)
    for start in range(0, len(keys), PUT_ROWS):
        out.add(keys.slice(start, PUT_ROWS).to_pylist(), values.slice(start, PUT_ROWS).to_pylist())
    return out.finish()
