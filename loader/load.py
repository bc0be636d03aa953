"""`quiver load`: one new snapshot version (snapshot/FORMAT.md) from the Parquet sources named in
features.yaml, in five stages, each in its own module with its record, planner and worker function:

    plan     (plan.py)     inspect the sources, the version id, per storage group what to re-encode,
                           what to keep from the current version and what to link; key ranges
    spill    (spill.py)    read Parquet, normalize, encode ViewRows, spill by key range     N workers
    sst      (sst.py)      per group and key range: sort, dedup, cut the kept views out of the current
                           version, assemble EntityRows, write SST files and offline Parquet  N workers
    ingest   (ingest.py)   one RocksDB per storage group
    checks   (quality/)    merge the statistics the spill and sst stages accumulated, evaluate the
                           checks, refuse the version (nothing published) when one fails
    publish  (publish.py)  link unchanged groups and views, checksum, manifest last, rename, CURRENT

Nothing is visible under versions/ until the final rename; a killed load leaves only staging/load-*,
which the next load removes (loads are serialized by a lock on the root).
"""

import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

from quiver.loader import plan as planning
from quiver.loader.definitions import load_definitions
from quiver.loader.ingest import ingest_task
from quiver.loader.pause import pause_point
from quiver.loader.plan import GroupPlan
from quiver.loader.publish import checksums, clean_staging, link_files, load_lock, publish, staging_removed_on_failure
from quiver.loader.sources import SourceFile, inspect
from quiver.loader.spill import encode_task, encode_tasks, spills_all_columns
from quiver.loader.sst import KeptViews, PartitionResult, PartitionTask, partition_task
from quiver.loader.worker import worker_init
from quiver.quality import evaluate as quality
from quiver.quality.statistics import ViewAccumulator
from quiver.snapshot import rocks
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.lifecycle import stage_dir
from quiver.snapshot.manifest import CheckSummary, FileEntry, GroupStats, Manifest, ViewStats, file_checksum
from quiver.snapshot.schema import FeatureSet

log = logging.getLogger("quiver.loader")
PARTITION_BYTES = 64 << 20    # spilled (in-memory) bytes per key range: bounds a sort worker's memory
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class LoadOptions:
    workers: int = 2
    as_of: datetime | None = None
    compression: str = rocks.DEFAULT_COMPRESSION
    batch_rows: int = 1 << 14  # rows read, normalized and encoded at a time: bounds a worker's memory
    partition_bytes: int = PARTITION_BYTES
    reuse: bool = True           # take unchanged views and groups from the current version
    allow_type_change: bool = False  # a feature whose type differs from the current version's fails the load
    allow_regroup: bool = False      # a view moved to another storage group fails the load
    accept_failed_checks: bool = False  # publish although checks failed (the manifest records it)
    statistics: bool = True      # False: no statistics and no checks (the checks benchmark's baseline)


@dataclass
class LoadResult:
    version: str
    manifest: Manifest
    published: bool              # False when this exact content was already a version
    reused_views: list[str] = field(default_factory=list)   # not re-read from their sources
    linked_groups: list[str] = field(default_factory=list)  # online files linked whole
    rows_read: dict[str, int] = field(default_factory=dict)  # rows read from Parquet, per re-encoded view
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def dropped(self) -> dict[str, int]:
        return {n: v.dropped_duplicates for n, v in self.manifest.views.items()}

    @property
    def checks(self) -> CheckSummary:
        return self.manifest.checks


class Progress:
    """A log line at most every PROGRESS_SECONDS while a phase runs: a 90M-user load takes minutes."""

    def __init__(self, phase: str, tasks: int, what: str) -> None:
        self.phase, self.tasks, self.what = phase, tasks, what
        self.finished = self.count = 0
        self.started = self.logged = time.monotonic()

    def done(self, count: int) -> None:
        self.finished += 1
        self.count += count
        now = time.monotonic()
        if now - self.logged >= PROGRESS_SECONDS and self.finished < self.tasks:
            self.logged = now
            log.info("%-10s %d/%d tasks, %s %s (%.0f/s)", self.phase, self.finished, self.tasks,
                     f"{self.count:,}", self.what, self.count / (now - self.started))


class Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.monotonic()

    def end(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._clock
        log.info("%-10s %6.1f s", name, now - self._clock)
        self._clock = now
        pause_point(name)  # a test seam, inert unless QUIVER_LOAD_PAUSE_AT names this stage (loader/pause.py)


@contextmanager
def pending_cancelled_on_error(pool: ProcessPoolExecutor) -> Iterator[None]:
    """The first bad batch ends the load: queued tasks are dropped, not run to completion."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise


def load(features_path: str | os.PathLike[str], root_dir: str | os.PathLike[str],
         options: LoadOptions | None = None) -> LoadResult:
    """Builds and publishes one version; returns it. Raises LoadError subclasses on bad input."""
    opts = options or LoadOptions()
    started = time.monotonic()
    features_path = Path(features_path)
    features = load_definitions(features_path)
    root = SnapshotRoot(root_dir)
    phases = Phases()
    with load_lock(root), staging_removed_on_failure(root):
        clean_staging(root)
        files = {v.name: inspect(features.entity, v, features_path.parent) for v in features.views}
        with ProcessPoolExecutor(max_workers=opts.workers, mp_context=get_context("spawn"),
                                 initializer=worker_init, initargs=(os.getpid(),)) as pool, \
                pending_cancelled_on_error(pool):
            # 1. plan
            sources = _sources(pool, features, files)
            as_of = opts.as_of or datetime.now(UTC).replace(microsecond=0)
            vid = planning.version_id(features, sources, as_of)
            if root.manifest_path(vid).is_file():
                root.set_current(vid)
                return LoadResult(vid, Manifest.load(root.manifest_path(vid)), False,
                                  seconds=time.monotonic() - started)
            stage = stage_dir(root, "load", f"{vid}-{os.getpid()}")
            out = stage / "version"
            out.mkdir(parents=True)
            current, prev, groups = planning.plan_against_current(root, features, sources, opts.reuse,
                                                                  opts.allow_type_change, opts.allow_regroup)
            planning.draw_boundaries(pool, root, prev, features.entity, groups, files, opts.partition_bytes,
                                     opts.workers)
            phases.end("plan")
            # 2. spill
            partials: dict[str, list[ViewAccumulator]] = {v.name: [] for v in features.views}
            known, rows_read = _spill(pool, features, groups, files, stage, out, opts, partials)
            phases.end("encode")
            # 3. sort, assemble, write SST
            results = _write_groups(pool, root, prev, features, groups, files, stage, out, opts, known)
            for rs in results.values():
                for r in rs:
                    for name, acc in r.statistics.items():
                        partials[name].append(acc)
            phases.end("sort+sst")
            # 4. ingest
            jobs = [pool.submit(ingest_task, str(out / "online" / g.name),
                                [s for r in results[g.name] for s in r.sst_files]) for g in groups if not g.linked]
            for j in jobs:
                known |= {Path(p).relative_to(out).as_posix(): c for p, c in j.result().items()}
            shutil.rmtree(stage / "spill", ignore_errors=True)
            shutil.rmtree(stage / "sst", ignore_errors=True)
            phases.end("ingest")
            # 5. checks: a failing version ends here, before anything is published
            per_view = view_stats(features, prev, groups, results, sources)
            summary = CheckSummary()
            if opts.statistics:
                summary = quality.check(root, prev, current, features, groups, partials, per_view, out,
                                        opts.accept_failed_checks)
            phases.end("checks")
            # 6. publish
            reused = link_unchanged(root, prev, groups, out, known)
            entries = checksums(pool, out, known)
            phases.end("checksums")
        manifest = Manifest(vid, planning.utc_text(datetime.now(UTC)), planning.utc_text(as_of), features,
                            per_view, group_stats(prev, groups, results), entries, checks=summary)
        publish(root, stage, out, manifest)
        return LoadResult(vid, manifest, True, reused, [g.name for g in groups if g.linked], rows_read,
                          time.monotonic() - started, phases.seconds)


def _sources(pool: ProcessPoolExecutor, features: FeatureSet,
             files: dict[str, list[SourceFile]]) -> dict[str, list[FileEntry]]:
    paths = [s.path for v in features.views for s in files[v.name]]
    sums = dict(zip(paths, pool.map(file_checksum, paths), strict=True))
    return {v.name: [FileEntry(os.path.abspath(s.path), s.size, sums[s.path]) for s in files[v.name]]
            for v in features.views}


def _spill(pool: ProcessPoolExecutor, features: FeatureSet, groups: list[GroupPlan],
           files: dict[str, list[SourceFile]], stage: Path, out: Path,
           opts: LoadOptions, partials: dict[str, list[ViewAccumulator]]) -> tuple[dict[str, str], dict[str, int]]:
    """Encodes the re-read views into their groups' key ranges; returns the checksums of the offline
    files written on the way (relative path -> checksum) and the rows read per view, and adds the
    tasks' statistics to partials."""
    tasks = []
    for g in groups:
        for v in g.encode:
            tasks += encode_tasks(features.entity, v, files[v.name], stage / "spill" / g.name,
                                  out / "offline" / v.name, g.boundaries, opts.batch_rows, opts.workers,
                                  opts.statistics)
    known: dict[str, str] = {}
    rows = {v.name: 0 for g in groups for v in g.encode}
    progress = Progress("encode", len(tasks), "rows spilled")
    for task, encoded in zip(tasks, pool.map(encode_task, tasks), strict=True):
        known |= {Path(p).relative_to(out).as_posix(): c for p, c in encoded.checksums.items()}
        rows[task.view.name] += sum(encoded.counts)
        if encoded.statistics is not None:
            partials[task.view.name].append(encoded.statistics)
        progress.done(sum(encoded.counts))
    return known, rows


def _write_groups(pool: ProcessPoolExecutor, root: SnapshotRoot, prev: Manifest | None, features: FeatureSet,
                  groups: list[GroupPlan], files: dict[str, list[SourceFile]], stage: Path, out: Path,
                  opts: LoadOptions, known: dict[str, str]) -> dict[str, list[PartitionResult]]:
    jobs: list[tuple[str, Future[PartitionResult]]] = []
    is_int = features.entity.key_type == "int64"
    for g in groups:
        if g.linked:
            continue
        kept = None
        if g.kept:
            assert prev is not None
            kept = KeptViews(str(root.online_dir(prev.version, g.name)), tuple(prev.groups[g.name].views),
                             tuple(g.kept))
        for p, (lower, upper) in enumerate(planning.range_bounds(g.boundaries, is_int)):
            spill = stage / "spill" / g.name / f"p{p:05d}"
            if kept is None and not spill.is_dir():
                continue  # no rows in this range
            offline = {v.name: str(out / "offline" / v.name / f"part-{p:05d}.parquet")
                       for v in g.encode if spills_all_columns(v)}
            task = PartitionTask(g.name, tuple(g.views), features.entity, str(spill), lower, upper,
                                 str(stage / "sst" / g.name), offline,
                                 {v.name: tuple(f.path for f in files[v.name]) for v in g.encode},
                                 opts.compression, kept, {v.name: sum(f.rows for f in files[v.name]) for v in g.encode},
                                 opts.statistics)
            jobs.append((g.name, pool.submit(partition_task, task)))
    results: dict[str, list[PartitionResult]] = {g.name: [] for g in groups}
    progress = Progress("sort+sst", len(jobs), "entities stored")
    for name, job in jobs:
        r = job.result()
        results[name].append(r)
        known |= {Path(p).relative_to(out).as_posix(): c for p, c in r.checksums.items()}
        progress.done(r.rows)
    return results


def link_unchanged(root: SnapshotRoot, prev: Manifest | None, groups: list[GroupPlan], out: Path,
                    known: dict[str, str]) -> list[str]:
    """Links linked groups' online files and every reused view's offline files; returns the views whose
    data was not re-read from their sources."""
    reused: list[str] = []
    for g in groups:
        names = [v.name for v in g.views] if g.linked else g.kept
        if not names:
            continue
        assert prev is not None
        if g.linked:
            known |= link_files(root, prev, f"online/{g.name}/", out)
        for name in names:
            known |= link_files(root, prev, f"offline/{name}/", out)
        reused += names
    return reused


def view_stats(features: FeatureSet, prev: Manifest | None, groups: list[GroupPlan],
                results: dict[str, list[PartitionResult]], sources: dict[str, list[FileEntry]]) -> dict[str, ViewStats]:
    stats = {}
    for g in groups:
        for v in g.views:
            if g.linked or v.name in g.kept:
                assert prev is not None
                old = prev.views[v.name]
                rows = old.rows if g.linked else sum(r.view_rows.get(v.name, 0) for r in results[g.name])
                stats[v.name] = ViewStats(rows, sources[v.name], old.definition, old.dropped_duplicates,
                                          old.reused_from or prev.version)
            else:
                stats[v.name] = ViewStats(sum(r.view_rows.get(v.name, 0) for r in results[g.name]), sources[v.name],
                                          planning.definition_hash(v),
                                          sum(r.dropped.get(v.name, 0) for r in results[g.name]))
    return {v.name: stats[v.name] for v in features.views}


def group_stats(prev: Manifest | None, groups: list[GroupPlan],
                 results: dict[str, list[PartitionResult]]) -> dict[str, GroupStats]:
    out = {}
    for g in groups:
        if g.linked:
            assert prev is not None
            old = prev.groups[g.name]
            out[g.name] = GroupStats(old.views, old.rows, old.definition, old.reused_from or prev.version)
        else:
            out[g.name] = GroupStats([v.name for v in g.views], sum(r.rows for r in results[g.name]), g.definition)
    return out
