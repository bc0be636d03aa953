"""The one retention rule (snapshot/retention.py): kept are CURRENT, the previous, leased, the newest K;
`quiver gc` and `quiver sync`'s prune both remove exactly what it allows, on real folders."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from quiver import distribution
from quiver.gc import collect
from quiver.snapshot import FeatureSet, Manifest, SnapshotRoot
from quiver.snapshot.retention import apply, plan, version_order

SCHEMA = FeatureSet.from_json({"entity": {"name": "u", "key_type": "int64"},
                               "views": [{"name": "v", "source": "v.parquet",
                                          "features": [{"name": "x", "type": "int64"}]}]})


def add_version(root: SnapshotRoot, vid: str, created: str) -> str:
    """A published version as the retention rule sees it: a folder with a manifest (as-of from the id)."""
    d = root.version_dir(vid)
    (d / "online").mkdir(parents=True)
    (d / "online" / "data").write_bytes(b"x")
    as_of = f"{vid[0:4]}-{vid[4:6]}-{vid[6:8]}T{vid[9:11]}:{vid[11:13]}:{vid[13:15]}Z"
    (d / "manifest.json").write_bytes(Manifest(vid, created, as_of, SCHEMA, {}, {}, []).dumps())
    return vid


def lease(root: SnapshotRoot, host: str, pid: int, versions: list[str], age: float) -> Path:
    p = root.path / "leases" / f"{host}-{pid}.json"
    p.parent.mkdir(exist_ok=True)
    p.write_text(json.dumps({"host": host, "pid": pid, "versions": versions, "updated": time.time() - age}))
    return p


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def root(tmp_path: Path) -> tuple[SnapshotRoot, list[str]]:
    """Eight versions, oldest first. v[2] and v[3] share an as-of time: the one published later (v[2], whose
    hash sorts first) is newer, so order is not id order."""
    r = SnapshotRoot(tmp_path / "root")
    r.ensure()
    v = [add_version(r, "20260101T000000Z-aaaaaaaaaaaa", "2026-01-01T00:01:00Z"),
         add_version(r, "20260102T000000Z-aaaaaaaaaaaa", "2026-01-02T00:01:00Z"),
         add_version(r, "20260103T000000Z-ffffffffffff", "2026-01-03T00:01:00Z"),
         add_version(r, "20260103T000000Z-111111111111", "2026-01-03T00:02:00Z"),
         add_version(r, "20260104T000000Z-aaaaaaaaaaaa", "2026-01-04T00:01:00Z"),
         add_version(r, "20260105T000000Z-aaaaaaaaaaaa", "2026-01-05T00:01:00Z"),
         add_version(r, "20260106T000000Z-aaaaaaaaaaaa", "2026-01-06T00:01:00Z"),
         add_version(r, "20260107T000000Z-aaaaaaaaaaaa", "2026-01-07T00:01:00Z")]
    return r, v


def test_versions_are_ordered_by_as_of_then_publish_time(root: tuple[SnapshotRoot, list[str]]) -> None:
    r, v = root
    assert version_order(r) == v
    assert r.versions() != v   # by id, v[3] ('111...') would sort before v[2] ('fff...')


def test_kept_current_previous_leased_newest_k(root: tuple[SnapshotRoot, list[str]]) -> None:
    r, v = root
    r.set_current(v[1])
    r.set_current(v[5])                                      # ROOT/PREVIOUS = v[1]
    host = socket.gethostname()
    lease(r, "other-host", 1, [v[2]], age=60)                # fresh: holds v[2] though its pid means nothing here
    lease(r, "gone-host", 2, [v[0]], age=3600)               # stale, another host: holds nothing
    lease(r, host, dead_pid(), [v[3]], age=3600)             # stale, process gone: holds nothing
    lease(r, host, os.getpid(), [v[0]], age=3600)            # stale but alive on this host: holds v[0]
    p = plan(r, keep=2)
    assert p.kept == {
        v[0]: f"leased by {host}-{os.getpid()}",
        v[1]: "previous (before current)",
        v[2]: "leased by other-host-1",
        v[4]: "previous (before current)",                   # the one before CURRENT in version order
        v[5]: "current",
        v[6]: "one of the 2 newest",
        v[7]: "one of the 2 newest",
    }
    assert list(p.remove) == [v[3]] and not p.unreadable
    assert set(p.kept) | set(p.remove) == set(v)


def test_keep_zero_and_no_current(root: tuple[SnapshotRoot, list[str]]) -> None:
    r, v = root
    assert list(plan(r, keep=0).remove) == v                 # nothing is current, previous or leased
    assert list(plan(r, keep=3).kept) == v[-3:]
    with pytest.raises(ValueError):
        plan(r, keep=-1)


def test_a_garbage_lease_is_named_and_removes_nothing(root: tuple[SnapshotRoot, list[str]]) -> None:
    r, v = root
    r.set_current(v[7])
    bad = r.path / "leases" / "h-1.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    p = plan(r, keep=1)
    assert p.remove == {} and list(p.unreadable) == [bad]
    assert all(str(bad) in p.kept[x] for x in v[:6])
    assert distribution.prune(r, 2) == [] and r.versions() == sorted(v)
    with pytest.raises(Exception, match=str(bad)) as e:
        collect(r.path, 1)
    assert getattr(e.value, "exit_code", None) == 1 and r.versions() == sorted(v) and bad.exists()


def test_gc_and_sync_remove_exactly_what_the_rule_allows(tmp_path: Path) -> None:
    """The same root twice: gc and sync's prune must each remove exactly plan().remove."""
    removed = []
    for name, run in (("gc", lambda r: list(collect(r.path, 2).removed)),
                      ("sync", lambda r: distribution.prune(r, 2))):
        r = SnapshotRoot(tmp_path / name)
        r.ensure()
        v = [add_version(r, f"2026010{d}T000000Z-aaaaaaaaaaaa", f"2026-01-0{d}T00:01:00Z") for d in range(1, 8)]
        r.set_current(v[1])
        r.set_current(v[4])
        lease(r, "other-host", 1, [v[0]], age=60)
        expected = list(plan(r, keep=2).remove)
        assert expected == [v[2]]
        removed.append(run(r))
        assert sorted(r.versions()) == sorted(set(v) - set(expected))
        assert not any((r.path / "trash").iterdir())
    assert removed == [[v[2]], [v[2]]]


def test_apply_keeps_a_version_current_moved_to_since_the_plan(root: tuple[SnapshotRoot, list[str]]) -> None:
    r, v = root
    r.set_current(v[7])
    p = plan(r, keep=1)
    assert v[0] in p.remove
    r.set_current(v[0])                                      # a rollback between plan and apply
    removed = apply(r, p)
    assert v[0] not in removed and p.kept[v[0]] == "current" and r.version_dir(v[0]).is_dir()
    assert set(removed) == set(v[1:6]) and sorted(r.versions()) == [v[0], v[6], v[7]]
