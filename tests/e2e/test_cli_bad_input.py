"""Every command, given a missing root, an unreadable file, a bad flag value or a busy lock, exits with the
code the table in quiver/errors.py gives that failure, and its message names the path (or the flag)."""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path

import pytest
from server_process import QUIVER, UsersSnapshots

from quiver.errors import EXIT_CODES
from quiver.snapshot import SnapshotRoot

USAGE, ROOT = 2, 9


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUIVER, *args], capture_output=True, text=True, timeout=60)


def test_the_codes_used_here_mean_what_this_test_assumes() -> None:
    assert EXIT_CODES[USAGE].startswith("usage") and EXIT_CODES[ROOT].startswith("snapshot root")


@pytest.mark.parametrize("command", [
    ["verify", "--root", "{missing}"],
    ["gc", "--root", "{missing}", "--keep", "1"],
    ["publish", "--root", "{missing}", "--to", "{store}"],
    ["sync", "--from", "{store}", "--root", "{under_a_file}/root"],
    ["snapshots", "--root", "{missing}"],
    ["load", "--features", "{features}", "--root", "{under_a_file}/root"],
], ids=lambda c: c[0])
def test_a_missing_root(command: list[str], users: UsersSnapshots, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    paths = {"missing": str(tmp_path / "nope"), "store": (tmp_path / "store").as_uri(),
             "under_a_file": str(tmp_path / "file"),
             "features": str(users.sources[users.v1] / "features.yaml")}
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


def test_unreadable_files(users: UsersSnapshots, tmp_path: Path) -> None:
    """As root, permissions do not stop a read: a folder where a file should be does."""
    root = users.root(tmp_path / "root", versions=(users.v1,))
    manifest = SnapshotRoot(root).manifest_path(users.v1)
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


def test_a_busy_root(users: UsersSnapshots, tmp_path: Path) -> None:
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
        r = run("load", "--features", str(users.sources[users.v1] / "features.yaml"), "--root", str(root.path))
    assert r.returncode == ROOT, r.stderr
    assert str(lock) in r.stderr and "another `quiver load` is running" in r.stderr
    assert root.current() is None and not list(root.staging_dir.glob("load-*"))
