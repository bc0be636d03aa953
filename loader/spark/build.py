"""`quiver load --engine spark` and `build_version`: the version `quiver load` builds, its data path run
by Spark. The stages are the local loader's (loader/load.py), called in the same order:

    plan     driver: definitions, sources (checksums as Spark tasks), version id, type and grouping
             checks, plan.plan_groups, plan.draw_boundaries (key samples as Spark tasks)
    spill    Spark, per storage group: the loader's encode tasks, one Spark task each (or the partitions
             of a DataFrame the caller holds) -> one Spark partition per key range of the group
             -> sortWithinPartitions by (range, view, encode task, row)
    sst      Spark, per key range: the loader's sst.partition_task on that range's rows (dedup, kept
             views, EntityRows, SST files, offline Parquet), written to the load's staging folder
    ingest   driver: ingest.ingest_task, one RocksDB per group
    checks   driver: quality.check on the statistics the encode and write tasks accumulated (the
             loader's own accumulators, pickled into their reports), merged in the local loader's order
    publish  driver: link unchanged groups and views, checksums, manifest, rename + CURRENT
             (an object-store URI: then `quiver.distribution.publish`: files, manifest, LATEST)

Executors write into the load's staging folder: local disk under `local[N]`; on a cluster a volume the
driver and the executors share (deploy/k8s/overlays/load-spark). A failed or killed job publishes
nothing; the next load removes its staging folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from quiver.loader import load as local
from quiver.loader import plan as planning
from quiver.loader.definitions import load_definitions
from quiver.loader.errors import DefinitionError, LoadError, SourceError
from quiver.loader.ingest import ingest_task
from quiver.loader.normalize import check_source_schema, normalize
from quiver.loader.partition import Partitioner
from quiver.loader.publish import checksums, clean_staging, load_lock, publish, staging_removed_on_failure
from quiver.loader.sources import SourceFile, inspect
from quiver.loader.spark import stages
from quiver.loader.spill import SpillRows, encode_tasks, source_columns
from quiver.loader.sst import KeptViews, PartitionResult
from quiver.quality import evaluate as quality
from quiver.quality.statistics import ViewAccumulator
from quiver.snapshot import rocks
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.manifest import CheckSummary, FileEntry, Manifest, file_checksum
from quiver.snapshot.schema import EntityDef, FeatureSet, ViewDef

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("quiver.loader")
T = TypeVar("T")
R = TypeVar("R")
FRAME_ORDER = 1 << 20   # a DataFrame's errors sort after every file task of its group


def is_uri(target: str | os.PathLike[str]) -> bool:
    return "://" in str(target)


def load(spark: SparkSession, features_path: str | os.PathLike[str], root_or_uri: str | os.PathLike[str],
         options: local.LoadOptions | None = None, *, work_root: str | os.PathLike[str] | None = None,
         endpoint: str | None = None, frames: dict[str, DataFrame] | None = None) -> local.LoadResult:
    """`quiver load` with Spark doing the data path. A root gets the version by one rename and a
    CURRENT move; an object-store URI gets it built in `work_root` (default: a temporary folder), then
    published there. Raises the local loader's LoadError subclasses, with its messages."""
    opts = options or local.LoadOptions()
    if is_uri(root_or_uri):
        with _work_root(work_root) as build_root:
            result = _load_root(spark, Path(features_path), SnapshotRoot(build_root), opts, frames or {})
            _publish_remote(build_root, str(root_or_uri), result.version, endpoint)
            return result
    return _load_root(spark, Path(features_path), SnapshotRoot(root_or_uri), opts, frames or {})


