"""Source data sets written to real features.yaml and Parquet files, with the values a reader must find
(in support.canon's form), computed from the generated columns, not from anything quiver wrote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from quiver.snapshot import FeatureSet
from support.canon import canon_column, canon_default, canon_f64

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


def generated_column(rng: np.random.Generator, f: dict[str, Any], n: int) -> pa.Array:
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
        col = generated_column(rng, f, n)
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
