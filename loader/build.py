"""`quiver load`: one new snapshot version from the Parquet sources named in features.yaml.

    inspect sources -> sample keys -> encode + spill by key range (N workers)
      -> sort, dedup, write SST + offline Parquet per range (N workers) -> ingest one RocksDB per view
      -> checksum every file -> manifest.json -> rename into versions/ -> CURRENT

Nothing is visible under versions/ until the final rename; a killed load leaves only staging/load-*,
which the next load removes (loads are serialized by a lock on the root).
"""

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyarrow as pa

from quiver.loader import quality, tasks
from quiver.loader.definitions import load_definitions
from quiver.loader.errors import DefinitionError, LoadError
from quiver.loader.partition import Partitioner
from quiver.loader.sources import SourceFile, inspect
from quiver.loader.statistics import ViewAccumulator
from quiver.snapshot.layout import FORMAT_VERSION, SnapshotRoot, fsync_dir
from quiver.snapshot.manifest import FileEntry, Manifest, ManifestError, ViewStats, data_files, file_checksum
from quiver.snapshot.quality import CheckSummary
from quiver.snapshot.schema import FeatureSet, ViewDef

log = logging.getLogger("quiver.loader")
SAMPLE_TARGET = 200_000       # keys sampled per view to draw partition boundaries
PARTITION_BYTES = 64 << 20    # spilled (in-memory) bytes per key range: bounds a sort worker's memory
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class LoadOptions:
    workers: int = 2
    as_of: datetime | None = None
    compression: str = "lz4"
    batch_rows: int = 1 << 14  # rows read, normalized and encoded at a time: bounds a worker's memory
    partition_bytes: int = PARTITION_BYTES
    reuse: bool = True           # link unchanged views from the current version instead of re-encoding
    allow_type_change: bool = False  # a feature whose type differs from the current version's fails the load
    accept_failed_checks: bool = False  # publish although checks failed (the manifest records it)
    statistics: bool = True      # False: no statistics and no checks (the checks benchmark's baseline)


@dataclass
class LoadResult:
    version: str
    manifest: Manifest
    published: bool              # False when this exact content was already a version
    reused_views: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def checks(self) -> CheckSummary:
        return self.manifest.checks

    @property
    def dropped(self) -> dict[str, int]:
        return {n: v.dropped_duplicates for n, v in self.manifest.views.items()}


def utc_text(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def load_lock(root: SnapshotRoot) -> Iterator[None]:
    root.ensure()
    with open(root.path / ".load.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LoadError(f"{root.path}: another load is running (lock .load.lock held)") from None
        yield


def clean_staging(root: SnapshotRoot) -> None:
    """Leftovers of killed loads: safe to remove while we hold the load lock."""
    for p in root.staging_dir.glob("load-*"):
        shutil.rmtree(p, ignore_errors=True)


@contextmanager
def staging_removed_on_failure(root: SnapshotRoot) -> Iterator[None]:
    """A load that fails on bad input leaves nothing behind, rather than a staging folder as large as the
    version it did not build. Runs after the worker pool has shut down, under the load lock."""
    try:
        yield
    except BaseException:
        clean_staging(root)
        raise


def version_id(features: FeatureSet, sources: dict[str, list[FileEntry]], as_of: datetime) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "schema": features.to_json(), "as_of": utc_text(as_of),
                         "sources": {v: [(s.size, s.checksum) for s in ss] for v, ss in sources.items()}},
                        sort_keys=True).encode())
    return f"{as_of.astimezone(UTC):%Y%m%dT%H%M%SZ}-{h.hexdigest()[:12]}"


def definition_hash(view: ViewDef) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(view.definition_json(), sort_keys=True).encode()).hexdigest()


def _current_manifest(root: SnapshotRoot) -> Manifest | None:
    """The manifest CURRENT names: what this load may reuse and must not change types against."""
    cur = root.current()
    if cur is None:
        return None
    try:
        return Manifest.load(root.manifest_path(cur))
    except ManifestError:
        return None


