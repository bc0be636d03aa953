"""`quiver load --changes VIEW=PATH`, `load_changes(root, {view: table})`: a delta version, a new version
on top of CURRENT that changes some entities' rows of some views (snapshot/FORMAT.md "Delta versions").

    read     each view's changed rows (Parquet files or Arrow tables): checked and normalized as a load's
             sources are, `_deleted` rows removing the entity from the view; duplicate keys refused
    checks   the declared checks on the changed rows (the view's row counts on the whole version)
    offline  per changed view: the base's files linked, and ONE cumulative delta file written (the
             previous delta's rows the new changes do not replace, then the new ones)
    online   per changed group: the base's SST files linked (the same inodes) and ingested into a fresh
             RocksDB, then ONE cumulative delta SST above them: the group's whole new value for every
             entity changed since the base, a tombstone for one left with no view; or, past
             --rebase-fraction of the group's entities, the group written in full (rebase)
    publish  as any load: checksums, the record of proven files, manifest last, one rename, CURRENT

A read meets at most two sorted runs (the delta, then the base), and a reader opens a delta version as
any other. Groups and views the changes do not touch are linked whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rocksdict import AccessType, Cache, IngestExternalFileOptions, Options, Rdict, ReadOptions, SstFileWriter

from quiver.base.errors import IntegrityError, RootError
from quiver.loader import plan as planning
from quiver.loader.definitions import load_definitions
from quiver.loader.encode import ViewEncoder
from quiver.loader.entity_row import assemble, split
from quiver.loader.errors import DataError, DefinitionError, SourceError
from quiver.loader.ingest import ingest_task
from quiver.loader.load import Phases
from quiver.loader.normalize import check_source_schema, normalize, normalized_schema
from quiver.loader.partition import encoded_keys
from quiver.loader.publish import (
    checksums,
    clean_staging,
    link_files,
    load_lock,
    publish,
    record_proven,
    staging_removed_on_failure,
)
from quiver.loader.sources import matching
from quiver.loader.spill import OFFLINE_ROW_GROUP, offline_writer
from quiver.loader.sst import PUT_ROWS, RollingSstWriter, SstFile, sorted_deduplicated
from quiver.quality import evaluate as quality
from quiver.quality.checks import evaluate_view
from quiver.quality.statistics import ViewAccumulator, write_statistics
from quiver.snapshot import rocks
from quiver.snapshot.integrity import check_version
from quiver.snapshot.layout import FORMAT_VERSION, SnapshotRoot
from quiver.snapshot.lifecycle import stage_dir
from quiver.snapshot.manifest import (
    DELETED,
    DELTA_DIR,
    Changes,
    CheckSummary,
    FileEntry,
    GroupDelta,
    GroupStats,
    Manifest,
    ManifestError,
    ViewDelta,
    ViewStats,
    file_checksum,
    is_offline_delta,
    stream_checksum,
)
from quiver.snapshot.schema import EntityDef, ViewDef

log = logging.getLogger("quiver.loader")
REBASE_FRACTION = 0.15     # a group whose delta holds more of its entities is written in full
SLICE_KEYS = 65536         # changed entities read and assembled at a time (~80 MB of 1.2 KB values)
Change: TypeAlias = str | os.PathLike[str] | pa.Table


@dataclass(frozen=True)
class ChangeOptions:
    as_of: datetime | None = None
    rebase_fraction: float = REBASE_FRACTION
    accept_failed_checks: bool = False
    features: str | os.PathLike[str] | None = None   # a features.yaml the changes must agree with
    compression: str = rocks.DEFAULT_COMPRESSION
    workers: int = 2       # threads reading and assembling the changed entities' values


@dataclass
class ViewChange:
    """One view's changes, read and checked: upserted rows (normalized, by key) and removed keys."""

    view: ViewDef
    sources: list[FileEntry]
    rows: pa.Table               # normalized schema, sorted by key, one row per key
    deleted: pa.Array            # entity keys removed from the view, sorted, unique

    @property
    def keys(self) -> pa.Array:
        """Every key the change touches (upserted or removed)."""
        return pa.concat_arrays([self.rows.column(0).combine_chunks(), self.deleted])

    def offline_rows(self) -> pa.Table:
        """The change as offline delta rows: the upserts, then the removals (nulls but the key)."""
        schema = delta_schema(self.rows.schema)
        up = self.rows.append_column(DELETED, pa.array(np.zeros(self.rows.num_rows, bool)))
        gone = pa.table([self.deleted, *(pa.nulls(len(self.deleted), f.type) for f in list(self.rows.schema)[1:]),
                         pa.array(np.ones(len(self.deleted), bool))], schema=schema)
        return pa.concat_tables([up.cast(schema), gone])


