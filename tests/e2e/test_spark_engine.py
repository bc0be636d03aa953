"""`quiver load --engine spark` (Spark local[2], real RocksDB and Parquet) against the local engine as the
oracle: for the same inputs, the same version id, manifest, statistics, stored key-value pairs and
offline files; the same refusals, word for word, checks included; a killed Spark load that publishes
nothing; and a version published to S3 (moto) that `quiver sync` and `quiver serve` take like any other.

One SparkSession serves the module (a JVM start costs seconds); the data is tiny.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from rocksdict import AccessType, Options, Rdict

from quiver.base.errors import QuiverError
from quiver.loader.errors import ChecksFailed
from quiver.loader.load import LoadOptions, LoadResult, load
from quiver.loader.pause import PAUSE_AT, PAUSE_FILE
from quiver.quality.statistics import STATISTICS_FILE
from quiver.snapshot import Manifest, SnapshotRoot
from support import canon, computed, datasets, stored
from support.processes import QUIVER, run_quiver, wait_for

pyspark = pytest.importorskip("pyspark", reason="the [spark] extra is not installed")
from quiver.loader.spark import load as spark_load  # noqa: E402
from quiver.loader.spark import spark_session  # noqa: E402

# every test loads on Spark (a JVM; 20-70 s each on a shared 2-core machine, the session's start included)
pytestmark = [pytest.mark.spark, pytest.mark.slow]

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
LATER = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def shared() -> Any:
    """The tests' data sets and independent readers, from tests/support (the oracle decodes values)."""
    return SimpleNamespace(write_every_type=datasets.write_every_type, mismatches=stored.mismatches,
                           read_online=stored.read_online, read_offline=stored.read_offline,
                           canon_column=canon.canon_column)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = spark_session("local[2]", app_name="quiver-tests")
    yield session
    session.stop()


def local_load(features: Path, root: Path, as_of: datetime = AS_OF, **kw: Any) -> LoadResult:
    return load(features, root, LoadOptions(workers=2, as_of=as_of, **kw))


def spark_load_(spark: Any, features: Path, root: Path | str, as_of: datetime = AS_OF, **kw: Any) -> LoadResult:
    return spark_load(spark, features, root, LoadOptions(workers=2, as_of=as_of, **kw))


def statistics(root: Path, version: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SnapshotRoot(root).version_dir(version) / STATISTICS_FILE).read_bytes())
    return data["views"]


