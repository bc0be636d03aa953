"""`publish`: a local version to object storage, then LATEST; `point_latest`: LATEST alone (a rollback).

Order is the invariant: data files, then the manifest, then LATEST, so a reader that follows LATEST only
ever finds complete versions. Objects already present with the manifest's size are skipped, so a rerun
finishes an interrupted upload. A file the version LATEST names holds byte for byte (a view the loader
reused) is copied inside the store instead of uploaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from quiver.distribution import transfer
from quiver.distribution.errors import IntegrityError, LocalSnapshotError, ObjectNotFound
from quiver.distribution.store import LATEST, MANIFEST, RemoteStore, open_store, remote_manifest
from quiver.snapshot import FileEntry, Manifest, ManifestError, SnapshotRoot

__all__ = ["PublishResult", "point_latest", "publish"]

log = logging.getLogger("quiver.distribution")


@dataclass
class PublishResult:
    version: str
    uploaded: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)    # same file in the version LATEST named: copied there
    skipped: list[str] = field(default_factory=list)
    latest_moved: bool = False


def publish(root: str | os.PathLike[str], uri: str, version: str | None = None, *,
            endpoint: str | None = None, workers: int = 4) -> PublishResult:
    """Upload `version` (default: the root's CURRENT) and point LATEST at it.

    Order is the invariant: data files, then the manifest, then LATEST. Publishing an older version
    rolls data back (so does `point_latest`, without the files at hand).
    """
    snap = SnapshotRoot(root)
    version = version or snap.current()
    if not version:
        raise LocalSnapshotError(f"{snap.current_file}: missing: no current version to publish "
                                 "(pass --version)")
    try:
        manifest = Manifest.load(snap.manifest_path(version))
    except ManifestError as e:
        raise LocalSnapshotError(f"version {version} in {snap.path}: {e}") from None
    vdir = snap.version_dir(version)
    if problems := manifest.verify_files(vdir, full=False):
        raise IntegrityError(f"local version {vdir} does not match its manifest: " + "; ".join(problems[:5]))

    store = open_store(uri, endpoint)
    store.check_bucket()
    result = PublishResult(version)
    present = store.sizes("versions", version)
    todo = [f for f in manifest.files if present.get(f.path) != f.size]
    result.skipped = [f.path for f in manifest.files if present.get(f.path) == f.size]

    base, shared = _shared_with_latest(store, version, todo)
    copied: set[str] = set()

    def put(f: FileEntry) -> None:
        dst = ("versions", version, *f.path.split("/"))
        if f.path in shared:
            try:
                store.copy(("versions", base, *shared[f.path].split("/")), dst)
                copied.add(f.path)
                log.info("copied %s from %s (%d bytes)", f.path, base, f.size)
                return
            except ObjectNotFound:
                pass  # pruned since it was listed: upload it
        transfer.upload_file(store, vdir / f.path, *dst)
        log.info("uploaded %s (%d bytes)", f.path, f.size)

    transfer.run_all(put, todo, workers)
    result.copied = [f.path for f in todo if f.path in copied]
    result.uploaded = [f.path for f in todo if f.path not in copied]
    manifest_bytes = snap.manifest_path(version).read_bytes()
    if present.get(MANIFEST) != len(manifest_bytes):
        store.write_bytes(manifest_bytes, "versions", version, MANIFEST)
    try:
        current_latest: str | None = store.latest()
    except (ObjectNotFound, IntegrityError):
        current_latest = None
    if current_latest != version:
        store.write_bytes((version + "\n").encode(), LATEST)
        result.latest_moved = True
    return result


def _shared_with_latest(store: RemoteStore, version: str, files: list[FileEntry]) -> tuple[str, dict[str, str]]:
    """The version LATEST names, and which of `files` it holds byte for byte (same size and checksum in
    its manifest, under any name: a delta version's base files may be named otherwise): path -> its path
    there. Nothing when there is no usable LATEST."""
    try:
        base = store.latest()
        manifest, _ = remote_manifest(store, base)
    except (ObjectNotFound, IntegrityError):
        return "", {}
    if base == version:
        return "", {}
    theirs = {(f.size, f.checksum): f.path for f in manifest.files}
    return base, {f.path: theirs[(f.size, f.checksum)] for f in files if (f.size, f.checksum) in theirs}


def point_latest(uri: str, version: str, *, endpoint: str | None = None) -> bool:
    """Move LATEST to a version already published there (a data rollback without its files at hand).
    Refuses a version whose manifest is missing or unreadable. Returns whether LATEST moved."""
    store = open_store(uri, endpoint)
    store.check_bucket()
    remote_manifest(store, version)
    try:
        if store.latest() == version:
            return False
    except (ObjectNotFound, IntegrityError):
        pass
    store.write_bytes((version + "\n").encode(), LATEST)
    return True

