"""Shared fixtures: a small data set with every feature type and its edge cases (real features.yaml and
Parquet in tmp_path), and readers of both stored forms that compare floats by their bits."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from rocksdict import AccessType, Options, Rdict

from quiver.snapshot import FeatureSet, Manifest, SnapshotRoot, ViewDef, decode_int64_key
from quiver.v1 import quiver_pb2

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
# Bit patterns that a float conversion anywhere on the way would change: signalling NaN, NaN payloads,
# negative NaN, infinities, -0.0, the smallest subnormal.
F32_BITS = [0x7F800001, 0x7FC00001, 0xFFC12345, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001, 0x7F7FFFFF]
F64_BITS = [0x7FF0000000000001, 0x7FF8000000000123, 0xFFF8000000000000, 0x7FF0000000000000,
            0xFFF0000000000000, 0x8000000000000000, 0x0000000000000001, 0x7FEFFFFFFFFFFFFF]
STRINGS = ["", "a", "héllo", "日本語", "Ελλάδα", "emoji 🧭", "x" * 300, "nul\x00inside"]
BYTES = [b"", b"\x00", b"\xff\xfe\x00", bytes(range(256))]
EMBEDDING = 3

# (feature definition, kind of generated values): every type, each once without and once with a default
FEATURES: list[dict[str, Any]] = [
    {"name": "b", "type": "bool"},
    {"name": "b_def", "type": "bool", "default": True},
    {"name": "i32", "type": "int32"},
    {"name": "i32_def", "type": "int32", "default": I32_MIN},
    {"name": "i64", "type": "int64"},
    {"name": "i64_def", "type": "int64", "default": I64_MAX},
    {"name": "f32", "type": "float32"},
    {"name": "f32_def", "type": "float32", "default": 1.5},
    {"name": "f64", "type": "float64"},
    {"name": "f64_def", "type": "float64", "default": float("-inf")},
    {"name": "s", "type": "string"},
    {"name": "s_def", "type": "string", "default": "n/ä", "source_column": "s_src"},
    {"name": "by", "type": "bytes"},
    {"name": "by_def", "type": "bytes", "default": "zz"},
    {"name": "emb", "type": "list<float32>", "length": EMBEDDING},
    {"name": "emb_def", "type": "list<float32>", "length": 2, "default": [0.5, -1.0]},
    {"name": "ids", "type": "list<int64>"},
    {"name": "ids_def", "type": "list<int64>", "default": [1, I64_MIN]},
]


# ---------------------------------------------------------------------------------------------
# Canonical values: floats as their bits, so NaN payloads compare exactly
# ---------------------------------------------------------------------------------------------

def canon_f32(bits: int) -> tuple[str, int]:
    return ("f32", bits)


def canon_f64(bits: int) -> tuple[str, int]:
    return ("f64", bits)


def _f32_bits(x: float) -> int:
    return int(struct.unpack("<I", struct.pack("<f", x))[0])


def canon_default(ftype: str, value: Any) -> Any:
    """A features.yaml default in canonical form."""
    if ftype == "float32":
        return canon_f32(_f32_bits(value))
    if ftype == "float64":
        return canon_f64(int(struct.unpack("<Q", struct.pack("<d", value))[0]))
    if ftype == "list<float32>":
        return tuple(canon_f32(_f32_bits(x)) for x in value)
    if ftype == "list<int64>":
        return tuple(value)
    if ftype == "bytes":
        return value.encode()
    return value


def canon_column(ftype: str, col: pa.Array) -> list[Any]:
    """An Arrow column of a declared type in canonical form, None for nulls; never goes through a Python float."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if ftype in ("float32", "float64"):
        zero = pa.scalar(0, col.type)
        raw = col.fill_null(zero).to_numpy(zero_copy_only=False)
        bits = raw.view("<u4" if ftype == "float32" else "<u8")
        mk = canon_f32 if ftype == "float32" else canon_f64
        return [mk(int(b)) if ok else None for b, ok in zip(bits, valid, strict=True)]
    if ftype == "list<float32>":
        out: list[Any] = []
        for i, ok in enumerate(valid):
            if not ok:
                out.append(None)
                continue
            values = col[i].values  # a slice of the float32 child: read its bits directly
            bits = values.to_numpy(zero_copy_only=False).view("<u4")
            out.append(tuple(canon_f32(int(b)) for b in bits))
        return out
    if ftype == "list<int64>":
        return [tuple(v) if v is not None else None for v in col.to_pylist()]
    return col.to_pylist()


