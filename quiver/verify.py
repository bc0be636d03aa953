"""`quiver verify`: a version's two forms hold the same rows (snapshot format 2, snapshot/FORMAT.md).

Two stages, each a set of tasks over `workers` processes, so every stored value is read once:

1. partition: each view's offline Parquet, in chunks of row groups, is cut by key range (the ranges
   split a sample of the keys evenly) into Arrow IPC spill files in a temporary folder, never in the
   root;
2. compare: per key range and storage group, the group's RocksDB is read once in key order over the
   range; each of the group's views' spilled rows are sorted by key and matched to the stored keys;
   every feature is compared column-wise (quiver/verify_columns.py: numpy over the wire bytes, Arrow
   for strings and lists; only a mismatch is decoded, to name it); each stored `found` flag must
   match the view's offline rows exactly, and a stored key that no view holds is named.

Counts close the rest: the keys each group holds against the manifest's group rows, the `found`
flags per view against the manifest's and the offline row counts.

`sample`: N random offline rows per view instead of all of them; the stored values are still all read
and counted, but flags are only checked by their counts.

Opening a RocksDB through rocksdict 0.3.29 rewrites its `rocksdict-config.json` (a file the manifest
leaves out, as the server's opens do); nothing else is written into the root.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from rocksdict import AccessType, Cache, Rdict

from quiver import wire_columns as wc
from quiver.snapshot import Manifest, SnapshotRoot, decode_int64_key, rocks
from quiver.snapshot.integrity import check_version
from quiver.snapshot.manifest import DELETED
from quiver.verify_columns import FloatBits, compare_view, offline_value, online_value, show

__all__ = ["FloatBits", "Mismatch", "VerifyReport", "verify"]

TASK_ROWS = 262144             # offline rows per partition task (whole row groups)
RANGE_BYTES = 128 << 20        # offline bytes (uncompressed) per key range
SHOWN_PER_TASK = 100           # mismatches a task names; the rest are counted
_SIGN = np.uint64(1 << 63)


@dataclass(frozen=True)
class Mismatch:
    view: str
    key: Any
    feature: str        # "" for a whole row (missing online) or a count
    online: Any
    offline: Any
    scope: str = "view"  # "group" for a storage group's keys

    def __str__(self) -> str:
        where = f"{self.scope} {self.view!r}" + ("" if self.key is None else f" key {self.key!r}")
        if self.feature:
            where += f" feature {self.feature!r}"
        return f"{where}: online {show(self.online)}, offline {show(self.offline)}"


@dataclass
class VerifyReport:
    version: str
    compared: dict[str, int] = field(default_factory=dict)   # view -> keys compared
    mismatches: list[Mismatch] = field(default_factory=list)  # those named (at most 100 per task)
    unnamed: int = 0                                          # mismatches found beyond those named

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.unnamed


# ---------------------------------------------------------------------------------------------
# Keys: int64 ids as unsigned 64-bit numbers in stored byte order, string ids as bytes
# ---------------------------------------------------------------------------------------------

def _sortable(key_type: str, col: pa.Array) -> np.ndarray:
    """Offline ids in the stored keys' order: numbers compare as their stored bytes do."""
    if key_type == "int64":
        return col.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64) ^ _SIGN
    return np.array([s.encode("utf-8") for s in col.to_pylist()], dtype=object)


def _stored(key_type: str, keys: list[bytes]) -> np.ndarray:
    if key_type == "int64":
        return np.frombuffer(b"".join(keys), ">u8").astype(np.uint64)
    return np.array(keys, dtype=object)


def _key_bytes(key_type: str, value: Any) -> bytes:
    return int(value).to_bytes(8, "big") if key_type == "int64" else bytes(value)


def _show_key(key_type: str, value: Any) -> Any:
    if key_type == "int64":
        return decode_int64_key(int(value).to_bytes(8, "big"))
    return bytes(value).decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# Per worker process: open databases and manifests
# ---------------------------------------------------------------------------------------------

_OPEN: dict[tuple[str, str, str], Rdict] = {}
_MANIFESTS: dict[tuple[str, str], Manifest] = {}


def _db(root: SnapshotRoot, version: str, group: str, spill: str) -> Rdict:
    """The group's RocksDB, opened read-only once per process; RocksDB's info log goes into the spill
    folder (removed at the end), never into the version."""
    key = (str(root.path), version, group)
    if key not in _OPEN:
        log_dir = Path(spill) / "rocksdb-logs" / str(os.getpid())
        log_dir.mkdir(parents=True, exist_ok=True)
        opts = rocks.reader_options(Cache(64 << 20))
        opts.set_db_log_dir(str(log_dir))
        _OPEN[key] = Rdict(str(root.online_dir(version, group)), opts, column_families={"default": opts},
                           access_type=AccessType.read_only())
    return _OPEN[key]


