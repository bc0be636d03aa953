"""The root changing under a running server, or under a second load: what a client sees (the last good
version keeps answering, with its own values) and what an operator sees (a log line, a metric, an exit code).
README "Faults and overload" lists these cases."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from quiver.client import FeatureClient
from quiver.loader.pause import PAUSE_AT, PAUSE_FILE
from quiver.snapshot.layout import SnapshotRoot
from quiver.v1 import quiver_pb2 as pb
from support.processes import QUIVER, SERVING, ServerProcess, UsersSnapshots, run_quiver, wait_for

MISSING = "20990101T000000Z-000000000000"


def answers(s: ServerProcess, users: UsersSnapshots, version: str) -> None:
    """The server answers from `version`, with that version's values."""
    with FeatureClient(s.target) as c:
        got = c.get_features([1, 2, 3], ["profile"])
    assert got.version == version
    exp = users.expected(version, "profile")
    assert [row["profile"] is not None for row in got.rows] == [uid in exp for uid in (1, 2, 3)]
    for uid, row in zip((1, 2, 3), got.rows, strict=True):
        if row["profile"] is not None:
            assert row["profile"]["age"] == exp[uid]["age"], uid


def test_current_naming_a_missing_version(users: UsersSnapshots, start_server: Any, tmp_path: Path) -> None:
    root = users.root(tmp_path / "root")
    s: ServerProcess = start_server(root, metrics=True)
    s.wait_health(SERVING)
    (root / "CURRENT").write_text(MISSING + "\n")
    wait_for(lambda: MISSING in s.logs(), timeout=30, what="a log line naming the missing version")
    answers(s, users, users.v1)                      # the loaded version serves on
    assert s.health() == SERVING
    r = run_quiver("verify", "--root", root, timeout=60)  # the CLI: exit 9 naming it
    assert r.returncode == 9 and MISSING in r.stderr and "Traceback" not in r.stderr, r.stderr
    SnapshotRoot(root).set_current(users.v2)
    wait_for(lambda: s.stub().GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=5).current_version == users.v2,
             timeout=30, what="the swap to a good version once CURRENT names one")


def test_the_served_version_removed_from_disk(users: UsersSnapshots, start_server: Any, tmp_path: Path) -> None:
    """`rm -rf` of the version being served (by hand, or a gc that ignored leases): its open files stay
    readable, so calls keep their values until CURRENT names another version."""
    root = users.root(tmp_path / "root")
    s: ServerProcess = start_server(root)
    s.wait_health(SERVING)
    answers(s, users, users.v1)
    shutil.rmtree(root / "versions" / users.v1)
    for _ in range(20):
        answers(s, users, users.v1)
    SnapshotRoot(root).set_current(users.v2)
    with FeatureClient(s.target) as c:
        wait_for(lambda: c.get_features([1]).version == users.v2, timeout=30, what="the swap to the next version")
    answers(s, users, users.v2)


def test_a_truncated_manifest_is_refused_and_counted(users: UsersSnapshots, start_server: Any,
                                                     tmp_path: Path) -> None:
    root = users.root(tmp_path / "root")
    s: ServerProcess = start_server(root, metrics=True)
    s.wait_health(SERVING)
    manifest = root / "versions" / users.v2 / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:200])
    SnapshotRoot(root).set_current(users.v2)
    wait_for(lambda: s.metric("quiver_snapshot_refused_total") >= 1, timeout=30, what="the refusal counted")
    assert users.v2 in s.logs() and "manifest" in s.logs()
    answers(s, users, users.v1)
    r = run_quiver("verify", "--root", root, "--version", users.v2, timeout=60)
    assert r.returncode == 9 and "manifest" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_two_loads_at_once(users: UsersSnapshots, tmp_path: Path) -> None:
    """The second load is refused at once (exit 9, naming the lock) while the first one runs; the first one
    publishes; nothing of the second is left behind."""
    root = users.root(tmp_path / "root")
    src = users.sources[users.v2]
    marker = tmp_path / "paused"
    first = subprocess.Popen([QUIVER, "load", "--features", str(src / "features.yaml"), "--root", str(root),
                              "--as-of", "2026-03-01T00:00:00Z", "--workers", "1"],
                             env={**os.environ, PAUSE_AT: "plan", PAUSE_FILE: str(marker)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(marker.exists, timeout=120, what="the first load paused after its plan")
        r = run_quiver("load", "--features", src / "features.yaml", "--root", root, "--as-of", "2026-03-02T00:00:00Z",
                       "--workers", "1", timeout=120)
        assert r.returncode == 9, r.stderr
        assert "another `quiver load` is running" in r.stderr and "Traceback" not in r.stderr, r.stderr
        marker.unlink()
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert SnapshotRoot(root).current() == out.split()[-1]
    assert sorted(os.listdir(root / "versions")) == sorted([users.v1, users.v2, out.split()[-1]])
