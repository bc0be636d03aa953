"""`quiver verify` and `quiver gc` as processes on real roots: verify passes a clean version and names a
corrupted value; gc keeps the current, previous and leased versions and removes the rest. gc refusing an
unreadable lease runs in-process (support.inprocess): it fails before it removes anything."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rocksdict import Options, Rdict

from quiver.client import FeatureClient
from quiver.snapshot import Manifest, SnapshotRoot, encode_int64_key
from quiver.v1 import quiver_pb2
from support.inprocess import run_in_process
from support.processes import ServerProcess, UsersSnapshots, quiver_load, run_quiver, wait_for

run = run_quiver


def test_verify_passes_a_clean_version_fully_and_sampled(users: UsersSnapshots) -> None:
    # the generated churn_score holds NaNs: they must compare equal to themselves, bit for bit
    for extra in ((), ("--sample", "50"), ("--version", users.v2)):
        r = run("verify", "--root", str(users.template), *extra)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith("ok: ")


def test_verify_names_a_corrupted_online_value(users: UsersSnapshots, tmp_path: Path) -> None:
    root = users.root(tmp_path / "root", versions=(users.v1,))
    vdef = Manifest.load(SnapshotRoot(root).manifest_path(users.v1)).schema.view("profile")
    index = next(i for f, g, i in vdef.layout() if f.name == "signup_days")
    manifest = Manifest.load(SnapshotRoot(root).manifest_path(users.v1))
    at = manifest.groups[vdef.group].views.index("profile")
    db = Rdict(str(SnapshotRoot(root).online_dir(users.v1, vdef.group)), Options(raw_mode=True))
    try:
        key = encode_int64_key(7)
        stored = quiver_pb2.EntityRow.FromString(db[key])
        was = stored.views[at].int32s[index]
        stored.views[at].int32s[index] = was + 1
        db[key] = stored.SerializeToString()
        db.flush()
    finally:
        db.close()
    r = run("verify", "--root", str(root))
    assert r.returncode == 1
    assert r.stdout.strip().splitlines() == [
        f"MISMATCH view 'profile' key 7 feature 'signup_days': online {was + 1}, offline {was}"]
    assert "1 mismatch(es)" in r.stderr


def test_verify_names_a_corrupted_offline_value_and_a_missing_online_row(users: UsersSnapshots,
                                                                         tmp_path: Path) -> None:
    root = users.root(tmp_path / "root", versions=(users.v1,))
    snap = SnapshotRoot(root)
    (part,) = sorted(snap.offline_dir(users.v1, "ads").glob("*.parquet"))
    table = pq.read_table(part)
    uid = table.column("user_id")[10].as_py()   # ads covers ~85% of users: take one it has
    was = table.column("ctr_7d")[10].as_py()
    ctr = pc.if_else(pc.equal(table.column("user_id"), uid), pa.scalar(0.5), table.column("ctr_7d"))
    table = table.set_column(table.column_names.index("ctr_7d"), "ctr_7d", ctr)
    pq.write_table(table, part)
    manifest = Manifest.load(snap.manifest_path(users.v1))
    group = manifest.schema.view("embedding").group
    at = manifest.groups[group].views.index("embedding")
    db = Rdict(str(snap.online_dir(users.v1, group)), Options(raw_mode=True))
    try:
        stored = quiver_pb2.EntityRow.FromString(db[encode_int64_key(3)])
        stored.views[at].Clear()
        stored.found[at] = False  # the group keeps the entity; the embedding view no longer holds it
        db[encode_int64_key(3)] = stored.SerializeToString()
        db.flush()
    finally:
        db.close()
    r = run("verify", "--root", str(root))
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert f"MISMATCH view 'ads' key {uid} feature 'ctr_7d': online {was!r}, offline 0.5" in lines
    assert "MISMATCH view 'embedding' key 3: online 'missing', offline 'present'" in lines
    assert f"MISMATCH view 'embedding': online '{users.users - 1} rows', offline " \
           f"'{users.users} rows (manifest: {users.users})'" in lines
    assert len(lines) == 3
    # a sample of a few keys may miss the deleted key; the row count never does
    r = run("verify", "--root", str(root), "--sample", "5")
    assert r.returncode == 1 and f"online '{users.users - 1} rows'" in r.stdout


def _lease(root: Path, host: str, pid: int, versions: list[str], age: float) -> Path:
    path = root / "leases" / f"{host}-{pid}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "versions": versions, "updated": time.time() - age}))
    return path


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_gc_keeps_current_previous_and_leased_versions(users: UsersSnapshots, tmp_path: Path,
                                                       start_server: Callable[..., ServerProcess]) -> None:
    root = tmp_path / "root"
    src = users.sources[users.v1]
    v = [quiver_load(src, root, f"2026-02-0{d}T00:00:00Z") for d in range(1, 7)]  # unchanged: views reused
    snap = SnapshotRoot(root)
    server = start_server(root)
    server.wait_health()
    snap.set_current(v[2])  # a rollback: the server now holds v[2] (current) and v[5] (its previous)
    host = socket.gethostname()

    def leased() -> bool:
        return any(sorted(json.loads(p.read_text())["versions"]) == [v[2], v[5]]
                   for p in (root / "leases").glob("*.json"))

    wait_for(leased, what="the server's lease on the rolled-back version")
    _lease(root, "other-host", 1, [v[3]], age=60)                        # fresh: holds v[3]
    _lease(root, "gone-host", 2, [v[4]], age=11 * 60)                    # stale: holds nothing
    dead = _lease(root, host, _dead_pid(), [v[0], v[4]], age=11 * 60)  # process gone, lease stale: holds nothing
    (root / "staging" / "load-crashed-123").mkdir(parents=True)

    dry = run("gc", "--root", str(root), "--keep", "0", "--dry-run")
    assert dry.returncode == 0 and f"would remove {v[0]}" in dry.stdout
    assert len(snap.versions()) == 6 and dead.exists()

    r = run("gc", "--root", str(root), "--keep", "0")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert snap.versions() == sorted([v[1], v[2], v[3], v[5]])
    assert f"removed {v[0]}:" in out and f"removed {v[4]}:" in out
    assert f"kept {v[1]}: previous (before current)" in out
    # the lease is the worker's (it holds the versions), not the supervisor's
    holders = {f"{host}-{pid}" for pid in server.worker_pids()}
    assert len(holders) == 1 and f"{host}-{server.proc.pid}" not in holders
    kept_current = next(line for line in out.splitlines() if line.startswith(f"kept {v[2]}: current; leased by "))
    assert set(kept_current.split("leased by ", 1)[1].split(", ")) == holders, (kept_current, holders)
    assert f"kept {v[3]}: leased by other-host-1" in out
    assert f"kept {v[5]}: previous (before current); leased by {holders.pop()}" in out  # ROOT/PREVIOUS names it
    assert "removed stale staging load-crashed-123" in out
    assert not dead.exists() and not list((root / "staging").iterdir())
    assert not list((root / "trash").iterdir())
    # the server never noticed: both versions it holds still answer
    with FeatureClient(server.target) as c:
        assert c.get_features([1], ["profile"]).version == v[2]
        assert c.get_features([1], ["profile"], version=v[5]).rows[0]["profile"] is not None
    # files the kept versions share with removed ones are hard links: they are intact
    for kept in snap.versions():
        assert Manifest.load(snap.manifest_path(kept)).verify_files(snap.version_dir(kept)) == []

    r = run("gc", "--root", str(root), "--keep", "1")
    assert r.returncode == 0 and "removed" not in r.stdout.replace("removed stale", "")


def test_gc_leaves_staging_alone_while_a_load_runs(users: UsersSnapshots, tmp_path: Path) -> None:
    root = users.root(tmp_path / "root")
    stage = root / "staging" / "load-in-progress-1"
    stage.mkdir(parents=True)
    with open(root / ".load.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)   # what a running `quiver load` holds
        r = run("gc", "--root", str(root), "--keep", "5")
        assert r.returncode == 0 and "a load is running: left staging/ alone" in r.stdout
        assert stage.is_dir()
    r = run("gc", "--root", str(root), "--keep", "5")
    assert "removed stale staging load-in-progress-1" in r.stdout and not stage.exists()


def test_gc_refuses_on_an_unreadable_lease(users: UsersSnapshots, tmp_path: Path) -> None:
    root = users.root(tmp_path / "root")
    (root / "leases").mkdir()
    (root / "leases" / "h-1.json").write_text("{not json")
    r = run_in_process("gc", "--root", str(root), "--keep", "0")
    assert r.returncode == 1 and "unreadable lease" in r.stderr and "nothing was removed" in r.stderr
    assert len(SnapshotRoot(root).versions()) == 2
    assert os.path.exists(root / "leases" / "h-1.json")


def test_a_running_servers_lease_is_refreshed_protects_its_versions_and_is_released(
        users: UsersSnapshots, tmp_path: Path, start_server: Callable[..., ServerProcess]) -> None:
    """A server holding a version that nothing else protects (not current, previous, or among the newest):
    its lease is rewritten while it runs (every second here: --lease-refresh-seconds, 30 s by default),
    sync's and gc's retention keep the version, and a clean exit removes the lease, after which gc removes
    the version."""
    root = users.root(tmp_path / "root")
    src = users.sources[users.v1]
    v3, v4 = (quiver_load(src, root, f"2026-01-0{d}T00:00:00Z") for d in (3, 4))
    snap = SnapshotRoot(root)
    snap.set_current(users.v1)
    server = start_server(root, "--lease-refresh-seconds", "1")
    server.wait_health()
    snap.set_current(v4)  # the server swaps and keeps v1 open as its previous version
    (worker,) = server.worker_pids()
    lease_path = root / "leases" / f"{socket.gethostname()}-{worker}.json"

    def lease() -> dict[str, Any]:
        try:
            return dict(json.loads(lease_path.read_text()))
        except FileNotFoundError:
            return {}
    wait_for(lambda: lease().get("versions") == [v4, users.v1], what="the lease on v4 and v1")
    (root / "PREVIOUS").write_text(f"{v3}\n")  # CURRENT's last move was v3 -> v4: only the lease holds v1
    written = lease()["updated"]
    # every 1 s; at the default 30 s this fails
    wait_for(lambda: lease()["updated"] > written, timeout=15, what="the lease to be refreshed (every 1 s)")
    assert lease()["versions"] == [v4, users.v1] and lease()["pid"] == worker

    (tmp_path / "store").mkdir()
    store = f"file://{tmp_path / 'store'}"
    r = run("publish", "--root", str(root), "--to", store)
    assert r.returncode == 0, r.stderr
    r = run("sync", "--from", store, "--root", str(root), "--keep", "2")
    assert r.returncode == 0, r.stderr
    assert snap.versions() == [users.v1, v3, v4], "sync --keep 2 removes v2 only"
    r = run("gc", "--root", str(root), "--keep", "0")
    assert r.returncode == 0, r.stderr
    assert f"kept {users.v1}: leased by {socket.gethostname()}-{worker}" in r.stdout, r.stdout
    assert snap.versions() == [users.v1, v3, v4]
    # and the server still reads it, equal to its source
    with FeatureClient(server.target) as c:
        got = c.get_features([5], ["ads"], version=users.v1)
    assert got.version == users.v1 and got.rows[0]["ads"] is not None
    assert got.rows[0]["ads"]["ad_00"] == users.expected(users.v1, "ads")[5]["ad_00"]

    assert server.stop() == 0
    assert not lease_path.exists(), "a clean exit releases the lease"
    r = run("gc", "--root", str(root), "--keep", "0")
    assert r.returncode == 0 and f"removed {users.v1}:" in r.stdout, r.stdout
    assert snap.versions() == [v3, v4]


def test_gc_keep_k_decides_which_old_versions_stay_and_leftover_trash_is_deleted(
        users: UsersSnapshots, tmp_path: Path) -> None:
    root = tmp_path / "root"
    src = users.sources[users.v1]
    # loaded newest first: gc orders by as-of time, not by when a version was loaded
    v = sorted(quiver_load(src, root, f"2026-02-0{d}T00:00:00Z") for d in range(6, 0, -1))
    snap = SnapshotRoot(root)
    snap.set_current(v[5])
    (root / "PREVIOUS").write_text(f"{v[4]}\n")
    leftover = root / "trash" / f"{v[0]}.4242.1"    # what a gc killed while deleting leaves behind
    (leftover / "online").mkdir(parents=True)
    (leftover / "online" / "000001.sst").write_bytes(b"x" * 100)

    dry = run("gc", "--root", str(root), "--keep", "4", "--dry-run")
    assert dry.returncode == 0 and leftover.is_dir() and snap.versions() == v, dry.stdout

    r = run("gc", "--root", str(root), "--keep", "4")
    assert r.returncode == 0, r.stderr
    assert snap.versions() == v[2:], r.stdout
    assert f"deleted leftover trash {leftover.name}" in r.stdout and not leftover.exists()
    assert f"kept {v[2]}: one of the 4 newest" in r.stdout
    assert f"removed {v[1]}:" in r.stdout and f"removed {v[0]}:" in r.stdout
    assert list((root / "trash").iterdir()) == [], "removed versions leave nothing in trash"

    r = run("gc", "--root", str(root), "--keep", "2")
    assert r.returncode == 0 and snap.versions() == v[4:], r.stdout
    assert f"kept {v[4]}: previous (before current); one of the 2 newest" in r.stdout
    r = run("gc", "--root", str(root), "--keep", "0")
    assert r.returncode == 0 and snap.versions() == v[4:], "CURRENT and the previous version stay at --keep 0"