def build_version(spark: SparkSession, features: str | os.PathLike[str] | FeatureSet,
                  frames_by_view: dict[str, DataFrame] | None, root_or_uri: str | os.PathLike[str], *,
                  as_of: datetime | None = None, compression: str = rocks.DEFAULT_COMPRESSION, reuse: bool = True,
                  allow_type_change: bool = False, allow_regroup: bool = False,
                  work_root: str | os.PathLike[str] | None = None, endpoint: str | None = None) -> local.LoadResult:
    """The API for a PySpark job: build and publish one version. Views named in `frames_by_view` are
    read from the job's DataFrames (columns as features.yaml names them; `source` is not read), the
    others from their sources. A DataFrame view is always encoded (there is no file to compare for
    reuse); its manifest source is `spark:dataframe/<view>` with its row count and an order-free
    digest of its encoded rows, so the same rows give the same version id."""
    if isinstance(features, FeatureSet):
        features = features.source_file
    opts = local.LoadOptions(workers=spark.sparkContext.defaultParallelism, as_of=as_of, compression=compression,
                             reuse=reuse, allow_type_change=allow_type_change, allow_regroup=allow_regroup)
    return load(spark, features, root_or_uri, opts, work_root=work_root, endpoint=endpoint,
                frames=frames_by_view or {})


BUILD_PREFIX = "quiver-spark-build-"


class _work_root:
    """The given folder, or a temporary one removed afterwards (named for this process, so the next
    load can tell a killed load's from a running one's)."""

    def __init__(self, given: str | os.PathLike[str] | None) -> None:
        self.given = given
        self.tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        if self.given is not None:
            return Path(self.given)
        remove_killed_builds()
        self.tmp = tempfile.TemporaryDirectory(prefix=f"{BUILD_PREFIX}{os.getpid()}-")
        return Path(self.tmp.name)

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


