"""Versions changing under a running `quiver serve`: hot swap under load, a corrupted version refused,
rollback, and several workers following CURRENT together."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from quiver.snapshot import Manifest, SnapshotRoot
from quiver.v1 import quiver_pb2 as pb
from support.oracle import decode_view_row, wire_fields
from support.pagecache import evict, resident
from support.processes import SERVICE, SERVING, UsersSnapshots, quiver_load, short_tmpdir, wait_for
from support.stored import online_files, rewrite_manifest

GET_FEATURES = f"/{SERVICE}/GetFeatures"
VIEWS = ["profile", "activity", "embedding", "ads"]


def current_version(stub: Any) -> str:
    return str(stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=10).current_version)


def check_against_source(users: UsersSnapshots, raw: bytes, ids: list[int], source_version: str) -> None:
    """A raw GetFeaturesResponse equals the source Parquet of `source_version`, bit for bit."""
    resp = pb.GetFeaturesResponse.FromString(raw)
    schema = {v: users.schema(source_version).view(v) for v in VIEWS}
    for uid, row, raw_row in zip(ids, resp.rows, wire_fields(raw)[3], strict=True):
        for view, found, data in zip(VIEWS, row.found, wire_fields(raw_row).get(1, []), strict=True):
            expected = users.expected(source_version, view).get(uid)
            assert found == (expected is not None), f"user {uid} in {view}"
            if found:
                assert decode_view_row(schema[view], data) == expected, f"user {uid} in {view}"


def test_hot_swap_under_load_drops_nothing(start_server: Any, users: UsersSnapshots, tmp_path: Path) -> None:
    """A client hammers GetFeatures while `quiver load` publishes a version with other data: no call fails,
    and every response carries exactly the values of the version it names."""
    root = users.root(tmp_path / "root", versions=(users.v1,))
    s = start_server(root)
    s.wait_health(SERVING)
    ids = list(range(0, users.users, 10)) + [users.users + 5]
    request = pb.GetFeaturesRequest(int64_ids=ids).SerializeToString()
    responses: Counter[bytes] = Counter()
    failures: list[grpc.RpcError] = []
    done = threading.Event()

    def hammer() -> None:
        call = s.channel().unary_unary(GET_FEATURES)
        while not done.is_set():
            try:
                responses[call(request, timeout=10)] += 1
            except grpc.RpcError as e:
                failures.append(e)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        wait_for(lambda: sum(responses.values()) > 20, what="the first responses")
        new = quiver_load(users.sources[users.v2], root, "2026-01-02T00:00:00Z")
        stub = s.stub()
        wait_for(lambda: current_version(stub) == new, what="the swap")
        seen_new = sum(responses.values())
        wait_for(lambda: sum(responses.values()) > seen_new + 20, what="responses after the swap")
    finally:
        done.set()
        thread.join(30)
    assert not failures, [(e.code(), e.details()) for e in failures[:5]]
    by_version: dict[str, set[bytes]] = {}
    for raw in responses:
        by_version.setdefault(pb.GetFeaturesResponse.FromString(raw).version, set()).add(raw)
    assert set(by_version) == {users.v1, new}, set(by_version)
    # one distinct answer per version; checked against its source Parquet once
    assert all(len(answers) == 1 for answers in by_version.values())
    check_against_source(users, next(iter(by_version[users.v1])), ids, users.v1)
    check_against_source(users, next(iter(by_version[new])), ids, users.v2)
    # v1 was copied into place (other inodes than its record names): read whole before it served; the new
    # version was loaded here, and its loader's record proves every file: nothing of it was read again
    log = s.logs()
    v1_files = Manifest.load(SnapshotRoot(root).manifest_path(users.v1)).files
    online = [f for f in v1_files if f.path.startswith("online/")]
    assert f"version {users.v1}: hashed {len(online)} online files" in log, log
    assert f"version {new}: hashed 0 online files" in log, log
    print(f"{sum(responses.values())} responses: " + ", ".join(
        f"{v}: {sum(n for r, n in responses.items() if r in by_version[v])}" for v in by_version))


@pytest.mark.parametrize("warm_mb", ["-1", "0"], ids=["warm", "cold"])
def test_a_new_version_is_warmed_before_it_serves(start_server: Any, users: UsersSnapshots, tmp_path: Path,
                                                   warm_mb: str) -> None:
    """The next version's SST files, out of the page cache, are read into it before the version answers
    (--warm-mb, default: half the available memory); --warm-mb 0 reads nothing more than RocksDB's open.
    (At this size the open alone caches nearly all: tests/unit/test_warm.py shows what warming reads.)"""
    root = users.root(tmp_path / "root")
    s = start_server(root, "--warm-mb", warm_mb)
    s.wait_health(SERVING)
    ssts = sorted(SnapshotRoot(root).version_dir(users.v2).glob("online/*/*.sst"))
    total = sum(p.stat().st_size for p in ssts)
    evict(ssts)
    SnapshotRoot(root).set_current(users.v2)
    wait_for(lambda: current_version(s.stub()) == users.v2, what="the swap")
    cached = sum(resident(ssts))
    log = s.logs()
    if warm_mb == "0":
        assert f"version {users.v2}: warmed" not in log, log
    else:
        assert cached >= total * 0.99, (cached, total)
        assert f"version {users.v2}: warmed {total / 1e6:.1f} MB of {len(ssts)} online files" in log, log


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)


@pytest.mark.parametrize("verify,damage", [("full", flip_bytes), ("size", truncate), ("full", truncate),
                                           ("background", flip_bytes)],
                         ids=["full-flipped", "size-truncated", "full-truncated", "background-flipped"])
def test_corrupted_version_is_refused(start_server: Any, users: UsersSnapshots, tmp_path: Path, verify: str,
                                      damage: Any) -> None:
    """A swap is checked before the new version answers; under --verify background too (only the version a
    worker starts with is served before its full check)."""
    root = users.root(tmp_path / "root")
    s = start_server(root, "--verify", verify, metrics=True)
    s.wait_health(SERVING)
    group = Manifest.load(SnapshotRoot(root).manifest_path(users.v2)).schema.view("activity").group
    sst = max((SnapshotRoot(root).online_dir(users.v2, group)).glob("*.sst"), key=lambda p: p.stat().st_size)
    damage(sst)
    SnapshotRoot(root).set_current(users.v2)
    wait_for(lambda: s.metric("quiver_snapshot_refused_total") == 1, what="the refusal to be counted")
    stub = s.stub()
    assert current_version(stub) == users.v1
    resp = stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[1, 2, 3]), timeout=10)
    assert resp.version == users.v1 and all(all(r.found[:3]) for r in resp.rows)
    log = s.logs()
    assert f"refused version {users.v2}" in log and sst.name in log, log
    assert s.health() == SERVING
    # a refused version is not retried on every poll
    assert s.metric("quiver_snapshot_refused_total") == 1 and log.count("refused") == 1


def _names_another_version(vdir: Path) -> None:
    rewrite_manifest(vdir, lambda doc: doc.update(version=f"{doc['version'][:-12]}{'0' * 12}"))


def _one_sst_unlisted(vdir: Path) -> None:
    """The manifest stops listing one SST file that RocksDB still opens: the SST set differs."""
    def edit(doc: dict[str, Any]) -> None:
        sst = next(f for f in doc["files"] if f["path"].startswith("online/") and f["path"].endswith(".sst"))
        doc["files"].remove(sst)
    rewrite_manifest(vdir, edit)


def _one_row_more(vdir: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        counts = doc["groups"] if doc["format_version"] >= 2 else doc["views"]
        next(iter(counts.values()))["rows"] += 1
    rewrite_manifest(vdir, edit)


def _rocksdb_descriptor_zeroed(vdir: Path) -> None:
    """RocksDB's MANIFEST-* zeroed at its listed size: the size check passes, RocksDB cannot open it."""
    descriptor = next(p for p in online_files(vdir) if p.name.startswith("MANIFEST-"))
    descriptor.write_bytes(bytes(descriptor.stat().st_size))