def check_type_changes(current: Manifest | None, features: FeatureSet) -> None:
    """A client decoding feature X by name must never get a silently different type: a type change
    is refused unless the load says --allow-type-change (clients then read the new type by schema)."""
    if current is None:
        return
    for view in features.views:
        if view.name not in current.views:
            continue
        old = {f.name: f for f in current.schema.view(view.name).features}
        for f in view.features:
            o = old.get(f.name)
            if o is not None and (o.type, o.length) != (f.type, f.length):
                was = o.type + (f"[{o.length}]" if o.length else "")
                now = f.type + (f"[{f.length}]" if f.length else "")
                raise DefinitionError(
                    f"{features.source_file}: view {view.name!r}, feature {f.name!r}: type changes from {was} "
                    f"(version {current.version}) to {now}; give the feature a new name, or load with "
                    f"--allow-type-change if every client reads it by schema")


def _reusable(prev: Manifest | None, view: ViewDef, sources: list[FileEntry]) -> bool:
    if prev is None or view.name not in prev.views:
        return False
    old = prev.views[view.name]
    return old.definition == definition_hash(view) and [(s.size, s.checksum) for s in old.sources] == [
        (s.size, s.checksum) for s in sources]


def _view_prefixes(view: str) -> tuple[str, str]:
    return f"online/{view}/", f"offline/{view}/"


def _link_view(root: SnapshotRoot, prev: Manifest, view: str, dest: Path) -> None:
    """Immutable data files are hard-linked (copied across filesystems); small metadata is copied."""
    src = root.version_dir(prev.version)
    for f in prev.files:
        if not f.path.startswith(_view_prefixes(view)):
            continue
        target = dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.path.endswith((".sst", ".parquet")):
            try:
                os.link(src / f.path, target)
                continue
            except OSError:
                pass
        shutil.copy2(src / f.path, target)
    cfg = src / "online" / view / "rocksdict-config.json"
    if cfg.exists():
        shutil.copy2(cfg, dest / "online" / view / "rocksdict-config.json")


def _encode_tasks(features: FeatureSet, view: ViewDef, files: list[SourceFile], spill: Path, offline_dir: Path,
                  bounds: list[int] | list[bytes], opts: LoadOptions, workers: int) -> list[tasks.EncodeTask]:
    out: list[tasks.EncodeTask] = []
    total_groups = sum(f.row_groups for f in files)
    per_task = max(1, math.ceil(total_groups / (workers * 4)))
    for i, f in enumerate(files):
        for start in range(0, f.row_groups, per_task):
            groups = tuple(range(start, min(f.row_groups, start + per_task)))
            offline = "" if tasks.spills_all_columns(view) else str(
                offline_dir / f"part-t{len(out):05d}.parquet")
            out.append(tasks.EncodeTask(view, features.entity, f.path, i, groups, str(spill), len(out), bounds,
                                        opts.batch_rows, offline, sum(f.rows for f in files), opts.statistics))
    return out


