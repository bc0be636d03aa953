"""`quiver load`: one new snapshot version (snapshot/FORMAT.md) from the Parquet sources named in
features.yaml. This module is the one orchestration, for both engines; each stage is a module:

    plan     (plan.py)      the sources and their checksums, the version id, per storage group what to
                            re-encode, keep from the current version or link
    derive   (derive.py)    computed views (features.yaml expr, filter, agg): their rows, by the
                            engine's SQL (DuckDB here, Spark SQL on Spark), become their sources
                            key ranges (plan.py)
    spill    (spill.py)     read, normalize, encode ViewRows, by key range            engine's workers
    sst      (sst.py)       per group and key range: sort, dedup, cut the kept views out of the current
                            version, assemble EntityRows, write SST files and offline  engine's workers
    checks   (quality/)     merge the statistics spill and sst accumulated, evaluate the checks, refuse
                            the version (nothing published, nothing ingested) when one fails
    ingest   (ingest.py)    one RocksDB per storage group
    publish  (publish.py)   link unchanged groups and views, checksum, manifest last, rename, CURRENT

An Engine decides only how the spill and sst stages' work is spread and how their rows travel between
them: LocalEngine (below) runs a process pool and spills to files in the load's staging folder; the
Spark engine (loader/spark/) runs Spark tasks and shuffles. Both hand the sst stage each key range's rows
in the same order, and return the results in canonical order (groups, then tasks or key ranges), so
both write the same version, byte for byte (but for the SST files' own properties).

Nothing is visible under versions/ until the final rename; a killed load leaves only staging/load-*,
which the next load removes (loads are serialized by a lock on the root).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Self, TypeVar

import pyarrow as pa

from quiver.loader import plan as planning
from quiver.loader.definitions import load_definitions
from quiver.loader.derive import ComputeJob, anchored, derive, duckdb_compute
from quiver.loader.ingest import ingest_group
from quiver.loader.pause import pause_point
from quiver.loader.plan import GroupPlan
from quiver.loader.publish import (
    checksums,
    clean_staging,
    link_files,
    load_lock,
    publish,
    record_proven,
    staging_removed_on_failure,
)
from quiver.loader.sources import SourceFile, inspect
from quiver.loader.spill import EncodeTask, encode_task, encode_tasks, spills_all_columns
from quiver.loader.sst import KeptViews, PartitionResult, PartitionTask, partition_task
from quiver.loader.worker import worker_init
from quiver.quality import evaluate as quality
from quiver.quality.statistics import ViewAccumulator
from quiver.snapshot import rocks
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.lifecycle import stage_dir
from quiver.snapshot.manifest import CheckSummary, FileEntry, GroupStats, Manifest, ViewStats, file_checksum
from quiver.snapshot.schema import FeatureSet, ViewDef

log = logging.getLogger("quiver.loader")
PARTITION_BYTES = 64 << 20    # spilled (in-memory) bytes per key range: bounds a sort worker's memory
PROGRESS_SECONDS = 10.0
BUILD_PREFIX = "quiver-build-"   # an object-store load's default work root, under TMPDIR
T = TypeVar("T")
R = TypeVar("R")


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


class Engine:
    """How a load's work is spread: the base of LocalEngine (below) and loader/spark's SparkEngine. Used
    as a context manager around the load (under its lock): on an error, queued work is dropped before
    the staging folder is removed."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        return None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """fn over items on the engine's workers, results in item order; the first error in item order is
        raised as itself."""
        raise NotImplementedError

    def map_here(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """fn over items where the version's folder is (ingest, checksums of RocksDB's own files)."""
        return [fn(item) for item in items]

    def inputs(self, features: FeatureSet, base_dir: Path) -> dict[str, list[SourceFile]]:
        """Each view's sources, inspected. A source of size -1 (a DataFrame) is identified by the digest of
        its rows (GroupOutput.digests) once read."""
        return {v.name: inspect(features.entity, v, base_dir) for v in features.views}

    def samples(self, jobs: list[planning.SampleJob]) -> list[planning.Sample]:
        return self.map(planning.sample, jobs)

    def compute(self, job: ComputeJob) -> Iterator[pa.RecordBatch]:
        """A computed view's raw rows (derive.py), by the engine's SQL."""
        raise NotImplementedError

    def build(self, job: BuildJob, phases: Phases) -> dict[str, GroupOutput]:
        """The spill and sst stages for every group of job.groups; raises the first error in the local
        engine's order (every group's encode tasks first, then key ranges)."""
        raise NotImplementedError


@dataclass(frozen=True)
class BuildJob:
    """What the spill and sst stages of one load work on, and the tasks both engines run."""

    root: SnapshotRoot
    reuse_from: Manifest | None
    features: FeatureSet
    groups: list[GroupPlan]                  # the groups rebuilt (not linked), boundaries drawn
    files: dict[str, list[SourceFile]]
    stage: Path
    out: Path
    opts: LoadOptions

    def encode_tasks(self, g: GroupPlan, view: ViewDef) -> list[EncodeTask]:
        return encode_tasks(self.features.entity, view, self.files[view.name], self.stage / "spill" / g.name,
                            self.out / "offline" / view.name, g.boundaries, self.opts.batch_rows,
                            self.opts.workers, self.opts.statistics)

    def range_tasks(self, g: GroupPlan) -> list[PartitionTask]:
        """One task per key range of the group, whether or not it has rows."""
        kept = None
        if g.kept:
            assert self.reuse_from is not None
            kept = KeptViews(str(self.root.online_dir(self.reuse_from.version, g.name)),
                             tuple(self.reuse_from.groups[g.name].views), tuple(g.kept))
        bounds = planning.range_bounds(g.boundaries, self.features.entity.key_type == "int64")
        return [PartitionTask(
            g.name, tuple(g.views), self.features.entity, p, str(self.stage / "spill" / g.name / f"p{p:05d}"),
            lower, upper, str(self.stage / "sst" / g.name),
            {v.name: str(self.out / "offline" / v.name / f"part-{p:05d}.parquet")
             for v in g.encode if spills_all_columns(v)},
            {v.name: tuple(f.path for f in self.files[v.name]) for v in g.encode}, self.opts.compression, kept,
            {v.name: sum(f.rows for f in self.files[v.name]) for v in g.encode}, self.opts.statistics)
            for p, (lower, upper) in enumerate(bounds)]


@dataclass
class GroupOutput:
    """What the spill and sst stages made of one group."""

    results: list[PartitionResult] = field(default_factory=list)   # per key range with rows, in range order
    files: dict[str, str] = field(default_factory=dict)     # offline files written while encoding -> checksum
    rows_read: dict[str, int] = field(default_factory=dict)
    statistics: dict[str, list[ViewAccumulator]] = field(default_factory=dict)  # encode partials, task order
    digests: dict[str, int] = field(default_factory=dict)   # a source of unknown size: its rows' digest

    def add_encoded(self, view: str, rows: int, files: dict[str, str], stats: ViewAccumulator | None,
                    digest: int | None = None) -> None:
        """One encode task's output, added in task order."""
        self.rows_read[view] = self.rows_read.get(view, 0) + rows
        self.files |= files
        if stats is not None:
            self.statistics.setdefault(view, []).append(stats)
        if digest is not None:   # spill.rows_digest: a sum, so the tasks' add up
            self.digests[view] = (self.digests.get(view, 0) + digest) & ((1 << 64) - 1)


