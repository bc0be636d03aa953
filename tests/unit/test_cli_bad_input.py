"""Every command, given a missing root, an unreadable file, a bad flag value, a busy lock or bad load input
found before any work starts, exits with the code the table in base/errors.py gives that failure, its
message names the path (or the flag), and a refused load publishes nothing.

These run `quiver.cli.main` in the test process (support.inprocess: it fails a case that would start a
worker pool, a server, a subprocess or a thread). The bad inputs the loader finds only in its worker
processes stay process tests in tests/e2e/test_loader.py, and tests/e2e/test_cli_exit_status.py proves, one
process per exit code, that main's code is the process's exit status."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver.base.errors import EXIT_CODES
from quiver.snapshot import SnapshotRoot
from support.inprocess import run_in_process
from support.loads import assert_load_rejected

USAGE, SOURCE, DATA, ROOT = 2, 3, 4, 9
run = run_in_process


def test_the_codes_used_here_mean_what_this_test_assumes() -> None:
    assert EXIT_CODES[USAGE].startswith("usage") and EXIT_CODES[ROOT].startswith("snapshot root")
    assert EXIT_CODES[SOURCE].startswith("source") and EXIT_CODES[DATA].startswith("data")


@pytest.fixture
def root(published_root: Path, tmp_path: Path) -> Path:
    """A copy of a root with one published version, for a test that must leave it untouched."""
    dest = tmp_path / "root"
    shutil.copytree(published_root, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# Roots, flags, unreadable files, locks: every command
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["verify", "--root", "{missing}"],
    ["gc", "--root", "{missing}", "--keep", "1"],
    ["publish", "--root", "{missing}", "--to", "{store}"],
    ["sync", "--from", "{store}", "--root", "{under_a_file}/root"],
    ["snapshots", "--root", "{missing}"],
    ["load", "--features", "{features}", "--root", "{under_a_file}/root"],
], ids=lambda c: c[0])
def test_a_missing_root(command: list[str], small_view: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    paths = {"missing": str(tmp_path / "nope"), "store": (tmp_path / "store").as_uri(),
             "under_a_file": str(tmp_path / "file"), "features": str(small_view())}
    args = [a.format(**paths) for a in command]
    r = run(*args)
    assert r.returncode == ROOT, r.stderr
    named = paths["under_a_file"] if command[0] in ("sync", "load") else paths["missing"]
    assert named in r.stderr and f"quiver {command[0]}: error:" in r.stderr


@pytest.mark.parametrize("command,needle", [
    (["gc", "--root", "{root}", "--keep", "-1"], "--keep"),
    (["sync", "--from", "{store}", "--root", "{root}", "--keep", "1"], "--keep"),
    (["sync", "--from", "{store}", "--root", "{root}", "--watch", "0"], "--watch"),
    (["verify", "--root", "{root}", "--sample", "0"], "--sample"),
    (["serve", "--root", "{root}", "--workers", "0", "--metrics-port", "0"], "workers"),
    (["serve", "--root", "{root}", "--verify", "sometimes", "--metrics-port", "0"], "sometimes"),
    (["serve", "--root", "{root}", "--poll-seconds", "soon", "--metrics-port", "0"], "--poll-seconds"),
    (["serve", "--root", "{root}", "--lease-refresh-seconds", "0", "--metrics-port", "0"], "lease-refresh-seconds"),
    (["get", "--target", "127.0.0.1:1", "--entity", "1", "--timeout", "x"], "--timeout"),
    (["publish", "--to", "{store}"], "--root"),
    (["load", "--features", "{root}/f.yaml", "--root", "{root}", "--workers", "0"], "--workers"),
    (["load", "--features", "{root}/f.yaml", "--root", "{root}", "--as-of", "yesterday"], "--as-of"),
    (["generate", "--users", "-5", "--out", "{root}"], "--users"),
], ids=lambda c: "-".join(c) if isinstance(c, list) else None)
def test_a_bad_flag_value_is_a_usage_error(command: list[str], needle: str, tmp_path: Path) -> None:
    paths = {"root": str(tmp_path), "store": (tmp_path / "store").as_uri()}
    r = run(*[a.format(**paths) for a in command])
    assert r.returncode == USAGE, r.stderr
    assert needle in r.stderr


def test_unreadable_files(root: Path, tmp_path: Path) -> None:
    """As root, permissions do not stop a read: a folder where a file should be does."""
    version = SnapshotRoot(root).current()
    assert version is not None
    manifest = SnapshotRoot(root).manifest_path(version)
    manifest.write_text("{not json")
    for command in (["verify", "--root", str(root)], ["publish", "--root", str(root), "--to",
                                                      (tmp_path / "store").as_uri()]):
        r = run(*command)
        assert r.returncode == ROOT, r.stderr
        assert str(manifest) in r.stderr

    features = tmp_path / "features.yaml"
    features.mkdir()
    r = run("load", "--features", str(features), "--root", str(root))
    assert r.returncode == USAGE and str(features) in r.stderr, r.stderr

    cert = tmp_path / "cert.pem"
    cert.mkdir()
    r = run("serve", "--root", str(root), "--listen", "127.0.0.1:0", "--metrics-port", "0",
            "--tls-cert", str(cert), "--tls-key", str(cert))
    assert r.returncode == USAGE and str(cert) in r.stderr, r.stderr


def test_unreadable_tls_file_is_a_usage_error(published_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    r = run("serve", "--root", str(published_root), "--listen", "127.0.0.1:0", "--metrics-port", "0",
            "--tls-cert", str(missing), "--tls-key", str(missing))
    assert r.returncode == 2 and str(missing) in r.stderr, r.stderr


def test_a_busy_root(small_view: Callable[..., Path], tmp_path: Path) -> None:
    """The lock is held on another open file, as another process would hold it (flock locks belong to an
    open file, so this process's own second open of it is refused just the same)."""
    root = SnapshotRoot(tmp_path / "root")
    root.ensure()
    lock = root.staging_dir / ".sync.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)   # what a running `quiver sync` holds
        r = run("sync", "--from", (tmp_path / "store").as_uri(), "--root", str(root.path))
    assert r.returncode == ROOT, r.stderr
    assert str(lock) in r.stderr and "another `quiver sync` is running" in r.stderr

    lock = root.path / ".load.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)   # what a running `quiver load` holds
        r = run("load", "--features", str(small_view()), "--root", str(root.path))
    assert r.returncode == ROOT, r.stderr
    assert str(lock) in r.stderr and "another `quiver load` is running" in r.stderr
    assert root.current() is None and not list(root.staging_dir.glob("load-*"))


def test_publish_without_current(tmp_path: Path) -> None:
    pub = tmp_path / "publisher"
    SnapshotRoot(pub).ensure()
    r = run("publish", "--root", str(pub), "--to", (tmp_path).as_uri())
    assert r.returncode == ROOT   # dist.LocalSnapshotError.exit_code
    assert "CURRENT: missing" in r.stderr


# ---------------------------------------------------------------------------------------------
# `quiver load`: bad input found before the worker processes start (features.yaml, the sources'
# files and schemas): a clear error naming what and where, the exit code, nothing published
# ---------------------------------------------------------------------------------------------

def assert_rejected(features: Path, root: Path, exit_code: int, *needles: str) -> str:
    return assert_load_rejected(run, features, root, exit_code, *needles)


def test_missing_source_file(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view(source="nowhere/*.parquet")
    assert_rejected(features, root, 3, "view 'v'", "nowhere/*.parquet", "matches no file")


def test_unreadable_parquet(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view()
    (features.parent / "v.parquet").write_bytes(b"this is not parquet at all" * 10)
    assert_rejected(features, root, 3, str(features.parent / "v.parquet"), "view 'v'", "not a readable Parquet")


def test_truncated_parquet(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view()
    path = features.parent / "v.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_rejected(features, root, 3, str(path), "view 'v'")


def test_missing_column(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view(features=[{"name": "x", "type": "float64"}, {"name": "y", "type": "int64"}])
    assert_rejected(features, root, 4, str(features.parent / "v.parquet"), "view 'v'", "missing column(s) ['y']")


def test_missing_entity_key_column(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view(pa.table({"id": pa.array([1, 2], pa.int64()), "x": pa.array([1.0, 2.0])}))
    assert_rejected(features, root, 4, "view 'v'", "missing column(s) ['user_id']")


@pytest.mark.parametrize(("column", "declared", "source_type"), [
    (pa.array(["1.0", "2.0", "3.0"]), "float64", "string"),
    (pa.array([1.0, 2.0, 3.0], pa.float64()), "float32", "double"),    # would lose precision
    (pa.array([1, 2, 3], pa.int64()), "int32", "int64"),              # would overflow
    (pa.array([1, 2, 3], pa.uint64()), "int64", "uint64"),
    (pa.array([[1.0], [2.0], [3.0]]), "list<int64>", "list<element: double>"),
])
def test_column_of_the_wrong_type(small_view: Callable[..., Path], root: Path, column: pa.Array, declared: str,
                                  source_type: str) -> None:
    feature: dict[str, Any] = {"name": "x", "type": declared}
    features = small_view(pa.table({"user_id": pa.array([3, 1, 2], pa.int64()), "x": column}), [feature])
    assert_rejected(features, root, 4, str(features.parent / "v.parquet"), "view 'v'", "column 'x'",
                    f"is {source_type}", f"declared {declared}")


def test_entity_key_of_the_wrong_type(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view(pa.table({"user_id": pa.array(["a", "b"]), "x": pa.array([1.0, 2.0])}))
    assert_rejected(features, root, 4, "view 'v'", "entity key column 'user_id' is string")


def test_empty_source(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view(pa.table({"user_id": pa.array([], pa.int64()), "x": pa.array([], pa.float64())}))
    assert_rejected(features, root, 3, "view 'v'", "has no rows")


@pytest.mark.parametrize(("feature", "needles"), [
    ({"name": "x", "type": "float128"}, ["type 'float128'"]),
    ({"name": "x", "type": "list<float32>"}, ["positive integer 'length'"]),
    ({"name": "x", "type": "float64", "default": "zero"}, ["default 'zero' is not a valid float64"]),
    ({"name": "x", "type": "int32", "default": 2**31}, ["not a valid int32"]),
    ({"name": "x", "type": "list<float32>", "length": 2, "default": [1.0]}, ["not a valid list<float32> of length 2"]),
])
def test_mistakes_in_features_yaml(small_view: Callable[..., Path], root: Path, feature: dict[str, Any],
                                   needles: list[str]) -> None:
    features = small_view(features=[feature])
    assert_rejected(features, root, 2, str(features), "view 'v'", "feature 'x'", *needles)


def test_duplicate_feature_in_features_yaml(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view(features=[{"name": "x", "type": "float64"}, {"name": "x", "type": "int64"}])
    assert_rejected(features, root, 2, str(features), "view 'v'", "feature 'x' is defined twice")


def test_missing_features_yaml(tmp_path: Path, root: Path) -> None:
    assert_rejected(tmp_path / "nope.yaml", root, 2, str(tmp_path / "nope.yaml"), "no such file")


def test_wrong_type_in_the_second_file_names_it(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view(source="parts/*.parquet")
    (features.parent / "parts").mkdir()
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64()), "x": pa.array([1.0])}),
                   features.parent / "parts" / "p0.parquet")
    pq.write_table(pa.table({"user_id": pa.array([2], pa.int64()), "x": pa.array(["1.0"])}),
                   features.parent / "parts" / "p1.parquet")
    assert_rejected(features, root, 4, str(features.parent / "parts" / "p1.parquet"), "column 'x'", "is string")
