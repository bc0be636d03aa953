"""Moving snapshot versions between a snapshot root and object storage.

The remote side mirrors the local one, under any pyarrow.fs URI (``s3://bucket/prefix``,
``file:///dir``)::

    PREFIX/versions/<id>/<file>            data files, uploaded first
    PREFIX/versions/<id>/manifest.json     uploaded after every file it lists
    PREFIX/LATEST                          the version replicas should serve, written last

A reader that follows LATEST therefore only ever finds complete versions. `publish` is idempotent:
objects already present with the manifest's size are skipped, so a rerun finishes an interrupted
upload. `sync` downloads into ``ROOT/staging/sync-<id>/``, checks every file's sha256 as it streams,
renames the whole directory into ``versions/<id>`` once complete, and only then moves CURRENT.

Versions share files: a view the loader reused keeps its files' paths and checksums. `publish`
copies such a file from the version LATEST names inside the object store (a server-side copy, no
upload), and `sync` hard-links it from a version the replica already holds (no download), so a
change to one view moves that view's bytes only.

Errors (each class carries the exit code of the CLI)::

    DistributionError              1
    ├── StorageError               3  object storage refused, for another reason
    │   ├── StorageUnreachable     4  endpoint cannot be reached
    │   ├── AccessDenied           5  wrong or missing credentials
    │   ├── BucketNotFound         6
    │   └── ObjectNotFound         7  nothing published, or a manifest/file missing
    ├── IntegrityError             8  size or checksum differs from the manifest
    ├── LocalSnapshotError         9  the local root has no such version, or is busy
    └── DiskFull                  10  ENOSPC on the local root

Exit code 2 stays argparse's (usage errors).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from quiver.gc import LEASE_FRESH_SECONDS, GcError, read_leases
from quiver.snapshot import FileEntry, Manifest, ManifestError, SnapshotRoot
from quiver.snapshot.layout import VERSION_ID, fsync_dir, write_atomic

__all__ = [
    "AccessDenied",
    "BucketNotFound",
    "DiskFull",
    "DistributionError",
    "IntegrityError",
    "LocalSnapshotError",
    "ObjectNotFound",
    "PublishResult",
    "RemoteStore",
    "StorageError",
    "StorageUnreachable",
    "SyncResult",
    "open_store",
    "point_latest",
    "publish",
    "register",
    "sync",
    "watch",
]

log = logging.getLogger("quiver.distribution")

_CHUNK = 8 << 20
LATEST = "LATEST"
MANIFEST = "manifest.json"
ONLINE = "online/"
ENDPOINT_ENV = ("QUIVER_S3_ENDPOINT", "AWS_ENDPOINT_URL")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

class DistributionError(Exception):
    exit_code = 1


class StorageError(DistributionError):
    exit_code = 3


class StorageUnreachable(StorageError):
    exit_code = 4


class AccessDenied(StorageError):
    exit_code = 5


class BucketNotFound(StorageError):
    exit_code = 6


class ObjectNotFound(StorageError):
    exit_code = 7


class IntegrityError(DistributionError):
    exit_code = 8


class LocalSnapshotError(DistributionError):
    exit_code = 9


class DiskFull(DistributionError):
    exit_code = 10


# Markers in pyarrow's OSError messages (they embed the AWS SDK's error name), most specific first.
_AWS_MARKERS: list[tuple[tuple[str, ...], type[StorageError], str]] = [
    (("NO_SUCH_BUCKET",), BucketNotFound, "the bucket does not exist: create it or fix the URI"),
    (("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId",
      "SignatureDoesNotMatch", "AccessDenied"),
     AccessDenied, "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the pod's role) and the bucket policy"),
    (("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't connect", "Timeout was reached",
      "REQUEST_TIMEOUT", "Unable to connect"),
     StorageUnreachable, "check the endpoint (QUIVER_S3_ENDPOINT / AWS_ENDPOINT_URL) and the network"),
]


def translate(exc: OSError, what: str) -> DistributionError:
    """The one place where foreign errors (pyarrow, the AWS SDK, the OS) become ours."""
    if exc.errno == errno.ENOSPC:
        return DiskFull(f"{what}: no space left on device; free space or lower --keep")
    text = str(exc)
    for markers, cls, hint in _AWS_MARKERS:
        if any(m in text for m in markers):
            return cls(f"{what}: {text} ({hint})")
    if isinstance(exc, FileNotFoundError):
        return ObjectNotFound(f"{what}: not found")
    return StorageError(f"{what}: {text}")


@contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except DistributionError:
        raise
    except OSError as e:
        raise translate(e, what) from e


# ---------------------------------------------------------------------------------------------
# The remote store
# ---------------------------------------------------------------------------------------------

def endpoint_from_env(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    for name in ENDPOINT_ENV:
        if env.get(name):
            return env[name]
    return None


@dataclass(frozen=True)
class RemoteStore:
    """One published tree: a filesystem and the base path inside it (bucket/prefix for S3)."""

    fs: pafs.FileSystem
    base: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def bucket(self) -> str:
        return self.base if self.is_local else self.base.split("/", 1)[0]

    def path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def url(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])

    def check_bucket(self) -> None:
        with _errors(f"bucket {self.bucket!r} at {self.uri}"):
            info = self.fs.get_file_info(self.bucket)
        if info.type == pafs.FileType.NotFound:
            raise BucketNotFound(f"bucket {self.bucket!r} at {self.uri} does not exist: "
                                 "create it or fix the URI")

    def sizes(self, *parts: str) -> dict[str, int]:
        """Sizes of every object under a folder, by path relative to it."""
        top = self.path(*parts)
        sel = pafs.FileSelector(top, recursive=True, allow_not_found=True)
        with _errors(f"listing {self.url(*parts)}"):
            infos = self.fs.get_file_info(sel)
        return {i.path[len(top) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}

    def read_bytes(self, *parts: str) -> bytes:
        with _errors(f"object {self.url(*parts)}"), self.fs.open_input_stream(self.path(*parts)) as f:
            data: bytes = f.read()
        return data

    def write_bytes(self, data: bytes, *parts: str) -> None:
        with _errors(f"writing {self.url(*parts)}"):
            self._write(self.path(*parts), lambda out: out.write(data))

    def upload(self, local: Path, *parts: str) -> None:
        def copy(out: Any) -> None:
            with open(local, "rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)

        with _errors(f"uploading {local} to {self.url(*parts)}"):
            self._write(self.path(*parts), copy)

    def copy(self, src: tuple[str, ...], dst: tuple[str, ...]) -> None:
        """One object to another inside the store (S3: a server-side copy, whole when it appears)."""
        with _errors(f"copying {self.url(*src)} to {self.url(*dst)}"):
            if not self.is_local:
                self.fs.copy_file(self.path(*src), self.path(*dst))
                return
            path = self.path(*dst)
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            self.fs.copy_file(self.path(*src), tmp)
            self.fs.move(tmp, path)

    def _write(self, path: str, fill: Callable[[Any], Any]) -> None:
        # An S3 object appears whole when its (multipart) upload completes; a local file would be
        # visible half-written, so it is written beside and moved into place.
        if not self.is_local:
            with self.fs.open_output_stream(path) as out:
                fill(out)
            return
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            fill(out)
        self.fs.move(tmp, path)

    def latest(self) -> str:
        try:
            text = self.read_bytes(LATEST).decode().strip()
        except ObjectNotFound:
            raise ObjectNotFound(f"{self.url(LATEST)}: missing: nothing has been published there yet"
                                 ) from None
        if not VERSION_ID.match(text):
            raise IntegrityError(f"{self.url(LATEST)}: {text[:80]!r} is not a version id")
        return text


def open_store(uri: str, endpoint: str | None = None) -> RemoteStore:
    """A RemoteStore for `uri`. S3 uses `endpoint` (default: $QUIVER_S3_ENDPOINT, $AWS_ENDPOINT_URL)."""
    endpoint = endpoint or endpoint_from_env()
    parts = urlsplit(uri)
    try:
        if parts.scheme == "s3" and endpoint and "endpoint_override" not in parts.query:
            ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            fs: pafs.FileSystem = pafs.S3FileSystem(
                endpoint_override=ep.netloc,
                scheme=ep.scheme,
                region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                connect_timeout=5,
                request_timeout=30,
                retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
            )
            base = (parts.netloc + parts.path).rstrip("/")
        else:
            fs, base = pafs.FileSystem.from_uri(uri)
            base = base.rstrip("/")
    except (OSError, ValueError, TypeError) as e:
        raise StorageError(f"{uri}: cannot open: {e}") from e
    if not base:
        raise StorageError(f"{uri}: names no bucket")
    return RemoteStore(fs, base, uri)


# ---------------------------------------------------------------------------------------------
# publish
# ---------------------------------------------------------------------------------------------

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
                store.copy(("versions", base, *f.path.split("/")), dst)
                copied.add(f.path)
                log.info("copied %s from %s (%d bytes)", f.path, base, f.size)
                return
            except ObjectNotFound:
                pass  # pruned since it was listed: upload it
        _upload_file(store, vdir / f.path, *dst)
        log.info("uploaded %s (%d bytes)", f.path, f.size)

    _run_all(put, todo, workers)
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


def _shared_with_latest(store: RemoteStore, version: str, files: list[FileEntry]) -> tuple[str, set[str]]:
    """The version LATEST names, and which of `files` it holds byte for byte (same path, size and
    checksum in its manifest). Nothing when there is no usable LATEST."""
    try:
        base = store.latest()
        manifest, _ = _remote_manifest(store, base)
    except (ObjectNotFound, IntegrityError):
        return "", set()
    if base == version:
        return "", set()
    theirs = {(f.path, f.size, f.checksum) for f in manifest.files}
    return base, {f.path for f in files if (f.path, f.size, f.checksum) in theirs}


def point_latest(uri: str, version: str, *, endpoint: str | None = None) -> bool:
    """Move LATEST to a version already published there (a data rollback without its files at hand).
    Refuses a version whose manifest is missing or unreadable. Returns whether LATEST moved."""
    store = open_store(uri, endpoint)
    store.check_bucket()
    _remote_manifest(store, version)
    try:
        if store.latest() == version:
            return False
    except (ObjectNotFound, IntegrityError):
        pass
    store.write_bytes((version + "\n").encode(), LATEST)
    return True


def _remote_manifest(store: RemoteStore, version: str) -> tuple[Manifest, bytes]:
    url = store.url("versions", version, MANIFEST)
    try:
        data = store.read_bytes("versions", version, MANIFEST)
    except ObjectNotFound:
        raise ObjectNotFound(f"{url}: missing: {version} was never published there, or its publish did not "
                             "finish; rerun `quiver publish`") from None
    try:
        manifest = Manifest.from_json(json.loads(data))
    except (ManifestError, ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{url}: unusable manifest: {e}") from None
    if manifest.version != version:
        raise IntegrityError(f"{url}: describes version {manifest.version}, not {version}")
    return manifest, data


def _upload_file(store: RemoteStore, local: Path, *parts: str) -> None:
    """One data file to its object (a seam for tests that interrupt an upload)."""
    store.upload(local, *parts)


def _run_all(fn: Callable[[Any], None], items: list[Any], workers: int) -> None:
    """Run fn over items on a few threads (pyarrow and hashlib release the GIL); the first error wins."""
    if workers <= 1 or len(items) <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="quiver-dist") as pool:
        futures = [pool.submit(fn, it) for it in items]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


# ---------------------------------------------------------------------------------------------
# sync
# ---------------------------------------------------------------------------------------------

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
        raise ValueError("keep must be at least 2: CURRENT and the version before it")
    snap = SnapshotRoot(root)
    with _errors(f"snapshot root {snap.path}"):
        snap.ensure()
    with _sync_lock(snap):
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
            with _errors(f"moving {snap.current_file} to {target}"):
                snap.set_current(target)
            log.info("CURRENT %s -> %s", previous, target)
        result.pruned = prune(snap, keep, protect={p for p in (previous,) if p})
        return result


def _download_version(store: RemoteStore, snap: SnapshotRoot, version: str, result: SyncResult,
                      workers: int, online_only: bool) -> None:
    manifest, manifest_bytes = _remote_manifest(store, version)
    stage = snap.staging_dir / f"sync-{version}"
    _clean_staging(snap, keep=stage)
    todo: list[FileEntry] = []
    held = _held_locally(snap)
    for f in manifest.files:
        if online_only and not f.path.startswith(ONLINE):
            result.left_out.append(f.path)
            continue
        done = stage / f.path
        # A file at its final name in staging was verified before it was renamed there.
        if done.is_file() and done.stat().st_size == f.size:
            result.resumed.append(f.path)
        elif (src := held.get((f.path, f.size, f.checksum))) is not None and _link(src, done, f.size):
            result.linked.append(f.path)
        else:
            todo.append(f)
    result.downloaded = _fetch(store, snap, version, todo, stage, workers)

    with _errors(f"publishing {version} into {snap.versions_dir}"):
        for p in stage.rglob("*.part"):
            p.unlink()
        write_atomic(stage / MANIFEST, manifest_bytes)
        dest = snap.version_dir(version)
        if dest.exists():  # left over without a manifest (never visible): move it out of the way
            os.rename(dest, snap.staging_dir / f"trash-{version}-{os.getpid()}")
        # One rename makes the complete version visible; before it, nothing of it is.
        os.rename(stage, dest)
        fsync_dir(snap.versions_dir)
        shutil.rmtree(snap.staging_dir / f"trash-{version}-{os.getpid()}", ignore_errors=True)


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

    def get(f: FileEntry) -> None:
        _download_file(store, into / f.path, f, "versions", version, *f.path.split("/"))

    _run_all(get, files, workers)
    return [f.path for f in files]


def _held_locally(snap: SnapshotRoot) -> dict[tuple[str, int, str], Path]:
    """(path, size, checksum) -> file, for every file of the versions this root holds (each was
    verified when it arrived and is never written again). CURRENT's first."""
    out: dict[tuple[str, int, str], Path] = {}
    current = snap.current()
    for v in sorted(snap.versions(), key=lambda v: v != current):
        try:
            manifest = Manifest.load(snap.manifest_path(v))
        except ManifestError:
            continue
        for f in manifest.files:
            out.setdefault((f.path, f.size, f.checksum), snap.version_dir(v) / f.path)
    return out


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


