"""Every check passing and failing on generated data (nulls, NaN/inf, empty lists, string keys), through
the statistics accumulator as the load runs it."""

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from quiver.loader.definitions import parse_definitions
from quiver.quality.checks import evaluate_view
from quiver.quality.statistics import ViewAccumulator
from quiver.snapshot import ViewDef
from quiver.snapshot.manifest import CheckResult, CheckSummary

N = 1000
KEYS = [f"user-{i:04d}" for i in range(N)]


def data(**overrides: Any) -> pa.RecordBatch:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((N, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)          # unit norm
    cols: dict[str, Any] = {
        "user_id": pa.array(KEYS),
        "age": pa.array(rng.integers(18, 90, N).astype(np.int32)),
        "score": pa.array(rng.random(N)),
        "plan": pa.array(rng.choice(["free", "pro"], N).tolist()),
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 4),
        "ids": pa.array([[1, 2]] * N, pa.list_(pa.int64())),
    }
    cols.update(overrides)
    return pa.record_batch(cols)


def checked_view(age: dict[str, Any] | None = None, score: dict[str, Any] | None = None,
                 plan: dict[str, Any] | None = None, emb: dict[str, Any] | None = None,
                 ids: dict[str, Any] | None = None, view: dict[str, Any] | None = None) -> ViewDef:
    def f(name: str, ftype: str, checks: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        return {"name": name, "type": ftype, **extra, **({"checks": checks} if checks else {})}
    doc = {"entity": {"name": "user_id", "key_type": "string"}, "views": [{
        "name": "users", "source": "u.parquet", **({"checks": view} if view else {}),
        "features": [f("age", "int32", age), f("score", "float64", score), f("plan", "string", plan),
                     f("emb", "list<float32>", emb, length=4), f("ids", "list<int64>", ids)]}]}
    return parse_definitions(doc, "f.yaml").view("users")


def run(v: ViewDef, batch: pa.RecordBatch, previous: dict[str, Any] | None = None) -> list[CheckResult]:
    acc = ViewAccumulator(v, batch.num_rows)
    for b in batch.to_batches(max_chunksize=300) if isinstance(batch, pa.Table) else [batch]:
        acc.add(b)
    return [r for r in evaluate_view(v, acc.to_json(), previous, "V1")]


def stats_of(v: ViewDef, batch: pa.RecordBatch) -> dict[str, Any]:
    acc = ViewAccumulator(v, batch.num_rows)
    acc.add(batch)
    return acc.to_json()


def only(results: list[CheckResult], check: str) -> CheckResult:
    [r] = [r for r in results if r.check == check]
    return r


def with_rows(col: pa.Array, rows: dict[int, Any], t: pa.DataType) -> pa.Array:
    values = col.to_pylist()
    for i, v in rows.items():
        values[i] = v
    return pa.array(values, t)


def test_min_and_max() -> None:
    v = checked_view(age={"min": 18, "max": 90})
    assert {r.status for r in run(v, data())} == {"passed"}
    age = with_rows(data().column("age"), {3: 7, 10: 200, 11: 130, 12: None}, pa.int32())
    results = run(v, data(age=age))
    low, high = only(results, "min"), only(results, "max")
    assert (low.status, low.measured, low.limit, low.examples) == ("failed", 7, 18, ["user-0003"])
    assert (high.status, high.measured, high.limit, high.examples) == ("failed", 200, 90, ["user-0010", "user-0011"])
    assert "2 row(s) above the limit" in high.describe() and "'user-0010'" in high.describe()


def test_min_max_on_floats_ignore_nan_which_finite_counts() -> None:
    v = checked_view(score={"min": 0, "max": 1, "finite": True})
    assert {r.status for r in run(v, data())} == {"passed"}
    score = with_rows(data().column("score"), {5: float("nan"), 6: float("inf"), 7: None, 8: -0.5}, pa.float64())
    results = run(v, data(score=score))
    assert only(results, "max").status == "passed"                  # inf is not a max violation
    assert (only(results, "min").status, only(results, "min").examples) == ("failed", ["user-0008"])
    fin = only(results, "finite")
    assert (fin.status, fin.measured, fin.examples) == ("failed", 2, ["user-0005", "user-0006"])
    assert "1 NaN and 1 infinite value(s)" in fin.detail


def test_allowed_on_strings_with_nulls() -> None:
    v = checked_view(plan={"allowed": ["free", "pro"]})
    plan = with_rows(data().column("plan"), {1: None}, pa.string())
    assert only(run(v, data(plan=plan)), "allowed").status == "passed"   # a null is max_null_fraction's business
    plan = with_rows(plan, {2: "gold", 900: "", 901: "gold"}, pa.string())
    r = only(run(v, data(plan=plan)), "allowed")
    assert (r.status, r.measured, r.examples) == ("failed", 3, ["user-0002", "user-0900", "user-0901"])


def test_allowed_on_ints() -> None:
    v = checked_view(age={"allowed": list(range(18, 90))})
    assert only(run(v, data()), "allowed").status == "passed"
    r = only(run(v, data(age=with_rows(data().column("age"), {4: 99}, pa.int32()))), "allowed")
    assert (r.status, r.examples) == ("failed", ["user-0004"])


def test_max_null_fraction() -> None:
    v = checked_view(score={"max_null_fraction": 0.05})
    nulls = {i: None for i in range(0, N, 25)}                      # 4%
    assert only(run(v, data(score=with_rows(data().column("score"), nulls, pa.float64()))),
                "max_null_fraction").status == "passed"
    nulls = {i: None for i in range(0, N, 10)}                      # 10%
    r = only(run(v, data(score=with_rows(data().column("score"), nulls, pa.float64()))), "max_null_fraction")
    assert (r.status, r.measured, r.limit) == ("failed", 0.1, 0.05)
    assert r.examples == ["user-0000", "user-0010", "user-0020", "user-0030", "user-0040"]


def test_norm_between_and_finite_on_embeddings() -> None:
    v = checked_view(emb={"norm_between": [0.9, 1.1], "finite": True})
    assert {r.status for r in run(v, data())} == {"passed"}
    values = data().column("emb").values.to_numpy().copy().reshape(N, 4)
    values[20] = 0.0                                                # an embedding of zeros
    values[21, 0] = np.nan
    null = np.zeros(N, bool)
    null[22] = True                                                 # a null embedding is not checked
    emb = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 4, mask=pa.array(null))
    results = run(v, data(emb=emb))
    norm = only(results, "norm_between")
    assert (norm.status, norm.examples, norm.limit) == ("failed", ["user-0020"], [0.9, 1.1])
    assert norm.measured[0] == 0.0
    fin = only(results, "finite")
    assert (fin.status, fin.measured, fin.examples) == ("failed", 1, ["user-0021"])