def _manifest(root: SnapshotRoot, version: str) -> Manifest:
    key = (str(root.path), version)
    if key not in _MANIFESTS:
        _MANIFESTS[key] = Manifest.load(root.manifest_path(version))
    return _MANIFESTS[key]


# ---------------------------------------------------------------------------------------------
# Stage 1: partition the offline rows by key range
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Chunk:
    view: str
    path: str
    row_groups: tuple[int, ...]
    rows: tuple[int, ...] | None = None   # a sample: row numbers within these row groups


_DELTA_KEYS: dict[tuple[str, str, str], pa.Array] = {}


def _delta_keys(root: SnapshotRoot, m: Manifest, view: str) -> pa.Array | None:
    """Every key a view's offline delta changes (snapshot/FORMAT.md "Delta versions"), once per process."""
    paths = _delta_paths(root, m, view)
    if not paths:
        return None
    key = (str(root.path), m.version, view)
    if key not in _DELTA_KEYS:
        _DELTA_KEYS[key] = pa.chunked_array([pq.read_table(p, columns=[m.schema.entity.name]).column(0)
                                             for p in paths]).combine_chunks()
    return _DELTA_KEYS[key]


def _delta_paths(root: SnapshotRoot, m: Manifest, view: str) -> list[str]:
    return [str(root.version_dir(m.version) / p) for p in m.offline_files(view, delta=True)]


def _served(root: SnapshotRoot, m: Manifest, view: str, path: str, table: pa.Table) -> pa.Table:
    """The rows of one offline file the version serves: a base file's but those its delta changes; a delta
    file's but the removed ones."""
    if path in _delta_paths(root, m, view):
        return table.filter(pc.invert(table.column(DELETED))).drop_columns([DELETED])
    changed = _delta_keys(root, m, view)
    if changed is None:
        return table
    return table.filter(pc.invert(pc.is_in(table.column(m.schema.entity.name), value_set=changed)))


def _partition(root_dir: str, version: str, spill: str, bounds: np.ndarray, n: int, chunk: Chunk) -> None:
    root = SnapshotRoot(root_dir)
    m = _manifest(root, version)
    table = pq.ParquetFile(chunk.path).read_row_groups(list(chunk.row_groups))
    if chunk.rows is not None:
        table = table.take(pa.array(chunk.rows, pa.int64()))
    table = _served(root, m, chunk.view, chunk.path, table)
    keys = _sortable(m.schema.entity.key_type, table.column(m.schema.entity.name).combine_chunks())
    ranges = np.searchsorted(bounds, keys, side="right")
    order = np.argsort(ranges, kind="stable")
    cuts = np.searchsorted(ranges[order], np.arange(len(bounds) + 2))
    for r in range(len(bounds) + 1):
        lo, hi = int(cuts[r]), int(cuts[r + 1])
        if lo == hi:
            continue
        folder = Path(spill) / chunk.view / f"{r:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        part = table.take(pa.array(order[lo:hi]))
        with ipc.new_file(folder / f"{n:05d}.arrow", part.schema,
                          options=ipc.IpcWriteOptions(compression="lz4")) as w:
            w.write_table(part)


# ---------------------------------------------------------------------------------------------
# Stage 2: one key range of one group against its views' spilled rows
# ---------------------------------------------------------------------------------------------

@dataclass
class RangeResult:
    group: str
    keys: int = 0
    found: dict[str, int] = field(default_factory=dict)     # view -> stored found flags set
    compared: dict[str, int] = field(default_factory=dict)  # view -> offline rows compared
    mismatches: list[Mismatch] = field(default_factory=list)
    unnamed: int = 0

    def add(self, m: Mismatch) -> None:
        if len(self.mismatches) < SHOWN_PER_TASK:
            self.mismatches.append(m)
        else:
            self.unnamed += 1


def _read_range(db: Rdict, key_type: str, lo: Any, hi: Any) -> tuple[list[bytes], list[bytes]]:
    """The stored (keys, values) from `lo` (None: the first) up to, not including, `hi` (None: the end)."""
    it = db.iter()
    if lo is None:
        it.seek_to_first()
    else:
        it.seek(_key_bytes(key_type, lo))
    stop = None if hi is None else _key_bytes(key_type, hi)
    keys: list[bytes] = []
    values: list[bytes] = []
    while it.valid():
        key = it.key()
        if stop is not None and key >= stop:
            break
        keys.append(key)
        values.append(it.value())
        it.next()
    return keys, values