def stored_pairs(root: Path, version: str) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every key-value pair of every RocksDB of a version, in stored order, by folder under online/."""
    out = {}
    for db_dir in sorted((SnapshotRoot(root).version_dir(version) / "online").iterdir()):
        db = Rdict(str(db_dir), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            out[db_dir.name] = [(bytes(k), bytes(v)) for k, v in db.items()]  # type: ignore[arg-type]
        finally:
            db.close()
    return out


def assert_same_version(a: Path, b: Path, version: str) -> None:
    """b holds the version a holds: manifest (all but the creation time and the SST files' own
    bytes) with its checks' verdict, statistics.json, every key-value pair, and the offline Parquet
    files byte for byte. Both engines merge the same partial statistics in the same order, so even the
    floating-point sums (mean, std) and the kept example keys are equal, not close."""
    ma = Manifest.load(SnapshotRoot(a).manifest_path(version)).to_json()
    mb = Manifest.load(SnapshotRoot(b).manifest_path(version)).to_json()
    for key in ("format_version", "version", "as_of", "schema", "views", "groups", "checks"):
        assert ma[key] == mb[key], key
    assert [f["path"] for f in ma["files"]] == [f["path"] for f in mb["files"]]
    assert statistics(a, version) == statistics(b, version)
    def same_bytes(m: dict[str, Any]) -> list[dict[str, Any]]:   # entries with size and checksum
        return [f for f in m["files"] if f["path"].startswith("offline/") or f["path"] == STATISTICS_FILE]

    assert same_bytes(ma) == same_bytes(mb)
    assert any(f["path"] == STATISTICS_FILE for f in same_bytes(ma)) and len(same_bytes(ma)) > 1
    pairs_a, pairs_b = stored_pairs(a, version), stored_pairs(b, version)
    assert pairs_a.keys() == pairs_b.keys()
    for name in pairs_a:
        assert len(pairs_a[name]) == len(pairs_b[name]), name
        assert pairs_a[name] == pairs_b[name], name


# ---------------------------------------------------------------------------------------------
# The same version
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key_type", ["int64", "string"])
def test_same_version_as_the_local_engine(spark: Any, shared: Any, key_type: str, tmp_path: Path) -> None:
    """Every type with and without defaults, nulls, lists, negative/extreme or non-ASCII keys, two
    files with small row groups, an event-timestamp view with dropped duplicates that holds a
    quarter of the keys."""
    data = shared.write_every_type(tmp_path / "src", key_type)
    local = local_load(data.features_path, tmp_path / "local")
    on_spark = spark_load_(spark, data.features_path, tmp_path / "spark")
    assert on_spark.version == local.version and on_spark.published
    assert on_spark.dropped == local.dropped == data.dropped
    assert SnapshotRoot(tmp_path / "spark").current() == local.version
    assert_same_version(tmp_path / "local", tmp_path / "spark", local.version)
    # and what it holds is the data (the oracle the local engine's tests use)
    for view in ("every", "events"):
        assert shared.mismatches(data.expected[view], shared.read_online(tmp_path / "spark", view)) == []


def test_one_changed_view_is_rebuilt_and_the_rest_reused(spark: Any, shared: Any, tmp_path: Path) -> None:
    """Both views in the default group: the changed one is read from Parquet, the other's bytes are cut
    out of the previous version's group values (kept), its offline files linked."""
    data = shared.write_every_type(tmp_path / "src", "int64", n=400)
    first = spark_load_(spark, data.features_path, tmp_path / "spark")
    # a killed run's leftovers: the next run removes them
    leftover = tmp_path / "spark" / "staging" / "load-20261101T000000Z-000000000000-1"
    (leftover / "version").mkdir(parents=True)
    events = data.dir / "events" / "events.parquet"
    table = pq.read_table(events)
    pq.write_table(table.slice(0, table.num_rows - 5), events, row_group_size=256)

    second = spark_load_(spark, data.features_path, tmp_path / "spark", as_of=LATER)
    assert second.version != first.version and second.reused_views == ["every"]
    assert second.rows_read == {"events": table.num_rows - 5}, "only the changed view is read from its sources"
    assert not leftover.exists()
    m = second.manifest
    assert m.views["every"].reused_from == first.version and m.views["events"].reused_from == ""
    snap = SnapshotRoot(tmp_path / "spark")
    offline = next(f.path for f in m.files if f.path.startswith("offline/every/"))
    assert os.path.samefile(snap.version_dir(second.version) / offline, snap.version_dir(first.version) / offline)
    # the local engine, given the same two loads, ends at the same version with the same reuse
    shutil.rmtree(data.dir)
    data = shared.write_every_type(tmp_path / "src", "int64", n=400)
    local_load(data.features_path, tmp_path / "local")
    pq.write_table(table.slice(0, table.num_rows - 5), events, row_group_size=256)
    local = local_load(data.features_path, tmp_path / "local", as_of=LATER)
    assert (local.version, local.reused_views, local.rows_read) == (second.version, second.reused_views,
                                                                    second.rows_read)
    assert_same_version(tmp_path / "local", tmp_path / "spark", local.version)