@pytest.mark.parametrize("damage,reason", [
    (_names_another_version, "its manifest names"),
    (_one_sst_unlisted, "SST files"),
    (_one_row_more, "the manifest says"),
    (_rocksdb_descriptor_zeroed, "cannot open"),
], ids=["manifest-names-another-version", "sst-set-differs", "row-count-differs", "rocksdb-cannot-open"])
def test_a_version_failing_a_check_is_refused(start_server: Any, users: UsersSnapshots, tmp_path: Path,
                                              damage: Any, reason: str) -> None:
    """Each check a server makes before serving a version (FORMAT.md), failed alone; the server keeps serving
    the version it has. --verify size, so a zeroed file of the right size reaches RocksDB."""
    root = users.root(tmp_path / "root")
    s = start_server(root, "--verify", "size", metrics=True)
    s.wait_health(SERVING)
    damage(SnapshotRoot(root).version_dir(users.v2))
    SnapshotRoot(root).set_current(users.v2)
    wait_for(lambda: s.metric("quiver_snapshot_refused_total") == 1, what="the refusal to be counted")
    stub = s.stub()
    assert current_version(stub) == users.v1
    raw = s.channel().unary_unary(GET_FEATURES)(pb.GetFeaturesRequest(int64_ids=list(range(20))).SerializeToString(),
                                               timeout=10)
    check_against_source(users, raw, list(range(20)), users.v1)
    refusal = next(line for line in s.logs().splitlines() if f"refused version {users.v2}" in line)
    assert reason in refusal, refusal
    assert s.health() == SERVING