def remove_killed_builds() -> None:
    """The default work roots of killed object-store loads: a killed load never reaches its cleanup,
    so the next one removes every temporary build whose process is gone, as a root's next load
    removes its staging. (A build whose process id was reused is left for a later load.)"""
    for d in Path(tempfile.gettempdir()).glob(f"{BUILD_PREFIX}*-*"):
        pid = d.name.removeprefix(BUILD_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by a killed load", d)
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():   # not ours yet: a killed load's, whose id this process was given again
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish_remote(build_root: Path, uri: str, version: str, endpoint: str | None) -> None:
    from quiver.distribution import publish

    r = publish(build_root, uri, version, endpoint=endpoint)
    log.info("published %s to %s: %d uploaded, %d copied, %d present", version, uri, len(r.uploaded),
             len(r.copied), len(r.skipped))


# ---------------------------------------------------------------------------------------------
# Spark tasks behind the ProcessPoolExecutor calls the planning functions make
# ---------------------------------------------------------------------------------------------

def _guarded(call: tuple[Callable[..., Any], tuple[Any, ...]]) -> tuple[bool, Any]:
    fn, args = call
    try:
        return True, fn(*args)
    except LoadError as e:
        return False, stages.error_report(e)


class _Pending(Generic[R]):
    def __init__(self, tasks: SparkTasks) -> None:
        self.tasks, self.done, self.ok, self.value = tasks, False, False, None

    def result(self) -> R:
        if not self.done:
            self.tasks.run_pending()
        if not self.ok:
            stages.raise_reported(self.value)  # type: ignore[arg-type]
        return self.value  # type: ignore[return-value]


class SparkTasks:
    """`submit`/`map` as a ProcessPoolExecutor offers them, each call one Spark task: what plan.py's
    functions take as their pool. Submitted calls run together in one Spark job at the first
    result(); a LoadError is raised by the result() of the call that raised it, as in a pool."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], _Pending[Any]]] = []

    def submit(self, fn: Callable[..., R], *args: Any) -> _Pending[R]:
        p: _Pending[R] = _Pending(self)
        self.pending.append((fn, args, p))
        return p

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        futures = [self.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def run_pending(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        calls = [(fn, args) for fn, args, _ in pending]
        outcomes = self.spark.sparkContext.parallelize(calls, len(calls)).map(_guarded).collect()
        for (_, _, p), (ok, value) in zip(pending, outcomes, strict=True):
            p.done, p.ok, p.value = True, ok, value


class _OnTheDriver:
    """`map` in this process: checksums of the driver's own small files (RocksDB's MANIFEST, OPTIONS)."""

    @staticmethod
    def map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return [fn(item) for item in items]


# ---------------------------------------------------------------------------------------------
# The load
# ---------------------------------------------------------------------------------------------

def _load_root(spark: SparkSession, features_path: Path, root: SnapshotRoot, opts: local.LoadOptions,
               frames: dict[str, DataFrame]) -> local.LoadResult:
    """local.load, stage for stage, with the pool's work done by Spark."""
    started = time.monotonic()
    features = load_definitions(features_path)
    _check_frames(features, frames)
    phases = local.Phases()
    pool = SparkTasks(spark)
    with load_lock(root), staging_removed_on_failure(root):
        clean_staging(root)
        files = {v.name: inspect(features.entity, v, features_path.parent) if v.name not in frames else []
                 for v in features.views}
        # 1. plan
        paths = [s.path for v in features.views for s in files[v.name]]
        sums = dict(zip(paths, pool.map(file_checksum, paths), strict=True))
        sources = {v.name: [FileEntry(os.path.abspath(s.path), s.size, sums[s.path]) for s in files[v.name]]
                   if v.name not in frames else [FileEntry(_frame_source(v.name), -1, "")] for v in features.views}
        as_of = opts.as_of or datetime.now(UTC).replace(microsecond=0)
        vid = planning.version_id(features, sources, as_of)
        if not frames and root.manifest_path(vid).is_file():
            root.set_current(vid)
            return local.LoadResult(vid, Manifest.load(root.manifest_path(vid)), False,
                                    seconds=time.monotonic() - started)
        # with DataFrames the id is known once their rows are: the stage is named for the process
        stage = root.staging_dir / (f"load-{vid}-{os.getpid()}" if not frames else f"load-frames-{os.getpid()}")
        out = stage / "version"
        out.mkdir(parents=True)
        current, prev, groups = planning.plan_against_current(root, features, sources, opts.reuse,
                                                              opts.allow_type_change, opts.allow_regroup)
        with_frames = [g for g in groups if any(v.name in frames for v in g.encode)]
        planning.draw_boundaries(pool, root, prev, features.entity, [g for g in groups if g not in with_frames],  # type: ignore[arg-type]
                                 files, opts.partition_bytes, opts.workers)
        frame_rows: dict[str, int] = {}
        for g in with_frames:
            frame_rows |= _frame_group_boundaries(pool, root, prev, features.entity, g, files, frames, opts)
        phases.end("plan")
        # 2-3. spill, sort, assemble, write SST: one Spark job per group
        built = [_build_group(spark, root, prev, features, g, files, frames, frame_rows, stage, out, opts)
                 for g in groups if not g.linked]
        _raise_first_error(built)
        phases.end("spark")
        results = {g.name: [] for g in groups} | {b.group: b.results for b in built}
        known: dict[str, str] = {}
        rows_read: dict[str, int] = {}
        for b in built:
            known |= {Path(p).relative_to(out).as_posix(): c for p, c in b.checksums.items()}
            rows_read |= b.rows_read
            for name, (rows, digest) in b.frames.items():
                sources[name] = [FileEntry(_frame_source(name), rows, f"rowsum64:{digest:016x}")]
        if frames:
            vid = planning.version_id(features, sources, as_of)
            if root.manifest_path(vid).is_file():
                shutil.rmtree(stage, ignore_errors=True)
                root.set_current(vid)
                return local.LoadResult(vid, Manifest.load(root.manifest_path(vid)), False,
                                        seconds=time.monotonic() - started)
        # 4. ingest
        for g in groups:
            if not g.linked:
                ingested = ingest_task(str(out / "online" / g.name), [s for r in results[g.name] for s in r.sst_files])
                known |= {Path(p).relative_to(out).as_posix(): c for p, c in ingested.items()}
        shutil.rmtree(stage / "sst", ignore_errors=True)
        phases.end("ingest")
        # 5. checks: a failing version ends here, before anything is published
        per_view = local.view_stats(features, prev, groups, results, sources)
        summary = CheckSummary()
        if opts.statistics:
            summary = quality.check(root, prev, current, features, groups, _partials(features, built, results),
                                    per_view, out, opts.accept_failed_checks)
        phases.end("checks")
        # 6. publish
        reused = local.link_unchanged(root, prev, groups, out, known)
        entries = checksums(_OnTheDriver(), out, known)  # type: ignore[arg-type]
        phases.end("checksums")
        manifest = Manifest(vid, planning.utc_text(datetime.now(UTC)), planning.utc_text(as_of), features,
                            per_view, local.group_stats(prev, groups, results), entries, checks=summary)
        publish(root, stage, out, manifest)
        return local.LoadResult(vid, manifest, True, reused, [g.name for g in groups if g.linked], rows_read,
                                time.monotonic() - started, phases.seconds)