def test_storage_groups_and_linked_groups(spark: Any, shared: Any, tmp_path: Path) -> None:
    """Three groups over the generated users (views of different key sets); then one view changes: its
    group is rebuilt, the others are linked whole, the same as the local engine does."""
    from test_groups import GROUPINGS, changed_ads, write_features

    src = tmp_path / "src"
    run_quiver("generate", "--events-per-user", "0", "--users", "1200", "--out", src, "--seed", "5", check=True)
    features = write_features(src, GROUPINGS["mixed"], "mixed")
    local = local_load(features, tmp_path / "local")
    on_spark = spark_load_(spark, features, tmp_path / "spark")
    assert on_spark.version == local.version and len(on_spark.manifest.groups) == 3
    assert_same_version(tmp_path / "local", tmp_path / "spark", local.version)
    src2 = changed_ads(src, tmp_path / "src2")
    features2 = write_features(src2, GROUPINGS["mixed"], "mixed")
    local2 = local_load(features2, tmp_path / "local", as_of=LATER)
    spark2 = spark_load_(spark, features2, tmp_path / "spark", as_of=LATER)
    assert (spark2.version, spark2.linked_groups, spark2.rows_read) == (local2.version, local2.linked_groups,
                                                                        local2.rows_read)
    assert sorted(spark2.linked_groups) == ["cold", "hot"]
    assert_same_version(tmp_path / "local", tmp_path / "spark", local2.version)


