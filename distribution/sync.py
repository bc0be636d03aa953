"""`sync`: make a replica's root serve the remote LATEST; `watch`: sync at an interval; `prune`: the
root's retention rule after a sync (`quiver.snapshot.retention`).

A version is downloaded into ROOT/staging/sync-<id>/, every file's sha256 checked as it streams and the
file renamed to its final name only once verified; the whole folder is renamed into versions/<id> once
complete, and only then does CURRENT move. A file a version this root already holds has byte for byte
is hard-linked instead of downloaded.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from quiver.base.errors import QuiverError, UsageError
from quiver.distribution import transfer
from quiver.distribution.errors import DiskFull, LocalSnapshotError, translated
from quiver.distribution.store import MANIFEST, RemoteStore, open_store, remote_manifest
from quiver.snapshot import FileEntry, Manifest, ManifestError, SnapshotRoot
from quiver.snapshot.integrity import proven_of, write_record
from quiver.snapshot.layout import fsync_dir, write_atomic
from quiver.snapshot.lifecycle import clean_staging, empty_trash, lock, stage_dir, to_trash
from quiver.snapshot.retention import apply, plan

__all__ = ["SyncResult", "prune", "sync", "watch"]

log = logging.getLogger("quiver.distribution")
ONLINE = "online/"


@dataclass
class SyncResult:
    version: str
    previous: str | None
    downloaded: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)    # hard-linked from a version this root already has
    left_out: list[str] = field(default_factory=list)  # offline files not fetched (online_only)
    resumed: list[str] = field(default_factory=list)   # already verified in staging by an earlier run
    pruned: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.version != self.previous


def sync(uri: str, root: str | os.PathLike[str], keep: int = 3, *,
         endpoint: str | None = None, workers: int = 4, online_only: bool = False) -> SyncResult:
    """Make the root serve the remote LATEST: download it if needed, verify, publish, move CURRENT.

    `online_only`: fetch the RocksDB form only (all a server reads, ~60% of a version's bytes); the
    manifest still lists the offline files, which training reads from the store itself. A later sync
    without it fetches what such a version lacks.
    On any error CURRENT and versions/ are as before; verified files stay in staging for the next run.
    """
    if keep < 2:
        raise UsageError(f"--keep {keep}: must be at least 2 (CURRENT and the version before it)")
    snap = SnapshotRoot(root)
    with translated(f"snapshot root {snap.path}", local=True):
        snap.ensure()
    with lock(snap, "sync"):
        store = open_store(uri, endpoint)
        store.check_bucket()
        target = store.latest()
        previous = snap.current()
        result = SyncResult(target, previous)
        if not snap.manifest_path(target).is_file():
            _download_version(store, snap, target, result, workers, online_only)
        elif not online_only:
            _complete_version(store, snap, target, result, workers)
        if previous != target:
            with translated(f"moving {snap.current_file} to {target}", local=True):
                snap.set_current(target)
            log.info("CURRENT %s -> %s", previous, target)
        # the version CURRENT named before this sync is ROOT/PREVIOUS now: the rule keeps it
        result.pruned = prune(snap, keep)
        return result


def _download_version(store: RemoteStore, snap: SnapshotRoot, version: str, result: SyncResult,
                      workers: int, online_only: bool) -> None:
    manifest, manifest_bytes = remote_manifest(store, version)
    stage = stage_dir(snap, "sync", version)
    clean_staging(snap, "sync", keep=stage)  # for other versions: LATEST moved on
    empty_trash(snap)
    todo: list[FileEntry] = []
    held = _held_locally(snap)
    linked: dict[Path, list[FileEntry]] = {}   # the version each linked file comes from -> those files
    for f in manifest.files:
        if online_only and not f.path.startswith(ONLINE):
            result.left_out.append(f.path)
            continue
        done = stage / f.path
        # A file at its final name in staging was verified before it was renamed there.
        if done.is_file() and done.stat().st_size == f.size:
            result.resumed.append(f.path)
        elif (src := held.get((f.size, f.checksum))) is not None and _link(src, done, f.size):
            result.linked.append(f.path)
            linked.setdefault(_version_dir(snap, src), []).append(f)
        else:
            todo.append(f)
    result.downloaded = _fetch(store, snap, version, todo, stage, workers)

    with translated(f"publishing {version} into {snap.versions_dir}", local=True):
        for p in stage.rglob("*.part"):
            p.unlink()
        # what this sync verified (downloaded, or resumed: verified before it took its name) and the
        # linked files their versions' records prove; a server reads none of them again (integrity.py)
        by_path = {f.path: f for f in manifest.files}
        proven = {p: by_path[p].checksum for p in result.downloaded + result.resumed}
        for vdir, files in linked.items():
            proven |= proven_of(vdir, files, stage)
        write_record(stage, proven)
        write_atomic(stage / MANIFEST, manifest_bytes)
        dest = snap.version_dir(version)
        # left over without a manifest (never visible): moved out of the way
        leftover = to_trash(snap, dest, version) if dest.exists() else None
        # One rename makes the complete version visible; before it, nothing of it is.
        os.rename(stage, dest)
        fsync_dir(snap.versions_dir)
        if leftover:
            shutil.rmtree(leftover, ignore_errors=True)


def _complete_version(store: RemoteStore, snap: SnapshotRoot, version: str, result: SyncResult,
                      workers: int) -> None:
    """Fetch the files a version present here lacks: the offline form of one synced --online-only. Each
    file appears whole under its name once verified; the online files a server reads are untouched."""
    vdir = snap.version_dir(version)
    try:
        manifest = Manifest.load(snap.manifest_path(version))
    except ManifestError as e:
        raise LocalSnapshotError(f"version {version} in {snap.path}: {e}") from None
    result.downloaded = _fetch(store, snap, version, [f for f in manifest.files if not (vdir / f.path).is_file()],
                               vdir, workers)


def _fetch(store: RemoteStore, snap: SnapshotRoot, version: str, files: list[FileEntry], into: Path,
           workers: int) -> list[str]:
    """Download `files` of `version` under `into`, each verified; refuses up front if they cannot fit."""
    need, free = sum(f.size for f in files), shutil.disk_usage(snap.path).free
    if need > free:
        raise DiskFull(f"{snap.path}: version {version} needs {need} more bytes, {free} free; "
                       "free space or lower --keep")

    refs = store.refs(version) if files else {}

    def get(f: FileEntry) -> None:
        transfer.download_file(store, into / f.path, f, *store.location(version, f.path, refs))

    transfer.run_all(get, files, workers)
    return [f.path for f in files]


def _held_locally(snap: SnapshotRoot) -> dict[tuple[int, str], Path]:
    """(size, checksum) -> file, for every file of the versions this root holds (each was verified when it
    arrived and is never written again), whatever its name: a delta version's base files may be named
    otherwise than in the version they come from. CURRENT's first."""
    out: dict[tuple[int, str], Path] = {}
    current = snap.current()
    for v in sorted(snap.versions(), key=lambda v: v != current):
        try:
            manifest = Manifest.load(snap.manifest_path(v))
        except ManifestError:
            continue
        for f in manifest.files:
            out.setdefault((f.size, f.checksum), snap.version_dir(v) / f.path)
    return out


def _version_dir(snap: SnapshotRoot, path: Path) -> Path:
    """The folder of the version a held file belongs to."""
    return snap.versions_dir / path.relative_to(snap.versions_dir).parts[0]


def _link(src: Path, dest: Path, size: int) -> bool:
    """Hard-link a file another version holds; False (download it instead) when that is not possible."""
    try:
        if src.stat().st_size != size:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dest)
        return True
    except OSError:
        return False


