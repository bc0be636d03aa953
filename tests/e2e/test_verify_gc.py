"""`quiver verify` and `quiver gc` as processes on real roots: verify passes a clean version and names a
corrupted value; gc keeps the current, previous and leased versions and removes the rest."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rocksdict import Options, Rdict
from server_process import QUIVER, ServerProcess, UsersSnapshots, quiver_load, wait_for

from quiver.client import FeatureClient
from quiver.snapshot import Manifest, SnapshotRoot, encode_int64_key
from quiver.v1 import quiver_pb2


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUIVER, *args], capture_output=True, text=True, timeout=120)


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
    assert f"kept {v[2]}: current; leased by {host}-{server.proc.pid}" in out or \
        f"kept {v[2]}: current; leased by {host}-" in out
    assert f"kept {v[3]}: leased by other-host-1" in out
    assert f"kept {v[5]}: previous (before current); leased by {host}-" in out  # ROOT/PREVIOUS names it
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
    r = run("gc", "--root", str(root), "--keep", "0")
    assert r.returncode == 1 and "unreadable lease" in r.stderr and "nothing was removed" in r.stderr
    assert len(SnapshotRoot(root).versions()) == 2
    assert os.path.exists(root / "leases" / "h-1.json")