# ---------------------------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------------------------

@dataclass
class DataSet:
    features_path: Path
    features: FeatureSet
    # view -> key -> feature -> canonical value (defaults applied; None where the value stays null)
    expected: dict[str, dict[Any, dict[str, Any]]]
    dropped: dict[str, int]

    @property
    def dir(self) -> Path:
        return self.features_path.parent


def _keys(rng: np.random.Generator, key_type: str, n: int) -> list[Any]:
    edge: list[Any]
    rest: list[Any]
    if key_type == "int64":
        edge = [I64_MIN, I64_MIN + 1, -(2**32), -256, -1, 0, 1, 255, 256, 2**32, I64_MAX - 1, I64_MAX]
        rest = rng.integers(I64_MIN, I64_MAX, n, dtype=np.int64, endpoint=True).tolist()
    else:
        # prefixes, case, non-ASCII in several scripts, the empty string: byte order differs from code points
        edge = ["", "a", "ab", "a\x00", "B", "é", "日本", "日本語", "\U0001f9ed", "Z" * 200, "user-1", "user-10"]
        alphabet = list("abcXYZ019-_éü日本語Ωω\U0001f600")
        rest = ["".join(rng.choice(alphabet, int(rng.integers(1, 12)))) for _ in range(n)]
    seen: set[Any] = set()
    out = []
    for k in edge + rest:
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out


def _column(rng: np.random.Generator, f: dict[str, Any], n: int) -> pa.Array:
    """Edge values first, then random ones; about one in five is null."""
    t = f["type"]
    nulls = rng.random(n) < 0.2
    nulls[:12] = False
    nulls[12:16] = True
    if t == "bool":
        return pa.array(rng.random(n) < 0.5, mask=nulls)
    if t in ("int32", "int64"):
        lo, hi = (I32_MIN, I32_MAX) if t == "int32" else (I64_MIN, I64_MAX)
        dt = np.int32 if t == "int32" else np.int64
        v = rng.integers(lo, hi, n, dtype=dt, endpoint=True)
        v[:6] = [lo, lo + 1, -1, 0, hi - 1, hi]
        return pa.array(v, mask=nulls)
    if t in ("float32", "float64"):
        u = np.uint32 if t == "float32" else np.uint64
        edge = F32_BITS if t == "float32" else F64_BITS
        v = rng.standard_normal(n).astype(np.float32 if t == "float32" else np.float64)
        bits = v.view(u)
        bits[: len(edge)] = edge
        return pa.array(v, mask=nulls)
    if t == "string":
        strings = [STRINGS[i] if i < len(STRINGS) else "".join(rng.choice(list("abcé日"), int(rng.integers(0, 9))))
                   for i in range(n)]
        return pa.array(strings, pa.string(), mask=nulls)
    if t == "bytes":
        blobs = [BYTES[i] if i < len(BYTES) else rng.bytes(int(rng.integers(0, 20))) for i in range(n)]
        return pa.array(blobs, pa.binary(), mask=nulls)
    if t == "list<float32>":
        length = f["length"]
        flat = rng.standard_normal(n * length).astype(np.float32)
        bits = flat.view(np.uint32)
        bits[: len(F32_BITS)] = F32_BITS
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), length, mask=pa.array(nulls))
    # list<int64>: empty lists, extremes, a list long enough for two-byte length varints
    lists: list[list[int] | None] = [[], [I64_MIN, I64_MAX], list(range(-10, 10)), [0]]
    lists += [rng.integers(-1000, 1000, int(rng.integers(0, 6))).tolist() for _ in range(n - len(lists))]
    lists = [None if m else v for v, m in zip(lists, nulls, strict=True)]
    return pa.array(lists, pa.list_(pa.int64()))


