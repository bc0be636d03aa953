"""`quiver load --engine spark` and `build_version`: the version `quiver load` builds, its data path
run by Spark.

    driver   definitions, sources, version id, reuse plan, type checks   (the local loader's own code)
    Spark    source checksums and key samples, one task per file
    Spark    encode: the loader's encode tasks, one Spark task each (stages.encode_stage)
             -> repartitionByRange on the loader's key ranges -> sortWithinPartitions by key
             -> write: per key range dedup, SST files, offline Parquet (stages.write_stage)
    driver   ingest one RocksDB per view, checksums, manifest, rename + CURRENT
             (an object-store URI: then `quiver.distribution.publish`, files, manifest, LATEST)

The key ranges are the local loader's (the same sample, the same boundaries), so each range holds the
same rows as a local load's and a duplicate-key error names the same key and count. Executors write
into the load's staging folder: local disk under `local[N]`; on a cluster, a volume the driver and
the executors share (deploy/spark/). A failed or killed job publishes nothing; the next load removes
its staging folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from quiver.loader import build as local
from quiver.loader import tasks
from quiver.loader.definitions import load_definitions
from quiver.loader.errors import DefinitionError, LoadError, SourceError
from quiver.loader.normalize import check_source_schema, normalize
from quiver.loader.partition import Partitioner
from quiver.loader.sources import SourceFile, inspect
from quiver.loader.spark import stages
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.manifest import FileEntry, Manifest, ViewStats, data_files, file_checksum
from quiver.snapshot.schema import EntityDef, FeatureSet, ViewDef

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("quiver.loader")
T = TypeVar("T")
R = TypeVar("R")


def is_uri(target: str | os.PathLike[str]) -> bool:
    return "://" in str(target)


def load(spark: SparkSession, features_path: str | os.PathLike[str], root_or_uri: str | os.PathLike[str],
         options: local.LoadOptions | None = None, *, work_root: str | os.PathLike[str] | None = None,
         endpoint: str | None = None, frames: dict[str, DataFrame] | None = None) -> local.LoadResult:
    """`quiver load` with Spark doing the data path. A root gets the version by one rename and a
    CURRENT move; an object-store URI gets it built in `work_root` (default: a temporary folder),
    then published there. Raises the local loader's LoadError subclasses, with its messages."""
    opts = options or local.LoadOptions()
    if is_uri(root_or_uri):
        with _work_root(work_root) as build_root:
            result = _load_root(spark, Path(features_path), SnapshotRoot(build_root), opts, frames or {})
            _publish_remote(build_root, str(root_or_uri), result.version, endpoint)
            return result
    return _load_root(spark, Path(features_path), SnapshotRoot(root_or_uri), opts, frames or {})


def build_version(spark: SparkSession, features: str | os.PathLike[str] | FeatureSet,
                  frames_by_view: dict[str, DataFrame] | None, root_or_uri: str | os.PathLike[str], *,
                  as_of: datetime | None = None, compression: str = "lz4", reuse: bool = True,
                  allow_type_change: bool = False, work_root: str | os.PathLike[str] | None = None,
                  endpoint: str | None = None) -> local.LoadResult:
    """The API for a PySpark job: build and publish one version. Views named in `frames_by_view` are
    read from the job's DataFrames (columns as features.yaml names them; `source` is not read), the
    others from their sources. A DataFrame view is always encoded (there is no file to compare for
    reuse); its manifest source is `spark:dataframe/<view>` with its row count and an order-free
    digest of its encoded rows, so the same rows give the same version id."""
    if isinstance(features, FeatureSet):
        features = features.source_file
    opts = local.LoadOptions(workers=spark.sparkContext.defaultParallelism, as_of=as_of, compression=compression,
                             reuse=reuse, allow_type_change=allow_type_change)
    return load(spark, features, root_or_uri, opts, work_root=work_root, endpoint=endpoint,
                frames=frames_by_view or {})