class LocalEngine(Engine):
    """A process pool on this machine; the rows between spill and sst go through files in the load's
    staging folder (one per key range, view and encode task)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def __enter__(self) -> Self:
        # started under the load's lock, after the definitions are read: bad input costs no processes
        self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"),
                                        initializer=worker_init, initargs=(os.getpid(),))
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        # the first bad batch ends the load: queued tasks are dropped, not run to completion
        self.pool.shutdown(wait=True, cancel_futures=kind is not None)

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return list(self.pool.map(fn, items))

    map_here = map

    def compute(self, job: ComputeJob) -> Iterator[pa.RecordBatch]:
        return duckdb_compute(job, self.workers)

    def build(self, job: BuildJob, phases: Phases) -> dict[str, GroupOutput]:
        outputs = {g.name: GroupOutput() for g in job.groups}
        tasks = [(g.name, t) for g in job.groups for v in g.encode for t in job.encode_tasks(g, v)]
        progress = Progress("spill", len(tasks), "rows spilled")
        for (group, task), r in zip(tasks, self.pool.map(encode_task, [t for _, t in tasks]), strict=True):
            outputs[group].add_encoded(task.view.name, sum(r.counts), r.checksums, r.statistics)
            progress.done(sum(r.counts))
        phases.end("spill")
        ranges = [(g.name, self.pool.submit(partition_task, t)) for g in job.groups for t in job.range_tasks(g)
                  if t.kept is not None or os.path.isdir(t.spill_dir)]   # else no rows in that range
        progress = Progress("sst", len(ranges), "entities stored")
        for group, pending in ranges:
            r = pending.result()
            outputs[group].results.append(r)
            progress.done(r.rows)
        shutil.rmtree(job.stage / "spill", ignore_errors=True)
        phases.end("sst")
        return outputs


def load(features_path: str | os.PathLike[str], root_or_uri: str | os.PathLike[str],
         options: LoadOptions | None = None, *, engine: Engine | None = None,
         work_root: str | os.PathLike[str] | None = None, endpoint: str | None = None) -> LoadResult:
    """Builds and publishes one version; returns it. Raises QuiverError subclasses on bad input. `engine`:
    default a LocalEngine of `options.workers`. A root gets the version by one rename and a CURRENT move;
    an object-store URI (s3://bucket/prefix, file:///dir) gets it built in `work_root` (default: a folder
    under TMPDIR named for the URI, so a killed load's leftovers are the next one's staging to remove;
    removed once published), then published there as `quiver publish` does."""
    opts = options or LoadOptions()
    engine = engine or LocalEngine(opts.workers)
    if "://" not in str(root_or_uri):
        return run(engine, features_path, SnapshotRoot(root_or_uri), opts)
    uri = str(root_or_uri)
    build_root = Path(work_root) if work_root is not None else \
        Path(tempfile.gettempdir()) / f"{BUILD_PREFIX}{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    result = run(engine, features_path, SnapshotRoot(build_root), opts)
    from quiver.distribution import publish as publish_remote

    r = publish_remote(build_root, uri, result.version, endpoint=endpoint)
    log.info("published %s to %s: %d uploaded, %d referenced, %d present", result.version, uri, len(r.uploaded),
             len(r.referenced), len(r.skipped))
    if work_root is None:
        shutil.rmtree(build_root, ignore_errors=True)
    return result


def run(engine: Engine, features_path: str | os.PathLike[str], root: SnapshotRoot,
        opts: LoadOptions) -> LoadResult:
    """The load, on an engine."""
    started = time.monotonic()
    features_path = Path(features_path)
    as_of = opts.as_of or datetime.now(UTC).replace(microsecond=0)
    features = anchored(load_definitions(features_path), as_of)
    phases = Phases()
    files = engine.inputs(features, features_path.parent)   # bad sources cost no lock and no processes
    with load_lock(root), staging_removed_on_failure(root), engine:
        clean_staging(root)
        # plan
        sources = _sources(engine, features, files)
        late = any(f.size < 0 for fs in files.values() for f in fs)   # identified once read
        # the changes a reused view carries are part of its data (loader/delta.py)
        deltas = planning.kept_deltas(planning.current_manifest(root), features, sources) if opts.reuse else {}
        vid = planning.version_id(features, sources, as_of, deltas)
        if not late and root.manifest_path(vid).is_file():
            return _already(root, vid, started)
        stage = stage_dir(root, "load", f"{vid}-{os.getpid()}")
        out = stage / "version"
        out.mkdir(parents=True)
        current, reuse_from, groups = planning.plan_against_current(root, features, sources, opts.reuse,
                                                                    opts.allow_type_change, opts.allow_regroup)
        computed = [v for g in groups if not g.linked for v in g.encode if v.computed]
        if computed:   # their rows, computed, are the sources the spill stage reads
            files = files | derive(engine.compute, features.entity, computed, files, as_of, stage)
            phases.end("derive")
        groups = planning.draw_boundaries(engine.samples, root, reuse_from, features.entity, groups, files,
                                          opts.partition_bytes, opts.workers)
        phases.end("plan")
        # spill, sst
        job = BuildJob(root, reuse_from, features, [g for g in groups if not g.linked], files, stage, out, opts)
        built = engine.build(job, phases)
        results = {g.name: built[g.name].results if g.name in built else [] for g in groups}
        if late:   # identified by their rows: a source of unknown size is one input (a DataFrame)
            sources |= {v: [FileEntry(files[v][0].path, b.rows_read[v], f"rowsum64:{d:016x}")]
                        for b in built.values() for v, d in b.digests.items()}
            vid = planning.version_id(features, sources, as_of, deltas)
            if root.manifest_path(vid).is_file():
                shutil.rmtree(stage, ignore_errors=True)
                return _already(root, vid, started)
        # checks: a failing version ends here, before anything is ingested or published
        per_view = view_stats(features, reuse_from, groups, results, sources)
        summary = CheckSummary()
        if opts.statistics:
            summary = quality.check(root, reuse_from, current, features, groups, _partials(features, built, results),
                                    per_view, out, opts.accept_failed_checks)
        phases.end("checks")
        # ingest
        ingested = engine.map_here(ingest_group, [(str(out / "online" / g.name), [s for r in results[g.name]
                                                                                   for s in r.sst_files])
                                                   for g in job.groups])
        shutil.rmtree(stage / "sst", ignore_errors=True)
        phases.end("ingest")
        # publish
        reused, linked = link_unchanged(root, reuse_from, groups, out)
        written = [b.files for b in built.values()] + [r.checksums for rs in results.values() for r in rs] + ingested
        known = linked | {Path(p).relative_to(out).as_posix(): c for sums in written for p, c in sums.items()}
        entries = checksums(engine.map_here, out, known)
        record_proven(root, reuse_from, out, entries, linked)
        manifest = Manifest(vid, planning.utc_text(datetime.now(UTC)), planning.utc_text(as_of), features,
                            per_view, group_stats(reuse_from, groups, results), entries, checks=summary)
        publish(root, stage, out, manifest)
        phases.end("publish")
    return LoadResult(vid, manifest, True, reused, [g.name for g in groups if g.linked],
                      {v: n for b in built.values() for v, n in b.rows_read.items()}, time.monotonic() - started,
                      phases.seconds)


def _already(root: SnapshotRoot, vid: str, started: float) -> LoadResult:
    """This exact content is a version already: it becomes CURRENT again, nothing is built."""
    root.set_current(vid)
    return LoadResult(vid, Manifest.load(root.manifest_path(vid)), False, seconds=time.monotonic() - started)


def _sources(engine: Engine, features: FeatureSet, files: dict[str, list[SourceFile]]) -> dict[str, list[FileEntry]]:
    paths = [s.path for v in features.views for s in files[v.name] if s.size >= 0]
    sums = dict(zip(paths, engine.map(file_checksum, paths), strict=True))
    return {v.name: [FileEntry(os.path.abspath(s.path), s.size, sums[s.path]) if s.size >= 0
                     else FileEntry(s.path, -1, "") for s in files[v.name]] for v in features.views}


def _partials(features: FeatureSet, built: dict[str, GroupOutput],
              results: dict[str, list[PartitionResult]]) -> dict[str, list[ViewAccumulator]]:
    """Each view's partial statistics in one order for both engines: its encode tasks' in task order,
    then the sst tasks' in key-range order. The same partials merged in the same order give the same
    floating-point sums, so statistics.json is the same whichever engine built the version."""
    partials: dict[str, list[ViewAccumulator]] = {v.name: [] for v in features.views}
    for b in built.values():
        for name, accs in b.statistics.items():
            partials[name] += accs
    for rs in results.values():
        for r in rs:
            for name, acc in r.statistics.items():
                partials[name].append(acc)
    return partials


def link_unchanged(root: SnapshotRoot, reuse_from: Manifest | None,
                   groups: list[GroupPlan], out: Path) -> tuple[list[str], dict[str, str]]:
    """Links linked groups' online files and every reused view's offline files; returns the views whose
    data was not re-read from their sources, and the checksums of the files linked."""
    reused: list[str] = []
    known: dict[str, str] = {}
    for g in groups:
        names = [v.name for v in g.views] if g.linked else g.kept
        if not names:
            continue
        assert reuse_from is not None
        if g.linked:
            known |= link_files(root, reuse_from, f"online/{g.name}/", out)
        for name in names:
            known |= link_files(root, reuse_from, f"offline/{name}/", out)
        reused += names
    return reused, known


def view_stats(features: FeatureSet, reuse_from: Manifest | None, groups: list[GroupPlan],
                results: dict[str, list[PartitionResult]], sources: dict[str, list[FileEntry]]) -> dict[str, ViewStats]:
    stats = {}
    for g in groups:
        for v in g.views:
            if g.linked or v.name in g.kept:
                assert reuse_from is not None
                old = reuse_from.views[v.name]
                rows = old.rows if g.linked else sum(r.view_rows.get(v.name, 0) for r in results[g.name])
                stats[v.name] = ViewStats(rows, sources[v.name], old.definition, old.dropped_duplicates,
                                          old.reused_from or reuse_from.version, old.delta)
            else:
                stats[v.name] = ViewStats(sum(r.view_rows.get(v.name, 0) for r in results[g.name]), sources[v.name],
                                          planning.definition_hash(v),
                                          sum(r.dropped.get(v.name, 0) for r in results[g.name]))
    return {v.name: stats[v.name] for v in features.views}


def group_stats(reuse_from: Manifest | None, groups: list[GroupPlan],
                 results: dict[str, list[PartitionResult]]) -> dict[str, GroupStats]:
    out = {}
    for g in groups:
        if g.linked:
            assert reuse_from is not None
            old = reuse_from.groups[g.name]
            out[g.name] = GroupStats(old.views, old.rows, old.definition, old.reused_from or reuse_from.version,
                                     old.delta)
        else:
            out[g.name] = GroupStats([v.name for v in g.views], sum(r.rows for r in results[g.name]), g.definition)
    return out