def prune(snap: SnapshotRoot, keep: int) -> list[str]:
    """Apply the root's retention rule (`quiver.snapshot.retention`: kept are CURRENT, the previous,
    leased, the newest `keep`); returns the versions removed. A garbage lease file is logged by name and
    nothing is removed this round."""
    retention = plan(snap, keep)
    for path, why in retention.unreadable.items():
        log.error("not pruning: %s: unreadable lease (%s); remove it if no server uses that root from there",
                  path, why)
    if retention.unreadable:
        return []
    with translated(f"removing old versions from {snap.versions_dir}", local=True):
        removed = list(apply(snap, retention))
    for v in removed:
        log.info("pruned %s", v)
    return removed


def watch(uri: str, root: str | os.PathLike[str], every: float, keep: int = 3, *,
          endpoint: str | None = None, stop: threading.Event | None = None, online_only: bool = False) -> None:
    """Sync every `every` seconds until `stop` is set; a failed round is logged and retried."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            r = sync(uri, root, keep, endpoint=endpoint, online_only=online_only)
            if r.changed:
                log.warning("serving %s (was %s); %d files downloaded",
                            r.version, r.previous, len(r.downloaded))
        except QuiverError as e:
            log.error("sync failed, CURRENT unchanged, retrying in %ss: %s", every, e)
        stop.wait(every)


# ---------------------------------------------------------------------------------------------
