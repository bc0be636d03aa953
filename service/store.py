"""The one module that touches RocksDB. A LoadedVersion is one immutable snapshot version, opened
read-only (one RocksDB per storage group) once snapshot/integrity.py has checked it, and closed once
nothing reads it."""

import logging
import shutil
import tempfile
import threading
import time
from types import TracebackType

from rocksdict import AccessType, Cache, Rdict

from quiver.service.errors import VersionRefused
from quiver.snapshot import rocks
from quiver.snapshot.integrity import check_version
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.manifest import Manifest, ManifestError
from quiver.snapshot.schema import FeatureSet

log = logging.getLogger("quiver.store")
# The event loop's thread (worker.py runs the loop on the main thread); every other thread is a reader's.
_LOOP_THREAD = threading.main_thread().ident


class LoadedVersion:
    """An open version. `get` is the hot path: one batched multi-get for one storage group. Read it
    inside `with snapshots.reading(pin) as version:` (Snapshots), which retains it for the block: a
    retired version closes once the last such block has ended."""

    def __init__(self, version: str, manifest: Manifest, dbs: dict[str, Rdict], log_dir: str) -> None:
        self.version = version
        self.manifest = manifest
        self.schema: FeatureSet = manifest.schema
        self.key_type = self.schema.entity.key_type
        self.view_names: tuple[str, ...] = tuple(self.schema.view_names)
        # group -> its views in the order of the ViewRows in its stored values
        self.groups: dict[str, tuple[str, ...]] = {g: tuple(s.views) for g, s in manifest.groups.items()}
        self.group_of: dict[str, str] = {v: g for g, views in self.groups.items() for v in views}
        self._dbs = dbs
        self._log_dir = log_dir
        self._lock = threading.Lock()
        self._readers = 0
        self._retired = False
        self._closed = False

    def get(self, group: str, keys: list[bytes]) -> list[bytes | None]:
        """Stored EntityRow bytes of one group per key (None when absent). On a reader thread every read
        is a batched one, which releases the GIL while RocksDB works (a page-cache miss waits on the
        disk without stopping the event loop)."""
        if self._closed:  # the guard: never touch a closed handle
            raise RuntimeError(f"version {self.version} is closed")
        db = self._dbs[group]
        if len(keys) == 1 and threading.get_ident() == _LOOP_THREAD:
            # a single get keeps the GIL: cheaper than the batched call's release and re-acquire
            return [db.get(keys[0])]
        return db.get(keys)  # type: ignore[arg-type, return-value]

    def _retain(self) -> bool:
        """Registers a reader; False when the version is already retired (its handles may be closed).
        Called by Snapshots.reading only; the `with` block's end lets go."""
        with self._lock:
            if self._retired:
                return False
            self._readers += 1
            return True

    def __enter__(self) -> "LoadedVersion":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            self._readers -= 1
            close = self._retired and self._readers == 0
        if close:
            self._close()

    def retire(self) -> None:
        """No new readers will come; close as soon as the in-flight ones are done."""
        with self._lock:
            self._retired = True
            close = self._readers == 0
        if close:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _close_all(self._dbs, self._log_dir)
        log.info("closed version %s", self.version)


def _close_all(dbs: dict[str, Rdict], log_dir: str) -> None:
    for db in dbs.values():
        db.close()
    shutil.rmtree(log_dir, ignore_errors=True)


def open_version(root: SnapshotRoot, version: str, cache: Cache, verify: str) -> LoadedVersion:
    """Opens and checks a version (check_version at level `verify`, then what only the open RocksDB can
    tell); raises VersionRefused naming what is wrong. Blocking: run it off the event loop."""
    try:
        # the server reads only the online form: checking the offline Parquet would double the work
        started = time.monotonic()
        manifest = check_version(root, version, verify, prefix="online/", on_hashed=lambda files, size: log.info(
            "version %s: hashed %d online files (%.1f MB) in %.1f s; the others were proven before",
            version, files, size / 1e6, time.monotonic() - started))
    except ManifestError as e:
        raise VersionRefused(str(e)) from None
    # RocksDB's info logs go here, not into the version folders, whose files the manifest checksums;
    # removed when the version closes.
    log_dir = tempfile.mkdtemp(prefix=f"quiver-rocksdb-log-{version}-")
    dbs: dict[str, Rdict] = {}
    try:
        for group, stats in manifest.groups.items():
            opts = rocks.reader_options(cache)
            opts.set_db_log_dir(log_dir)
            # The default column family's options must be passed explicitly: otherwise rocksdict takes
            # them from the OPTIONS file on disk (the loader's, without this process's block cache), and
            # the shared cache configured here would never be used.
            db = Rdict(str(root.online_dir(version, group)), opts, column_families={"default": opts},
                       access_type=AccessType.read_only())
            dbs[group] = db
            live = db.live_files()
            listed = {f.path.rsplit("/", 1)[1] for f in manifest.files
                      if f.path.startswith(f"online/{group}/") and f.path.endswith(".sst")}
            opened = {str(f["name"]).lstrip("/") for f in live}
            if opened != listed:
                raise VersionRefused(f"version {version}: group {group!r} opens SST files "
                                     f"{sorted(opened ^ listed)[:5]} that differ from the manifest's")
            entries = sum(int(f["num_entries"]) for f in live)
            expected = stats.rows if stats.delta is None else stats.delta.entries   # a delta: base + its keys
            if entries != expected:
                raise VersionRefused(f"version {version}: group {group!r} holds {entries} entries, "
                                     f"the manifest says {expected}")
    except VersionRefused:
        _close_all(dbs, log_dir)
        raise
    except Exception as e:  # RocksDB reports corruption as plain exceptions
        _close_all(dbs, log_dir)
        raise VersionRefused(f"version {version}: cannot open: {e}") from None
    return LoadedVersion(version, manifest, dbs, log_dir)
