"""Fallback at start: a `quiver serve` started while CURRENT names a corrupt version serves the newest
version that passes its checks (PREVIOUS first), says so in its log and metrics, and swaps to CURRENT as
usual once CURRENT names a good version. With no good version at all it stays NOT_SERVING."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from quiver.snapshot import Manifest, SnapshotRoot
from quiver.snapshot.manifest import RECORD
from quiver.v1 import quiver_pb2 as pb
from support.processes import NOT_SERVING, SERVING, ServerProcess, UsersSnapshots, quiver_load, wait_for


def corrupt(root: Path, version: str) -> Path:
    """Flips 16 bytes in the middle of the version's largest online SST file (any layout of online/). The
    file is replaced, not written in place: loads hard-link unchanged files between versions."""
    sst = max((SnapshotRoot(root).version_dir(version) / "online").rglob("*.sst"), key=lambda p: p.stat().st_size)
    data = bytearray(sst.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    sst.unlink()
    sst.write_bytes(bytes(data))
    return sst


def served(s: Any) -> str:
    return str(s.stub().GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=10).current_version)


def test_corrupt_current_falls_back_to_previous_then_swaps(start_server: Any, users: UsersSnapshots,
                                                           tmp_path: Path) -> None:
    root = users.root(tmp_path / "root", current=users.v1)
    SnapshotRoot(root).set_current(users.v2)  # PREVIOUS = v1
    assert SnapshotRoot(root).previous() == users.v1
    sst = corrupt(root, users.v2)
    s = start_server(root, "--verify", "full", metrics=True)
    s.wait_health(SERVING)
    assert served(s) == users.v1
    resp = s.stub().GetFeatures(pb.GetFeaturesRequest(int64_ids=[1, 2, 3]), timeout=10)
    assert resp.version == users.v1 and all(all(r.found[:3]) for r in resp.rows)
    log = s.logs()
    assert f"refused version {users.v2}" in log and sst.name in log, log
    assert f"FALLBACK: CURRENT names {users.v2}" in log and f"serving {users.v1} instead" in log, log
    assert s.metric("quiver_snapshot_fallback") == 1
    assert s.metric("quiver_snapshot_refused_total") == 1
    time.sleep(1)  # five polls: CURRENT's refusal is not retried on every poll, and the fallback holds
    assert s.logs().count("refused version") == 1 and served(s) == users.v1

    # the operator's fix, a new load (of other sources, so nothing is hard-linked from the corrupt CURRENT)
    fixed = quiver_load(users.sources[users.v1], root, "2026-01-03T00:00:00Z")
    wait_for(lambda: served(s) == fixed, what="the swap to the good CURRENT")
    wait_for(lambda: s.metric("quiver_snapshot_fallback") == 0, what="the fallback gauge to clear")
    resp = s.stub().GetFeatures(pb.GetFeaturesRequest(int64_ids=[1, 2, 3]), timeout=10)
    assert resp.version == fixed
    assert "fallback over: serving CURRENT " + fixed in s.logs()
    assert s.health() == SERVING


def test_fallback_skips_a_bad_previous_for_the_newest_good_version(start_server: Any, users: UsersSnapshots,
                                                                   tmp_path: Path) -> None:
    """PREVIOUS is tried first, but a PREVIOUS that fails its checks too is skipped for the newest good one."""
    root = users.root(tmp_path / "root", current=users.v1)
    newest_good = quiver_load(users.sources[users.v2], root, "2026-01-03T00:00:00Z")  # CURRENT newest_good, PREVIOUS v1
    bad_current = quiver_load(users.sources[users.v1], root, "2026-01-04T00:00:00Z")  # PREVIOUS newest_good
    SnapshotRoot(root).set_current(users.v2)
    SnapshotRoot(root).set_current(bad_current)  # CURRENT bad_current, PREVIOUS v2
    corrupt(root, bad_current)
    corrupt(root, users.v2)
    s = start_server(root, "--verify", "full", metrics=True)
    s.wait_health(SERVING)
    assert served(s) == newest_good
    assert s.metric("quiver_snapshot_fallback") == 1
    assert s.metric("quiver_snapshot_refused_total") == 2  # CURRENT, then PREVIOUS


def nothing_passes(start_server: Any, users: UsersSnapshots, tmp_path: Path, verify: str) -> ServerProcess:
    """A server started on a root whose CURRENT (v2) and PREVIOUS (v1) are both corrupt, once its fallback
    has given up."""
    root = users.root(tmp_path / "root", current=users.v1)
    SnapshotRoot(root).set_current(users.v2)
    corrupt(root, users.v1)
    corrupt(root, users.v2)
    s: ServerProcess = start_server(root, "--verify", verify, metrics=True)
    wait_for(lambda: "no published version passes its checks" in s.logs(), what="the fallback to give up")
    return s


def test_no_version_passes_stays_not_serving(start_server: Any, users: UsersSnapshots, tmp_path: Path) -> None:
    s = nothing_passes(start_server, users, tmp_path, "full")
    assert s.health() == NOT_SERVING
    assert s.metric("quiver_snapshot_fallback") == 0
    assert s.metric("quiver_snapshot_refused_total") == 2


# --verify background: the version a server starts with is served after its size check, its full check
# follows on a background thread, and a failure refuses it as a full check would have.


def test_background_check_serves_at_once_then_refuses_a_corrupt_current_and_falls_back(
        start_server: Any, users: UsersSnapshots, tmp_path: Path) -> None:
    root = users.root(tmp_path / "root", current=users.v1)
    SnapshotRoot(root).set_current(users.v2)  # PREVIOUS = v1
    sst = corrupt(root, users.v2)   # same size: the size check passes, the full one does not
    s = start_server(root, "--verify", "background", metrics=True)
    s.wait_health(SERVING)
    wait_for(lambda: served(s) == users.v1, what="the fallback after the background check")
    log = s.logs()
    assert f"serving {users.v2} (previous: none)" in log, log   # served first, after its size check
    assert f"refused version {users.v2}" in log and sst.name in log and "served after its size check" in log, log
    assert log.index(f"serving {users.v2}") < log.index(f"refused version {users.v2}") < log.index(
        f"serving {users.v1}"), log
    resp = s.stub().GetFeatures(pb.GetFeaturesRequest(int64_ids=[1, 2, 3]), timeout=10)
    assert resp.version == users.v1 and all(all(r.found[:3]) for r in resp.rows)
    assert s.metric("quiver_snapshot_refused_total") == 1
    assert s.metric("quiver_snapshot_fallback") == 1
    time.sleep(1)   # CURRENT's refusal holds: it is not opened again on every poll
    assert s.logs().count("refused version") == 1 and served(s) == users.v1
    assert s.health() == SERVING


def test_background_check_with_no_good_version_ends_not_serving(start_server: Any, users: UsersSnapshots,
                                                                 tmp_path: Path) -> None:
    s = nothing_passes(start_server, users, tmp_path, "background")
    wait_for(lambda: s.health() == NOT_SERVING, what="health to say NOT_SERVING")
    assert f"serving {users.v2} (previous: none)" in s.logs()
    assert s.metric("quiver_snapshot_refused_total") == 2   # CURRENT in the background, then PREVIOUS in full
    with pytest.raises(grpc.RpcError) as e:
        s.stub().GetFeatures(pb.GetFeaturesRequest(int64_ids=[1]), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_background_check_of_a_good_unproven_version_hashes_it_and_keeps_serving(
        start_server: Any, users: UsersSnapshots, tmp_path: Path) -> None:
    root = users.root(tmp_path / "root", current=users.v1)
    (SnapshotRoot(root).version_dir(users.v1) / RECORD).unlink()   # nothing proves its files: all are hashed
    s = start_server(root, "--verify", "background", metrics=True)
    s.wait_health(SERVING)
    wait_for(lambda: "its full check passed in the background" in s.logs(), what="the background check")
    m = re.search(rf"version {users.v1}: its full check passed in the background: hashed (\d+) online files",
                  s.logs())
    online = [f for f in Manifest.load(SnapshotRoot(root).manifest_path(users.v1)).files
              if f.path.startswith("online/")]
    assert m and int(m.group(1)) == len(online) > 0, s.logs()
    assert served(s) == users.v1 and s.metric("quiver_snapshot_refused_total") == 0
