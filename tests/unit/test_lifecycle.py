"""snapshot/lifecycle.py on real folders: the load and sync locks (busy at once, released when the holder
ends or is killed), staging and its clean-up after killed loads, and trash (a version leaves by one rename,
and what a killed run leaves in trash goes on the next one). The CLI-level checks (`quiver gc` leaving a
running load's staging alone, a second sync refused) are in tests/e2e/test_verify_gc.py and
test_sync_failures.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quiver.base.errors import RootBusy, RootError
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.lifecycle import (
    Lock,
    clean_staging,
    empty_trash,
    lock,
    lock_if_free,
    lock_path,
    remove_version,
    stage_dir,
    to_trash,
    trash_dir,
)

V1, V2 = "20260101T000000Z-aaaaaaaaaaaa", "20260102T000000Z-bbbbbbbbbbbb"

# A load that is killed mid-build: it holds the load lock and has written part of its staging folder.
KILLED_LOAD = """
import os, sys
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.lifecycle import lock, stage_dir
root = SnapshotRoot(sys.argv[1])
with lock(root, "load"):
    part = stage_dir(root, "load", f"{sys.argv[2]}-{os.getpid()}") / "version" / "online" / "default"
    part.mkdir(parents=True)
    (part / "000001.sst").write_bytes(b"half")
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def root(tmp_path: Path) -> SnapshotRoot:
    r = SnapshotRoot(tmp_path / "root")
    r.ensure()
    return r


def publish(root: SnapshotRoot, version: str, files: dict[str, bytes]) -> None:
    d = root.version_dir(version)
    d.mkdir(parents=True)
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    (d / "manifest.json").write_text("{}")


def test_lock_files_are_where_the_format_says() -> None:
    r = SnapshotRoot("/r")
    assert lock_path(r, "load") == Path("/r/.load.lock")
    assert lock_path(r, "sync") == Path("/r/staging/.sync.lock")
    assert stage_dir(r, "load", "x-1") == Path("/r/staging/load-x-1")
    assert stage_dir(r, "sync", V1) == Path(f"/r/staging/sync-{V1}")


@pytest.mark.parametrize("which", ["load", "sync"])
def test_a_held_lock_makes_a_second_taker_busy_at_once_and_is_released_after(root: SnapshotRoot, which: Lock) -> None:
    with lock(root, which):
        with pytest.raises(RootBusy) as e:
            with lock(root, which):
                pass
        assert str(lock_path(root, which)) in str(e.value)
        assert f"another `quiver {which}` is running on this root" in str(e.value)
    with lock(root, which):
        pass


def test_load_and_sync_locks_are_independent(root: SnapshotRoot) -> None:
    with lock(root, "load"), lock(root, "sync"):
        pass


def test_lock_creates_a_missing_root_and_names_one_it_cannot_use(tmp_path: Path) -> None:
    fresh = SnapshotRoot(tmp_path / "new")
    with lock(fresh, "load"):
        assert fresh.versions_dir.is_dir() and fresh.staging_dir.is_dir()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RootError) as e:
        with lock(SnapshotRoot(tmp_path / "file"), "load"):
            pass
    assert not isinstance(e.value, RootBusy) and "cannot open the load lock" in str(e.value)


def test_lock_if_free_when_no_one_ever_locked(tmp_path: Path) -> None:
    r = SnapshotRoot(tmp_path / "never")
    with lock_if_free(r, "load") as free:
        assert free is True
    assert not lock_path(r, "load").exists()   # a check, not a lock: nothing created


def test_lock_if_free_holds_the_lock_while_true_and_says_false_while_held(root: SnapshotRoot) -> None:
    with lock(root, "load"):
        pass  # the lock file exists now, free
    with lock_if_free(root, "load") as free:
        assert free is True
        with pytest.raises(RootBusy):   # nobody can start a load while we clean
            with lock(root, "load"):
                pass
    with lock(root, "load"):            # released after the block
        with lock_if_free(root, "load") as free:
            assert free is False


def test_clean_staging_removes_only_that_kinds_folders(root: SnapshotRoot) -> None:
    for name in ("load-b-2", "load-a-1", "sync-" + V1, "sync-" + V2, "other"):
        (root.staging_dir / name / "version").mkdir(parents=True)
    (root.staging_dir / "load-file").write_text("a file, not a load's folder")
    with lock(root, "sync"):
        pass   # staging/.sync.lock exists
    assert clean_staging(root, "load") == ["load-a-1", "load-b-2"]
    assert sorted(p.name for p in root.staging_dir.iterdir()) == [
        ".sync.lock", "load-file", "other", "sync-" + V1, "sync-" + V2]
    keep = stage_dir(root, "sync", V2)
    assert clean_staging(root, "sync", keep=keep) == ["sync-" + V1]
    assert keep.is_dir() and (root.staging_dir / ".sync.lock").is_file()
    assert clean_staging(root, "load") == []
    assert clean_staging(SnapshotRoot(root.path / "nowhere"), "load") == []


def test_a_killed_load_releases_its_lock_and_the_next_load_removes_its_staging(root: SnapshotRoot) -> None:
    child = subprocess.Popen([sys.executable, "-c", KILLED_LOAD, str(root.path), V1], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        with pytest.raises(RootBusy):
            with lock(root, "load"):
                pass
        with lock_if_free(root, "load") as free:
            assert free is False   # gc must leave a running load's staging alone
        assert [p.name for p in root.staging_dir.iterdir()] == [f"load-{V1}-{child.pid}"]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    with lock(root, "load"):   # the kernel released the killed load's lock: no stale lock to clear by hand
        assert clean_staging(root, "load") == [f"load-{V1}-{child.pid}"]
    assert list(root.staging_dir.iterdir()) == []


def test_remove_version_renames_it_out_then_deletes_it_keeping_hard_links_of_newer_versions(
        root: SnapshotRoot) -> None:
    publish(root, V1, {"online/default/000001.sst": b"shared bytes", "offline/v/part-0.parquet": b"old"})
    publish(root, V2, {})
    (root.version_dir(V2) / "online" / "default").mkdir(parents=True)
    os.link(root.version_dir(V1) / "online/default/000001.sst", root.version_dir(V2) / "online/default/000001.sst")
    remove_version(root, V1)
    assert not root.version_dir(V1).exists() and root.versions() == [V2]
    assert list(trash_dir(root).iterdir()) == []
    assert (root.version_dir(V2) / "online/default/000001.sst").read_bytes() == b"shared bytes"


def test_a_version_in_trash_is_no_longer_published_and_the_next_run_empties_it(root: SnapshotRoot) -> None:
    """What a gc killed between the rename and the delete leaves behind."""
    publish(root, V1, {"online/default/000001.sst": b"x"})
    first = to_trash(root, root.version_dir(V1), V1)
    publish(root, V1, {"online/default/000001.sst": b"y"})   # the same name again: no collision in trash
    second = to_trash(root, root.version_dir(V1), V1)
    assert first != second and first.parent == second.parent == trash_dir(root)
    assert first.name.startswith(f"{V1}.{os.getpid()}.") and (first / "manifest.json").is_file()
    assert root.versions() == []
    assert empty_trash(root) == sorted([first.name, second.name])
    assert list(trash_dir(root).iterdir()) == []
    assert empty_trash(root) == []
    assert empty_trash(SnapshotRoot(root.path / "nowhere")) == []