def load(features_path: str | os.PathLike[str], root_dir: str | os.PathLike[str],
         options: LoadOptions | None = None) -> LoadResult:
    """Builds and publishes one version; returns it. Raises LoadError subclasses on bad input."""
    opts = options or LoadOptions()
    started = time.monotonic()
    features_path = Path(features_path)
    features = load_definitions(features_path)
    root = SnapshotRoot(root_dir)
    base = features_path.parent
    with load_lock(root), staging_removed_on_failure(root):
        clean_staging(root)
        files = {v.name: inspect(features.entity, v, base) for v in features.views}
        ctx = get_context("spawn")
        with ProcessPoolExecutor(max_workers=opts.workers, mp_context=ctx, initializer=tasks.worker_init,
                                 initargs=(os.getpid(),)) as pool, \
                pending_cancelled_on_error(pool):
            paths = [s.path for v in features.views for s in files[v.name]]
            sums = dict(zip(paths, pool.map(file_checksum, paths), strict=True))
            sources = {v.name: [FileEntry(os.path.abspath(s.path), s.size, sums[s.path]) for s in files[v.name]]
                       for v in features.views}
            as_of = opts.as_of or datetime.now(UTC).replace(microsecond=0)
            vid = version_id(features, sources, as_of)
            if root.manifest_path(vid).is_file():
                root.set_current(vid)
                return LoadResult(vid, Manifest.load(root.manifest_path(vid)), False,
                                  seconds=time.monotonic() - started)
            stage = root.staging_dir / f"load-{vid}-{os.getpid()}"
            out = stage / "version"
            out.mkdir(parents=True)
            current = _current_manifest(root)
            if not opts.allow_type_change:
                check_type_changes(current, features)
            prev = current if opts.reuse else None
            reused = [v.name for v in features.views if _reusable(prev, v, sources[v.name])]
            build = [v for v in features.views if v.name not in reused]
            stats, known, statistics = _build_views(pool, features, build, files, stage, out, opts)
            prev_statistics = quality.read(root, prev)
            for name in reused:
                assert prev is not None
                _link_view(root, prev, name, out)
                known |= {f.path: f.checksum for f in prev.files if f.path.startswith(_view_prefixes(name))}
                old = prev.views[name]
                stats[name] = ViewStats(old.rows, sources[name], old.definition, old.dropped_duplicates,
                                        old.reused_from or prev.version)
                statistics[name] = quality.carried(prev_statistics, name, old.rows)
            for v in build:
                stats[v.name].sources = sources[v.name]
            summary = CheckSummary()
            if opts.statistics:
                results = quality.evaluate(features, statistics, current, quality.read(root, current))
                summary = quality.verdict(results, opts.accept_failed_checks)   # raises: nothing is published
                quality.write(out, {v.name: statistics[v.name] for v in features.views})
            t = time.monotonic()
            entries = _checksums(pool, out, known)
            log.info("%-10s %6.1f s", "checksums", time.monotonic() - t)
        manifest = Manifest(vid, utc_text(datetime.now(UTC)), utc_text(as_of), features,
                            {v.name: stats[v.name] for v in features.views}, entries, checks=summary)
        _publish(root, stage, out, manifest)
        return LoadResult(vid, manifest, True, reused, time.monotonic() - started)


