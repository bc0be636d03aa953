"""Feature checks and statistics through real `quiver load`, `quiver serve`, `quiver diff` and
`quiver report` processes: a refused version changes nothing a running server serves, an accepted one
is recorded and exported as metrics, statistics equal pyarrow.compute on the sources, and the report
page renders in headless chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from browser import dump_dom, screenshot

from quiver.quality.statistics import STATISTICS_FILE
from quiver.snapshot import Manifest, SnapshotRoot
from quiver.v1 import quiver_pb2 as pb
from support.datasets import write_every_type
from support.processes import ServerProcess, run_quiver, wait_for

USERS = 2000
CHECKS_FAILED = 13


def load(src: Path, root: Path, as_of: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return run_quiver("load", "--features", src / "features.yaml", "--root", root, "--as-of", as_of, "--workers", "2",
                      *flags, timeout=300)


def statistics(root: Path, version: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SnapshotRoot(root).version_dir(version) / STATISTICS_FILE).read_text())
    return data["views"]


def break_data(src: Path, dest: Path) -> None:
    """A bad day: ages out of range for a few users, and the ads view lost 60% of its users."""
    shutil.copytree(src, dest)
    for f in sorted((dest / "profile").glob("*.parquet")):
        t = pq.read_table(f)
        first = pa.array(np.arange(t.num_rows) < 3)
        age = pc.if_else(first, pa.scalar(150, pa.int32()), t.column("age").combine_chunks())
        t = t.set_column(t.schema.get_field_index("age"), "age", age)
        pq.write_table(t, f)
    for f in sorted((dest / "ads").glob("*.parquet")):
        t = pq.read_table(f)
        pq.write_table(t.slice(0, t.num_rows * 4 // 10), f)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("checks")
    good = base / "good"
    run_quiver("generate", "--events-per-user", "0",
        "--users", str(USERS), "--out", good, "--seed", "7", "--with-checks", check=True)
    bad = base / "bad"
    break_data(good, bad)
    return good, bad


def served(server: ServerProcess) -> bytes:
    response = server.stub().GetFeatures(pb.GetFeaturesRequest(int64_ids=list(range(0, USERS, 97))), timeout=10)
    return bytes(response.SerializeToString())


@pytest.mark.browser
@pytest.mark.slow  # ~15 s: three loads, a server, the report rendered twice in chromium
def test_refused_version_changes_nothing_served_and_accepted_one_is_recorded(
        sources: tuple[Path, Path], tmp_path: Path) -> None:
    good, bad = sources
    root = tmp_path / "root"
    first = load(good, root, "2026-01-01T00:00:00Z")
    assert first.returncode == 0, first.stderr
    v1 = first.stdout.split()[-1]
    assert "WARNED view 'profile', feature 'churn_score': finite warned" in first.stderr
    assert "max_row_change skipped: no current version to compare against" in first.stderr
    m1 = Manifest.load(SnapshotRoot(root).manifest_path(v1))
    assert (m1.checks.failed, m1.checks.warned, m1.checks.accepted_failures) == (0, 1, False)
    assert any(f.path == STATISTICS_FILE for f in m1.files)          # listed and checksummed
    assert not m1.verify_files(SnapshotRoot(root).version_dir(v1))

    server = ServerProcess(root, tmp_path / "serve.log", metrics=True)
    try:
        server.wait_health()
        before = served(server)
        assert server.metric("quiver_snapshot_checks_warned") == 1
        assert server.metric("quiver_snapshot_accepted_failed_checks") == 0

        refused = load(bad, root, "2026-01-02T00:00:00Z")
        assert refused.returncode == CHECKS_FAILED, refused.stderr
        err = refused.stderr
        assert "3 check(s) failed; the version is not published" in err
        assert re.search(r"FAILED view 'profile', feature 'age': max failed: measured 150, limit 120 \(3 row\(s\) "
                         r"above the limit\); e\.g\. key\(s\) \d+, \d+, \d+", err), err
        assert re.search(r"FAILED view 'ads': max_row_change failed: measured 0\.6\d*, limit 0\.5 \(\d+ rows in "
                         + v1 + r", \d+ now\)", err), err
        assert "FAILED view 'ads': min_rows failed: measured " in err
        assert "nothing was published; CURRENT is unchanged" in err
        assert SnapshotRoot(root).current() == v1
        assert SnapshotRoot(root).versions() == [v1]
        assert not list(SnapshotRoot(root).staging_dir.glob("load-*"))
        assert served(server) == before
        assert server.metric("quiver_snapshot_current", version=v1) == 1

        accepted = load(bad, root, "2026-01-02T00:00:00Z", "--accept-failed-checks")
        assert accepted.returncode == 0, accepted.stderr
        v2 = accepted.stdout.split()[-1]
        assert "FAILED (accepted with --accept-failed-checks) view 'profile', feature 'age': max failed" in \
            accepted.stderr
        m2 = Manifest.load(SnapshotRoot(root).manifest_path(v2))
        assert m2.checks.accepted_failures and m2.checks.failed == 3
        assert json.loads(SnapshotRoot(root).manifest_path(v2).read_text())["checks"]["accepted_failures"] is True
        wait_for(lambda: server.metric("quiver_snapshot_current", version=v2) == 1, 30, "the server to swap to v2")
        assert server.metric("quiver_snapshot_checks_failed") == 3
        assert server.metric("quiver_snapshot_accepted_failed_checks") == 1
        assert served(server) != before
    finally:
        server.stop()

    # unchanged views were reused, their statistics carried from v1
    s1, s2 = statistics(root, v1), statistics(root, v2)
    assert s2["activity"] == s1["activity"] and s2["embedding"] == s1["embedding"]
    assert s2["ads"]["rows"] < s1["ads"]["rows"]

    diff = run_quiver("diff", "--root", root, timeout=60)
    assert diff.returncode == 0, diff.stderr
    lines = diff.stdout.splitlines()
    assert lines[0].startswith(f"drift from {v1} to {v2}")
    assert lines[2].split()[:2] == ["ads", "(rows)"] and "(-60." in lines[2]

    page = tmp_path / "report.html"
    r = run_quiver("report", "--root", root, "--html", page, timeout=60)
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert "<script src" not in text and "<link" not in text                 # self-contained: no fetches
    dom = dump_dom(page)
    body = re.search(r"<body[^>]*>", dom)
    assert body and "data-script-errors" not in body.group(0), body
    features = sum(len(v.features) for v in m2.schema.views)
    charts = re.search(r'data-charts="(\d+)"', body.group(0))
    assert charts and int(charts.group(1)) == features
    assert dom.count("<svg") == features and dom.count('class="bar"') > features
    assert 'class="card failed"' in dom and "PUBLISHED WITH FAILED CHECKS" in dom
    png = tmp_path / "report.png"
    screenshot(page, png)
    assert png.stat().st_size > 20_000      # a blank page is a few kB


# ---------------------------------------------------------------------------------------------
# Statistics of a real load against pyarrow.compute on its sources
# ---------------------------------------------------------------------------------------------

def _declared(col: pa.Array, f: Any) -> pa.Array:
    """A source column as the version stores it: the declared type, the default in place of nulls."""
    from quiver.loader.normalize import arrow_type

    col = col.cast(arrow_type(f)) if f.type != "list<float32>" else col
    if f.default is not None and col.null_count:
        default = f.default.encode() if f.type == "bytes" else f.default
        col = col.fill_null(pa.scalar(default, type=col.type))
    return col


def _measure(col: pa.Array, f: Any) -> pa.Array:
    if f.type == "list<int64>":
        return pc.list_value_length(col)
    if f.type == "bytes":
        return pc.binary_length(col)
    if f.type == "list<float32>":
        flat = pc.list_flatten(col.fill_null(pa.scalar([0.0] * f.length, col.type))).to_numpy()
        with np.errstate(invalid="ignore", over="ignore"):
            norms = np.sqrt((flat.astype(np.float64).reshape(len(col), f.length) ** 2).sum(axis=1))
        return pa.array(norms, mask=~col.is_valid().to_numpy(zero_copy_only=False))
    return col


@pytest.mark.parametrize("key_type", ["string", "int64"])
def test_load_statistics_equal_pyarrow_compute_on_the_sources(key_type: str, tmp_path: Path) -> None:
    ds = write_every_type(tmp_path / "src", key_type)
    r = load(ds.dir, tmp_path / "root", "2026-01-01T00:00:00Z")
    assert r.returncode == 0, r.stderr
    stats = statistics(tmp_path / "root", r.stdout.split()[-1])
    view = ds.features.view("every")
    source = pa.concat_tables(pq.read_table(p) for p in sorted((ds.dir / "every").glob("*.parquet")))
    assert stats["every"]["rows"] == source.num_rows
    for f in view.features:
        s = stats["every"]["features"][f.name]
        col = _declared(source.column(f.column).combine_chunks(), f)
        assert (s["rows"], s["nulls"], s["count"]) == (len(col), col.null_count, len(col) - col.null_count), f.name
        if f.type == "bool":
            assert s["top"][0] == [True, pc.sum(col).as_py()], f.name
            continue
        if f.type == "string":
            assert s["distinct"] == pytest.approx(pc.count_distinct(col).as_py(), rel=0.02), f.name
            counts = pc.value_counts(col.drop_null()).to_pylist()
            top = max(c["counts"] for c in counts)
            assert s["top"][0][1] == top, f.name
            continue
        m = _measure(col, f)
        finite = m.filter(pc.is_finite(m)) if pa.types.is_floating(m.type) else m.drop_null()
        if f.type in ("float32", "float64"):
            assert (s["nan"], s["inf"]) == (pc.sum(pc.is_nan(m)).as_py(), pc.sum(pc.is_inf(m)).as_py()), f.name
        mm = pc.min_max(finite)
        assert (s["min"], s["max"]) == pytest.approx((mm["min"].as_py(), mm["max"].as_py()), rel=1e-6), f.name
        as_float = finite.cast(pa.float64(), safe=False)   # as the statistics sum: in doubles
        mean, std = pc.mean(as_float).as_py(), pc.stddev(as_float, ddof=0).as_py()
        # values near the float64 limits overflow the sums: the statistics say null, not inf or NaN
        assert s["mean"] == (pytest.approx(mean, rel=1e-9) if np.isfinite(mean) else None), f.name
        assert s["std"] == (pytest.approx(std, rel=1e-6) if np.isfinite(std) else None), f.name
        if f.type == "list<int64>":
            assert s["empty"] == pc.sum(pc.equal(m, 0)).as_py()
    # the view with an event timestamp: statistics of the rows kept after dedup
    events = stats["events"]
    assert events["rows"] == len(ds.expected["events"])
    latest = [v["score"] for v in ds.expected["events"].values()]
    assert events["features"]["score"]["count"] == len(latest)