def write_every_type(out: Path, key_type: str = "int64", n: int = 1500, seed: int = 1) -> DataSet:
    """features.yaml and Parquet for two views over one entity:
    `every` (every type, with and without defaults, split over two files with small row groups) and
    `events` (an event_timestamp, so duplicate keys keep their latest row)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    keys = _keys(rng, key_type, n)
    n = len(keys)
    key_arrow = pa.array(keys, pa.int64() if key_type == "int64" else pa.string())
    columns: dict[str, pa.Array] = {"entity_id": key_arrow}
    expected: dict[Any, dict[str, Any]] = {k: {} for k in keys}
    for f in FEATURES:
        col = _column(rng, f, n)
        columns[f.get("source_column", f["name"])] = col
        default = canon_default(f["type"], f["default"]) if "default" in f else None
        for k, v in zip(keys, canon_column(f["type"], col), strict=True):
            expected[k][f["name"]] = default if v is None else v
    table = pa.table(columns)
    order = rng.permutation(n)  # sources are not sorted by key
    table = table.take(pa.array(order))
    (out / "every").mkdir(exist_ok=True)
    half = n // 2
    pq.write_table(table.slice(0, half), out / "every" / "part-0.parquet", row_group_size=200)
    pq.write_table(table.slice(half), out / "every" / "part-1.parquet", row_group_size=300)

    # events: each key 1-3 rows with distinct timestamps; the latest row's score is the expected one
    ev_keys, ev_ts, ev_score = [], [], []
    for i, k in enumerate(keys[:400]):
        copies = 1 + i % 3
        base = rng.integers(0, 10**9)
        stamps = rng.permutation(copies) * 1000 + base
        for s in stamps:
            ev_keys.append(k)
            ev_ts.append(int(s))
            ev_score.append(float(s) / 7)
    events = pa.table({"entity_id": pa.array(ev_keys, key_arrow.type),
                       "ts": pa.array(ev_ts, pa.timestamp("us", tz="UTC")),
                       "score": pa.array(ev_score, pa.float64())})
    events = events.take(pa.array(rng.permutation(len(ev_keys))))
    (out / "events").mkdir(exist_ok=True)
    pq.write_table(events, out / "events" / "events.parquet", row_group_size=256)
    latest: dict[Any, tuple[int, float]] = {}
    for k, s, sc in zip(ev_keys, ev_ts, ev_score, strict=True):
        if k not in latest or s > latest[k][0]:
            latest[k] = (s, sc)
    ev_expected = {k: {"score": canon_f64(int(np.float64(sc).view(np.uint64)))} for k, (_, sc) in latest.items()}

    doc = {"entity": {"name": "entity_id", "key_type": key_type},
           "views": [{"name": "every", "source": "every/*.parquet", "features": FEATURES},
                     {"name": "events", "source": "events", "event_timestamp": "ts",
                      "features": [{"name": "score", "type": "float64"}]}]}
    path = out / "features.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return DataSet(path, FeatureSet.from_json(doc), {"every": expected, "events": ev_expected},
                   {"every": 0, "events": len(ev_keys) - len(latest)})


@pytest.fixture
def every_type(tmp_path: Path) -> DataSet:
    """The every-type data set keyed by int64 (negative and extreme keys included)."""
    return write_every_type(tmp_path / "src", "int64")


@pytest.fixture
def every_type_string_keys(tmp_path: Path) -> DataSet:
    """The every-type data set keyed by non-ASCII, empty and prefix-sharing strings."""
    return write_every_type(tmp_path / "src", "string")


@pytest.fixture
def small_view(tmp_path: Path) -> Callable[..., Path]:
    """Writes features.yaml with one view `v` over int64 `user_id` and the given source table; returns its path.
    For the bad-input tests: pass `features` and `table` to break one thing at a time."""

    def write(table: pa.Table | None = None, features: list[dict[str, Any]] | None = None,
              view_extra: dict[str, Any] | None = None, source: str = "v.parquet") -> Path:
        d = tmp_path / "small"
        d.mkdir(exist_ok=True)
        if table is None:
            table = pa.table({"user_id": pa.array([3, 1, 2], pa.int64()), "x": pa.array([1.0, 2.0, None])})
        if source == "v.parquet":
            pq.write_table(table, d / source)
        doc = {"entity": {"name": "user_id", "key_type": "int64"},
               "views": [{"name": "v", "source": source, **(view_extra or {}),
                          "features": features or [{"name": "x", "type": "float64"}]}]}
        (d / "features.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return d / "features.yaml"

    return write


# ---------------------------------------------------------------------------------------------
# Reading both stored forms back
# ---------------------------------------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def wire_fields(buf: bytes) -> dict[int, list[bytes]]:
    """A protobuf message's length-delimited and fixed-width payloads by field number, in order; for reading
    float bits that a Python float would quieten (signalling NaN)."""
    out: dict[int, list[bytes]] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if wt == 0:
            value, pos = _varint(buf, pos)
            continue
        size = {1: 8, 5: 4}.get(wt)
        if size is None:
            assert wt == 2, f"wire type {wt}"
            size, pos = _varint(buf, pos)
        out.setdefault(field, []).append(buf[pos:pos + size])
        pos += size
    return out


def decode_view_row(view: ViewDef, data: bytes) -> dict[str, Any]:
    """One stored ViewRow in canonical form by feature name, through the generated ViewRow class and the
    schema's (group, index) layout. A null's slot must hold the type's zero value."""
    row = quiver_pb2.ViewRow.FromString(data)
    raw = wire_fields(data)
    f32 = np.frombuffer(b"".join(raw.get(5, [])), "<u4")
    f64 = np.frombuffer(b"".join(raw.get(6, [])), "<u8")
    emb = [np.frombuffer(b"".join(wire_fields(m).get(1, [])), "<u4") for m in raw.get(9, [])]
    groups = {2: row.bools, 3: row.int32s, 4: row.int64s, 7: row.strings, 8: row.bytes_values}
    sizes = {2: len(row.bools), 3: len(row.int32s), 4: len(row.int64s), 5: len(f32), 6: len(f64),
             7: len(row.strings), 8: len(row.bytes_values), 9: len(row.float32_lists), 10: len(row.int64_lists)}
    counts: dict[int, int] = {}
    for _, g, _ in view.layout():
        counts[g] = counts.get(g, 0) + 1
    for g in sizes:
        assert sizes[g] == counts.get(g, 0), f"group {g}: {sizes[g]} slots, schema has {counts.get(g, 0)}"
    assert len(emb) == len(row.float32_lists)
    out: dict[str, Any] = {}
    for pos, (f, g, i) in enumerate(view.layout()):
        value: Any
        if g == 5:
            value = canon_f32(int(f32[i]))
        elif g == 6:
            value = canon_f64(int(f64[i]))
        elif g == 9:
            assert len(emb[i]) == f.length, f"{f.name}: {len(emb[i])} values, declared {f.length}"
            value = tuple(canon_f32(int(b)) for b in emb[i])
        elif g == 10:
            value = tuple(row.int64_lists[i].values)
        else:
            value = groups[g][i]
        is_null = bool(row.nulls[pos // 8] >> (pos % 8) & 1) if pos // 8 < len(row.nulls) else False
        if is_null:
            zero = {"bool": False, "int32": 0, "int64": 0, "float32": canon_f32(0), "float64": canon_f64(0),
                    "string": "", "bytes": b"", "list<int64>": ()}.get(f.type, (canon_f32(0),) * f.length)
            assert value == zero, f"{f.name}: null slot holds {value!r}"
            value = None
        out[f.name] = value
    return out


def decode_key(key_type: str, key: bytes) -> Any:
    return decode_int64_key(key) if key_type == "int64" else key.decode("utf-8")


def view_of_group_value(manifest: Manifest, view: str, value: bytes | None) -> bytes | None:
    """The view's ViewRow bytes in a stored group value, parsed as the EntityRow it is with the generated
    protobuf class (independent of the server's and verify's byte cutting); None when not found."""
    if value is None:
        return None
    group = manifest.groups[manifest.schema.view(view).group]
    row = quiver_pb2.EntityRow.FromString(value)
    assert len(row.views) == len(row.found) == len(group.views), "a group value holds every view of its group"
    i = group.views.index(view)
    if not row.found[i]:
        assert row.views[i].ByteSize() == 0, "a view that lacks the entity has an empty ViewRow"
        return None
    return row.views[i].SerializeToString()


def read_online(root: Path | str, view: str, version: str | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """(key, row) for every entity the view holds, from its storage group's RocksDB, in stored (byte) order."""
    r = SnapshotRoot(root)
    version = version or r.current()
    assert version is not None
    manifest = Manifest.load(r.manifest_path(version))
    features = manifest.schema
    vdef = features.view(view)
    db = Rdict(str(r.online_dir(version, vdef.group)), Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        out = []
        for k, v in db.items():
            raw = view_of_group_value(manifest, view, bytes(v))  # type: ignore[arg-type]
            if raw is not None:
                out.append((decode_key(features.entity.key_type, bytes(k)), decode_view_row(vdef, raw)))  # type: ignore[arg-type]
        return out
    finally:
        db.close()


def read_online_keys(root: Path | str, view: str, keys: list[bytes]) -> list[bytes | None]:
    """The view's stored ViewRow bytes for each key (None when the view lacks it)."""
    r = SnapshotRoot(root)
    version = r.current()
    assert version is not None
    manifest = Manifest.load(r.manifest_path(version))
    db = Rdict(str(r.online_dir(version, manifest.schema.view(view).group)), Options(raw_mode=True),
               access_type=AccessType.read_only())
    try:
        return [view_of_group_value(manifest, view, v) for v in db[keys]]  # type: ignore[index, arg-type, union-attr]
    finally:
        db.close()


def read_offline(root: Path | str, view: str, version: str | None = None) -> tuple[pa.Table, list[tuple[Any,
                                                                                                     dict[str, Any]]]]:
    """The view's offline Parquet (files in name order) and its rows in canonical form."""
    r = SnapshotRoot(root)
    version = version or r.current()
    assert version is not None
    features = Manifest.load(r.manifest_path(version)).schema
    vdef = features.view(view)
    files = sorted(r.offline_dir(version, view).glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    keys = table.column(features.entity.name).to_pylist()
    cols = {f.name: canon_column(f.type, table.column(f.name)) for f in vdef.features}
    rows = [(k, {name: cols[name][i] for name in cols}) for i, k in enumerate(keys)]
    return table, rows


def mismatches(expected: dict[Any, dict[str, Any]], got: list[tuple[Any, dict[str, Any]]]) -> list[str]:
    """Readable differences between expected rows and rows read back (at most ten)."""
    problems = []
    got_map = dict(got)
    if len(got_map) != len(got):
        problems.append(f"{len(got) - len(got_map)} duplicate key(s) read back")
    for k in sorted(set(expected) - set(got_map), key=repr)[:5]:
        problems.append(f"key {k!r}: missing")
    for k in sorted(set(got_map) - set(expected), key=repr)[:5]:
        problems.append(f"key {k!r}: unexpected")
    for k, row in expected.items():
        if k in got_map and got_map[k] != row:
            diff = {f: (v, got_map[k].get(f)) for f, v in row.items() if got_map[k].get(f) != v}
            problems.append(f"key {k!r}: (expected, got) {diff}")
        if len(problems) >= 10:
            break
    return problems


class Stored:
    """The readers above, handed to tests by the `stored` fixture."""

    decode_view_row = staticmethod(decode_view_row)
    online = staticmethod(read_online)
    online_keys = staticmethod(read_online_keys)
    offline = staticmethod(read_offline)
    mismatches = staticmethod(mismatches)
    canon_column = staticmethod(canon_column)
    generated_column = staticmethod(_column)


@pytest.fixture
def stored() -> type[Stored]:
    return Stored
