"""The statistics accumulator against pyarrow.compute on the same data, merged from partial results
as worker processes return them."""

import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from quiver.loader.definitions import parse_definitions
from quiver.quality._sketches import HyperLogLog, hash64
from quiver.quality.statistics import QUANTILES, SAMPLE_ROWS, ViewAccumulator
from quiver.snapshot import ViewDef

N = 5000


def view(*features: dict[str, Any], key_type: str = "int64") -> ViewDef:
    doc = {"entity": {"name": "k", "key_type": key_type},
           "views": [{"name": "v", "source": "v.parquet", "features": list(features)}]}
    return parse_definitions(doc, "f.yaml").view("v")


def source(n: int = N, seed: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    f = rng.normal(50, 10, n)
    f[rng.random(n) < 0.01] = np.nan
    f[rng.random(n) < 0.005] = np.inf
    f[rng.random(n) < 0.005] = -np.inf
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    emb[7, 2] = np.nan
    return pa.record_batch({
        "k": pa.array(np.arange(n, dtype=np.int64) * 7919),
        "f64": pa.array(f, mask=rng.random(n) < 0.1),
        "f32": pa.array(rng.random(n).astype(np.float32)),
        "i32": pa.array(rng.integers(-5, 100, n).astype(np.int32), mask=rng.random(n) < 0.2),
        "i64": pa.array(rng.integers(10**12, 10**12 + 10**6, n)),
        "b": pa.array(rng.random(n) < 0.3, mask=rng.random(n) < 0.05),
        "s": pa.array(rng.choice(["de", "fr", "us", "jp", ""], n).tolist(), mask=rng.random(n) < 0.1),
        "y": pa.array([bytes([i % 251, i % 13]) for i in range(n)], pa.binary()),
        "e": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 8, mask=pa.array(rng.random(n) < 0.02)),
        "l": pa.array([list(range(i % 6)) if i % 17 else None for i in range(n)], pa.list_(pa.int64())),
    })


FEATURES = [{"name": "f64", "type": "float64"}, {"name": "f32", "type": "float32"},
            {"name": "i32", "type": "int32"}, {"name": "i64", "type": "int64"}, {"name": "b", "type": "bool"},
            {"name": "s", "type": "string"}, {"name": "y", "type": "bytes"},
            {"name": "e", "type": "list<float32>", "length": 8}, {"name": "l", "type": "list<int64>"}]


def accumulate(v: ViewDef, batch: pa.RecordBatch, parts: int = 4, expected: int = 0) -> dict[str, Any]:
    """Partial accumulators over slices, pickled as a worker would return them, then merged."""
    cuts = np.linspace(0, batch.num_rows, parts + 1).astype(int)
    partials = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        acc = ViewAccumulator(v, expected or batch.num_rows)
        for start in range(lo, hi, 700):    # several batches per partial
            acc.add(batch.slice(start, min(hi, start + 700) - start))
        partials.append(pickle.loads(pickle.dumps(acc)))
    total = partials[0]
    for p in partials[1:]:
        total.merge(p)
    return total.to_json()


def expected_numeric(col: pa.Array) -> dict[str, Any]:
    """The oracle: pyarrow.compute over the finite non-null values of the whole column."""
    finite = col.filter(pc.is_finite(col)) if pa.types.is_floating(col.type) else col.drop_null()
    mm = pc.min_max(finite)
    return {"count": len(col) - col.null_count, "nulls": col.null_count, "min": mm["min"].as_py(),
            "max": mm["max"].as_py(), "mean": pc.mean(finite).as_py(), "std": pc.stddev(finite, ddof=0).as_py(),
            "quantiles": pc.quantile(finite, q=list(QUANTILES)).to_pylist(),
            "nan": pc.sum(pc.is_nan(col)).as_py() if pa.types.is_floating(col.type) else 0,
            "inf": pc.sum(pc.is_inf(col)).as_py() if pa.types.is_floating(col.type) else 0}


@pytest.mark.parametrize("name", ["f64", "f32", "i32", "i64"])
def test_numeric_statistics_equal_pyarrow_compute(name: str) -> None:
    batch = source()
    stats = accumulate(view(*FEATURES), batch)["features"][name]
    want = expected_numeric(batch.column(name))
    assert stats["rows"] == N
    for k in ("count", "nulls", "nan", "inf", "min", "max"):
        assert stats[k] == want[k], k
    assert stats["mean"] == pytest.approx(want["mean"], rel=1e-12)
    assert stats["std"] == pytest.approx(want["std"], rel=1e-9)
    assert list(stats["quantiles"].values()) == pytest.approx(want["quantiles"], rel=1e-12)
    finite = batch.column(name).filter(pc.is_finite(batch.column(name))) if name.startswith("f") else \
        batch.column(name).drop_null()
    counts, edges = np.histogram(finite.to_numpy(), bins=20, range=(want["min"], want["max"]))
    assert stats["histogram"]["counts"] == counts.tolist()
    assert stats["histogram"]["edges"] == pytest.approx(edges.tolist())


def test_bool_string_bytes_statistics_equal_pyarrow_compute() -> None:
    batch = source()
    stats = accumulate(view(*FEATURES), batch)["features"]
    b = batch.column("b")
    assert (stats["b"]["nulls"], stats["b"]["count"]) == (b.null_count, N - b.null_count)
    assert stats["b"]["top"] == [[True, pc.sum(b).as_py()], [False, N - b.null_count - pc.sum(b).as_py()]]
    s = batch.column("s")
    counts = {d["values"]: d["counts"] for d in pc.value_counts(s.drop_null()).to_pylist()}
    assert stats["s"]["top"] == sorted(([v, c] for v, c in counts.items()), key=lambda vc: (-vc[1], vc[0]))
    assert stats["s"]["distinct"] == pc.count_distinct(s).as_py() == 5       # "" counts as a value
    assert stats["s"]["nulls"] == s.null_count
    lengths = pc.binary_length(batch.column("y"))
    assert (stats["y"]["measure"], stats["y"]["min"], stats["y"]["max"]) == ("length", 2, 2)
    assert stats["y"]["mean"] == pc.mean(lengths).as_py()


