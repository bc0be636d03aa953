"""Leases (snapshot/leases.py): what a server writes is what retention reads; liveness; garbage named."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from quiver.snapshot import SnapshotRoot
from quiver.snapshot.leases import FRESH_SECONDS, REFRESH_SECONDS, Lease, ServerLease, read_leases


def test_a_server_lease_round_trips_and_is_released(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path)
    mine = ServerLease(root)
    mine.hold(["v1", "v2"])
    got = read_leases(root)
    assert not got.unreadable and len(got.leases) == 1
    lease = got.leases[0]
    assert (lease.host, lease.pid, lease.versions) == (socket.gethostname(), os.getpid(), ("v1", "v2"))
    assert got.held() == {"v1": [lease.holder], "v2": [lease.holder]}
    mine.release()
    assert read_leases(root).leases == []


def test_liveness() -> None:
    now, here = time.time(), socket.gethostname()
    p = subprocess.Popen(["true"])
    p.wait()
    stale = now - FRESH_SECONDS - 1

    def live(host: str, pid: int, updated: float) -> bool:
        return Lease(Path("x"), host, pid, ("v",), updated).live(now, here)

    assert live("elsewhere", 1, now - 5)            # fresh counts even when its pid means nothing here
    assert not live("elsewhere", 1, stale)          # stale from another host: dead
    assert live(here, os.getpid(), stale)           # stale but its process is alive here
    assert not live(here, p.pid, stale)             # stale and its process is gone


def test_garbage_lease_files_are_named_not_raised(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path)
    d = tmp_path / "leases"
    d.mkdir()
    (d / "a-1.json").write_text("{not json")
    (d / "b-2.json").write_text(json.dumps({"host": "b", "pid": "x", "versions": [], "updated": 0}))
    (d / "c-3.json").write_text(json.dumps({"host": "c", "pid": 3, "versions": ["v"], "updated": time.time()}))
    got = read_leases(root)
    assert sorted(p.name for p in got.unreadable) == ["a-1.json", "b-2.json"]
    assert [lease.holder for lease in got.leases] == ["c-3"] and got.held() == {"v": ["c-3"]}


def test_a_server_lease_is_rewritten_once_its_refresh_interval_has_passed(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path)
    assert ServerLease(root).refresh_seconds == REFRESH_SECONDS == 30.0
    mine = ServerLease(root, refresh_seconds=0.2)
    mine.refresh()
    assert not mine.path.exists(), "nothing held: nothing to write"
    mine.hold(["v1"])
    first = json.loads(mine.path.read_text())["updated"]
    mine.refresh()
    assert json.loads(mine.path.read_text())["updated"] == first, "rewritten before its interval"
    time.sleep(0.25)
    mine.refresh()
    again = json.loads(mine.path.read_text())
    assert again["updated"] > first and again["versions"] == ["v1"]


@pytest.mark.parametrize("seconds", [0.0, -1.0, FRESH_SECONDS, float("nan")])
def test_a_refresh_interval_that_would_let_the_lease_go_stale_is_refused(tmp_path: Path, seconds: float) -> None:
    with pytest.raises(ValueError, match="lease refresh"):
        ServerLease(SnapshotRoot(tmp_path), refresh_seconds=seconds)