def test_length_between_with_empty_and_null_lists() -> None:
    v = checked_view(ids={"length_between": [1, 3]})
    ids = pa.array([[1, 2]] * (N - 2) + [None, [1]], pa.list_(pa.int64()))
    assert only(run(v, data(ids=ids)), "length_between").status == "passed"
    ids = pa.array([[1, 2]] * (N - 3) + [[], None, [1, 2, 3, 4]], pa.list_(pa.int64()))
    r = only(run(v, data(ids=ids)), "length_between")
    assert (r.status, r.measured, r.examples) == ("failed", [0, 4], ["user-0997", "user-0999"])


def test_warn_only_checks_warn() -> None:
    v = checked_view(age={"min": 30, "max": 200, "warn": ["min"]}, score={"max": 0.5, "warn": True})
    results = run(v, data())
    assert [(r.feature, r.check, r.status) for r in results] == [
        ("age", "min", "warned"), ("age", "max", "passed"), ("score", "max", "warned")]
    summary = CheckSummary.of(results)
    assert (summary.failed, summary.warned, summary.passed) == (0, 2, 1)


def test_min_rows() -> None:
    v = checked_view(view={"min_rows": N})
    assert only(run(v, data()), "min_rows").status == "passed"
    r = only(run(v, data().slice(0, N - 1)), "min_rows")
    assert (r.status, r.measured, r.limit) == ("failed", N - 1, N)


def test_max_row_change_against_the_current_version() -> None:
    v = checked_view(view={"max_row_change": 0.2})
    previous = stats_of(v, data())
    assert only(run(v, data().slice(0, 850), previous), "max_row_change").status == "passed"
    r = only(run(v, data().slice(0, 500), previous), "max_row_change")
    assert (r.status, r.measured, r.limit) == ("failed", 0.5, 0.2)
    assert "1000 rows in V1, 500 now" in r.describe()


def test_max_null_fraction_change() -> None:
    v = checked_view(view={"max_null_fraction_change": 0.1})
    previous = stats_of(v, data())
    few = with_rows(data().column("score"), {i: None for i in range(0, N, 20)}, pa.float64())   # +5%
    results = run(v, data(score=few), previous)
    assert {r.status for r in results if r.check == "max_null_fraction_change"} == {"passed"}
    many = with_rows(data().column("score"), {i: None for i in range(0, N, 2)}, pa.float64())   # +50%
    [r] = [r for r in run(v, data(score=many), previous) if r.status == "failed"]
    assert (r.feature, r.check, r.measured, r.examples[:2]) == ("score", "max_null_fraction_change", 0.5,
                                                                 ["user-0000", "user-0002"])


def test_drift_checks_are_skipped_without_a_current_version_or_rows() -> None:
    v = checked_view(age={"min": 0}, view={"max_row_change": 0.1, "max_null_fraction_change": 0.1, "min_rows": 0})
    results = run(v, data(), None)
    skipped = [r for r in results if r.status == "skipped"]
    assert [r.check for r in skipped] == ["max_row_change", "max_null_fraction_change"]
    assert "no current version to compare against" in skipped[0].describe()
    empty = run(v, data().slice(0, 0), stats_of(v, data()))
    assert {(r.check, r.status) for r in empty} == {("min", "skipped"), ("min_rows", "passed"),
                                                     ("max_row_change", "skipped"),
                                                     ("max_null_fraction_change", "skipped")}
    assert "no rows in this load" in only(empty, "max_row_change").detail


@pytest.mark.parametrize("status", ["failed", "warned", "skipped"])
def test_summary_round_trips_through_json(status: str) -> None:
    r = CheckResult("users", "age", "min", status, 3, 18, ["user-0001"], "1 row(s) below the limit")
    s = CheckSummary.of([r, CheckResult("users", "", "min_rows", "passed", 10, 1)], accepted_failures=True)
    assert CheckSummary.from_json(s.to_json()) == s
    assert s.to_json()[status] == 1 and s.passed == 1


def test_checks_changed_on_carried_statistics_use_the_aggregates() -> None:
    """A reused view's statistics were counted under its old limits: min, max, finite and the ranges
    are decided from the exact aggregates; allowed cannot be, and says so."""
    old = checked_view(age={"min": 0}, plan={"allowed": ["free", "pro"]})
    stats = stats_of(old, data())
    new = checked_view(age={"min": 30, "max": 200}, plan={"allowed": ["free"]})
    results = evaluate_view(new, stats, None)
    low = only(results, "min")
    assert (low.status, low.measured, low.examples) == ("failed", 18, [])
    assert "counted under other limits" in low.detail
    assert only(results, "max").status == "passed"
    allowed = only(results, "allowed")
    assert allowed.status == "skipped" and "--no-reuse" in allowed.detail
