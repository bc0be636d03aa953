"""`quiver load --engine spark` and `build_version`: loader/load.py's one orchestration on SparkEngine:
checksums and key samples as Spark tasks, and per storage group one Spark job for the spill and sst
stages (loader/spark/stages.py). DataFrames the caller holds are views' sources too.

Executors write into the load's staging folder: local disk under `local[N]`; on a cluster a volume the
driver and the executors share (deploy/k8s/overlays/load-spark). A failed or killed job publishes
nothing; the next load removes its staging folder.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from quiver.base.errors import QuiverError
from quiver.loader import load as engine
from quiver.loader import plan as planning
from quiver.loader.derive import BATCH_ROWS, ComputeJob
from quiver.loader.errors import DataError, DefinitionError, SourceError
from quiver.loader.normalize import check_source_schema
from quiver.loader.sources import SourceFile, inspect
from quiver.loader.spark import stages
from quiver.loader.spill import source_columns, spills_all_columns
from quiver.loader.transform import FILE, ROW
from quiver.snapshot import rocks
from quiver.snapshot.schema import FeatureSet

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

FRAME_ORDER = 1 << 20   # a DataFrame's errors sort after every file task of its group
# what a computed view's query runs under (loader/transform.py pins the rest in its SQL): ANSI mode (an
# overflow is an error, as on DuckDB) and the times Parquet holds as microseconds
COMPUTE_CONF = {"spark.sql.ansi.enabled": "true", "spark.sql.session.timeZone": "UTC",
                "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS"}


def load(spark: SparkSession, features_path: str | os.PathLike[str], root_or_uri: str | os.PathLike[str],
         options: engine.LoadOptions | None = None, *, work_root: str | os.PathLike[str] | None = None,
         endpoint: str | None = None, frames: dict[str, DataFrame] | None = None) -> engine.LoadResult:
    """`quiver load` (loader/load.py's `load`, a root or an object-store URI) with Spark doing the work."""
    return engine.load(features_path, root_or_uri, options, engine=SparkEngine(spark, frames or {}),
                       work_root=work_root, endpoint=endpoint)


def build_version(spark: SparkSession, features: str | os.PathLike[str] | FeatureSet,
                  frames_by_view: dict[str, DataFrame] | None, root_or_uri: str | os.PathLike[str], *,
                  as_of: datetime | None = None, compression: str = rocks.DEFAULT_COMPRESSION, reuse: bool = True,
                  allow_type_change: bool = False, allow_regroup: bool = False,
                  work_root: str | os.PathLike[str] | None = None, endpoint: str | None = None) -> engine.LoadResult:
    """The API for a PySpark job: build and publish one version. Views named in `frames_by_view` are
    read from the job's DataFrames (columns as features.yaml names them; `source` is not read), the
    others from their sources. A DataFrame view is always encoded (there is no file to compare for
    reuse); its manifest source is `spark:dataframe/<view>` with its row count and an order-free
    digest of its encoded rows, so the same rows give the same version id."""
    if isinstance(features, FeatureSet):
        features = features.source_file
    opts = engine.LoadOptions(workers=spark.sparkContext.defaultParallelism, as_of=as_of, compression=compression,
                              reuse=reuse, allow_type_change=allow_type_change, allow_regroup=allow_regroup)
    return load(spark, features, root_or_uri, opts, work_root=work_root, endpoint=endpoint,
                frames=frames_by_view or {})


def _guarded(call: tuple[Callable[[Any], Any], Any]) -> tuple[bool, Any]:
    fn, item = call
    try:
        return True, fn(item)
    except QuiverError as e:   # raised on the driver as itself, not as a failed Spark job
        return False, e


def _where(view: str) -> str:
    return f"frames_by_view[{view!r}]"


class SparkEngine(engine.Engine):
    """loader/load.py's Engine on Spark (ingest and RocksDB's own files on the driver). `frames`: views
    read from the caller's DataFrames."""

    def __init__(self, spark: SparkSession, frames: dict[str, DataFrame]) -> None:
        self.spark, self.frames = spark, frames

    def map(self, fn: Callable[[engine.T], engine.R], items: Sequence[engine.T]) -> list[engine.R]:
        """One Spark task per item, in one job."""
        if not items:
            return []
        calls = [(fn, item) for item in items]
        outcomes = self.spark.sparkContext.parallelize(calls, len(calls)).map(_guarded).collect()
        for ok, value in outcomes:
            if not ok:
                raise value
        return [value for _, value in outcomes]

    def inputs(self, features: FeatureSet, base_dir: Path) -> dict[str, list[SourceFile]]:
        """A DataFrame is checked as inspect() checks a file (its columns and their types; rows), and is a
        source of unknown size: it is identified by its rows once they are read."""
        from pyspark.sql.pandas.types import to_arrow_schema

        unknown = sorted(set(self.frames) - set(features.view_names))
        if unknown:
            raise DefinitionError(f"{features.source_file}: frames_by_view names view(s) {unknown} it does not "
                                  f"define; it defines {features.view_names}")
        files = {}
        for v in features.views:
            if v.name in self.frames and v.computed:
                raise DefinitionError(f"{features.source_file}: view {v.name!r} is computed (expr, filter or agg) "
                                      f"from its source files; frames_by_view gives a view's rows as they are")
            if v.name not in self.frames:
                files[v.name] = inspect(features.entity, v, base_dir)
                continue
            df = self.frames[v.name]
            check_source_schema(features.entity, v, to_arrow_schema(df.schema, timezone="UTC"), _where(v.name))
            rows = df.count()
            if rows == 0:
                raise SourceError(f"view {v.name!r}: {_where(v.name)} has no rows")
            files[v.name] = [SourceFile(f"spark:dataframe/{v.name}", -1, rows, 0)]
        return files

    def compute(self, job: ComputeJob) -> Iterator[pa.RecordBatch]:
        """The view's query on Spark SQL (ANSI mode), written by the executors, sorted, to the job's folder
        and read back part by part. A per-row view's files are read one DataFrame each, so each row carries
        its file's index in load order (FILE) and its row index in the file (ROW)."""
        from functools import reduce

        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException
        from pyspark.sql import functions as F

        if job.view.aggregated:
            df = self.spark.read.parquet(*job.paths)
        else:
            df = reduce(lambda a, b: a.unionByName(b), [
                self.spark.read.parquet(p).select("*", F.lit(i).cast("long").alias(FILE),
                                                  F.col("_metadata.row_index").alias(ROW))
                for i, p in enumerate(job.paths)])
        name = f"quiver_source_{job.view.name}"
        df.createOrReplaceTempView(name)
        before = {k: self.spark.conf.get(k, None) for k in COMPUTE_CONF}
        try:
            for k, v in COMPUTE_CONF.items():
                self.spark.conf.set(k, v)
            self.spark.sql(job.sql("spark", name)).write.mode("overwrite").parquet(job.work)
        except (PySparkException, Py4JJavaError) as e:
            raise DataError(f"view {job.view.name!r}: computing its features failed (Spark): "
                            f"{str(e).strip().splitlines()[0]}") from None
        finally:
            for k, old in before.items():
                if old is None:
                    self.spark.conf.unset(k)
                else:
                    self.spark.conf.set(k, old)
            self.spark.catalog.dropTempView(name)
        for part in sorted(Path(job.work).glob("part-*.parquet")):   # a global sort: in part order
            yield from pq.ParquetFile(part).iter_batches(BATCH_ROWS)

    def samples(self, jobs: list[planning.SampleJob]) -> list[planning.Sample]:
        """Files' samples as Spark tasks; a DataFrame's by Spark's own sample, on the driver."""
        framed = [j.measure and j.view.name in self.frames for j in jobs]
        files = iter(self.map(planning.sample, [j for j, f in zip(jobs, framed, strict=True) if not f]))
        return [self._sample_frame(j) if f else next(files) for j, f in zip(jobs, framed, strict=True)]

    def _sample_frame(self, job: planning.SampleJob) -> planning.Sample:
        t = pa.int64() if job.entity.key_type == "int64" else pa.string()
        df = self.frames[job.view.name]
        keys = df.select(job.view.entity_column or job.entity.name).sample(False, min(1.0, 1 / job.stride),
                                                                            seed=0).toArrow().column(0)
        keys = pc.drop_null(keys.combine_chunks() if keys.num_chunks else pa.array([], keys.type)).cast(t)
        head = df.select(*source_columns(job.entity, job.view)).limit(planning.SIZE_ROWS).toArrow().combine_chunks()
        return planning.measured(job.entity, job.view, keys, head.to_batches()[0], _where(job.view.name))

    def build(self, job: engine.BuildJob, phases: engine.Phases) -> dict[str, engine.GroupOutput]:
        """One Spark job per group; the first error in the local engine's order: every group's encode
        tasks first, then their key ranges."""
        outputs: dict[str, engine.GroupOutput] = {}
        errors: list[tuple[tuple[int, int, int], QuiverError]] = []
        for i, g in enumerate(job.groups):
            outputs[g.name], failed = self._build_group(job, g)
            errors += [((stage, i, order), e) for (stage, order), e in failed]
        if errors:
            raise min(errors, key=lambda e: e[0])[1]
        phases.end("sst")   # spill and sst are one Spark job per group
        return outputs

    def _build_group(self, job: engine.BuildJob, g: planning.GroupPlan
                     ) -> tuple[engine.GroupOutput, list[tuple[tuple[int, int], QuiverError]]]:
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_schema

        entity, encoded, tasks = job.features.entity, tuple(g.encode), job.range_tasks(g)
        schema = stages.shuffle_schema(entity, encoded)
        spark_schema = from_arrow_schema(schema)
        files = [t for v in encoded if v.name not in self.frames for t in job.encode_tasks(g, v)]
        jobs = [stages.EncodeJob(t.view, encoded.index(t.view), i, g.boundaries, t) for i, t in enumerate(files)]
        parts: list[DataFrame] = []
        if jobs:
            ids = self.spark.createDataFrame([(i,) for i in range(len(jobs))], "job int").repartition(len(jobs))
            parts.append(ids.mapInArrow(stages.spill_stage(jobs, entity, schema), spark_schema))
        for j, v in enumerate(encoded):
            if v.name in self.frames:
                offline = "" if spills_all_columns(v) else str(job.out / "offline" / v.name)
                frame = stages.EncodeJob(v, j, FRAME_ORDER, g.boundaries, None, _where(v.name), offline,
                                         job.files[v.name][0].rows, job.opts.statistics)
                parts.append(self.frames[v.name].select(*source_columns(entity, v)).mapInArrow(
                    stages.frame_stage(frame, entity, job.opts.batch_rows, schema), spark_schema))
        if g.kept:   # every range gets its task, rows read or not: its kept views' rows are in the previous version
            markers = [stages.report_batch(schema, None, p, stages.MARKER_VIEW).to_pylist()[0]
                       for p in range(len(tasks))]
            parts.append(self.spark.createDataFrame(markers, spark_schema))
        rows = parts[0]
        for p in parts[1:]:
            rows = rows.unionByName(p)
        # Spark partition p holds exactly key range p. repartitionByRange would sample its input first, and
        # that re-runs the whole spill stage (measured: twice the encoding at 10M users).
        keys = _partition_keys(self.spark, len(tasks))
        buckets = F.array(*[F.lit(k).cast("bigint") for k in [keys[0], *keys]])   # reports (range -1) go with range 0
        rows = rows.withColumn("__bucket", F.element_at(buckets, F.col(stages.PART) + 2))
        reports = (rows.repartition(len(tasks), "__bucket")
                   .sortWithinPartitions(F.col(stages.PART), F.col(stages.VIEW), F.col(stages.TASK), F.col(stages.SEQ))
                   .mapInArrow(stages.sst_stage(tasks, encoded), from_arrow_schema(stages.REPORT_SCHEMA))
                   .collect())
        out = engine.GroupOutput()
        errors: list[tuple[tuple[int, int], QuiverError]] = []
        for part, r in sorted(((r["part"], pickle.loads(r["report"])) for r in reports),
                              key=lambda x: (x[0], x[1].get("order", 0))):   # encode reports in task order
            if "error" in r:
                errors.append(((0, r["order"]) if part == stages.REPORT_PART else (1, part), r["error"]))
            elif "result" in r:
                out.results.append(r["result"])
            elif part == stages.REPORT_PART:
                out.add_encoded(r["view"], r["rows_in"], r["checksums"], r["statistics"], r["digest"])
        return out, errors


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