def delta_schema(normalized: pa.Schema) -> pa.Schema:
    return normalized.append(pa.field(DELETED, pa.bool_(), nullable=False))


@dataclass
class DeltaResult:
    version: str
    manifest: Manifest
    published: bool
    rebased: list[str] = field(default_factory=list)      # groups written in full
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------
# Reading the changes
# --------------------------------------------------------------------------------------------------

def _resolve(view: ViewDef, spec: str) -> list[str]:
    """A file, a folder (its *.parquet) or a glob, as a view's source is named."""
    found = matching(spec)
    if not found:
        raise SourceError(f"view {view.name!r}: changes {spec!r} match no file")
    return found


def _table_digest(table: pa.Table) -> str:
    """An Arrow table handed in memory is identified by its rows' bytes (IPC stream)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return "sha256:" + hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _inputs(view: ViewDef, change: Change) -> list[tuple[str, pa.Table, FileEntry]]:
    if isinstance(change, pa.Table):
        return [(f"changes for view {view.name!r} (an Arrow table)", change,
                 FileEntry("<arrow table>", change.num_rows, _table_digest(change)))]
    out = []
    for path in _resolve(view, str(change)):
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"{path}: view {view.name!r}: not a readable Parquet file (truncated or corrupt?): "
                              f"{e}") from None
        out.append((path, table, FileEntry(os.path.abspath(path), os.path.getsize(path), file_checksum(path))))
    return out


def _deleted_mask(table: pa.Table, view: ViewDef, where: str) -> np.ndarray:
    if DELETED not in table.column_names:
        return np.zeros(table.num_rows, bool)
    col = table.column(DELETED)
    if not pa.types.is_boolean(col.type):
        raise DataError(f"{where}: view {view.name!r}: column {DELETED!r} is {col.type}, expected bool "
                        f"(true removes the entity from the view)")
    return np.asarray(col.fill_null(False).to_numpy(zero_copy_only=False), bool)


def read_change(entity: EntityDef, view: ViewDef, change: Change) -> ViewChange:
    """One view's changes, checked as a load checks its sources; a DataError names the file, view,
    feature and an example key."""
    key_col = view.entity_column or entity.name
    known = {key_col, DELETED, *([view.event_timestamp] if view.event_timestamp else []),
             *(f.column for f in view.features)}
    ups: list[pa.Table] = []
    gone: list[pa.Array] = []
    sources: list[FileEntry] = []
    where_of: list[str] = []
    for i, (where, table, entry) in enumerate(_inputs(view, change)):
        sources.append(entry)
        where_of.append(where)
        unknown = [c for c in table.column_names if c not in known]
        if unknown:
            raise DataError(f"{where}: view {view.name!r}: unknown column(s) {unknown}: not the entity key, "
                            f"{DELETED!r}, the event timestamp or a feature of the view (features: "
                            f"{', '.join(f.column for f in view.features)})")
        if key_col not in table.column_names:
            raise DataError(f"{where}: view {view.name!r}: missing the entity key column {key_col!r}")
        removed = _deleted_mask(table, view, where)
        if removed.any():
            keys = table.filter(pa.array(removed)).select([key_col])
            check_source_schema(entity, replace(view, features=[], event_timestamp=""), keys.schema, where)
            batch = normalize(entity, replace(view, features=[], event_timestamp=""),
                              keys.combine_chunks().to_batches()[0] if keys.num_rows else keys.to_batches()[0], where)
            gone.append(batch.column(0))
        upserts = table.filter(pa.array(~removed)).drop_columns([c for c in [DELETED] if c in table.column_names])
        if upserts.num_rows:
            check_source_schema(entity, view, upserts.schema, where)
            for batch in upserts.combine_chunks().to_batches():
                ups.append(pa.Table.from_batches([normalize(entity, view, batch, where)]).append_column(
                    "__file", pa.array(np.full(batch.num_rows, i, np.int32))))
    schema = normalized_schema(entity, view)
    rows = pa.concat_tables(ups) if ups else schema.empty_table().append_column("__file", pa.array([], pa.int32()))
    if not rows.num_rows and not gone:
        raise DataError(f"{', '.join(where_of)}: view {view.name!r}: the changes hold no rows")
    rows, _ = sorted_deduplicated(view, entity, rows, tuple(where_of))
    rows = rows.drop_columns(["__file"])
    key_type = schema.field(0).type
    deleted = pc.unique(pa.concat_arrays(gone)) if gone else pa.array([], key_type)
    deleted = deleted.take(pc.sort_indices(deleted))
    both = pc.is_in(deleted, value_set=rows.column(0))
    if pc.any(both).as_py():
        key = deleted.filter(both)[0].as_py()
        raise DataError(f"view {view.name!r}: entity key {key!r} is both changed and removed ({DELETED}) in "
                        f"{', '.join(where_of)}; give each entity one row")
    return ViewChange(view, sources, rows, deleted)


# --------------------------------------------------------------------------------------------------
# The version
# --------------------------------------------------------------------------------------------------

def delta_version_id(previous: str, sources: dict[str, list[FileEntry]], as_of: datetime) -> str:
    h = hashlib.sha256()
    h.update(repr(("delta", FORMAT_VERSION, previous, planning.utc_text(as_of),
                   sorted((v, [(s.size, s.checksum) for s in ss]) for v, ss in sources.items()))).encode())
    return f"{as_of.astimezone(UTC):%Y%m%dT%H%M%SZ}-{h.hexdigest()[:12]}"


def _chained(previous: ViewDelta | None, sources: list[FileEntry]) -> str:
    """The digest of every change applied to a view since its base, in order."""
    h = hashlib.sha256((previous.digest if previous else "").encode())
    for s in sources:
        h.update(f"{s.size}\0{s.checksum}\n".encode())
    return "sha256:" + h.hexdigest()


def _previous(root: SnapshotRoot) -> Manifest:
    cur = root.current()
    if cur is None:
        raise RootError(f"{root.path}: no CURRENT version to apply changes to; load one in full first "
                        f"(quiver load --features F --root R)")
    try:
        return check_version(root, cur, "size")
    except ManifestError as e:
        raise RootError(f"{root.path}: CURRENT ({cur}) cannot take a delta: {e}; load in full "
                        f"(quiver load --no-reuse) to replace it") from None


def _agree(features_path: str | os.PathLike[str], previous: Manifest, views: list[str]) -> None:
    """A features.yaml given with changes must declare the changed views as CURRENT holds them: a delta
    applies to CURRENT's layout; a change of definition or grouping is a full load's."""
    declared = load_definitions(Path(features_path))
    for name in views:
        if name not in declared.view_names:
            raise DefinitionError(f"{features_path}: declares no view {name!r}, which the changes name")
        # an aggregated view's windows end where CURRENT's do: its changes are corrections of those values
        old = previous.schema.view(name)
        new = replace(declared.view(name), window_end=old.window_end)
        if planning.definition_hash(new) != planning.definition_hash(old) or new.group != old.group:
            raise DefinitionError(
                f"{features_path}: view {name!r} is declared differently from CURRENT ({previous.version}): its "
                f"features, types or group changed; a delta applies to CURRENT's layout, so load features.yaml "
                f"in full first (quiver load --features {features_path}), then apply the changes")


def load_changes(root_dir: str | os.PathLike[str], changes: dict[str, Change],
                 options: ChangeOptions | None = None) -> DeltaResult:
    """Publishes a delta version on top of CURRENT: `changes` maps a view to its changed rows, a Parquet
    file, folder or glob, or an Arrow table (a boolean `_deleted` column removes an entity from the view).
    Raises QuiverError subclasses (exit codes as `quiver load`); on any error nothing is published."""
    opts = options or ChangeOptions()
    started = time.monotonic()
    root = SnapshotRoot(root_dir)
    if not changes:
        raise DefinitionError("no changes given: name at least one VIEW=PATH")
    if not 0 < opts.rebase_fraction <= 1:
        raise DefinitionError(f"rebase fraction {opts.rebase_fraction}: expected a number in (0, 1]")
    if not root.path.is_dir():
        raise RootError(f"{root.path}: no such snapshot root")
    with load_lock(root), staging_removed_on_failure(root):
        clean_staging(root)
        # each stage's time in the log, and the test seam (loader/pause.py) after it: read, offline, online,
        # checks, publish
        phases = Phases()
        previous = _previous(root)
        unknown = [v for v in changes if v not in previous.schema.view_names]
        if unknown:
            raise DefinitionError(f"changes name view(s) {', '.join(map(repr, unknown))}, which CURRENT "
                                  f"({previous.version}) does not have (it has "
                                  f"{', '.join(previous.schema.view_names)})")
        if opts.features is not None:
            _agree(opts.features, previous, list(changes))
        entity = previous.schema.entity
        read = {v: read_change(entity, previous.schema.view(v), c) for v, c in changes.items()}
        as_of = opts.as_of or datetime.now(UTC).replace(microsecond=0)
        sources = {v: c.sources for v, c in read.items()}
        vid = delta_version_id(previous.version, sources, as_of)
        if root.manifest_path(vid).is_file():
            root.set_current(vid)
            return DeltaResult(vid, Manifest.load(root.manifest_path(vid)), False,
                               seconds=time.monotonic() - started)
        stage = stage_dir(root, "load", f"{vid}-{os.getpid()}")
        out = stage / "version"
        out.mkdir(parents=True)
        builder = _Builder(root, previous, read, out, stage, opts, phases)
        phases.end("read")
        manifest = builder.build(vid, as_of)
        publish(root, stage, out, manifest)
        builder.phases.end("publish")
    seconds = time.monotonic() - started
    log.info("delta %s on %s: %s in %.1f s", vid, previous.version,
             ", ".join(f"{v} +{c.rows.num_rows}/-{len(c.deleted)}" for v, c in read.items()), seconds)
    return DeltaResult(vid, manifest, True, builder.rebased, seconds)


class _Builder:
    """The new version's folder from the previous version and the changes."""

    def __init__(self, root: SnapshotRoot, previous: Manifest, read: dict[str, ViewChange], out: Path,
                 stage: Path, opts: ChangeOptions, phases: Phases) -> None:
        self.root, self.previous, self.read, self.out, self.stage, self.opts = root, previous, read, out, stage, opts
        self.schema = previous.schema
        self.linked: dict[str, str] = {}        # files hard-linked from the previous version -> checksum
        self.written: dict[str, str] = {}       # files this load wrote and hashed -> checksum
        self.pending: dict[str, Future[str]] = {}   # files this load wrote, being hashed
        self.hashing = ThreadPoolExecutor(2, thread_name_prefix="quiver-hash")
        self.phases = phases
        self.rebased: list[str] = []

    def build(self, vid: str, as_of: datetime, rebase_all: bool = False) -> Manifest:
        """The version's files and manifest. `rebase_all` (quiver compact): every group and view with a
        delta is written in full."""
        prev = self.previous
        views: dict[str, ViewStats] = {}
        groups: dict[str, GroupStats] = {}
        offline = {name: self._offline_delta(name) for name in prev.views if name in self.read}
        self.phases.end("offline")
        for gname, old in prev.groups.items():
            touched = any(v in self.read for v in old.views)
            if touched:
                groups[gname], counts = self._group(gname, old, offline)
                for name in old.views:
                    if name in self.read:
                        views[name] = self._view_stats(name, counts[name], offline[name])
            delta = groups[gname].delta if touched else old.delta
            over = touched and delta is not None and delta.keys > self.opts.rebase_fraction * max(groups[gname].rows, 1)
            carries = delta is not None or any(prev.offline_files(v, delta=True) for v in old.views)
            if over or (rebase_all and carries):
                if over and delta is not None:
                    log.info("group %s: its delta holds %d of %d entities (over %.0f%%): rebasing it in full",
                             gname, delta.keys, groups[gname].rows, 100 * self.opts.rebase_fraction)
                source = self.out / "online" / gname if touched else self.root.online_dir(prev.version, gname)
                groups[gname] = self._rebase_group(gname, source, groups.get(gname, old))
                for name in old.views:
                    rows = offline[name] if name in offline else previous_delta(
                        self.root.version_dir(prev.version), prev, name)
                    views[name] = self._rebase_view(name, rows, views.get(name, prev.views[name]))
                self.rebased.append(gname)
            elif not touched:
                self._link(f"online/{gname}/")
                groups[gname] = old
        for name, stats in prev.views.items():
            if name not in views:
                self._link(f"offline/{name}/")
                views[name] = stats
        self.phases.end("online")
        summary = self._checks(views)
        self.phases.end("checks")
        with self.hashing:
            self.written |= {p: f.result() for p, f in self.pending.items()}
        entries = checksums(lambda fn, items: [fn(i) for i in items], self.out, self.linked | self.written)
        record_proven(self.root, prev, self.out, entries, self.linked)
        changes = Changes(prev.version, {v: c.sources for v, c in self.read.items()},
                          {v: c.rows.num_rows for v, c in self.read.items()},
                          {v: len(c.deleted) for v, c in self.read.items()}) if self.read else None
        return Manifest(vid, planning.utc_text(datetime.now(UTC)), planning.utc_text(as_of), self.schema,
                        {v.name: views[v.name] for v in self.schema.views}, groups, entries, checks=summary,
                        changes=changes)

    def _forget(self, prefix: str) -> None:
        """A folder of the new version rewritten: its files' links and checksums no longer hold."""
        shutil.rmtree(self.out / prefix, ignore_errors=True)
        for known in (self.linked, self.written, self.pending):
            for p in [p for p in known if p.startswith(prefix)]:
                del known[p]

    def _rebase_group(self, gname: str, source: Path, stats: GroupStats) -> GroupStats:
        """The group written in full from `source` (a RocksDB holding its new content, read through the
        delta): fresh SST files of up to SST_ROLL_BYTES, ingested into a fresh RocksDB."""
        ssts = _rewrite(source, self.stage / "rebase" / gname, self.opts.compression)
        target = self.out / "online" / gname
        self._forget(f"online/{gname}/")
        ingested = ingest_task(str(target), ssts)
        self.written |= {Path(p).relative_to(self.out).as_posix(): c for p, c in ingested.items()}
        return GroupStats(stats.views, stats.rows, stats.definition)

    def _rebase_view(self, name: str, delta: pa.Table | None, stats: ViewStats) -> ViewStats:
        """The view's offline rows written in full: each base file without the rows the delta changes,
        then the delta's rows but the removed ones, as one more part."""
        prefix = f"offline/{name}/"
        self._forget(prefix)
        src = self.root.version_dir(self.previous.version)
        base = self.previous.offline_files(name, delta=False)
        if delta is None or delta.num_rows == 0:
            self._link(prefix, lambda path: not is_offline_delta(path))
            return replace(stats, delta=replace(stats.delta, upserted=0, deleted=0) if stats.delta else None)
        changed = delta.column(0)
        for path in base:
            table = pq.read_table(src / path)
            self._write_offline(path, table.filter(pc.invert(pc.is_in(table.column(0), value_set=changed))))
        kept = delta.filter(pc.invert(delta.column(DELETED))).drop_columns([DELETED])
        names = {Path(path).name for path in base}
        part = next(f"part-r{i:05d}.parquet" for i in range(len(names) + 1) if f"part-r{i:05d}.parquet" not in names)
        self._write_offline(prefix + part, kept)
        assert stats.delta is not None
        return replace(stats, delta=replace(stats.delta, upserted=0, deleted=0))

    def _write_offline(self, rel: str, rows: pa.Table) -> None:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with offline_writer(str(path), rows.schema) as w:
            w.write_table(rows, row_group_size=OFFLINE_ROW_GROUP)
        self.pending[rel] = self.hashing.submit(file_checksum, path)

    # -- linking -----------------------------------------------------------------------------------
    def _link(self, prefix: str, keep: Any = lambda path: True) -> None:
        self.linked |= link_files(self.root, self.previous, prefix, self.out, keep)

    # -- offline -----------------------------------------------------------------------------------
    def _offline_delta(self, name: str) -> pa.Table:
        """Links the view's base files; writes its cumulative delta; returns it (offline delta rows)."""
        self._link(f"offline/{name}/", lambda path: not is_offline_delta(path))
        change = self.read[name]
        rows = change.offline_rows()
        before = previous_delta(self.root.version_dir(self.previous.version), self.previous, name)
        if before is not None:
            kept = before.filter(pc.invert(pc.is_in(before.column(0), value_set=change.keys)))
            rows = pa.concat_tables([kept.cast(rows.schema), rows])
        rows = rows.take(pc.sort_indices(rows.column(0)))
        self._write_offline(f"offline/{name}/{DELTA_DIR}/part-00000.parquet", rows)
        return rows

    def _view_stats(self, name: str, rows: int, delta: pa.Table) -> ViewStats:
        old = self.previous.views[name]
        removed = int(pc.sum(delta.column(DELETED)).as_py() or 0)
        return ViewStats(rows, old.sources, old.definition, old.dropped_duplicates,
                         old.reused_from or self.previous.version,
                         ViewDelta(delta.num_rows - removed, removed, _chained(old.delta, self.read[name].sources)))

    # -- online ------------------------------------------------------------------------------------
    def _group(self, gname: str, old: GroupStats, offline: dict[str, pa.Table]) -> tuple[GroupStats, dict[str, int]]:
        """The group's new RocksDB: base + one cumulative delta SST. Returns its stats and each
        changed view's entity count."""
        names = old.views
        # every key changed since the base: the offline deltas of the group's views hold them all
        touched = [offline[n].column(0) if n in offline else _delta_keys(self.root, self.previous, n)
                   for n in names]
        keys_typed = pc.unique(pa.chunked_array([k for k in touched if k is not None and len(k)],
                                                offline_key_type(self.schema.entity)).combine_chunks())
        keys = encoded_keys(keys_typed)
        order = pc.sort_indices(keys)        # bytewise: RocksDB's order
        keys, keys_typed = keys.take(order), keys_typed.take(order)
        encoded = {name: _encoded(c, self.opts.workers) for name, c in self.read.items() if name in names}
        db_dir = self.out / "online" / gname
        delta_sst = self.stage / "delta" / f"{gname}.sst"
        delta_sst.parent.mkdir(parents=True, exist_ok=True)
        writer = SstFileWriter(rocks.writer_options(self.opts.compression))
        writer.open(str(delta_sst))
        alive, present = np.zeros(len(keys), bool), np.zeros(len(keys), bool)
        counts = {name: self.previous.views[name].rows for name in encoded}
        db = _open(self.root.online_dir(self.previous.version, gname))
        try:
            # contiguous slices of the sorted keys on threads (RocksDB's multi-get and Arrow's kernels let go
            # of the GIL: 2 threads read 100,000 of 10M users in 0.25 s against 0.41 s), each written to the
            # delta SST here, in key order, while the next ones are read
            # At most 2 slices per thread in flight, of at most SLICE_KEYS: memory is bounded by that, not by
            # the size of the change.
            step = max(1, min(SLICE_KEYS, -(-len(keys) // (4 * self.opts.workers))))
            starts = range(0, len(keys), step)
            with ThreadPoolExecutor(self.opts.workers, thread_name_prefix="quiver-delta") as pool:
                def work(i: int) -> Future[tuple[pa.Array, np.ndarray, np.ndarray, dict[str, int]]]:
                    return pool.submit(self._values, db, names, encoded, keys_typed.slice(i, step),
                                       keys.slice(i, step))

                ahead = deque(work(i) for i in starts[:2 * self.opts.workers])
                for n, i in enumerate(starts):
                    values, live, held, change = ahead.popleft().result()
                    if n + len(ahead) + 1 < len(starts):
                        ahead.append(work(starts[n + len(ahead) + 1]))
                    _put(writer, keys.slice(i, step), values, live)
                    alive[i:i + step], present[i:i + step] = live, held
                    for name, n in change.items():
                        counts[name] += n
        finally:
            db.close()
        writer.finish()
        rows_now = old.rows + int(np.sum(alive & ~present)) - int(np.sum(present & ~alive))
        base = old.delta.base if old.delta else (old.reused_from or self.previous.version)
        base_rows = old.delta.base_rows if old.delta else old.rows
        # hashed on a thread (hashlib lets go of the GIL) while the base is linked and ingested; opened here,
        # before the ingestion moves the file out of staging (the thread may start after it has)
        checksum = self.hashing.submit(_closing_checksum, open(delta_sst, "rb"))  # noqa: SIM115
        base_files = _base_files(self.previous, gname)
        linked_dir = self.stage / "base" / gname
        linked_dir.mkdir(parents=True, exist_ok=True)
        src = self.root.version_dir(self.previous.version)
        by_inode: dict[int, str] = {}
        for f in base_files:
            target = linked_dir / Path(f.path).name
            try:
                os.link(src / f.path, target)   # the new version's base is the same inode
                by_inode[target.stat().st_ino] = f.checksum
            except OSError as e:   # another filesystem: a copy, a new file hashed like any this load writes
                log.warning("group %s: cannot hard-link %s into staging (%s): copying it", gname, f.path, e.strerror)
                shutil.copy2(src / f.path, target)
        name = _ingest(db_dir, [str(linked_dir / Path(f.path).name) for f in base_files], str(delta_sst))
        for p in db_dir.iterdir():
            rel = p.relative_to(self.out).as_posix()
            ino = p.stat().st_ino
            if ino in by_inode:
                self.linked[rel] = by_inode[ino]
        delta_rel = f"online/{gname}/{name}"
        self.pending[delta_rel] = checksum
        stats = GroupStats(list(names), rows_now, old.definition, old.reused_from or self.previous.version,
                           GroupDelta(base, base_rows, [delta_rel], len(keys)))
        return stats, counts

    def _values(self, db: Rdict, names: list[str], encoded: dict[str, tuple[pa.Array, pa.Array, pa.Array]],
                typed: pa.Array, keys: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray, dict[str, int]]:
        """For some of the sorted keys: the group's new values (null: nothing left, a tombstone), which are
        alive, which the previous version held, and each changed view's change in entity count."""
        before = _get(db, keys)
        present = before.is_valid().to_numpy(zero_copy_only=False)
        parts = split(before.fill_null(_empty_row(len(names))), len(names))   # absent: every view null
        change: dict[str, int] = {}
        for j, name in enumerate(names):
            if name not in encoded:
                continue
            ids, rows, deleted = encoded[name]
            was = parts[j].is_valid().to_numpy(zero_copy_only=False)
            at = pc.index_in(typed, value_set=ids).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            gone = pc.is_in(typed, value_set=deleted).to_numpy(zero_copy_only=False)
            up = at >= 0
            new = rows.take(pa.array(at, mask=~up))    # the new ViewRow; null where removed
            parts[j] = pc.if_else(pa.array(~(up | gone)), parts[j], new)
            now = parts[j].is_valid().to_numpy(zero_copy_only=False)
            change[name] = int(np.sum(now & ~was)) - int(np.sum(was & ~now))
        alive = np.zeros(len(keys), bool)
        for p in parts:
            alive |= p.is_valid().to_numpy(zero_copy_only=False)
        return assemble(parts), alive, present, change

    # -- checks ------------------------------------------------------------------------------------
    def _checks(self, views: dict[str, ViewStats]) -> CheckSummary:
        """The declared checks on the changed rows; a view's row-count checks on the whole version.
        Drift compares with the statistics the previous version carries (its base's). The version's
        statistics.json: the previous version's, rows updated, and each changed view's changed rows."""
        before = quality.views_of(self.root, self.previous)
        results = []
        changed: dict[str, Any] = {}
        for name, change in self.read.items():
            acc = ViewAccumulator(change.view, change.rows.num_rows)
            for batch in change.rows.to_batches(max_chunksize=1 << 14):
                acc.add(batch)
            changed[name] = acc.to_json()
            judged = dict(changed[name], rows=views[name].rows)
            previous = before.get(name)
            if previous is not None and previous.get("missing"):
                previous = None
            results += evaluate_view(change.view, judged, previous, self.previous.version)
        summary = quality.verdict(results, self.opts.accept_failed_checks)
        carried = {v: dict(before.get(v) or {"features": {}, "missing": True}, rows=views[v].rows)
                   for v in views}
        write_statistics(self.out, carried, changed)
        return summary


def offline_key_type(entity: EntityDef) -> pa.DataType:
    return pa.int64() if entity.key_type == "int64" else pa.string()


def previous_delta(version_dir: Path, manifest: Manifest, view: str) -> pa.Table | None:
    """A version's cumulative offline delta of one view, or None."""
    paths = [version_dir / p for p in manifest.offline_files(view, delta=True)]
    if not paths:
        return None
    return pa.concat_tables([pq.read_table(p) for p in sorted(paths)])


def _delta_keys(root: SnapshotRoot, manifest: Manifest, view: str) -> pa.Array | None:
    t = previous_delta(root.version_dir(manifest.version), manifest, view)
    return None if t is None else t.column(0).combine_chunks()


def _base_files(manifest: Manifest, group: str) -> list[FileEntry]:
    """The group's SST files but its delta's, in file-name order (the order they were ingested in)."""
    delta = set(manifest.groups[group].delta.files) if manifest.groups[group].delta else set()
    return sorted((f for f in manifest.files if f.path.startswith(f"online/{group}/") and f.path.endswith(".sst")
                   and f.path not in delta), key=lambda f: f.path)


def _empty_row(views: int) -> bytes:
    return bytes(assemble([pa.nulls(1, pa.large_binary()) for _ in range(views)])[0].as_py())


def _open(db_dir: Path) -> Rdict:
    """A published group, read-only with the server's read options (mmap, partitioned index and filters in a
    small cache): 5x faster here than rocksdict's defaults, measured on 100,000 of 10M users."""
    opts = rocks.reader_options(Cache(64 << 20))
    opts.set_db_log_dir(os.environ.get("TMPDIR", "/tmp"))   # never write into a published version
    try:
        return Rdict(str(db_dir), opts, column_families={"default": opts}, access_type=AccessType.read_only())
    except Exception as e:   # RocksDB reports corruption as plain exceptions
        raise SourceError(f"{db_dir}: cannot open the previous version's group: {e}") from None


def _get(db: Rdict, keys: pa.Array) -> pa.Array:
    """The stored values of `keys` (null where absent)."""
    try:
        values: list[bytes | None] = db.get(keys.to_pylist())  # type: ignore[arg-type, assignment]
    except Exception as e:   # RocksDB reports corruption as plain exceptions
        raise SourceError(f"{db.path()}: cannot read the previous version's stored values: {e}") from None
    return as_binary(values)


def _encoded(change: ViewChange, workers: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(upserted keys, their ViewRows, removed keys) of one view's change, encoded in slices on threads."""
    rows = change.rows
    if not rows.num_rows:
        return rows.column(0).combine_chunks(), pa.array([], pa.large_binary()), change.deleted
    encoder = ViewEncoder(change.view)
    batches = rows.combine_chunks().to_batches(max_chunksize=SLICE_KEYS)
    with ThreadPoolExecutor(workers, thread_name_prefix="quiver-encode") as pool:
        parts = list(pool.map(encoder.encode, batches))
    return rows.column(0).combine_chunks(), pa.concat_arrays(parts), change.deleted


def as_binary(values: list[bytes | None]) -> pa.Array:
    """A large_binary array of Python bytes (None: null), joined once: 4x faster than pa.array on 100,000
    values of 1.2 KB."""
    present = np.fromiter((v is not None for v in values), bool, len(values))
    lengths = np.fromiter((len(v) if v is not None else 0 for v in values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(v for v in values if v is not None)
    validity = None if present.all() else pa.array(present).buffers()[1]
    return pa.Array.from_buffers(pa.large_binary(), len(values), [validity, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=int((~present).sum()))


def _put(writer: SstFileWriter, keys: pa.Array, values: pa.Array, alive: np.ndarray) -> None:
    """Sorted keys into the delta SST: a value per live key, a tombstone per key left with no view."""
    for k, v, a in zip(keys.to_pylist(), values.to_pylist(), alive.tolist(), strict=True):
        if a:
            writer[k] = v
        else:
            del writer[k]


def _rewrite(source: Path, into: Path, compression: str) -> list[SstFile]:
    """Every live (key, value) of a RocksDB, in key order, into SST files of up to SST_ROLL_BYTES."""
    into.mkdir(parents=True, exist_ok=True)
    opts = Options(raw_mode=True)
    opts.set_db_log_dir(os.environ.get("TMPDIR", "/tmp"))
    db = Rdict(str(source), opts, access_type=AccessType.read_only())
    out = RollingSstWriter(into, "r", 5, compression)
    try:
        ro = ReadOptions()
        ro.fill_cache(False)  # type: ignore[call-arg]  # the stub lacks its argument; a bulk scan
        ro.set_readahead_size(2 << 20)
        rows = db.items(read_opt=ro)
        while batch := list(islice(rows, PUT_ROWS)):
            out.add([k for k, _ in batch], [v for _, v in batch])
    except Exception as e:  # RocksDB reports corruption as plain exceptions
        raise SourceError(f"{source}: cannot read the stored values to rebase them: {e}") from None
    finally:
        db.close()
    return out.finish()


def _closing_checksum(f: BinaryIO) -> str:
    with f:
        return stream_checksum(f)


def _ingest(db_dir: Path, base: list[str], delta: str) -> str:
    """A fresh RocksDB of the base files (at the bottom, as their own load put them) and the delta SST
    above them; returns the delta's file name in the DB."""
    db = Rdict(str(db_dir), rocks.empty_db_options())
    try:
        io = IngestExternalFileOptions()
        io.set_move_files(True)
        if base:
            db.ingest_external_file(base, io)
        known = {f["name"] for f in db.live_files()}
        db.ingest_external_file([delta], io)
        db.flush()
        added = [f["name"] for f in db.live_files() if f["name"] not in known]
    finally:
        db.close()
    assert len(added) == 1, added
    return str(added[0]).lstrip("/")


def compact(root_dir: str | os.PathLike[str]) -> DeltaResult:
    """`quiver compact`: CURRENT's groups and views that carry a delta written in full, as a new version of
    the same rows and as-of time, while CURRENT serves; CURRENT moves to it. Nothing to do: published False."""
    started = time.monotonic()
    root = SnapshotRoot(root_dir)
    if not root.path.is_dir():
        raise RootError(f"{root.path}: no such snapshot root")
    with load_lock(root), staging_removed_on_failure(root):
        clean_staging(root)
        previous = _previous(root)
        if not any(g.delta for g in previous.groups.values()) and not any(
                previous.offline_files(v, delta=True) for v in previous.views):
            return DeltaResult(previous.version, previous, False, seconds=time.monotonic() - started)
        as_of = datetime.fromisoformat(previous.as_of.replace("Z", "+00:00"))
        vid = delta_version_id(previous.version, {}, as_of)
        if root.manifest_path(vid).is_file():
            root.set_current(vid)
            return DeltaResult(vid, Manifest.load(root.manifest_path(vid)), False, seconds=time.monotonic() - started)
        stage = stage_dir(root, "load", f"{vid}-{os.getpid()}")
        out = stage / "version"
        out.mkdir(parents=True)
        builder = _Builder(root, previous, {}, out, stage, ChangeOptions(), Phases())
        manifest = builder.build(vid, as_of, rebase_all=True)
        publish(root, stage, out, manifest)
    seconds = time.monotonic() - started
    log.info("compacted %s into %s: %s written in full in %.1f s", previous.version, vid, ", ".join(builder.rebased),
             seconds)
    return DeltaResult(vid, manifest, True, builder.rebased, seconds)


def rollback(root_dir: str | os.PathLike[str], to: str | None = None) -> tuple[str, str]:
    """`quiver rollback`: CURRENT moved back to `to` (default: PREVIOUS) by one atomic write, once that
    version's files pass their checksums; serialized with loads. Returns (the version CURRENT named, now)."""
    root = SnapshotRoot(root_dir)
    if not root.path.is_dir():
        raise RootError(f"{root.path}: no such snapshot root")
    with load_lock(root):
        was = root.current()
        target = to or root.previous()
        if target is None:
            raise RootError(f"{root.path}: no PREVIOUS version to roll back to; name one with --to "
                            f"(quiver snapshots --root {root.path} lists them)")
        if not root.manifest_path(target).is_file():
            raise RootError(f"{root.path}: no published version {target!r} to roll back to (quiver snapshots "
                            f"--root {root.path} lists them)")
        try:
            check_version(root, target, "full")
        except ManifestError as e:
            raise IntegrityError(f"{e}; CURRENT stays {was}") from None
        root.set_current(target)
    log.info("rollback: CURRENT moved from %s to %s", was, target)
    return was or "", target