def _spilled(spill: str, view: str, r: int) -> pa.Table | None:
    files = sorted((Path(spill) / view / f"{r:05d}").glob("*.arrow"))
    if not files:
        return None
    return pa.concat_tables(ipc.open_file(f).read_all() for f in files)


def _compare(root_dir: str, version: str, spill: str, bounds: np.ndarray, sampled: bool, group: str,
             r: int) -> RangeResult:
    root = SnapshotRoot(root_dir)
    m = _manifest(root, version)
    entity, key_type = m.schema.entity.name, m.schema.entity.key_type
    members = m.groups[group].views
    result = RangeResult(group, found={v: 0 for v in members}, compared={v: 0 for v in members})
    lo = bounds[r - 1] if r > 0 else None
    hi = bounds[r] if r < len(bounds) else None
    keys, values = _read_range(_db(root, version, group, spill), key_type, lo, hi)
    stored = _stored(key_type, keys)
    buf, starts, ends, _ = wc.pack(values)  # type: ignore[arg-type]
    del values
    rows = wc.scan(buf, starts, ends)
    fstart, flen = rows.span(2)
    found = np.stack([np.where(flen > k, buf[np.where(fstart >= 0, fstart + k, 0)], 0) == 1
                      for k in range(len(members))], axis=1) if len(keys) else np.zeros((0, len(members)), bool)
    found &= ~rows.bad[:, None]
    result.keys = len(keys)
    for k in np.flatnonzero(rows.bad):
        result.add(Mismatch(group, _show_key(key_type, stored[k]), "", "<unparseable stored value>", "-", "group"))
    for k in np.flatnonzero(~found.any(axis=1) & ~rows.bad):
        result.add(Mismatch(group, _show_key(key_type, stored[k]), "", "present, in none of its views", "absent",
                            "group"))
    for j, name in enumerate(members):
        result.found[name] = int(found[:, j].sum())
        view = m.schema.view(name)
        table = _spilled(spill, name, r)
        member = np.zeros(len(keys), bool)
        if table is not None:
            offline = _sortable(key_type, table.column(entity).combine_chunks())
            order = np.argsort(offline, kind="stable")
            offline, table = offline[order], table.take(pa.array(order))
            result.compared[name] = len(offline)
            for d in np.flatnonzero(offline[1:] == offline[:-1]):
                result.add(Mismatch(name, _show_key(key_type, offline[d]), "", "-", "a duplicate key"))
            at = np.minimum(np.searchsorted(stored, offline), max(len(keys) - 1, 0))
            hit = (at < len(keys)) & (stored[at] == offline) if len(keys) else np.zeros(len(offline), bool)
            member[at[hit]] = True
            ok = hit & found[at, j] if len(keys) else hit
            for gone in np.flatnonzero(~ok):
                result.add(Mismatch(name, _show_key(key_type, offline[gone]), "", "missing", "present"))
            sel = np.flatnonzero(ok)
            vstart, vlen = rows.span(1, j)
            part = table if len(sel) == len(offline) else table.take(pa.array(sel))
            s = vstart[at[sel]]
            for i, feature in compare_view(view, part, buf, s, s + vlen[at[sel]]):
                key = _show_key(key_type, offline[sel[i]])
                if feature.startswith("<"):
                    result.add(Mismatch(name, key, "", feature, "present"))
                    continue
                raw = buf[s[i]:s[i] + vlen[at[sel[i]]]].tobytes()
                result.add(Mismatch(name, key, feature, online_value(view, raw, feature),
                                    offline_value(view.feature(feature).type, part.column(feature).combine_chunks(),
                                                  i)))
        if not sampled:
            for k in np.flatnonzero(found[:, j] & ~member):
                result.add(Mismatch(name, _show_key(key_type, stored[k]), "", "present", "missing"))
    return result


# ---------------------------------------------------------------------------------------------
# The plan and the verdict
# ---------------------------------------------------------------------------------------------

