"""`quiver verify`: a version's two forms hold the same rows.

For every view: the online RocksDB (its ViewRows cut out of its storage group's stored values, decoded by the
manifest's schema) against the offline
Parquet, key by key and feature by feature, either fully or on a random sample of N offline keys per view;
plus the row counts (manifest, offline, online), which is what catches a key present online only.
Floats compare by their bits, so NaN equals NaN when the bits match and a changed NaN payload is a mismatch:
stored float bits are read from the wire bytes, never through a Python float (which would quieten a
signalling NaN).
"""

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from rocksdict import AccessType, Options, Rdict

from quiver.snapshot import Manifest, SnapshotRoot, ViewDef, encode_int64_keys
from quiver.snapshot.values import varint_at as _varint
from quiver.snapshot.values import view_rows
from quiver.v1 import quiver_pb2 as pb

__all__ = ["Mismatch", "VerifyReport", "verify"]

BATCH = 4096
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

    def __str__(self) -> str:
        where = f"view {self.view!r}" + ("" if self.key is None else f" key {self.key!r}")
        if self.feature:
            where += f" feature {self.feature!r}"
        return f"{where}: online {_show(self.online)}, offline {_show(self.offline)}"


@dataclass
class VerifyReport:
    version: str
    compared: dict[str, int] = field(default_factory=dict)   # view -> keys compared
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _show(v: Any) -> str:
    if isinstance(v, FloatBits):
        return str(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return repr(v)


# ---------------------------------------------------------------------------------------------
# Canonical values: one Python value per (row, feature), floats as FloatBits, None for null
# ---------------------------------------------------------------------------------------------

def _bits(width: int, raw: np.ndarray) -> list[FloatBits]:
    return [FloatBits(width, int(b)) for b in raw]


def _offline_column(ftype: str, col: pa.Array) -> list[Any]:
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if ftype in ("float32", "float64"):
        width = 32 if ftype == "float32" else 64
        raw = col.fill_null(pa.scalar(0, col.type)).to_numpy(zero_copy_only=False).view(f"<u{width // 8}")
        return [b if ok else None for b, ok in zip(_bits(width, raw), valid, strict=True)]
    if ftype == "list<float32>":
        out: list[Any] = []
        for i, ok in enumerate(valid):
            bits = col[i].values.to_numpy(zero_copy_only=False).view("<u4") if ok else None
            out.append(None if bits is None else tuple(_bits(32, bits)))
        return out
    if ftype == "list<int64>":
        return [None if v is None else tuple(v) for v in col.to_pylist()]
    return col.to_pylist()


def _wire(buf: bytes, wanted: tuple[int, ...]) -> dict[int, list[bytes]]:
    """Payloads of the wanted fields (packed or not), in order."""
    out: dict[int, list[bytes]] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        fno, wt = tag >> 3, tag & 7
        if wt == 0:
            _, pos = _varint(buf, pos)
            continue
        if wt == 2:
            size, pos = _varint(buf, pos)
        elif wt in (1, 5):
            size = 8 if wt == 1 else 4
        else:
            raise ValueError(f"wire type {wt} in a stored ViewRow")
        if fno in wanted:
            out.setdefault(fno, []).append(buf[pos:pos + size])
        pos += size
    return out


def _online_row(view: ViewDef, raw: bytes) -> dict[str, Any]:
    row = pb.ViewRow.FromString(raw)
    wire = _wire(raw, (5, 6, 9))
    f32 = np.frombuffer(b"".join(wire.get(5, [])), "<u4")
    f64 = np.frombuffer(b"".join(wire.get(6, [])), "<u8")
    lists = [np.frombuffer(b"".join(_wire(m, (1,)).get(1, [])), "<u4") for m in wire.get(9, [])]
    out: dict[str, Any] = {}
    for pos, (f, g, i) in enumerate(view.layout()):
        if pos // 8 < len(row.nulls) and row.nulls[pos // 8] >> (pos % 8) & 1:
            out[f.name] = None
            continue
        try:
            if g == 5:
                out[f.name] = FloatBits(32, int(f32[i]))
            elif g == 6:
                out[f.name] = FloatBits(64, int(f64[i]))
            elif g == 9:
                out[f.name] = tuple(_bits(32, lists[i]))
            elif g == 10:
                out[f.name] = tuple(row.int64_lists[i].values)
            else:
                out[f.name] = getattr(row, _GROUPS[g])[i]
        except IndexError:
            out[f.name] = "<absent from the stored row>"
    return out


# ---------------------------------------------------------------------------------------------
# Comparing one view
# ---------------------------------------------------------------------------------------------

def _encode(key_type: str, keys: list[Any]) -> list[bytes]:
    return encode_int64_keys(keys) if key_type == "int64" else [k.encode("utf-8") for k in keys]


def _online_count(db: Rdict, views: int, index: int) -> int:
    """Entities the group's stored values mark as found in view `index`."""
    n = 0
    for value in db.values():
        n += value[len(value) - views + index]  # type: ignore[index]
    return n


def _batches(dataset: ds.Dataset, entity: str, sample: int | None, seed: int) -> Iterator[pa.RecordBatch]:
    if sample is None:
        yield from dataset.to_batches(batch_size=BATCH)
        return
    keys = dataset.to_table(columns=[entity]).column(entity)
    if len(keys) > sample:
        picks = np.random.default_rng(seed).choice(len(keys), sample, replace=False)
        keys = keys.take(pa.array(np.sort(picks)))
    yield from dataset.to_batches(filter=ds.field(entity).isin(keys), batch_size=BATCH)


def _verify_view(root: SnapshotRoot, m: Manifest, view: ViewDef, sample: int | None, seed: int,
                 report: VerifyReport) -> None:
    entity, key_type = m.schema.entity.name, m.schema.entity.key_type
    paths = sorted(str(root.version_dir(m.version) / f.path) for f in m.files
                   if f.path.startswith(f"offline/{view.name}/") and f.path.endswith(".parquet"))
    dataset = ds.dataset(paths, format="parquet")
    bad = report.mismatches
    group = m.groups[view.group]
    width, index = len(group.views), group.views.index(view.name)
    db = Rdict(str(root.online_dir(m.version, view.group)), Options(raw_mode=True),
               access_type=AccessType.read_only())
    try:
        offline_rows = dataset.count_rows()
        online_rows = _online_count(db, width, index)
        stated = m.views[view.name].rows
        if not offline_rows == online_rows == stated:
            bad.append(Mismatch(view.name, None, "", f"{online_rows} rows",
                                f"{offline_rows} rows (manifest: {stated})"))
        distinct = dataset.to_table(columns=[entity]).column(entity).unique()
        if len(distinct) != offline_rows:
            bad.append(Mismatch(view.name, None, "", "-", f"{offline_rows - len(distinct)} duplicate key(s)"))
        compared = 0
        for batch in _batches(dataset, entity, sample, seed):
            keys = batch.column(entity).to_pylist()
            values: list[bytes | None] = db.get(list[Any](_encode(key_type, keys))) or []
            stored = [None if v is None else view_rows(v, width)[index] for v in values]
            offline = {f.name: _offline_column(f.type, batch.column(f.name)) for f in view.features}
            for i, (k, raw) in enumerate(zip(keys, stored, strict=True)):
                if raw is None:
                    bad.append(Mismatch(view.name, k, "", "missing", "present"))
                    continue
                online = _online_row(view, raw)
                for f in view.features:
                    if online[f.name] != offline[f.name][i]:
                        bad.append(Mismatch(view.name, k, f.name, online[f.name], offline[f.name][i]))
            compared += len(keys)
        report.compared[view.name] = compared
    finally:
        db.close()


def verify(root_dir: str | Path, version: str | None = None, sample: int | None = None,
           seed: int = 0) -> VerifyReport:
    """Compares both forms of `version` (default: CURRENT); `sample`: N random offline keys per view."""
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
    report = VerifyReport(version)
    for view in m.schema.views:
        _verify_view(root, m, view, sample, seed, report)
    return report
