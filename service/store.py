"""The one module that touches RocksDB. A LoadedVersion is one immutable snapshot version, opened
read-only (one RocksDB per storage group), checked against its manifest, and closed once nothing reads it."""

import logging
import os
import tempfile
import threading

from rocksdict import AccessType, Cache, Rdict

from quiver.service.errors import VersionRefused
from quiver.snapshot import rocks
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.manifest import Manifest, ManifestError
from quiver.snapshot.schema import FeatureSet

log = logging.getLogger("quiver.store")
# RocksDB's info logs go here, not into the version folders, whose files the manifest checksums.
_LOG_DIR = tempfile.mkdtemp(prefix=f"quiver-rocksdb-log-{os.getpid()}-")


class LoadedVersion:
    """An open version. `get` is the hot path: one batched multi-get for one storage group."""

    def __init__(self, version: str, manifest: Manifest, dbs: dict[str, Rdict]) -> None:
        self.version = version
        self.manifest = manifest
        self.schema: FeatureSet = manifest.schema
        self.key_type = self.schema.entity.key_type
        self.view_names: tuple[str, ...] = tuple(self.schema.view_names)
        # group -> its views in the order of the ViewRows in its stored values
        self.groups: dict[str, tuple[str, ...]] = {g: tuple(s.views) for g, s in manifest.groups.items()}
        self.group_of: dict[str, str] = {v: g for g, views in self.groups.items() for v in views}
        self._dbs = dbs
        self._lock = threading.Lock()
        self._readers = 0
        self._retired = False
        self._closed = False

    def get(self, group: str, keys: list[bytes], off_loop: bool = False) -> list[bytes | None]:
        """Stored EntityRow bytes of one group per key (None when absent). Callers hold a reader (acquire).
        Off the event loop every read is a batched one, which releases the GIL while RocksDB works (a
        page-cache miss waits on the disk without stopping the loop)."""
        if self._closed:  # the guard: never touch a closed handle
            raise RuntimeError(f"version {self.version} is closed")
        db = self._dbs[group]
        if len(keys) == 1 and not off_loop:
            # a single get keeps the GIL: cheaper than the batched call's release and re-acquire
            return [db.get(keys[0])]
        return db.get(keys)  # type: ignore[arg-type, return-value]

    def acquire(self) -> bool:
        """Registers a reader; False when the version is already retired (its handles may be closed)."""
        with self._lock:
            if self._retired:
                return False
            self._readers += 1
            return True

    def release(self) -> None:
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
        for db in self._dbs.values():
            db.close()
        log.info("closed version %s", self.version)


def open_version(root: SnapshotRoot, version: str, cache: Cache, verify: str) -> LoadedVersion:
    """Opens and checks a version; raises VersionRefused naming what is wrong. Blocking: run it
    off the event loop."""
    vdir = root.version_dir(version)
    try:
        manifest = Manifest.load(vdir / "manifest.json")
    except ManifestError as e:
        raise VersionRefused(f"version {version}: {e}") from None
    if manifest.version != version:
        raise VersionRefused(f"version {version}: its manifest names {manifest.version}")
    # the server reads only the online form: checking the offline Parquet would double the work
    problems = manifest.verify_files(vdir, full=(verify == "full"), prefix="online/")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise VersionRefused(f"version {version}: {shown}")
    grouped = {v: g for g, s in manifest.groups.items() for v in s.views}
    stray = [(v.name, v.group) for v in manifest.schema.views if grouped.get(v.name) != v.group]
    if stray or len(grouped) != len(manifest.schema.views):
        raise VersionRefused(f"version {version}: the manifest's groups do not hold its views as the schema says "
                             f"(views and groups: {stray or sorted(grouped.items())})")
    dbs: dict[str, Rdict] = {}
    try:
        for group, stats in manifest.groups.items():
            opts = rocks.reader_options(cache)
            opts.set_db_log_dir(_LOG_DIR)
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
            if entries != stats.rows:
                raise VersionRefused(f"version {version}: group {group!r} holds {entries} entities, "
                                     f"the manifest says {stats.rows}")
    except VersionRefused:
        for db in dbs.values():
            db.close()
        raise
    except Exception as e:  # RocksDB reports corruption as plain exceptions
        for db in dbs.values():
            db.close()
        raise VersionRefused(f"version {version}: cannot open: {e}") from None
    return LoadedVersion(version, manifest, dbs)