def _chunks(root: SnapshotRoot, m: Manifest, sample: int | None, seed: int
            ) -> tuple[list[Chunk], dict[str, int], int]:
    """Partition tasks of whole row groups; the offline rows per view; their uncompressed bytes."""
    chunks: list[Chunk] = []
    offline_rows: dict[str, int] = {}
    size = 0
    rng = np.random.default_rng(seed)
    for view in m.schema.views:
        paths = sorted(str(root.version_dir(m.version) / f.path) for f in m.files
                       if f.path.startswith(f"offline/{view.name}/") and f.path.endswith(".parquet"))
        spans: list[tuple[str, tuple[int, ...], int]] = []
        for path in paths:
            meta = pq.ParquetFile(path).metadata
            group: list[int] = []
            rows = 0
            for rg in range(meta.num_row_groups):
                group.append(rg)
                rows += meta.row_group(rg).num_rows
                size += meta.row_group(rg).total_byte_size
                if rows >= TASK_ROWS or rg == meta.num_row_groups - 1:
                    spans.append((path, tuple(group), rows))
                    group, rows = [], 0
        total = sum(n for _, _, n in spans)
        offline_rows[view.name] = total
        changed = _delta_keys(root, m, view.name)
        if changed is not None:   # the rows served: the base's but those changed, the delta's but those removed
            delta = _delta_paths(root, m, view.name)
            removed = sum(int(pc.sum(pq.read_table(p, columns=[DELETED]).column(0)).as_py() or 0) for p in delta)
            replaced = sum(int(pc.sum(pc.is_in(pq.read_table(p, columns=[m.schema.entity.name]).column(0),
                                               value_set=changed)).as_py() or 0) for p in paths if p not in delta)
            offline_rows[view.name] = total - removed - replaced
        picks = None if sample is None or sample >= total else np.sort(rng.choice(total, sample, replace=False))
        base = 0
        for path, rgs, n in spans:
            if picks is None:
                chunks.append(Chunk(view.name, path, rgs))
            else:
                mine = picks[(picks >= base) & (picks < base + n)] - base
                if len(mine):
                    chunks.append(Chunk(view.name, path, rgs, tuple(int(r) for r in mine)))
            base += n
    return chunks, offline_rows, size


def _bounds(m: Manifest, chunks: list[Chunk], ranges: int) -> np.ndarray:
    """ranges - 1 keys that split a sample of every view's keys evenly."""
    samples = []
    for c in chunks:
        keys = pq.ParquetFile(c.path).read_row_groups(list(c.row_groups), columns=[m.schema.entity.name]).column(0)
        samples.append(_sortable(m.schema.entity.key_type, keys.combine_chunks())[::16])
    keys = np.sort(np.concatenate(samples)) if samples else np.zeros(0, np.uint64)
    if ranges <= 1 or not len(keys):
        return keys[:0]
    return np.unique(keys[(np.arange(1, ranges) * len(keys)) // ranges])


def verify(root_dir: str | Path, version: str | None = None, sample: int | None = None,
           seed: int = 0, workers: int | None = None, spill_dir: str | None = None) -> VerifyReport:
    """Compares both forms of `version` (default: CURRENT); `sample`: N random offline rows per view;
    `workers`: processes (default: one per CPU); `spill_dir`: where the partitioned offline rows go
    (default: a temporary folder)."""
    root = SnapshotRoot(root_dir)
    version = version or root.current()
    if version is None:
        raise FileNotFoundError(f"{root.path}: no CURRENT version; name one with --version")
    m = check_version(root, version, "none")  # its groups must hold its views, or the ranges below mean nothing
    vdir = root.version_dir(version)
    absent = [f.path for f in m.files if f.path.startswith("offline/") and not (vdir / f.path).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{vdir}: no offline form here ({len(absent)} file(s) missing, e.g. {absent[0]}): a root synced "
            f"with `quiver sync --online-only` holds only what the server reads; verify where the version "
            f"was loaded")
    workers = workers or os.cpu_count() or 1
    chunks, offline_rows, size = _chunks(root, m, sample, seed)
    bounds = _bounds(m, chunks, max(2 * workers, math.ceil(size / RANGE_BYTES)))
    report = VerifyReport(version, {v: 0 for v in m.schema.view_names})
    found = {v: 0 for v in m.schema.view_names}
    keys = {g: 0 for g in m.groups}
    spill = tempfile.mkdtemp(prefix="quiver-verify-", dir=spill_dir)
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(partial(_partition, str(root.path), version, spill, bounds), range(len(chunks)), chunks))
            tasks = [(g, r) for r in range(len(bounds) + 1) for g in m.groups]
            compare = partial(_compare, str(root.path), version, spill, bounds, sample is not None)
            for res in pool.map(compare, [g for g, _ in tasks], [r for _, r in tasks]):
                keys[res.group] += res.keys
                for name, n in res.found.items():
                    found[name] += n
                for name, n in res.compared.items():
                    report.compared[name] += n
                report.mismatches += res.mismatches
                report.unnamed += res.unnamed
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    for view in m.schema.views:
        stated = m.views[view.name].rows
        if not offline_rows[view.name] == stated == found[view.name]:
            report.mismatches.append(Mismatch(view.name, None, "", f"{found[view.name]} rows",
                                              f"{offline_rows[view.name]} rows (manifest: {stated})"))
    for g, stats in m.groups.items():
        if keys[g] != stats.rows:
            report.mismatches.append(Mismatch(g, None, "", f"{keys[g]} keys", f"manifest: {stats.rows} keys",
                                              scope="group"))
    return report