def _partials(features: FeatureSet, built: list[_BuiltGroup],
              results: dict[str, list[PartitionResult]]) -> dict[str, list[ViewAccumulator]]:
    """Each view's partial statistics in the order the local loader merges them: its encode tasks' in
    task order, then the write tasks' in group and key-range order. The same partials merged in the
    same order give the same floating-point sums, so statistics.json is the local engine's."""
    partials: dict[str, list[ViewAccumulator]] = {v.name: [] for v in features.views}
    for b in built:
        for name, tasks in b.statistics.items():
            partials[name] += [acc for _, acc in sorted(tasks, key=lambda t: t[0])]
    for rs in results.values():
        for r in rs:
            for name, acc in r.statistics.items():
                partials[name].append(acc)
    return partials


def _frame_source(view: str) -> str:
    return f"spark:dataframe/{view}"


def _frame_where(view: str) -> str:
    return f"frames_by_view[{view!r}]"


def _check_frames(features: FeatureSet, frames: dict[str, DataFrame]) -> None:
    """What inspect() checks of a source file, for a DataFrame: its columns and their types."""
    if not frames:
        return
    from pyspark.sql.pandas.types import to_arrow_schema

    unknown = sorted(set(frames) - set(features.view_names))
    if unknown:
        raise DefinitionError(f"{features.source_file}: frames_by_view names view(s) {unknown} it does not "
                              f"define; it defines {features.view_names}")
    for name, df in frames.items():
        check_source_schema(features.entity, features.view(name), to_arrow_schema(df.schema, timezone="UTC"),
                            _frame_where(name))


