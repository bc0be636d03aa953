"""Drift between two versions' statistics: zero for identical data, a shifted column ranked first by
`quiver diff`, and the report page's data."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from quiver.cli import main
from quiver.loader.definitions import parse_definitions
from quiver.quality.drift import cdf, compare, compared_against, feature_psi, masses, versions_to_compare
from quiver.quality.report import page_data, render
from quiver.quality.statistics import STATISTICS_FILE, ViewAccumulator
from quiver.snapshot import FeatureSet, Manifest, SnapshotRoot
from quiver.snapshot.manifest import CheckResult, CheckSummary

N = 20_000
DOC = {"entity": {"name": "user_id", "key_type": "int64"}, "views": [
    {"name": "users", "source": "u.parquet", "checks": {"min_rows": 10}, "features": [
        {"name": "age", "type": "int32", "checks": {"min": 0}}, {"name": "score", "type": "float64"},
        {"name": "spend", "type": "float32"}, {"name": "plan", "type": "string"}, {"name": "flag", "type": "bool"},
        {"name": "emb", "type": "list<float32>", "length": 4}, {"name": "ids", "type": "list<int64>"}]},
    {"name": "clicks", "source": "c.parquet", "features": [{"name": "clicks", "type": "int64"}]}]}


def features() -> FeatureSet:
    return parse_definitions(DOC, "f.yaml")


def users(seed: int = 0, n: int = N, score_shift: float = 0.0, plan_p: float = 0.3,
          null_score: float = 0.0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    return pa.record_batch({
        "user_id": pa.array(np.arange(n, dtype=np.int64)),
        "age": pa.array(rng.integers(18, 80, n).astype(np.int32)),
        "score": pa.array(rng.normal(0.0 + score_shift, 1.0, n), mask=rng.random(n) < null_score),
        "spend": pa.array(rng.exponential(20, n).astype(np.float32)),
        "plan": pa.array(np.where(rng.random(n) < plan_p, "pro", "free").tolist()),
        "flag": pa.array(rng.random(n) < 0.5),
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(n * 4).astype(np.float32)), 4),
        "ids": pa.array([[1] * (i % 4) for i in range(n)], pa.list_(pa.int64())),
    })


def clicks(n: int = 5000) -> pa.RecordBatch:
    return pa.record_batch({"user_id": pa.array(np.arange(n, dtype=np.int64)),
                            "clicks": pa.array(np.arange(n, dtype=np.int64) % 50)})


def statistics(fs: FeatureSet, batches: dict[str, pa.RecordBatch]) -> dict[str, Any]:
    out = {}
    for v in fs.views:
        acc = ViewAccumulator(v, batches[v.name].num_rows)
        for b in pa.Table.from_batches([batches[v.name]]).to_batches(max_chunksize=4096):
            acc.add(b)
        out[v.name] = acc.to_json()
    return {"views": out}


def write_version(root: SnapshotRoot, day: int, stats: dict[str, Any],
                  results: list[CheckResult] | None = None, accepted: bool = False) -> str:
    """A version folder with its manifest and statistics (what a load leaves, without data files)."""
    as_of = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day)
    version = f"{as_of:%Y%m%dT%H%M%SZ}-{day:012x}"
    d = root.version_dir(version)
    d.mkdir(parents=True)
    (d / STATISTICS_FILE).write_text(json.dumps(stats))
    m = Manifest(version, "2026-01-01T00:00:00Z", f"{as_of:%Y-%m-%dT%H:%M:%SZ}", features(), {}, {},
                 checks=CheckSummary.of(results or [], accepted))
    (d / "manifest.json").write_bytes(m.dumps())
    root.set_current(version)
    return version


def test_identical_data_has_zero_drift() -> None:
    a = statistics(features(), {"users": users(), "clicks": clicks()})
    b = statistics(features(), {"users": users(), "clicks": clicks()})
    shifts = compare(a, b)
    assert len(shifts) == 2 + 7 + 1
    assert all(s.score == 0.0 for s in shifts)
    assert all(s.psi == 0.0 for s in shifts if s.feature)


def test_same_distribution_other_sample_is_stable() -> None:
    a = statistics(features(), {"users": users(seed=1), "clicks": clicks()})
    b = statistics(features(), {"users": users(seed=2), "clicks": clicks()})
    assert max(s.psi or 0 for s in compare(a, b)) < 0.02


def test_shifted_column_ranks_first() -> None:
    a = statistics(features(), {"users": users(), "clicks": clicks()})
    b = statistics(features(), {"users": users(seed=1, score_shift=1.0), "clicks": clicks()})
    shifts = compare(a, b)
    assert (shifts[0].view, shifts[0].feature) == ("users", "score")
    assert shifts[0].psi is not None and shifts[0].psi > 0.25
    assert all((s.psi or 0) < 0.05 for s in shifts[1:])


def test_categories_rows_and_nulls_shift() -> None:
    a = statistics(features(), {"users": users(), "clicks": clicks()})
    b = statistics(features(), {"users": users(plan_p=0.8, null_score=0.3), "clicks": clicks(2500)})
    by = {(s.view, s.feature): s for s in compare(a, b)}
    assert by["users", "plan"].psi is not None and by["users", "plan"].psi > 0.5
    assert by["users", "score"].null_rate == (0.0, pytest.approx(0.3, abs=0.02))
    assert by["clicks", ""].rows == (5000, 2500) and by["clicks", ""].score == 0.5


def test_cdf_and_masses_read_percentiles() -> None:
    p = list(np.linspace(0, 100, 101))             # uniform on [0, 100]
    assert cdf(p, np.array([-1.0, 0.0, 25.0, 99.5, 100.0, 200.0])).tolist() == pytest.approx(
        [0, 0, 0.25, 0.995, 1, 1])
    assert masses(p, np.array([50.0])).tolist() == pytest.approx([0.5, 0.5])
    constant = [3.0] * 101
    same = {"measure": "value", "percentiles": constant}
    assert feature_psi(same, same) == 0


def test_quiver_diff_prints_biggest_shift_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = SnapshotRoot(tmp_path / "root")
    v1 = write_version(root, 1, statistics(features(), {"users": users(), "clicks": clicks()}))
    v2 = write_version(root, 2, statistics(features(), {"users": users(seed=1, score_shift=2.0),
                                                        "clicks": clicks()}))
    assert main(["diff", "--root", str(root.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"drift from {v1} to {v2}")
    assert lines[2].split()[:2] == ["users", "score"] and float(lines[2].split()[2]) > 1
    assert main(["diff", "--root", str(root.path), v2, v1]) == 0      # explicit, either way round
    assert capsys.readouterr().out.splitlines()[2].split()[:2] == ["users", "score"]
    assert main(["diff", "--root", str(root.path), v1]) == 0
    assert main(["diff", "--root", str(root.path), "20990101T000000Z-000000000000"]) == 9
    assert "no version 20990101T000000Z-000000000000" in capsys.readouterr().err


def test_diff_of_the_first_version_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = SnapshotRoot(tmp_path / "root")
    write_version(root, 1, statistics(features(), {"users": users(), "clicks": clicks()}))
    assert main(["diff", "--root", str(root.path)]) == 9
    assert "replaced no version (no ROOT/PREVIOUS: the first version?); nothing to compare it with" in \
        capsys.readouterr().err


def test_diff_and_report_compare_current_with_the_version_it_replaced(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The one rule (quality/__init__.py): CURRENT is compared against ROOT/PREVIOUS, the version it replaced,
    which after a rollback is not the version just older than it; any other version against nothing unless
    named."""
    root = SnapshotRoot(tmp_path / "root")
    v1 = write_version(root, 1, statistics(features(), {"users": users(), "clicks": clicks()}))
    v2 = write_version(root, 2, statistics(features(), {"users": users(seed=1, score_shift=2.0),
                                                        "clicks": clicks()}))
    v3 = write_version(root, 3, statistics(features(), {"users": users(seed=2), "clicks": clicks(2500)}))
    root.set_current(v1)                                           # rolled back: v3 was bad
    assert compared_against(root, None) == v1                      # a load is checked against CURRENT
    assert compared_against(root, v1) == v3 and compared_against(root, v2) is None
    assert main(["diff", "--root", str(root.path)]) == 0
    assert capsys.readouterr().out.startswith(f"drift from {v3} to {v1}")
    assert main(["diff", "--root", str(root.path), v2]) == 0       # A named, B CURRENT
    assert capsys.readouterr().out.startswith(f"drift from {v2} to {v1}")
    assert versions_to_compare(root, v1, v2) == (v1, v2)
    with pytest.raises(FileNotFoundError, match="is not CURRENT, so nothing is compared with it by default"):
        versions_to_compare(root, None, v2)

    page = tmp_path / "page.html"
    assert main(["report", "--root", str(root.path), "--html", str(page)]) == 0
    assert f'"previous": "{v3}"' in page.read_text()
    assert main(["report", "--root", str(root.path), v2, "--html", str(page)]) == 0
    assert '"previous": null' in page.read_text()                  # not CURRENT: drawn alone
    assert main(["report", "--root", str(root.path), v2, "--against", v1, "--html", str(page)]) == 0
    assert f'"previous": "{v1}"' in page.read_text()
    assert main(["report", "--root", str(root.path), v2, "--against", "20990101T000000Z-000000000000",
                 "--html", str(page)]) == 9


