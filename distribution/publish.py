"""`publish`: a local version to object storage, then LATEST; `point_latest`: LATEST alone (a rollback).

Order is the invariant: data files, then the manifest, then LATEST, so a reader that follows LATEST only
ever finds complete versions. Objects already present with the manifest's size are skipped, so a rerun
finishes an interrupted upload. A file the version LATEST names holds byte for byte, under any name (a view
the loader reused, a delta's base) is not uploaded or copied: refs.json, written before the manifest, names
where it lies (distribution/store.py).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from quiver.distribution import transfer
from quiver.distribution.errors import IntegrityError, LocalSnapshotError, ObjectNotFound
from quiver.distribution.store import LATEST, MANIFEST, REFS, RemoteStore, open_store, remote_manifest
from quiver.snapshot import FileEntry, Manifest, ManifestError, SnapshotRoot

__all__ = ["PublishResult", "point_latest", "publish"]

log = logging.getLogger("quiver.distribution")


@dataclass
class PublishResult:
    version: str
    uploaded: list[str] = field(default_factory=list)
    referenced: list[str] = field(default_factory=list)   # held by the version LATEST named: referenced
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

    shared = _shared_with_latest(store, version, todo)
    refs = {f.path: shared[f.path] for f in todo if f.path in shared}

    def put(f: FileEntry) -> None:
        transfer.upload_file(store, vdir / f.path, "versions", version, *f.path.split("/"))
        log.info("uploaded %s (%d bytes)", f.path, f.size)

    transfer.run_all(put, [f for f in todo if f.path not in refs], workers)
    if refs:
        store.write_bytes(json.dumps({"files": refs}, sort_keys=True).encode(), "versions", version, REFS)
        log.info("referenced %d file(s) (%d bytes) already in the store", len(refs),
                 sum(f.size for f in todo if f.path in refs))
    result.referenced = [f.path for f in todo if f.path in refs]
    result.uploaded = [f.path for f in todo if f.path not in refs]
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


def _shared_with_latest(store: RemoteStore, version: str, files: list[FileEntry]) -> dict[str, str]:
    """Which of `files` the version LATEST names holds byte for byte (same size and checksum in its
    manifest, under any name): path -> where that file lies in the store ("<id>/<path>", through LATEST's own
    refs.json). Nothing when there is no usable LATEST."""
    try:
        base = store.latest()
        manifest, _ = remote_manifest(store, base)
    except (ObjectNotFound, IntegrityError):
        return {}
    if base == version:
        return {}
    theirs_refs = store.refs(base)
    theirs = {(f.size, f.checksum): theirs_refs.get(f.path) or f"{base}/{f.path}" for f in manifest.files}
    return {f.path: theirs[(f.size, f.checksum)] for f in files if (f.size, f.checksum) in theirs}


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