def _frame_group_boundaries(pool: SparkTasks, root: SnapshotRoot, prev: Manifest | None, entity: EntityDef,
                            g: planning.GroupPlan, files: dict[str, list[SourceFile]], frames: dict[str, DataFrame],
                            opts: local.LoadOptions) -> dict[str, int]:
    """plan.draw_boundaries for a group that reads a DataFrame: the same sample size and range count,
    the DataFrames sampled by Spark (the kept views' keys are not sampled: they change the ranges'
    sizes, not what the version holds). Returns the DataFrames' row counts."""
    rows = sum(f.rows for v in g.encode for f in files[v.name])
    frame_rows = {v.name: frames[v.name].count() for v in g.encode if v.name in frames}
    for name, n in frame_rows.items():
        if n == 0:
            raise SourceError(f"view {name!r}: {_frame_where(name)} has no rows")
    rows += sum(frame_rows.values())
    stride = max(1, rows // planning.SAMPLE_TARGET)
    jobs = [pool.submit(planning.sample_keys, entity, v, f.path, stride) for v in g.encode for f in files[v.name]]
    samples = [j.result() for j in jobs]
    for v in g.encode:
        if v.name in frames:
            samples.append(_sample_frame(entity, v, frames[v.name], frame_rows[v.name], stride))
    row_bytes = sum(s.spill_bytes for s in samples) / max(1, sum(s.spill_rows for s in samples))
    parts = max(opts.workers, math.ceil(rows * row_bytes / opts.partition_bytes))
    g.boundaries = Partitioner.from_sample(pa.concat_arrays([s.keys for s in samples]), parts).boundaries
    return frame_rows


def _sample_frame(entity: EntityDef, view: ViewDef, df: DataFrame, rows: int, stride: int) -> planning.Sample:
    """What plan.sample_keys gives of a file, of a DataFrame: about every stride-th key, and the spilled
    size of its first rows."""
    t = pa.int64() if entity.key_type == "int64" else pa.string()
    key_col = view.entity_column or entity.name
    keys = df.select(key_col).sample(False, min(1.0, 1 / stride), seed=0).toArrow().column(0)
    keys = pc.drop_null(keys.combine_chunks() if keys.num_chunks else pa.array([], keys.type)).cast(t)
    head = df.select(*source_columns(entity, view)).limit(planning.SIZE_ROWS).toArrow().combine_chunks()
    batch = normalize(entity, view, head.to_batches()[0], _frame_where(view.name))
    spilled = SpillRows(entity, view).of(batch, 0)
    return planning.Sample(keys, spilled.nbytes, spilled.num_rows)


@dataclass
class _BuiltGroup:
    group: str
    results: list[PartitionResult] = field(default_factory=list)   # in key-range order
    checksums: dict[str, str] = field(default_factory=dict)        # offline files written while encoding
    rows_read: dict[str, int] = field(default_factory=dict)
    frames: dict[str, tuple[int, int]] = field(default_factory=dict)  # DataFrame view -> (rows, digest)
    encode_errors: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    statistics: dict[str, list[tuple[int, ViewAccumulator]]] = field(default_factory=dict)  # view -> (task, partial)
    range_errors: list[dict[str, Any]] = field(default_factory=list)


def _raise_first_error(built: list[_BuiltGroup]) -> None:
    """The local loader encodes every group before it writes any: its first error is the first failing
    encode task in group order, else the first failing key range."""
    for b in built:
        if b.encode_errors:
            stages.raise_reported(min(b.encode_errors, key=lambda e: e[0])[1])
    for b in built:
        if b.range_errors:
            stages.raise_reported(b.range_errors[0])


def _build_group(spark: SparkSession, root: SnapshotRoot, prev: Manifest | None, features: FeatureSet,
                 g: planning.GroupPlan, files: dict[str, list[SourceFile]], frames: dict[str, DataFrame],
                 frame_rows: dict[str, int], stage: Path, out: Path, opts: local.LoadOptions) -> _BuiltGroup:
    """One storage group: encode -> range-partition -> sort -> the loader's partition_task per range."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    entity = features.entity
    encoded_views = tuple(g.encode)
    schema = stages.shuffle_schema(entity, encoded_views)
    spark_schema = from_arrow_schema(schema)
    bounds = planning.range_bounds(g.boundaries, entity.key_type == "int64")
    jobs: list[stages.EncodeJob] = []
    for j, v in enumerate(encoded_views):
        if v.name not in frames:
            jobs += [stages.EncodeJob(t, j) for t in encode_tasks(
                entity, v, files[v.name], stage / "spill" / g.name, out / "offline" / v.name, g.boundaries,
                opts.batch_rows, opts.workers, opts.statistics)]
    parts: list[DataFrame] = []
    if jobs:
        ids = spark.createDataFrame([(i,) for i in range(len(jobs))], "job int").repartition(len(jobs))
        parts.append(ids.mapInArrow(stages.encode_stage(jobs, schema), spark_schema))
    for j, v in enumerate(encoded_views):
        if v.name in frames:
            job = stages.FrameJob(entity, v, j, g.boundaries, _frame_where(v.name),
                                  "" if v.event_timestamp else str(out / "offline" / v.name), opts.batch_rows,
                                  FRAME_ORDER, frame_rows[v.name], opts.statistics)
            parts.append(frames[v.name].select(*source_columns(entity, v)).mapInArrow(
                stages.frame_stage(job, schema), spark_schema))
    kept = None
    if g.kept:
        assert prev is not None
        kept = KeptViews(str(root.online_dir(prev.version, g.name)), tuple(prev.groups[g.name].views), tuple(g.kept))
        # every range gets its task, rows read or not: its kept views' rows are in the previous version
        markers = [b.to_pylist()[0] for b in stages.range_markers(schema, len(bounds))]
        parts.append(spark.createDataFrame(markers, spark_schema))
    rows = parts[0]
    for p in parts[1:]:
        rows = rows.unionByName(p)
    write = stages.RangeJob(g.name, tuple(g.views), encoded_views, entity, tuple(bounds), str(stage / "sst" / g.name),
                            str(out / "offline"), {v.name: tuple(f.path for f in files[v.name]) if v.name not in frames
                                                   else (_frame_where(v.name),) for v in encoded_views},
                            opts.compression, kept, "",
                            {v.name: frame_rows[v.name] if v.name in frames else sum(f.rows for f in files[v.name])
                             for v in encoded_views}, opts.statistics)
    # Spark partition p holds exactly key range p. repartitionByRange would sample its input first, and
    # that re-runs the whole encode stage (measured: twice the encoding at 10M users).
    keys = _partition_keys(spark, len(bounds))
    buckets = F.array(*[F.lit(k).cast("bigint") for k in [keys[0], *keys]])   # reports (range -1) go with range 0
    rows = rows.withColumn("__bucket", F.element_at(buckets, F.col(stages.PART) + 2))
    reports = (rows.repartition(len(bounds), "__bucket")
               .sortWithinPartitions(F.col(stages.PART), F.col(stages.VIEW), F.col(stages.TASK), F.col(stages.SEQ))
               .mapInArrow(stages.write_stage(write), from_arrow_schema(stages.REPORT_SCHEMA))
               .collect())
    built = _BuiltGroup(g.name)
    by_range: list[tuple[int, dict[str, Any]]] = []
    for r in reports:
        report = json.loads(r["report"])
        if r["part"] != stages.REPORT_PART:
            by_range.append((r["part"], report))
        elif "error" in report:
            built.encode_errors.append((report["order"], report))
        else:
            built.checksums |= report["checksums"]
            built.rows_read[report["view"]] = built.rows_read.get(report["view"], 0) + report["rows_in"]
            if "statistics" in report:
                built.statistics.setdefault(report["view"], []).append((report["task"],
                                                                        stages.unpacked(report["statistics"])))
            if "digest" in report:
                n, d = built.frames.get(report["view"], (0, 0))
                built.frames[report["view"]] = (n + report["rows_in"], (d + report["digest"]) & ((1 << 64) - 1))
    for _, report in sorted(by_range, key=lambda x: x[0]):
        if "error" in report:
            built.range_errors.append(report)
        elif report:
            result = stages.result_from_json(report)
            built.checksums |= result.checksums
            built.results.append(result)
    return built


def _partition_keys(spark: SparkSession, n: int) -> list[int]:
    """For each p < n a bigint whose hash partitioning (Spark's pmod(hash(x), n)) is p: the
    partitioning column that sends key range p to Spark partition p, and nothing else there."""
    from pyspark.sql import functions as F

    size = 64 * n + 64
    while True:
        rows = spark.range(0, size).select(F.col("id"), F.expr(f"pmod(hash(id), {n})").alias("p")).collect()
        keys: dict[int, int] = {}
        for r in rows:   # ids in order: the first of each p
            keys.setdefault(int(r["p"]), int(r["id"]))
        if len(keys) == n:
            return [keys[p] for p in range(n)]
        size *= 4


def run_tasks(spark: SparkSession, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """fn over items, one Spark task each, results in order; the first LoadError in item order is
    raised on the driver as itself (the local loader's pool.map order)."""
    return SparkTasks(spark).map(fn, items)