class _work_root:
    """The given folder, or a temporary one removed afterwards."""

    def __init__(self, given: str | os.PathLike[str] | None) -> None:
        self.given = given
        self.tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        if self.given is not None:
            return Path(self.given)
        self.tmp = tempfile.TemporaryDirectory(prefix="quiver-spark-build-")
        return Path(self.tmp.name)

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


def _publish_remote(build_root: Path, uri: str, version: str, endpoint: str | None) -> None:
    from quiver import distribution

    r = distribution.publish(build_root, uri, version, endpoint=endpoint)
    log.info("published %s to %s: %d uploaded, %d copied, %d present", version, uri, len(r.uploaded),
             len(r.copied), len(r.skipped))


def _load_root(spark: SparkSession, features_path: Path, root: SnapshotRoot, opts: local.LoadOptions,
               frames: dict[str, DataFrame]) -> local.LoadResult:
    """local.load, step for step, with the pool's work done by Spark."""
    started = time.monotonic()
    features = load_definitions(features_path)
    base = features_path.parent
    _check_frames(features, frames)
    with local.load_lock(root), local.staging_removed_on_failure(root):
        local.clean_staging(root)
        files = {v.name: inspect(features.entity, v, base) for v in features.views if v.name not in frames}
        paths = [s.path for v in features.views for s in files.get(v.name, [])]
        sums = dict(zip(paths, run_tasks(spark, file_checksum, paths), strict=True))
        sources = {name: [FileEntry(os.path.abspath(s.path), s.size, sums[s.path]) for s in found]
                   for name, found in files.items()}
        as_of = opts.as_of or datetime.now(UTC).replace(microsecond=0)
        if not frames:
            vid = local.version_id(features, sources, as_of)
            if root.manifest_path(vid).is_file():
                root.set_current(vid)
                return local.LoadResult(vid, Manifest.load(root.manifest_path(vid)), False,
                                        seconds=time.monotonic() - started)
        # with DataFrames the id is known once their rows are: the stage is named for the process
        stage = root.staging_dir / (f"load-{vid}-{os.getpid()}" if not frames else f"load-frames-{os.getpid()}")
        out = stage / "version"
        out.mkdir(parents=True)
        current = local._current_manifest(root)
        if not opts.allow_type_change:
            local.check_type_changes(current, features)
        prev = current if opts.reuse else None
        reused = [v.name for v in features.views if v.name in sources and local._reusable(prev, v, sources[v.name])]
        build = [v for v in features.views if v.name not in reused]
        stats, known, sources_of_frames = _build_views(spark, features, build, files, frames, stage, out, opts)
        sources |= sources_of_frames
        if frames:
            vid = local.version_id(features, sources, as_of)
            if root.manifest_path(vid).is_file():
                shutil.rmtree(stage, ignore_errors=True)
                root.set_current(vid)
                return local.LoadResult(vid, Manifest.load(root.manifest_path(vid)), False,
                                        seconds=time.monotonic() - started)
        for name in reused:
            assert prev is not None
            local._link_view(root, prev, name, out)
            known |= {f.path: f.checksum for f in prev.files if f.path.startswith(local._view_prefixes(name))}
            old = prev.views[name]
            stats[name] = ViewStats(old.rows, sources[name], old.definition, old.dropped_duplicates,
                                    old.reused_from or prev.version)
        for v in build:
            stats[v.name].sources = sources[v.name]
        entries = [FileEntry(p, size, known.get(p) or file_checksum(out / p)) for p, size in data_files(out)]
        manifest = Manifest(vid, local.utc_text(datetime.now(UTC)), local.utc_text(as_of), features,
                            {v.name: stats[v.name] for v in features.views}, entries)
        local._publish(root, stage, out, manifest)
        return local.LoadResult(vid, manifest, True, reused, time.monotonic() - started)


def _frame_where(view: str) -> str:
    return f"frames_by_view[{view!r}]"