def _clean_staging(snap: SnapshotRoot, keep: Path) -> None:
    """Drop what earlier syncs left for other versions (LATEST moved on) and half-deleted versions."""
    for p in snap.staging_dir.iterdir():
        if p != keep and p.is_dir() and p.name.startswith(("sync-", "trash-")):
            shutil.rmtree(p, ignore_errors=True)


def _download_file(store: RemoteStore, dest: Path, entry: FileEntry, *parts: str) -> None:
    """Stream one object to `dest`, hashing as it goes; it takes its final name only once verified."""
    url = store.url(*parts)
    part = dest.with_name(dest.name + ".part")
    with _errors(f"writing {part}"):
        dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    try:
        with _errors(f"downloading {url} to {part}"), store.fs.open_input_stream(store.path(*parts)) as src, \
                open(part, "wb") as out:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        checksum = "sha256:" + h.hexdigest()
        if size != entry.size or checksum != entry.checksum:
            raise IntegrityError(
                f"{url}: {size} bytes with {checksum}, "
                f"manifest says {entry.size} bytes with {entry.checksum}: "
                "the object is corrupt or was overwritten; republish the version")
        with _errors(f"renaming {part}"):
            os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    log.info("downloaded %s (%d bytes)", entry.path, size)


@contextmanager
def _sync_lock(snap: SnapshotRoot) -> Iterator[None]:
    path = snap.staging_dir / ".sync.lock"
    with _errors(f"lock {path}"), open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LocalSnapshotError(f"{path}: another `quiver sync` is running on this root") from None
        yield