def test_rollback_to_previous_version(start_server: Any, users: UsersSnapshots, tmp_path: Path) -> None:
    root = users.root(tmp_path / "root")
    s = start_server(root, metrics=True)
    s.wait_health(SERVING)
    stub = s.stub()
    SnapshotRoot(root).set_current(users.v2)
    wait_for(lambda: current_version(stub) == users.v2, what="the swap to v2")
    SnapshotRoot(root).set_current(users.v1)  # rollback: v1 is still open as the previous version
    wait_for(lambda: current_version(stub) == users.v1, what="the rollback to v1")
    info = stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=10)
    assert [v.version for v in info.loaded] == [users.v1, users.v2]
    raw = s.channel().unary_unary(GET_FEATURES)(pb.GetFeaturesRequest(int64_ids=list(range(40))).SerializeToString(),
                                               timeout=10)
    check_against_source(users, raw, list(range(40)), users.v1)
    assert stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[1], version=users.v2), timeout=10).version == users.v2
    assert s.metric("quiver_snapshot_swaps_total") == 3
    assert "closed version" not in s.logs()  # nothing was reopened or closed: both stay loaded


def test_two_workers_serve_and_metrics_add_up(start_server: Any, users: UsersSnapshots, tmp_path: Path) -> None:
    root = users.root(tmp_path / "root")
    sock = short_tmpdir() / "q.sock"
    s = start_server(root, "--workers", "2", "--uds", str(sock), metrics=True)
    workers = [f"unix:{sock}", f"unix:{sock}.1"]  # worker k > 0 listens on PATH.k: each one reachable
    for target in workers:
        s.wait_health(SERVING, target=target)
    s.wait_health(SERVING)
    ids = list(range(100))
    for target in workers:
        resp = s.stub(target).GetFeatures(pb.GetFeaturesRequest(int64_ids=ids, views=["profile"]), timeout=10)
        assert resp.version == users.v1 and len(resp.rows) == 100
    infos = [s.stub(t).GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=10) for t in workers]
    infos.append(s.stub().GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=10))
    assert all(i.current_version == users.v1 and [v.version for v in i.loaded] == [users.v1] for i in infos)
    assert len({i.loaded[0].content_checksum for i in infos}) == 1
    # the supervisor's endpoint sums both workers
    wait_for(lambda: s.metric("quiver_entities_requested_total", view="profile") == 200, what="both workers' counts")
    assert s.metric("quiver_entities_found_total", view="profile") == 200
    pids = {labels["pid"] for labels, value in s.samples("quiver_snapshot_current")
            if labels["version"] == users.v1 and value == 1}
    assert len(pids) == 2, s.samples("quiver_snapshot_current")
    # both follow CURRENT
    SnapshotRoot(root).set_current(users.v2)
    for target in workers:
        stub = s.stub(target)
        wait_for(lambda stub=stub: current_version(stub) == users.v2, what=f"{target} to swap")
    wait_for(lambda: s.metric("quiver_snapshot_swaps_total") == 4, what="two swaps per worker")
    assert s.stop() == 0


def worker_pids(supervisor: int) -> set[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(p) for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}


def test_a_killed_worker_is_restarted(start_server: Any, users: UsersSnapshots, tmp_path: Path) -> None:
    """SIGKILL leaves the worker's Unix socket file behind: the replacement must bind it again and serve."""
    sock = short_tmpdir() / "q.sock"
    s = start_server(users.root(tmp_path / "root"), "--workers", "2", "--uds", str(sock))
    workers = [f"unix:{sock}", f"unix:{sock}.1"]
    for target in workers:
        s.wait_health(SERVING, target=target)
    before = worker_pids(s.proc.pid)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(worker_pids(s.proc.pid) - before) == 1 and victim not in worker_pids(s.proc.pid),
             what="a replacement worker")
    for target in workers:
        s.wait_health(SERVING, target=target)
        resp = s.stub(target).GetFeatures(pb.GetFeaturesRequest(int64_ids=[1, 2]), timeout=10)
        assert resp.version == users.v1 and len(resp.rows) == 2
    assert "restarting it" in s.logs()
    assert s.stop() == 0