@contextmanager
def pending_cancelled_on_error(pool: ProcessPoolExecutor) -> Iterator[None]:
    """The first bad batch ends the load: queued tasks are dropped, not run to completion."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise


def _checksums(pool: ProcessPoolExecutor, out: Path, known: dict[str, str]) -> list[FileEntry]:
    """Every file of the version; those not checksummed as they were written (RocksDB's own small
    files, reused views' links) are read now."""
    listed = data_files(out)
    todo = [p for p, _ in listed if p not in known]
    sums = dict(zip(todo, pool.map(file_checksum, [out / p for p in todo]), strict=True))
    return [FileEntry(p, size, known.get(p) or sums[p]) for p, size in listed]


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


def _build_views(pool: ProcessPoolExecutor, features: FeatureSet, views: list[ViewDef],
                 files: dict[str, list[SourceFile]], stage: Path, out: Path,
                 opts: LoadOptions) -> tuple[dict[str, ViewStats], dict[str, str], dict[str, dict[str, Any]]]:
    """Builds the views' files under out; returns their stats, the checksums taken as each data file
    was written (relative path -> checksum), so they need not be read back from disk, and their
    statistics (statistics.ViewAccumulator JSON), accumulated by the tasks on the rows they stored."""
    if not views:
        return {}, {}, {}
    clock = time.monotonic()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        log.info("%-10s %6.1f s", name, now - clock)
        clock = now

    # 1. partition boundaries from a bounded sample of each view's keys
    bounds: dict[str, list[int] | list[bytes]] = {}
    sample_jobs = []
    for v in views:
        rows = sum(f.rows for f in files[v.name])
        stride = max(1, rows // SAMPLE_TARGET)
        sample_jobs.append([pool.submit(tasks.sample_keys, features.entity, v, f.path, stride) for f in files[v.name]])
    for v, jobs in zip(views, sample_jobs, strict=True):
        samples: list[tasks.Sample] = [j.result() for j in jobs]
        rows = sum(f.rows for f in files[v.name])
        row_bytes = sum(s.spill_bytes for s in samples) / max(1, sum(s.spill_rows for s in samples))
        parts = max(opts.workers, math.ceil(rows * row_bytes / opts.partition_bytes))
        bounds[v.name] = Partitioner.from_sample(pa.concat_arrays([s.keys for s in samples]), parts).boundaries
        log.debug("view %s: %d rows of ~%.0f spilled bytes -> %d key ranges", v.name, rows, row_bytes, parts)
    phase("sample")
    # 2. encode and spill by key range
    encode = []
    for v in views:
        encode += _encode_tasks(features, v, files[v.name], stage / "spill" / v.name, out / "offline" / v.name,
                                bounds[v.name], opts, opts.workers)
    known: dict[str, str] = {}
    partials: dict[str, list[ViewAccumulator]] = {v.name: [] for v in views}
    encoded_rows = Progress("encode", len(encode), "rows spilled")
    for task, encoded in zip(encode, pool.map(tasks.encode_task, encode), strict=True):
        known |= encoded.checksums
        if encoded.statistics is not None:
            partials[task.view.name].append(encoded.statistics)
        encoded_rows.done(sum(encoded.counts))
    phase("encode")
    # 3. sort, dedup, write SST and offline Parquet per range
    part_jobs = []
    for v in views:
        spill = stage / "spill" / v.name
        for p in sorted(spill.glob("p*")):
            part_jobs.append((v.name, pool.submit(tasks.partition_task, tasks.PartitionTask(
                v, features.entity, str(p), str(stage / "sst" / v.name),
                str(out / "offline" / v.name / f"part-{p.name[1:]}.parquet") if tasks.spills_all_columns(v) else "",
                tuple(f.path for f in files[v.name]), opts.compression, sum(f.rows for f in files[v.name]),
                opts.statistics))))
    results: dict[str, list[tasks.PartitionResult]] = {v.name: [] for v in views}
    stored = Progress("sort+sst", len(part_jobs), "rows stored")
    for name, job in part_jobs:
        results[name].append(job.result())
        known |= results[name][-1].checksums
        if results[name][-1].statistics is not None:
            partials[name].append(results[name][-1].statistics)
        stored.done(results[name][-1].rows)
    phase("sort+sst")
    # 4. one RocksDB per view
    ingest = [pool.submit(tasks.ingest_task, str(out / "online" / v.name),
                          [s for r in results[v.name] for s in r.sst_files]) for v in views]
    for j in ingest:
        known |= j.result()
    phase("ingest")
    shutil.rmtree(stage / "spill", ignore_errors=True)
    shutil.rmtree(stage / "sst", ignore_errors=True)
    stats = {v.name: ViewStats(sum(r.rows for r in results[v.name]), [], definition_hash(v),
                               sum(r.dropped for r in results[v.name])) for v in views}
    statistics = {v.name: quality.merged(partials[v.name]) if partials[v.name] else ViewAccumulator(v).to_json()
                  for v in views}
    phase("statistics")
    return stats, {Path(p).relative_to(out).as_posix(): c for p, c in known.items()}, statistics


def _publish(root: SnapshotRoot, stage: Path, out: Path, manifest: Manifest) -> None:
    """The manifest is the last file written; the rename makes the version visible at once."""
    (out / "manifest.json").write_bytes(manifest.dumps())
    for d in [p for p in out.rglob("*") if p.is_dir()] + [out]:
        fsync_dir(d)
    for p in out.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    target = root.version_dir(manifest.version)
    os.rename(out, target)
    fsync_dir(root.versions_dir)
    shutil.rmtree(stage, ignore_errors=True)
    root.set_current(manifest.version)