def leased_versions(snap: SnapshotRoot) -> set[str] | None:
    """Versions that running servers hold open (ROOT/leases/, written by `quiver serve`); None when a
    lease is unreadable and so might hold anything.

    A lease counts when `quiver gc` would count it, or when it is fresh: in Kubernetes the sync
    sidecar and the server share a hostname but, without shareProcessNamespace, not a PID namespace,
    so a live server's pid looks dead from here.
    """
    try:
        leases = read_leases(snap)
    except GcError as e:
        log.error("not pruning: %s", e)
        return None
    now, host = time.time(), socket.gethostname()
    return {v for lease in leases if lease.live(now, host) or now - lease.updated < LEASE_FRESH_SECONDS
            for v in lease.versions}


def prune(snap: SnapshotRoot, keep: int, protect: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Delete all but the newest `keep` versions; never CURRENT, the version before it, a version a
    running server holds (its lease), or `protect`."""
    held = leased_versions(snap)
    if held is None:
        return []
    versions = snap.versions()
    current = snap.current()
    keepers = set(versions[-keep:]) | set(protect) | held
    if current in versions:
        i = versions.index(current)
        keepers |= set(versions[max(0, i - 1): i + 1])
    removed = []
    for v in versions:
        if v in keepers:
            continue
        # Renamed out first so a half-deleted version never looks published.
        trash = snap.staging_dir / f"trash-{v}-{os.getpid()}"
        with _errors(f"removing old version {snap.version_dir(v)}"):
            os.rename(snap.version_dir(v), trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(v)
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
        except DistributionError as e:
            log.error("sync failed, CURRENT unchanged, retrying in %ss: %s", every, e)
        stop.wait(every)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("publish", help="upload a version to object storage and point LATEST at it")
    p.add_argument("--root", help="local snapshot root; without it, --version must already be published "
                   "and only LATEST moves (a data rollback)")
    p.add_argument("--to", required=True, dest="uri", help="s3://bucket/prefix or file:///dir")
    p.add_argument("--version", help="version id (default: the root's CURRENT); an older one rolls back")
    p.set_defaults(handler=_cmd_publish)

    s = subparsers.add_parser("sync", help="download the published LATEST version and make it CURRENT")
    s.add_argument("--from", required=True, dest="uri", help="s3://bucket/prefix or file:///dir")
    s.add_argument("--root", required=True, help="local snapshot root")
    s.add_argument("--watch", type=float, metavar="SECONDS", help="keep syncing at this interval")
    s.add_argument("--keep", type=int, default=3, help="versions kept locally (>= 2, default 3)")
    s.add_argument("--online-only", action="store_true",
                   help="fetch only the RocksDB form a server reads, not the offline Parquet (training reads "
                   "that from the store)")
    s.set_defaults(handler=_cmd_sync)


def _setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("QUIVER_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cmd_publish(args: argparse.Namespace) -> int:
    _setup_logging()
    if not args.root:
        if not args.version:
            print("quiver publish: give --root (upload a version) or --version (move LATEST to it)", file=sys.stderr)
            return 2
        try:
            moved = point_latest(args.uri, args.version)
        except DistributionError as e:
            print(f"quiver publish: {e}", file=sys.stderr)
            return e.exit_code
        print(f"LATEST at {args.uri} {'moved to' if moved else 'already'} {args.version}")
        return 0
    try:
        r = publish(args.root, args.uri, args.version)
    except DistributionError as e:
        print(f"quiver publish: {e}", file=sys.stderr)
        return e.exit_code
    print(f"published {r.version} to {args.uri}: {len(r.uploaded)} files uploaded, {len(r.copied)} copied "
          f"from the previous version, "
          f"{len(r.skipped)} already there"
          + ("; LATEST moved" if r.latest_moved else "; LATEST unchanged"))
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    _setup_logging()
    if args.keep < 2:
        print("quiver sync: --keep must be at least 2 (CURRENT and the version before it)", file=sys.stderr)
        return 2
    if args.watch:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        watch(args.uri, args.root, args.watch, args.keep, stop=stop, online_only=args.online_only)
        return 0
    try:
        t0 = time.monotonic()
        r = sync(args.uri, args.root, args.keep, online_only=args.online_only)
    except DistributionError as e:
        print(f"quiver sync: {e}", file=sys.stderr)
        return e.exit_code
    print(f"CURRENT {r.version} (was {r.previous}): {len(r.downloaded)} files downloaded, {len(r.linked)} linked, "
          f"{len(r.resumed)} resumed, " + (f"{len(r.left_out)} offline left out, " if r.left_out else "")
          + f"{len(r.pruned)} old versions pruned in {time.monotonic() - t0:.1f}s")
    return 0
