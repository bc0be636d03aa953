"""`quiver verify`: a version's two forms hold the same rows (snapshot format 2, snapshot/FORMAT.md).

The offline Parquet of each view is read in chunks of row groups, one chunk per task, over worker
processes. A task looks its keys up in the view's storage group (one batched multi-get per batch of
rows), cuts the view's ViewRow out of each stored EntityRow and compares every feature column-wise:
the stored values are scanned with numpy (quiver/wire_columns.py), never decoded row by row; only a
mismatch is decoded, to name it. Floats compare by their bits, so NaN equals NaN when the bits match
and a changed NaN payload is a mismatch.

Counts close the gaps a lookup by offline key cannot see: each group's RocksDB is also scanned in key
order (one task per run of its SST files' key ranges), counting its keys and each view's `found`
flags, which must equal the manifest's group rows and each view's offline and manifest rows (a key or
a flag online only is counted once too many), and finding keys that no view holds.

`sample`: N random offline rows per view instead of all of them; the counts are still taken in full.
"""

from __future__ import annotations

import os
import struct
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rocksdict import AccessType, Cache, Rdict

from quiver import wire_columns as wc
from quiver.snapshot import Manifest, SnapshotRoot, ViewDef, decode_int64_key, rocks
from quiver.v1 import quiver_pb2 as pb

__all__ = ["Mismatch", "VerifyReport", "verify"]

BATCH = 16384             # rows per multi-get and column comparison
TASK_ROWS = 131072        # offline rows per task (whole row groups)
SHOWN_PER_TASK = 100      # mismatches a task names; the rest are counted
_FIXED = {3: 4, 4: 8, 5: 4, 6: 8, 2: 1}   # ViewRow field -> bytes per value (bools: one-byte varints)
_LISTS = {9: 4, 10: 8}                     # list field -> bytes per element
_GROUPS = {2: "bools", 3: "int32s", 4: "int64s", 7: "strings", 8: "bytes_values"}


class FloatBits(NamedTuple):
    """A float by its bits: equal when the bits are equal (NaN payloads included)."""

    width: int   # 32 or 64
    bits: int

    def __str__(self) -> str:
        fmt, ifmt = ("<f", "<I") if self.width == 32 else ("<d", "<Q")
        value = struct.unpack(fmt, struct.pack(ifmt, self.bits))[0]
        return f"{value!r} (0x{self.bits:0{self.width // 4}x})" if value != value else repr(value)


@dataclass(frozen=True)
class Mismatch:
    view: str
    key: Any
    feature: str        # "" for a whole row (missing online) or a count
    online: Any
    offline: Any
    scope: str = "view"  # "group" for a storage group's key count

    def __str__(self) -> str:
        where = f"{self.scope} {self.view!r}" + ("" if self.key is None else f" key {self.key!r}")
        if self.feature:
            where += f" feature {self.feature!r}"
        return f"{where}: online {_show(self.online)}, offline {_show(self.offline)}"


@dataclass
class VerifyReport:
    version: str
    compared: dict[str, int] = field(default_factory=dict)   # view -> keys compared
    mismatches: list[Mismatch] = field(default_factory=list)  # those named (at most 100 per task)
    unnamed: int = 0                                          # mismatches found beyond those named

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.unnamed