def test_report_data_has_every_view_feature_and_check(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path / "root")
    a = statistics(features(), {"users": users(), "clicks": clicks()})
    b = statistics(features(), {"users": users(seed=1, score_shift=1.0), "clicks": clicks()})
    failed = CheckResult("users", "age", "min", "failed", -3, 0, [17], "1 row(s) below the limit")
    v2 = write_version(root, 2, b, [failed], accepted=True)
    data = page_data(Manifest.load(root.manifest_path(v2)), b, "V1", a)
    assert [v["name"] for v in data["views"]] == ["users", "clicks"]
    assert [f["name"] for f in data["views"][0]["features"]] == ["age", "score", "spend", "plan", "flag", "emb", "ids"]
    age = data["views"][0]["features"][0]
    assert age["checks"][0]["status"] == "failed" and "e.g. key(s) 17" in age["checks"][0]["text"]
    assert data["accepted_failures"] and data["failed"] == 1
    assert data["drift"][0]["feature"] == "score"
    for f in data["views"][0]["features"]:
        c = f["chart"]
        assert c["previous"] is not None and sum(c["current"]) == pytest.approx(1.0, abs=1e-9), f["name"]
    page = render(data)
    assert "<script src" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")


def test_many_categories_beyond_the_recorded_top_values_are_stable() -> None:
    """60 equally likely values, more than the statistics list: values one version lists and the other
    does not fall into the bin for all others instead of counting as a shift."""
    doc = {"entity": {"name": "k", "key_type": "int64"},
           "views": [{"name": "v", "source": "v.parquet", "features": [{"name": "c", "type": "string"}]}]}
    fs = parse_definitions(doc, "f.yaml")

    def stats(seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        batch = pa.record_batch({"k": pa.array(np.arange(30_000)),
                                 "c": pa.array([f"c{i}" for i in rng.integers(0, 60, 30_000)])})
        return statistics(fs, {"v": batch})

    a, b = stats(1), stats(2)
    assert not a["views"]["v"]["features"]["c"]["top_complete"]
    assert max(s.psi or 0 for s in compare(a, b)) < 0.02
    assert compare(a, a)[0].score == 0