def _check_frames(features: FeatureSet, frames: dict[str, DataFrame]) -> None:
    """What inspect() checks of a source file, for a DataFrame: its columns and their types."""
    from pyspark.sql.pandas.types import to_arrow_schema

    unknown = sorted(set(frames) - set(features.view_names))
    if unknown:
        raise DefinitionError(f"{features.source_file}: frames_by_view names view(s) {unknown} it does not "
                              f"define; it defines {features.view_names}")
    for name, df in frames.items():
        check_source_schema(features.entity, features.view(name), to_arrow_schema(df.schema), _frame_where(name))


def run_tasks(spark: SparkSession, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """fn over items, one Spark task each, results in order; the first LoadError in item order is
    raised on the driver as itself (the local loader's pool.map order)."""
    if not items:
        return []

    def guarded(item: T) -> tuple[bool, Any]:
        try:
            return True, fn(item)
        except LoadError as e:
            return False, stages.error_report(e)

    results = spark.sparkContext.parallelize(list(items), len(items)).map(guarded).collect()
    for ok, value in results:
        if not ok:
            stages.raise_reported(value)
    return [value for _, value in results]


@dataclass(frozen=True)
class _SampleJob:
    view: ViewDef
    path: str
    stride: int


def _build_views(spark: SparkSession, features: FeatureSet, views: list[ViewDef], files: dict[str, list[SourceFile]],
                 frames: dict[str, DataFrame], stage: Path, out: Path,
                 opts: local.LoadOptions) -> tuple[dict[str, ViewStats], dict[str, str], dict[str, list[FileEntry]]]:
    """local._build_views on Spark: the same key ranges, encode tasks, dedup and writers. Also returns
    the manifest sources of the DataFrame views."""
    if not views:
        return {}, {}, {}
    clock = time.monotonic()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        log.info("%-10s %6.1f s", name, now - clock)
        clock = now

    entity = features.entity
    jobs = [_SampleJob(v, f.path, max(1, sum(x.rows for x in files[v.name]) // local.SAMPLE_TARGET))
            for v in views if v.name not in frames for f in files[v.name]]
    samples = run_tasks(spark, lambda j: tasks.sample_keys(entity, j.view, j.path, j.stride), jobs)
    bounds: dict[str, list[int] | list[bytes]] = {}
    for v in views:
        if v.name in frames:
            rows, mine = _sample_frame(entity, v, frames[v.name])
        else:
            rows = sum(f.rows for f in files[v.name])
            mine = [s for j, s in zip(jobs, samples, strict=True) if j.view.name == v.name]
        row_bytes = sum(s.spill_bytes for s in mine) / max(1, sum(s.spill_rows for s in mine))
        parts = max(opts.workers, math.ceil(rows * row_bytes / opts.partition_bytes))
        bounds[v.name] = Partitioner.from_sample(pa.concat_arrays([s.keys for s in mine]), parts).boundaries
    phase("sample")
    stats: dict[str, ViewStats] = {}
    known: dict[str, str] = {}
    sources: dict[str, list[FileEntry]] = {}
    for v in views:
        built = _build_view(spark, features, v, files.get(v.name, []), frames.get(v.name), bounds[v.name], stage,
                            out, opts)
        stats[v.name] = ViewStats(built.rows, [], local.definition_hash(v), built.dropped)
        known |= built.checksums
        if v.name in frames:
            sources[v.name] = [FileEntry(f"spark:dataframe/{v.name}", built.rows_in, f"rowsum64:{built.digest:016x}")]
        phase(f"view {v.name}")
    return stats, {Path(p).relative_to(out).as_posix(): c for p, c in known.items()}, sources


def _sample_frame(entity: EntityDef, view: ViewDef, df: DataFrame) -> tuple[int, list[tasks.Sample]]:
    """A DataFrame's row count and a Sample as tasks.sample_keys makes of a file: a bounded sample of
    its keys, and the spilled size of its first rows."""
    key_col = view.entity_column or entity.name
    rows = df.count()
    if rows == 0:
        raise SourceError(f"view {view.name!r}: {_frame_where(view.name)} has no rows")
    t = pa.int64() if entity.key_type == "int64" else pa.string()
    keys = df.select(key_col).sample(False, min(1.0, local.SAMPLE_TARGET / rows), seed=0).toArrow().column(0)
    keys = pc.drop_null(keys.combine_chunks() if keys.num_chunks else pa.array([], keys.type)).cast(t)
    head = df.select(*tasks.source_columns(entity, view)).limit(tasks.SIZE_ROWS).toArrow()
    batch = normalize(entity, view, head.combine_chunks().to_batches()[0], _frame_where(view.name))
    spilled = tasks.SpillRows(entity, view).of(batch, 0)
    return rows, [tasks.Sample(keys, spilled.nbytes, spilled.num_rows)]


@dataclass(frozen=True)
class _Built:
    rows: int
    dropped: int
    checksums: dict[str, str]
    rows_in: int = 0       # DataFrame views: rows read, and their digest
    digest: int = 0


def _build_view(spark: SparkSession, features: FeatureSet, view: ViewDef, files: list[SourceFile],
                frame: DataFrame | None, bounds: list[int] | list[bytes], stage: Path, out: Path,
                opts: local.LoadOptions) -> _Built:
    """One view: encode -> range-partition -> sort -> write, then ingest on the driver."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    entity = features.entity
    schema = stages.shuffle_schema(entity, view)
    ranges = len(bounds) + 1
    job = stages.RangeJob(view, entity, str(stage / "sst" / view.name),
                          str(out / "offline" / view.name) if tasks.spills_all_columns(view) else "",
                          tuple(f.path for f in files) if frame is None else (_frame_where(view.name),),
                          opts.compression)
    order = [F.col(stages.PART), F.col("__key")]
    if view.event_timestamp:   # the latest first; among equal timestamps the local loader's order
        order += [F.col(view.event_timestamp).desc(), F.col(stages.TASK), F.col(stages.SEQ)]
    if frame is None:
        encode = local._encode_tasks(features, view, files, stage / "spill" / view.name, out / "offline" / view.name,
                                     bounds, opts, opts.workers)
        task_ids = spark.createDataFrame([(i,) for i in range(len(encode))], "task int").repartition(len(encode))
        encoded = task_ids.mapInArrow(stages.encode_stage(encode, schema), from_arrow_schema(schema))
    else:
        offline = "" if tasks.spills_all_columns(view) else str(out / "offline" / view.name)
        encoded = frame.select(*tasks.source_columns(entity, view)).mapInArrow(
            stages.frame_stage(entity, view, bounds, _frame_where(view.name), offline, opts.batch_rows, schema),
            from_arrow_schema(schema))
    reports = (encoded
               .repartitionByRange(ranges, stages.PART)
               .sortWithinPartitions(*order)
               .mapInArrow(stages.write_stage(job), from_arrow_schema(stages.REPORT_SCHEMA))
               .collect())
    parsed = [(r["part"], json.loads(r["report"])) for r in reports]
    errors = sorted([(r.get("task", -1), r) for p, r in parsed if p == stages.REPORT_PART and "error" in r],
                    key=lambda x: x[0])
    if errors:
        stages.raise_reported(errors[0][1])
    by_range = sorted([(p, r) for p, r in parsed if p != stages.REPORT_PART], key=lambda x: x[0])
    for _, r in by_range:
        stages.raise_reported(r)
    checksums: dict[str, str] = {}
    for _, r in parsed:
        checksums |= r.get("checksums", {})
    ssts = [stages.sst_from_json(s) for _, r in by_range for s in r["ssts"]]
    checksums |= tasks.ingest_task(str(out / "online" / view.name), ssts)
    encoded_reports = [r for p, r in parsed if p == stages.REPORT_PART]
    return _Built(sum(r["rows"] for _, r in by_range), sum(r["dropped"] for _, r in by_range), checksums,
                  sum(r.get("rows_in", 0) for r in encoded_reports),
                  sum(r.get("digest", 0) for r in encoded_reports) & 0xFFFFFFFFFFFFFFFF)