def _show(v: Any) -> str:
    if isinstance(v, FloatBits):
        return str(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return repr(v)


# ---------------------------------------------------------------------------------------------
# Naming one mismatch: one row decoded, both sides, floats as FloatBits, None for null
# ---------------------------------------------------------------------------------------------

def _offline_value(ftype: str, col: pa.Array, i: int) -> Any:
    v = col[i]
    if not v.is_valid:
        return None
    if ftype in ("float32", "float64"):
        width = 32 if ftype == "float32" else 64
        return FloatBits(width, int(col.slice(i, 1).to_numpy(zero_copy_only=False).view(f"<u{width // 8}")[0]))
    if ftype == "list<float32>":
        return tuple(FloatBits(32, int(b)) for b in v.values.to_numpy(zero_copy_only=False).view("<u4"))
    if ftype == "list<int64>":
        return tuple(v.as_py())
    return v.as_py()


def _online_value(view: ViewDef, raw: bytes, feature: str) -> Any:
    """One feature of one stored ViewRow: floats by their bits (wire_columns), the rest by the
    protobuf runtime."""
    try:
        row = pb.ViewRow.FromString(raw)
    except Exception:
        return "<unparseable stored row>"
    buf, starts, ends, _ = wc.pack([raw])
    fields = wc.scan(buf, starts, ends)
    pos, (f, g, i) = next((p, x) for p, x in enumerate(view.layout()) if x[0].name == feature)
    if pos // 8 < len(row.nulls) and row.nulls[pos // 8] >> (pos % 8) & 1:
        return None
    absent = "<absent from the stored row>"
    if g in (5, 6):
        values, present = wc.fixed(buf, *fields.span(g), i, _FIXED[g])
        return FloatBits(_FIXED[g] * 8, int(values[0])) if present[0] else absent
    if g == 9:
        start, length = fields.span(9, i)
        if start[0] < 0:
            return absent
        inner = wc.scan(buf, start, start + length)
        s, n = inner.span(1)
        bits = np.frombuffer(buf[s[0]:s[0] + n[0]].tobytes() if s[0] >= 0 else b"", "<u4")
        return tuple(FloatBits(32, int(b)) for b in bits)
    try:
        return tuple(row.int64_lists[i].values) if g == 10 else getattr(row, _GROUPS[g])[i]
    except IndexError:
        return absent


# ---------------------------------------------------------------------------------------------
# One task: a chunk of one view's offline Parquet against its storage group
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    view: str
    group: str
    path: str
    row_groups: tuple[int, ...]
    rows: tuple[int, ...] | None = None   # a sample: row numbers within these row groups


@dataclass
class TaskResult:
    view: str
    group: str
    compared: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    unnamed: int = 0

    def add(self, m: Mismatch) -> None:
        if len(self.mismatches) < SHOWN_PER_TASK:
            self.mismatches.append(m)
        else:
            self.unnamed += 1


_OPEN: dict[tuple[str, str, str], Rdict] = {}
_MANIFESTS: dict[tuple[str, str], Manifest] = {}
_LOG_DIR = ""


def _db(root: SnapshotRoot, version: str, group: str) -> Rdict:
    """The group's RocksDB, opened read-only once per worker process; RocksDB's info log goes to a
    temporary folder, never into the version."""
    global _LOG_DIR
    key = (str(root.path), version, group)
    if key not in _OPEN:
        _LOG_DIR = _LOG_DIR or tempfile.mkdtemp(prefix=f"quiver-verify-log-{os.getpid()}-")
        opts = rocks.reader_options(Cache(64 << 20))
        opts.set_db_log_dir(_LOG_DIR)
        _OPEN[key] = Rdict(str(root.online_dir(version, group)), opts, column_families={"default": opts},
                           access_type=AccessType.read_only())
    return _OPEN[key]


def _manifest(root: SnapshotRoot, version: str) -> Manifest:
    key = (str(root.path), version)
    if key not in _MANIFESTS:
        _MANIFESTS[key] = Manifest.load(root.manifest_path(version))
    return _MANIFESTS[key]


def _keys(key_type: str, col: pa.Array) -> list[bytes]:
    if key_type == "int64":
        flipped = col.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)
        raw = flipped.astype(">u8").tobytes()
        return [raw[i:i + 8] for i in range(0, len(raw), 8)]
    return [s.encode("utf-8") for s in col.to_pylist()]


def _offline_binary(ftype: str, col: pa.Array) -> pa.Array:
    """A column as one binary value per row, in the stored bytes' form: strings as UTF-8, lists as
    their elements' little-endian bytes."""
    if ftype in ("string", "bytes"):
        return pc.cast(col, pa.large_binary())
    width = _LISTS[9 if ftype == "list<float32>" else 10]
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    data = values.view(f"<u{width}").astype(f"<u{width}").tobytes()
    offsets = np.zeros(len(col) + 1, np.int64)
    np.cumsum(lengths * width, out=offsets[1:])
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(col),
                                            [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])


def _offline_bits(ftype: str, col: pa.Array) -> np.ndarray:
    """A fixed-width column as unsigned ints of the stored width (nulls as 0)."""
    filled = pc.fill_null(col, False if ftype == "bool" else 0).to_numpy(zero_copy_only=False)
    if ftype == "bool":
        return filled.astype(np.uint8)
    width = {"int32": 4, "int64": 8, "float32": 4, "float64": 8}[ftype]
    return filled.astype(f"<{'i' if ftype.startswith('int') else 'f'}{width}").view(f"<u{width}")