def test_embedding_norms_and_list_lengths() -> None:
    batch = source()
    stats = accumulate(view(*FEATURES), batch)["features"]
    e = batch.column("e")
    matrix = e.values.to_numpy().reshape(N, 8).astype(np.float64)
    valid = e.is_valid().to_numpy(zero_copy_only=False)
    norms = np.linalg.norm(matrix, axis=1)
    ok = valid & np.isfinite(norms)
    assert (stats["e"]["nulls"], stats["e"]["nan"], stats["e"]["inf"]) == (e.null_count, 1 if valid[7] else 0, 0)
    assert stats["e"]["measure"] == "norm"
    assert stats["e"]["min"] == pytest.approx(norms[ok].min(), rel=1e-6)
    assert stats["e"]["max"] == pytest.approx(norms[ok].max(), rel=1e-6)
    assert stats["e"]["mean"] == pytest.approx(norms[ok].mean(), rel=1e-6)
    lengths = pc.list_value_length(batch.column("l"))
    assert stats["l"]["min"] == pc.min(lengths).as_py() == 0 and stats["l"]["max"] == pc.max(lengths).as_py()
    assert stats["l"]["mean"] == pytest.approx(pc.mean(lengths).as_py(), rel=1e-12)
    assert stats["l"]["empty"] == pc.sum(pc.equal(lengths, 0)).as_py()
    assert stats["l"]["nulls"] == batch.column("l").null_count


def test_merged_partials_equal_one_pass() -> None:
    v = view(*FEATURES)
    one, four = accumulate(v, source(), parts=1), accumulate(v, source(), parts=4)
    for name in ("f64", "i32", "s", "e", "l"):
        for k in ("count", "nulls", "nan", "min", "max", "quantiles", "top", "distinct", "histogram"):
            assert one["features"][name].get(k) == four["features"][name].get(k), (name, k)
        if one["features"][name].get("mean") is not None:
            assert one["features"][name]["mean"] == pytest.approx(four["features"][name]["mean"], rel=1e-12)


def test_large_views_sample_by_key_hash_within_the_stated_error() -> None:
    n = 200_000
    rng = np.random.default_rng(3)
    x = rng.exponential(10.0, n)
    batch = pa.record_batch({"k": pa.array(np.arange(n)), "x": pa.array(x)})
    stats = accumulate(view({"name": "x", "type": "float64"}), batch, expected=n)["features"]["x"]
    assert 0.8 * SAMPLE_ROWS < stats["sampled"] < 1.2 * SAMPLE_ROWS
    assert (stats["min"], stats["max"]) == (x.min(), x.max())          # still exact
    assert stats["mean"] == pytest.approx(x.mean(), rel=1e-12)
    ranks = np.searchsorted(np.sort(x), list(stats["quantiles"].values())) / n
    assert ranks == pytest.approx(QUANTILES, abs=0.01)
    assert sum(stats["histogram"]["counts"]) == pytest.approx(n)
    # the same keys give the same sample: identical data, identical statistics
    assert accumulate(view({"name": "x", "type": "float64"}), batch, parts=3, expected=n)["features"]["x"][
        "quantiles"] == stats["quantiles"]


def test_string_keys_hash_and_sample() -> None:
    n = 120_000
    keys = pa.array([f"user-{i}" for i in range(n)])
    h = hash64(keys)
    assert len(np.unique(h)) == n
    assert np.array_equal(hash64(keys.slice(100, 10)), h[100:110])       # offsets of a slice honoured
    batch = pa.record_batch({"k": keys, "x": pa.array(np.arange(n, dtype=np.float64))})
    stats = accumulate(view({"name": "x", "type": "float64"}, key_type="string"), batch, expected=n)
    assert 0.8 * SAMPLE_ROWS < stats["features"]["x"]["sampled"] < 1.2 * SAMPLE_ROWS


@pytest.mark.parametrize("distinct", [10, 1000, 100_000])
def test_hyperloglog_estimate(distinct: int) -> None:
    hll = HyperLogLog()
    values = pa.array([f"v{i % distinct}" for i in range(max(distinct, 50_000))])
    for start in range(0, len(values), 10_000):
        hll.add(hash64(values.slice(start, 10_000)))
    assert hll.estimate() == pytest.approx(distinct, rel=0.03)


def test_empty_and_all_null_batches() -> None:
    v = view({"name": "x", "type": "float32"}, {"name": "s", "type": "string"})
    batch = pa.record_batch({"k": pa.array([1, 2], pa.int64()), "x": pa.array([None, None], pa.float32()),
                             "s": pa.array([None, None], pa.string())})
    stats = accumulate(v, batch, parts=1)
    assert stats["features"]["x"]["violations"] == {"nulls": {"count": 2, "examples": [1, 2]}}
    assert (stats["features"]["x"]["nulls"], stats["features"]["x"]["min"], stats["features"]["x"]["mean"]) == (
        2, None, None)
    assert stats["features"]["s"]["top"] == [] and stats["features"]["s"]["distinct"] == 0
    empty = ViewAccumulator(v).to_json()
    assert empty["rows"] == 0 and empty["features"]["x"]["count"] == 0
