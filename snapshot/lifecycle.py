"""A root's working folders and locks: staging, trash, and the locks that serialize loads and syncs.

    ROOT/.load.lock            held by `quiver load` for its whole run; `gc` cleans staging/load-* only
                               while it can take it
    ROOT/staging/.sync.lock    held by `quiver sync` for its whole run
    ROOT/staging/load-*        a load in progress; removed by the next load (or gc) once no load runs
    ROOT/staging/sync-<id>     a sync's verified files, kept for the next run to resume from
    ROOT/trash/                versions being deleted: a version is renamed here in one step (whole
                               with its manifest, or gone), then deleted; leftovers go on the next run

Leases (which versions servers hold) are in `leases`; which versions stay is `retention`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from quiver.base.errors import RootBusy, RootError
from quiver.snapshot.layout import SnapshotRoot, fsync_dir

__all__ = ["Lock", "clean_staging", "empty_trash", "lock", "lock_if_free", "lock_path", "remove_version",
           "stage_dir"]

Lock = Literal["load", "sync"]
Stage = Literal["load", "sync"]


def lock_path(root: SnapshotRoot, which: Lock) -> Path:
    return root.path / ".load.lock" if which == "load" else root.staging_dir / ".sync.lock"


@contextmanager
def lock(root: SnapshotRoot, which: Lock) -> Iterator[None]:
    """Hold the root's load or sync lock for the block; RootBusy at once when another process holds it."""
    path = lock_path(root, which)
    try:
        root.ensure()
        f = open(path, "a+b")
    except OSError as e:
        raise RootError(f"{path}: cannot open the {which} lock: {e.strerror or e}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RootBusy(f"{path}: another `quiver {which}` is running on this root") from None
        yield


@contextmanager
def lock_if_free(root: SnapshotRoot, which: Lock) -> Iterator[bool]:
    """True while we hold the lock (nobody can start), False when someone else holds it."""
    path = lock_path(root, which)
    if not path.exists():
        yield True
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def stage_dir(root: SnapshotRoot, kind: Stage, name: str) -> Path:
    return root.staging_dir / f"{kind}-{name}"


def clean_staging(root: SnapshotRoot, kind: Stage, keep: Path | None = None) -> list[str]:
    """Remove what earlier loads or syncs left in staging (call it holding that kind's lock); returns
    the names removed."""
    if not root.staging_dir.is_dir():
        return []
    removed = []
    for p in sorted(root.staging_dir.glob(f"{kind}-*")):
        if p != keep and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def trash_dir(root: SnapshotRoot) -> Path:
    return root.path / "trash"


def to_trash(root: SnapshotRoot, path: Path, name: str) -> Path:
    """Rename `path` into ROOT/trash/ (one atomic step) and return where it went; then delete it there."""
    trash = trash_dir(root)
    trash.mkdir(exist_ok=True)
    target = trash / f"{name}.{os.getpid()}.{time.time_ns()}"
    os.rename(path, target)
    return target


def remove_version(root: SnapshotRoot, version: str) -> None:
    """Delete one version: renamed out first, so a half-deleted version never looks published. Files a
    newer version reuses are hard links, so the newer version stays intact."""
    target = to_trash(root, root.version_dir(version), version)
    fsync_dir(root.versions_dir)
    shutil.rmtree(target, ignore_errors=True)


def empty_trash(root: SnapshotRoot) -> list[str]:
    """Delete what a killed gc or sync left in ROOT/trash/; returns the names deleted."""
    trash = trash_dir(root)
    if not trash.is_dir():
        return []
    names = []
    for p in sorted(trash.iterdir()):
        shutil.rmtree(p, ignore_errors=True)
        names.append(p.name)
    return names