def _compare_view(view: ViewDef, table: pa.Table, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                  rows: np.ndarray) -> list[tuple[int, str]]:
    """(row, feature) of every mismatch among the table's `rows`, whose ViewRows lie at buf[starts:ends].
    Each packed field and the null bitmap are gathered once for all of their features."""
    fields = wc.scan(buf, starts[rows], ends[rows])
    out: list[tuple[int, str]] = [(int(rows[r]), "<unparseable stored row>") for r in np.flatnonzero(fields.bad)]
    layout = view.layout()
    nulls = np.unpackbits(wc.matrix(buf, *fields.span(1), (len(layout) + 7) // 8), axis=1, bitorder="little")
    counts: dict[int, int] = {}
    for _, g, _ in layout:
        counts[g] = counts.get(g, 0) + 1
    packed = {}
    for g, n in counts.items():
        if g in _FIXED:
            start, length = fields.span(g)
            width = _FIXED[g]
            packed[g] = (wc.matrix(buf, start, length, n * width).view(f"<u{width}"),
                         np.where(start >= 0, length, 0) // width)
    taken = None if len(rows) == table.num_rows else pa.array(rows)
    for pos, (f, g, i) in enumerate(layout):
        col = table.column(f.name).combine_chunks()
        col = col if taken is None else col.take(taken)
        offline_null = col.is_null().to_numpy(zero_copy_only=False)
        online_null = nulls[:, pos].astype(bool)
        if g in packed:
            values, slots = packed[g]
            same = (slots > i) & (values[:, i] == _offline_bits(f.type, col))
        else:
            start, length = fields.span(g, i)
            present = start >= 0
            if g in _LISTS:  # a Float32List/Int64List message: its packed field 1 holds the elements
                inner = wc.scan(buf, np.where(present, start, 0), np.where(present, start + length, 0))
                start, length = inner.span(1)
                present &= ~inner.bad
            online = wc.binary(buf, start, length)
            same = present & pc.fill_null(pc.equal(online, _offline_binary(f.type, col)), False).to_numpy(
                zero_copy_only=False)
        wrong = (online_null != offline_null) | (~offline_null & ~same)
        out += [(int(rows[r]), f.name) for r in np.flatnonzero(wrong & ~fields.bad)]
    return out


def _check(root_dir: str, version: str, task: Task) -> TaskResult:
    root = SnapshotRoot(root_dir)
    m = _manifest(root, version)
    view = m.schema.view(task.view)
    members = m.groups[task.group].views
    j = members.index(task.view)
    entity, key_type = m.schema.entity.name, m.schema.entity.key_type
    db = _db(root, version, task.group)
    table = pq.ParquetFile(task.path).read_row_groups(list(task.row_groups))
    if task.rows is not None:
        table = table.take(pa.array(task.rows, pa.int64()))
    result = TaskResult(task.view, task.group)
    for offset in range(0, table.num_rows, BATCH):
        part = table.slice(offset, BATCH)
        ids = part.column(entity).combine_chunks()
        buf, starts, ends, missing = wc.pack(db.get(_keys(key_type, ids)))  # type: ignore[arg-type]
        rows = wc.scan(buf, starts, ends)
        vstart, vlen = rows.span(1, j)
        fstart, flen = rows.span(2)
        found = np.stack([np.where(flen > k, buf[np.where(fstart >= 0, fstart + k, 0)], 0) == 1
                          for k in range(len(members))], axis=1)
        ok = ~missing & found[:, j] & (vstart >= 0) & ~rows.bad
        for gone in np.flatnonzero(~ok):
            result.add(Mismatch(task.view, ids[int(gone)].as_py(), "", "missing", "present"))
        for r, feature in _compare_view(view, part, buf, vstart, vstart + vlen, np.flatnonzero(ok)):
            key = ids[r].as_py()
            if feature.startswith("<"):
                result.add(Mismatch(task.view, key, "", feature, "present"))
                continue
            raw = buf[vstart[r]:vstart[r] + vlen[r]].tobytes()
            col = part.column(feature).combine_chunks()
            result.add(Mismatch(task.view, key, feature, _online_value(view, raw, feature),
                                _offline_value(view.feature(feature).type, col, r)))
        result.compared += part.num_rows
    return result


@dataclass
class ScanResult:
    group: str
    keys: int = 0
    found: list[int] = field(default_factory=list)   # per group view: entities whose flag is set
    in_no_view: list[Any] = field(default_factory=list)  # keys whose flags are all 0 (a few named)
    in_no_view_count: int = 0


def _scan(root_dir: str, version: str, group: str, first: bytes, last: bytes) -> ScanResult:
    """Counts the keys of the group's RocksDB from `first` to `last` (inclusive) and their found flags
    (each value's last `views` bytes)."""
    root = SnapshotRoot(root_dir)
    m = _manifest(root, version)
    views = len(m.groups[group].views)
    result = ScanResult(group, found=[0] * views)
    it = _db(root, version, group).iter()
    it.seek(first)
    while True:
        keys: list[bytes] = []
        flags: list[bytes] = []
        while it.valid() and len(keys) < BATCH:
            key = it.key()
            if key > last:
                break
            keys.append(key)
            flags.append(it.value()[-views:])
            it.next()
        if not keys:
            return result
        found = np.frombuffer(b"".join(flags), np.uint8).reshape(len(keys), views) == 1
        result.keys += len(keys)
        for k, n in enumerate(found.sum(axis=0)):
            result.found[k] += int(n)
        empty = np.flatnonzero(~found.any(axis=1))
        result.in_no_view_count += len(empty)
        result.in_no_view += [_decode_key(m.schema.entity.key_type, keys[r]) for r in empty[:SHOWN_PER_TASK]]


def _decode_key(key_type: str, key: bytes) -> Any:
    return decode_int64_key(key) if key_type == "int64" else key.decode("utf-8", "replace")


def _scan_ranges(root: SnapshotRoot, version: str, group: str) -> list[tuple[bytes, bytes]]:
    """The group's key space as runs of its SST files' key ranges, overlapping ones merged."""
    spans = sorted((bytes(f["start_key"]), bytes(f["end_key"])) for f in _db(root, version, group).live_files())
    merged: list[tuple[bytes, bytes]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


# ---------------------------------------------------------------------------------------------
# The plan and the verdict
# ---------------------------------------------------------------------------------------------

def _plan(root: SnapshotRoot, m: Manifest, sample: int | None, seed: int) -> tuple[list[Task], dict[str, int]]:
    """Tasks of whole row groups, about TASK_ROWS rows each; and the offline rows per view."""
    tasks: list[Task] = []
    offline_rows: dict[str, int] = {}
    rng = np.random.default_rng(seed)
    for view in m.schema.views:
        paths = sorted(str(root.version_dir(m.version) / f.path) for f in m.files
                       if f.path.startswith(f"offline/{view.name}/") and f.path.endswith(".parquet"))
        chunks: list[tuple[str, tuple[int, ...], int]] = []
        for path in paths:
            meta = pq.ParquetFile(path).metadata
            group: list[int] = []
            rows = 0
            for rg in range(meta.num_row_groups):
                group.append(rg)
                rows += meta.row_group(rg).num_rows
                if rows >= TASK_ROWS or rg == meta.num_row_groups - 1:
                    chunks.append((path, tuple(group), rows))
                    group, rows = [], 0
        total = sum(n for _, _, n in chunks)
        offline_rows[view.name] = total
        picks = None if sample is None or sample >= total else np.sort(rng.choice(total, sample, replace=False))
        base = 0
        for path, rgs, n in chunks:
            if picks is None:
                tasks.append(Task(view.name, view.group, path, rgs))
            else:
                mine = picks[(picks >= base) & (picks < base + n)] - base
                if len(mine):
                    tasks.append(Task(view.name, view.group, path, rgs, tuple(int(r) for r in mine)))
            base += n
    return tasks, offline_rows


def verify(root_dir: str | Path, version: str | None = None, sample: int | None = None,
           seed: int = 0, workers: int | None = None) -> VerifyReport:
    """Compares both forms of `version` (default: CURRENT); `sample`: N random offline rows per view;
    `workers`: processes (default: one per CPU). Reads the version, never writes into it."""
    root = SnapshotRoot(root_dir)
    version = version or root.current()
    if version is None:
        raise FileNotFoundError(f"{root.path}: no CURRENT version; name one with --version")
    m = Manifest.load(root.manifest_path(version))
    vdir = root.version_dir(version)
    absent = [f.path for f in m.files if f.path.startswith("offline/") and not (vdir / f.path).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{vdir}: no offline form here ({len(absent)} file(s) missing, e.g. {absent[0]}): a root synced "
            f"with `quiver sync --online-only` holds only what the server reads; verify where the version "
            f"was loaded")
    tasks, offline_rows = _plan(root, m, sample, seed)
    report = VerifyReport(version, {v: 0 for v in m.schema.view_names})
    found = {v: 0 for v in m.schema.view_names}
    keys = {g: 0 for g in m.groups}
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        scans = [pool.submit(_scan, str(root.path), version, g, lo, hi)
                 for g in m.groups for lo, hi in _scan_ranges(root, version, g)]
        for r in pool.map(_check, [str(root.path)] * len(tasks), [version] * len(tasks), tasks):
            report.compared[r.view] += r.compared
            report.mismatches += r.mismatches
            report.unnamed += r.unnamed
        for s in (f.result() for f in scans):
            keys[s.group] += s.keys
            for name, n in zip(m.groups[s.group].views, s.found, strict=True):
                found[name] += n
            report.mismatches += [Mismatch(s.group, k, "", "present, in none of its views", "absent", "group")
                                  for k in s.in_no_view]
            report.unnamed += s.in_no_view_count - len(s.in_no_view)
    for view in m.schema.views:
        stated = m.views[view.name].rows
        if not offline_rows[view.name] == stated == found[view.name]:
            report.mismatches.append(Mismatch(view.name, None, "", f"{found[view.name]} rows",
                                              f"{offline_rows[view.name]} rows (manifest: {stated})"))
    for g, stats in m.groups.items():
        if keys[g] != stats.rows:
            report.mismatches.append(Mismatch(g, None, "", f"{keys[g]} keys", f"manifest: {stats.rows} keys",
                                              scope="group"))
    _close()
    return report


def _close() -> None:
    for db in _OPEN.values():
        db.close()
    _OPEN.clear()