def test_equal_timestamps_keep_the_row_the_local_engine_keeps(spark: Any, tmp_path: Path) -> None:
    """Duplicate keys with the same event timestamp: the local engine keeps the first row in file and
    row order (its sort is stable); Spark's shuffle does not keep order, so the engine must restore it."""
    d = tmp_path / "src"
    d.mkdir()
    n = 3000
    for i in range(3):
        keys = [k % 700 for k in range(n)]
        pq.write_table(pa.table({"user_id": _ids(*keys), "ts": pa.array([5] * n, pa.timestamp("us", tz="UTC")),
                                 "x": pa.array([float(i * n + k) for k in range(n)])}),
                       d / f"part-{i}.parquet", row_group_size=500)
    doc = {"entity": {"name": "user_id", "key_type": "int64"},
           "views": [{"name": "v", "source": "part-*.parquet", "event_timestamp": "ts",
                      "features": [{"name": "x", "type": "float64"}]}]}
    (d / "features.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    local = local_load(d / "features.yaml", tmp_path / "local")
    on_spark = spark_load_(spark, d / "features.yaml", tmp_path / "spark")
    assert on_spark.dropped == local.dropped == {"v": 3 * n - 700}
    assert_same_version(tmp_path / "local", tmp_path / "spark", local.version)


def test_computed_features_are_the_same_version_on_both_engines(spark: Any, tmp_path: Path) -> None:
    """Window aggregations (every fn, both window edges, empty windows, ties, nulls, a filter) and row
    expressions of each allowed kind: DuckDB locally, Spark SQL here, from the same features.yaml; the same
    version byte for byte, and both equal to the plain-Python oracle."""
    data = computed.write(tmp_path / "src")
    local = local_load(data.features_path, tmp_path / "local", as_of=computed.T)
    on_spark = spark_load_(spark, data.features_path, tmp_path / "spark", as_of=computed.T)
    assert on_spark.version == local.version and on_spark.published
    assert_same_version(tmp_path / "local", tmp_path / "spark", local.version)
    assert computed.differences(data.expected_activity, stored.read_offline(tmp_path / "spark", "activity")[0]) == []
    assert computed.differences(data.expected_profile, stored.read_offline(tmp_path / "spark", "profile")[0]) == []


def test_a_computed_value_that_does_not_fit_is_refused_as_locally(spark: Any, tmp_path: Path) -> None:
    data = computed.write(tmp_path / "src", users=300)
    doc = yaml.safe_load(data.features_path.read_text())
    doc["views"][1]["features"].append({"name": "huge", "type": "int32", "expr": "cast(age as bigint) * 100000000"})
    data.features_path.write_text(yaml.safe_dump(doc))
    with pytest.raises(QuiverError) as local:
        local_load(data.features_path, tmp_path / "local", as_of=computed.T)
    with pytest.raises(QuiverError) as on_spark:
        spark_load_(spark, data.features_path, tmp_path / "spark", as_of=computed.T)
    assert str(on_spark.value) == str(local.value) and "feature 'huge'" in str(local.value)
    assert on_spark.value.exit_code == local.value.exit_code == 4


# ---------------------------------------------------------------------------------------------
# The same refusals
# ---------------------------------------------------------------------------------------------

def _write(d: Path, table: pa.Table | None, features: list[dict[str, Any]] | None = None,
           view_extra: dict[str, Any] | None = None, source: str = "v.parquet") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if table is not None:
        pq.write_table(table, d / "v.parquet", row_group_size=600)
    doc = {"entity": {"name": "user_id", "key_type": "int64"},
           "views": [{"name": "v", "source": source, **(view_extra or {}),
                      "features": features or [{"name": "x", "type": "float64"}]}]}
    (d / "features.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return d / "features.yaml"


def _ids(*keys: int | None) -> pa.Array:
    return pa.array(list(keys), pa.int64())


def _truncated(d: Path) -> Path:
    f = _write(d, pa.table({"user_id": _ids(*range(2000)), "x": pa.array([float(i) for i in range(2000)])}))
    data = (d / "v.parquet").read_bytes()
    (d / "v.parquet").write_bytes(data[: len(data) // 2])
    return f


def _duplicates(d: Path) -> Path:
    # 1,000 keys over two key ranges, duplicates in both: the error names the first range's
    keys = list(range(1000)) + [-42, -42, 17, 900]
    return _write(d, pa.table({"user_id": _ids(*keys), "x": pa.array([float(k) for k in keys])}))


BAD_INPUTS: dict[str, Callable[[Path], Path]] = {
    "unknown type": lambda d: _write(d, None, [{"name": "x", "type": "float128"}]),
    "missing features.yaml": lambda d: d / "nope.yaml",
    "no source file": lambda d: _write(d, None, source="nowhere/*.parquet"),
    "not parquet": lambda d: (_write(d, None), (d / "v.parquet").write_bytes(b"not parquet" * 20))[0],
    "truncated parquet": _truncated,
    "empty source": lambda d: _write(d, pa.table({"user_id": _ids(), "x": pa.array([], pa.float64())})),
    "wrong column type": lambda d: _write(d, pa.table({"user_id": _ids(1, 2), "x": pa.array(["a", "b"])})),
    "wrong key type": lambda d: _write(d, pa.table({"user_id": pa.array(["a", "b"]), "x": pa.array([1.0, 2.0])})),
    "null key": lambda d: _write(d, pa.table({"user_id": _ids(5, None, 7), "x": pa.array([1.0, 2.0, 3.0])})),
    "duplicate keys": _duplicates,
    "null inside a list": lambda d: _write(
        d, pa.table({"user_id": _ids(3, 1, 2), "x": pa.array([[1], None, [2, None]], pa.list_(pa.int64()))}),
        [{"name": "x", "type": "list<int64>"}]),
    "embedding length": lambda d: _write(
        d, pa.table({"user_id": _ids(3, 1, 2), "e": pa.array([[1.0, 2.0], [1.0, 2.0, 3.0], None],
                                                             pa.list_(pa.float32()))}),
        [{"name": "e", "type": "list<float32>", "length": 2}]),
    "timestamp finer than us": lambda d: _write(
        d, pa.table({"user_id": _ids(3, 1, 2), "ts": pa.array([1000, 2000, 3001], pa.timestamp("ns")),
                     "x": pa.array([1.0, 2.0, 3.0])}), view_extra={"event_timestamp": "ts"}),
    "type change": lambda d: _write(d, pa.table({"user_id": _ids(1, 2), "x": pa.array([1, 2], pa.int32())}),
                                    [{"name": "x", "type": "int32"}]),
}


@pytest.fixture(scope="module")
def serving_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root whose CURRENT version has feature x as float64."""
    d = tmp_path_factory.mktemp("serving")
    f = _write(d / "src", pa.table({"user_id": _ids(1, 2), "x": pa.array([0.5, 1.5])}))
    local_load(f, d / "root")
    return d / "root"


def _refusal(run: Callable[[], object]) -> QuiverError:
    with pytest.raises(QuiverError) as e:
        run()
    return e.value


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_the_local_message(spark: Any, case: str, serving_root: Path,
                                                     tmp_path: Path) -> None:
    features = BAD_INPUTS[case](tmp_path / "src")
    roots = {engine: tmp_path / engine for engine in ("local", "spark")}
    for r in roots.values():
        shutil.copytree(serving_root, r)
    expected = _refusal(lambda: local_load(features, roots["local"]))
    got = _refusal(lambda: spark_load_(spark, features, roots["spark"]))
    assert (type(got), str(got)) == (type(expected), str(expected))
    snap = SnapshotRoot(roots["spark"])
    assert snap.versions() == SnapshotRoot(serving_root).versions()
    assert snap.current() == SnapshotRoot(serving_root).current()
    assert not list(snap.staging_dir.glob("load-*")), "a failed load left its staging folder"


def test_cli_exit_code_and_message(serving_root: Path, tmp_path: Path) -> None:
    """Through the command line (its own JVM): a refusal found on the executors."""
    features = _duplicates(tmp_path / "src")
    codes = {}
    for engine in ("local", "spark"):
        root = tmp_path / engine
        shutil.copytree(serving_root, root)
        r = run_quiver("load", "--features", features, "--root", root, "--engine", engine, "--spark-master", "local[2]",
                       timeout=900)
        codes[engine] = (r.returncode, [line for line in r.stderr.splitlines() if line.startswith("quiver load:")])
    assert codes["spark"] == codes["local"]
    assert codes["local"][0] == 4 and "entity key -42" in codes["local"][1][0]


# ---------------------------------------------------------------------------------------------
# Checks: the same statistics, the same verdict
# ---------------------------------------------------------------------------------------------

def _cli_load(features: Path, root: Path, engine: str, as_of: str, *flags: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_quiver("load", "--features", features, "--root", root, "--engine", engine, "--spark-master", "local[2]",
                      "--as-of", as_of, *flags, timeout=900, env=env)


def _refusal_text(stderr: str) -> list[str]:
    """What the CLI says of a refusal: its error line and what follows, without log lines (py4j logs
    the gateway's close after it)."""
    lines = stderr[stderr.index("quiver load: error:"):].splitlines()
    return [line for line in lines if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", line)]


def test_checks_refuse_and_accept_as_the_local_engine_does(spark: Any, tmp_path: Path) -> None:
    """The generated users with checks: a good day passes with one warning, and both engines write the
    same statistics.json; a bad day (ages out of range, a view that lost 60% of its users: row-level,
    volume and drift-against-CURRENT checks) is refused by Spark with the local engine's message and
    exit code 13, CURRENT unchanged; --accept-failed-checks publishes it, the failures recorded."""
    from test_load_checks import CHECKS_FAILED, break_data

    good, bad = tmp_path / "good", tmp_path / "bad"
    run_quiver("generate", "--events-per-user", "0",
        "--users", "2000", "--out", good, "--seed", "7", "--with-checks", check=True)
    break_data(good, bad)
    roots = {engine: tmp_path / engine for engine in ("local", "spark")}
    first = local_load(good / "features.yaml", roots["local"])
    on_spark = spark_load_(spark, good / "features.yaml", roots["spark"])
    assert on_spark.version == first.version
    assert (on_spark.checks.failed, on_spark.checks.warned) == (0, 1)
    assert_same_version(roots["local"], roots["spark"], first.version)

    expected = _refusal(lambda: local_load(bad / "features.yaml", roots["local"], as_of=LATER))
    got = _refusal(lambda: spark_load_(spark, bad / "features.yaml", roots["spark"], as_of=LATER))
    assert isinstance(got, ChecksFailed) and "3 check(s) failed" in str(got)
    assert (type(got), str(got)) == (type(expected), str(expected))
    snap = SnapshotRoot(roots["spark"])
    assert snap.current() == first.version and snap.versions() == [first.version]
    assert not list(snap.staging_dir.glob("load-*")), "a refused load left its staging folder"
    # the command line: the same exit code and words
    later = LATER.strftime("%Y-%m-%dT%H:%M:%SZ")
    cli = {engine: _cli_load(bad / "features.yaml", roots[engine], engine, later) for engine in roots}
    assert cli["spark"].returncode == cli["local"].returncode == CHECKS_FAILED, cli["spark"].stderr
    assert _refusal_text(cli["spark"].stderr) == _refusal_text(cli["local"].stderr)
    assert snap.current() == first.version and snap.versions() == [first.version]

    accepted_local = local_load(bad / "features.yaml", roots["local"], as_of=LATER, accept_failed_checks=True)
    accepted = spark_load_(spark, bad / "features.yaml", roots["spark"], as_of=LATER, accept_failed_checks=True)
    assert accepted.version == accepted_local.version and snap.current() == accepted.version
    assert accepted.checks.accepted_failures and accepted.checks.failed == 3
    assert_same_version(roots["local"], roots["spark"], accepted.version)


def test_without_statistics_as_the_local_engine(spark: Any, shared: Any, tmp_path: Path) -> None:
    """statistics=False (the checks benchmark's baseline): no statistics.json, no checks, on both."""
    data = shared.write_every_type(tmp_path / "src", "int64", n=300)
    local = local_load(data.features_path, tmp_path / "local", statistics=False)
    on_spark = spark_load_(spark, data.features_path, tmp_path / "spark", statistics=False)
    assert on_spark.version == local.version
    files = [f.path for f in on_spark.manifest.files]
    assert STATISTICS_FILE not in files and files == [f.path for f in local.manifest.files]


# ---------------------------------------------------------------------------------------------
# A killed Spark load
# ---------------------------------------------------------------------------------------------

def _group_members(pgid: int) -> list[int]:
    """The processes of a process group still alive (zombies excluded)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(p.name))
    return found


def _is_java(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/exe").resolve().name == "java"
    except OSError:
        return False


@contextmanager
def _paused_spark_load(args: list[str], stage: str, tmp_path: Path,
                       env: dict[str, str] | None = None) -> Iterator[None]:
    """`quiver load --engine spark` (args) run until the loader's pause point (loader/pause.py) after
    `stage`, in its own process group; on leaving, that whole group (the CLI, its JVM and Spark's Python
    workers) is SIGKILLed and gone."""
    paused = tmp_path / f"paused-{stage}"
    log_path = tmp_path / f"load-{stage}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([QUIVER, *args], env={**(env or os.environ), PAUSE_AT: stage, PAUSE_FILE: str(paused)},
                                stdout=log, stderr=log, start_new_session=True)
        try:
            wait_for(lambda: paused.exists() or proc.poll() is not None, timeout=600,
                     what=f"the Spark load to pause after {stage}")
            assert proc.poll() is None, log_path.read_text(errors="replace")
            assert any(_is_java(p) for p in _group_members(proc.pid)), "no JVM in the load's group: not mid-build"
            yield
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    wait_for(lambda: not _group_members(proc.pid), timeout=30, what="the killed load's JVM and workers to exit")


def _spark_cli(features: Path, root: Path | str, as_of: str, *flags: str) -> list[str]:
    """The arguments of `quiver load --engine spark`."""
    return ["load", "--features", str(features), "--root", str(root), "--engine", "spark",
            "--spark-master", "local[2]", "--as-of", as_of, *flags]


@pytest.mark.parametrize("stage", ["sst", "checks"])
def test_a_killed_spark_load_publishes_nothing_and_the_next_run_recovers(spark: Any, shared: Any, stage: str,
                                                                        tmp_path: Path) -> None:
    """Killed after its Spark jobs wrote the SST and offline files ("spark"), or after statistics.json
    was written ("checks"): CURRENT and the published versions are untouched, and the next load
    removes the leftovers and publishes."""
    data = shared.write_every_type(tmp_path / "src", "int64", n=600)
    root = tmp_path / "root"
    first = spark_load_(spark, data.features_path, root)
    events = data.dir / "events" / "events.parquet"
    table = pq.read_table(events)
    pq.write_table(table.slice(0, table.num_rows - 7), events, row_group_size=256)

    with _paused_spark_load(_spark_cli(data.features_path, root, "2026-11-02T00:00:00Z"), stage, tmp_path):
        (staged,) = SnapshotRoot(root).staging_dir.glob("load-*")
        assert list((staged / "version" / "offline").rglob("*.parquet")), "nothing was written yet"
        if stage == "checks":
            assert (staged / "version" / STATISTICS_FILE).is_file()
    snap = SnapshotRoot(root)
    assert snap.current() == first.version and snap.versions() == [first.version]
    assert list(snap.staging_dir.glob("load-*")), "the kill left no leftovers: the test proves nothing"

    second = spark_load_(spark, data.features_path, root, as_of=LATER)
    assert second.published and snap.current() == second.version
    assert snap.versions() == sorted([first.version, second.version])
    assert not list(snap.staging_dir.glob("load-*")), "the next run did not clean the killed run's leftovers"
    local = local_load(data.features_path, tmp_path / "local", as_of=LATER)
    assert local.version == second.version


def test_a_killed_spark_load_to_object_storage_leaves_latest(shared: Any, tmp_path: Path) -> None:
    """An object-store --root: killed after the checks, with the version complete in its temporary
    work root but not uploaded, LATEST and the bucket's objects are unchanged; the next run removes
    that work root (the staging of a root of its own, named for the URI) and publishes."""
    from test_distribution import CREDS, start_moto, stop

    proc, endpoint = start_moto()
    try:
        temp = tmp_path / "tmp"   # the loads' TMPDIR, where the default work root goes
        temp.mkdir()
        env = {**os.environ, **CREDS, "QUIVER_S3_ENDPOINT": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
               "TMPDIR": str(temp)}
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="features")

        def objects() -> dict[str, str]:
            listed = s3.list_objects_v2(Bucket="features", Prefix="quiver/prod/").get("Contents", [])
            return {o["Key"]: o["ETag"] for o in listed}

        data = shared.write_every_type(tmp_path / "src", "int64", n=300)
        uri = "s3://features/quiver/prod"
        r = run_quiver(*_spark_cli(data.features_path, uri, "2026-11-01T00:00:00Z"), env=env, timeout=900)
        assert r.returncode == 0, r.stderr
        first = r.stdout.strip()
        latest = s3.get_object(Bucket="features", Key="quiver/prod/LATEST")["Body"].read()
        assert first.encode() in latest
        before = objects()
        events = data.dir / "events" / "events.parquet"
        table = pq.read_table(events)
        pq.write_table(table.slice(0, table.num_rows - 7), events, row_group_size=256)
        assert not list(temp.glob("quiver-build-*")), "a load left its work root"
        later = _spark_cli(data.features_path, uri, "2026-11-02T00:00:00Z")

        with _paused_spark_load(later, "checks", tmp_path, env):
            (work,) = temp.glob("quiver-build-*")
            assert list(SnapshotRoot(work).staging_dir.glob("load-*"))
        assert work.is_dir(), "the kill left no leftovers: the test proves nothing"
        assert objects() == before, "a killed load uploaded something"
        assert s3.get_object(Bucket="features", Key="quiver/prod/LATEST")["Body"].read() == latest

        r = run_quiver(*later, env=env, timeout=900)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() != first
        assert r.stdout.strip().encode() in s3.get_object(Bucket="features", Key="quiver/prod/LATEST")["Body"].read()
        assert not list(temp.glob("quiver-build-*")), "the next run left the killed one's work root"
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------
# Object storage
# ---------------------------------------------------------------------------------------------

def test_spark_publishes_to_s3_and_sync_serves_it(shared: Any, tmp_path: Path, start_server: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from test_distribution import CREDS, start_moto, stop

    from quiver.client import FeatureClient

    proc, endpoint = start_moto()
    try:
        env = {**CREDS, "QUIVER_S3_ENDPOINT": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="features")
        data = shared.write_every_type(tmp_path / "src", "int64", n=300)
        uri = "s3://features/quiver/prod"
        r = run_quiver("load", "--features", data.features_path, "--root", uri, "--engine", "spark",
                       "--as-of", "2026-11-01T00:00:00Z", env=env, timeout=900)
        assert r.returncode == 0, r.stderr
        version = r.stdout.strip()
        replica = tmp_path / "replica"
        r = run_quiver("sync", "--from", uri, "--root", replica, env=env)
        assert r.returncode == 0, r.stderr
        assert SnapshotRoot(replica).current() == version
        local = local_load(data.features_path, tmp_path / "local")
        assert local.version == version
        assert_same_version(tmp_path / "local", replica, version)
    finally:
        stop(proc)
    server = start_server(replica)
    server.wait_health()
    key = next(k for k in data.expected["events"])
    with FeatureClient(server.target) as client:
        got = client.get_features([key, 7], ["events"])
    assert got.version == version
    want = data.expected["events"][key]["score"]
    assert got.rows[0]["events"] is not None and got.rows[1]["events"] is None
    assert shared.canon_column("float64", pa.array([got.rows[0]["events"]["score"]]))[0] == want


# ---------------------------------------------------------------------------------------------
# DataFrames a job already holds
# ---------------------------------------------------------------------------------------------

def test_build_version_from_dataframes(spark: Any, shared: Any, tmp_path: Path) -> None:
    """The same stored pairs and offline rows as the local engine's from the files the DataFrames
    were read from; a content-defined version id (the same rows again publish nothing new)."""
    from quiver.loader.spark import build_version

    data = shared.write_every_type(tmp_path / "src", "int64", n=500)
    local = local_load(data.features_path, tmp_path / "local")
    frames = {"every": spark.read.parquet(str(data.dir / "every")),
              "events": spark.read.parquet(str(data.dir / "events"))}
    built = build_version(spark, data.features_path, frames, tmp_path / "spark", as_of=AS_OF)
    assert built.published and built.dropped == local.dropped
    assert stored_pairs(tmp_path / "local", local.version) == stored_pairs(tmp_path / "spark", built.version)
    for view in ("every", "events"):
        _, want = shared.read_offline(tmp_path / "local", view)
        _, got = shared.read_offline(tmp_path / "spark", view)
        assert sorted(got, key=repr) == sorted(want, key=repr), view
        (source,) = built.manifest.views[view].sources
        assert source.path == f"spark:dataframe/{view}" and source.size == pq.read_table(data.dir / view).num_rows
    # a DataFrame's partitions are not the local engine's encode tasks, so the partial statistics merge
    # in another order: only the floating-point sums and the first example keys can differ
    want_stats, got_stats = statistics(tmp_path / "local", local.version), statistics(tmp_path / "spark",
                                                                                       built.version)
    assert _merge_order_free(got_stats) == _merge_order_free(want_stats)
    for view, s in want_stats.items():
        for name, f in s["features"].items():
            for k in ("mean", "std"):
                want = f.get(k)
                assert got_stats[view]["features"][name].get(k) == (want if want is None else
                                                                    pytest.approx(want, rel=1e-12)), (view, name)
    again = build_version(spark, data.features_path, frames, tmp_path / "spark", as_of=AS_OF)
    assert again.version == built.version and not again.published
    fewer = {**frames, "events": frames["events"].limit(10)}
    assert build_version(spark, data.features_path, fewer, tmp_path / "spark", as_of=AS_OF).version != built.version


def _merge_order_free(stats: dict[str, Any]) -> dict[str, Any]:
    """Statistics without what depends on the order partials merge in: mean and std (Chan's merge of
    floating-point sums) and the example keys of violations (the first few in merge order)."""
    out = json.loads(json.dumps(stats))
    for s in out.values():
        for f in s["features"].values():
            f.pop("mean", None)
            f.pop("std", None)
            f["violations"] = {c: v["count"] for c, v in f["violations"].items()}
    return out


def test_dataframe_of_the_wrong_type_is_refused(spark: Any, tmp_path: Path) -> None:
    from quiver.loader.errors import DataError
    from quiver.loader.spark import build_version

    features = _write(tmp_path / "src", None)
    frame = spark.createDataFrame([(1, "a"), (2, "b")], "user_id long, x string")
    with pytest.raises(DataError, match=r"frames_by_view\['v'\]: view 'v': column 'x' \(feature 'x'\) is string"):
        build_version(spark, features, {"v": frame}, tmp_path / "root")
    assert not SnapshotRoot(tmp_path / "root").versions()
