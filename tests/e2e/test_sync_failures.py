"""publish and sync failing safely, through the CLI against a file:// store: two syncs on one root, a
--watch round that fails and the next that succeeds, a garbage LATEST, a remote manifest describing another
version, and publish refusing a local version that does not match its manifest. Whatever fails, the
replica's CURRENT and versions stay as they were.

The setup and the syncs that succeed are processes; the refusals, found before anything moves, run the
CLI's main() in-process (support.inprocess). The --watch rounds run as a process."""

from __future__ import annotations

import fcntl
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quiver.snapshot import SnapshotRoot
from support.inprocess import run_in_process
from support.processes import QUIVER, UsersSnapshots, run_quiver, wait_for
from support.stored import online_files

Run = Callable[..., Any]


class Setup:
    """A publisher root holding v1 and v2, a file:// store, and a replica root synced to v1."""

    def __init__(self, users: UsersSnapshots, tmp_path: Path) -> None:
        self.users = users
        self.pub = users.root(tmp_path / "pub", current=users.v1)
        self.store_dir = tmp_path / "store"
        self.store_dir.mkdir()
        self.store = self.store_dir.as_uri()
        self.rep = tmp_path / "rep"
        self.publish()
        r = self.sync()
        assert r.returncode == 0, r.stderr
        assert self.current() == users.v1

    def publish(self, *extra: str, run: Run = run_quiver) -> Any:
        return run("publish", "--root", str(self.pub), "--to", self.store, *extra)

    def sync(self, *extra: str, run: Run = run_quiver) -> Any:
        return run("sync", "--from", self.store, "--root", str(self.rep), *extra)

    def current(self) -> str | None:
        return SnapshotRoot(self.rep).current()

    def assert_replica_unchanged(self) -> None:
        snap = SnapshotRoot(self.rep)
        assert snap.current() == self.users.v1 and snap.versions() == [self.users.v1]


@pytest.fixture
def setup(users: UsersSnapshots, tmp_path: Path) -> Setup:
    return Setup(users, tmp_path)


def test_a_second_sync_on_a_root_is_refused_while_one_runs(setup: Setup) -> None:
    SnapshotRoot(setup.pub).set_current(setup.users.v2)
    assert setup.publish().returncode == 0
    lock = setup.rep / "staging" / ".sync.lock"
    with open(lock, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)   # what a running `quiver sync` holds
        r = setup.sync(run=run_in_process)   # (flock: another open of the file is refused, in any process)
        assert r.returncode != 0 and "another `quiver sync` is running" in r.stderr and str(lock) in r.stderr
        setup.assert_replica_unchanged()
        assert not list((setup.rep / "staging").glob("sync-*")), "the refused sync downloaded nothing"
    r = setup.sync()
    assert r.returncode == 0, r.stderr
    assert setup.current() == setup.users.v2


def test_garbage_latest_is_refused(setup: Setup) -> None:
    (setup.store_dir / "LATEST").write_text("../../etc/passwd\n")
    r = setup.sync(run=run_in_process)
    assert r.returncode != 0 and "'../../etc/passwd' is not a version id" in r.stderr, r.stderr
    setup.assert_replica_unchanged()


def test_a_remote_manifest_describing_another_version_is_refused(setup: Setup) -> None:
    v1, v2 = setup.users.v1, setup.users.v2
    SnapshotRoot(setup.pub).set_current(v2)
    assert setup.publish().returncode == 0
    remote = setup.store_dir / "versions" / v2 / "manifest.json"
    remote.write_bytes((setup.store_dir / "versions" / v1 / "manifest.json").read_bytes())
    r = setup.sync(run=run_in_process)
    assert r.returncode != 0 and f"describes version {v1}, not {v2}" in r.stderr, r.stderr
    setup.assert_replica_unchanged()


def test_watch_retries_after_a_failed_round(setup: Setup, tmp_path: Path) -> None:
    latest = setup.store_dir / "LATEST"
    good = latest.read_text()
    latest.write_text("not a version\n")
    log = tmp_path / "watch.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([QUIVER, "sync", "--from", setup.store, "--root", str(setup.rep), "--watch", "0.2"],
                                stdout=out, stderr=out)
    try:
        wait_for(lambda: proc.poll() is not None or "sync failed" in log.read_text(), what="a failed round")
        assert proc.poll() is None, log.read_text()
        setup.assert_replica_unchanged()
        # the next rounds retry: once LATEST names a published version again, one of them moves CURRENT
        SnapshotRoot(setup.pub).set_current(setup.users.v2)
        latest.write_text(good)
        assert setup.publish().returncode == 0
        wait_for(lambda: proc.poll() is not None or setup.current() == setup.users.v2, what="a round to succeed")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "sync failed, CURRENT unchanged, retrying" in text and "'not a version' is not a version id" in text
    assert setup.current() == setup.users.v2


def test_publish_refuses_a_locally_damaged_version(setup: Setup) -> None:
    v2 = setup.users.v2
    sst = next(p for p in online_files(SnapshotRoot(setup.pub).version_dir(v2)) if p.suffix == ".sst")
    with open(sst, "r+b") as f:
        f.truncate(sst.stat().st_size - 1)
    r = setup.publish("--version", v2, run=run_in_process)
    assert r.returncode != 0 and "does not match its manifest" in r.stderr and sst.name in r.stderr, r.stderr
    assert (setup.store_dir / "LATEST").read_text().strip() == setup.users.v1
    assert not (setup.store_dir / "versions" / v2).exists(), "nothing of the damaged version was uploaded"
