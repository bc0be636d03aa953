"""Stage 1b, derive: the rows of each computed view (features.yaml `expr`, `filter`, `agg`;
loader/transform.py), computed from its sources by the engine's SQL (DuckDB here, Spark SQL on the Spark
engine), finished in Arrow (the declared types, `avg`'s division) by the one code below, and written to the
load's staging folder. The spill stage then reads them as any view's source, so computed features are
encoded, checked, counted in statistics and written offline as every other feature is.

Both engines hand `finish` the same raw values in the same order (transform.py pins what differs), so
both write the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from quiver.loader.errors import DataError, SourceError
from quiver.loader.normalize import arrow_type
from quiver.loader.plan import utc_text
from quiver.loader.sources import SourceFile, open_parquet
from quiver.loader.transform import FILE, ROW, avg_parts, view_query
from quiver.snapshot.schema import EntityDef, FeatureDef, FeatureSet, ViewDef

ROW_GROUP = 1 << 17
BATCH_ROWS = 1 << 17


def anchored(features: FeatureSet, as_of: datetime) -> FeatureSet:
    """The definitions as this load computes them: an aggregated view's windows end at the as-of time,
    recorded in its definition (so a load at another time does not reuse its rows)."""
    end = utc_text(as_of)
    return replace(features, views=tuple(replace(v, window_end=end) if v.aggregated else v
                                         for v in features.views))


@dataclass(frozen=True)
class ComputeJob:
    """One computed view's query, for an engine to run (Engine.compute)."""

    entity: EntityDef
    view: ViewDef
    paths: tuple[str, ...]                 # the view's source files, in load order
    types: dict[str, pa.DataType]          # their columns
    as_of_us: int
    work: str                              # a folder the engine may write its own files in

    def sql(self, dialect: str, relation: str) -> str:
        return view_query(self.entity, self.view, dialect, relation, self.types, self.as_of_us)


def as_of_micros(as_of: datetime) -> int:
    return int(as_of.astimezone(UTC).timestamp()) * 1_000_000 + as_of.microsecond


def derive(compute: Callable[[ComputeJob], Iterator[pa.RecordBatch]], entity: EntityDef, views: list[ViewDef],
           files: dict[str, list[SourceFile]], as_of: datetime, stage: Path) -> dict[str, list[SourceFile]]:
    """Each computed view's rows, as the source files the spill stage reads instead of its own."""
    out = {}
    for view in views:
        paths = tuple(s.path for s in files[view.name])
        types = {f.name: f.type for f in open_parquet(paths[0], view).schema_arrow}
        folder = stage / "derived" / view.name
        folder.mkdir(parents=True, exist_ok=True)
        job = ComputeJob(entity, view, paths, types, as_of_micros(as_of), str(folder / "engine"))
        path = str(folder / "part-00000.parquet")
        rows = finish(entity, view, compute(job), path)
        if rows == 0:
            raise SourceError(f"view {view.name!r}: no row of its source {view.source!r} "
                              + ("has an event at or before the as-of time" if view.aggregated
                                 else "passes its filter"))
        md = pq.ParquetFile(path).metadata
        out[view.name] = [SourceFile(path, os.path.getsize(path), md.num_rows, md.num_row_groups)]
    return out


def output_schema(entity: EntityDef, view: ViewDef) -> pa.Schema:
    fields = [pa.field(view.entity_column or entity.name, pa.int64() if entity.key_type == "int64" else pa.string())]
    if view.event_timestamp:
        fields.append(pa.field(view.event_timestamp, pa.timestamp("us", tz="UTC")))
    return pa.schema(fields + [pa.field(f.column, arrow_type(f)) for f in view.features])


def finish(entity: EntityDef, view: ViewDef, batches: Iterator[pa.RecordBatch], path: str) -> int:
    """The engine's raw batches -> the view's rows in their declared types, written to `path` in row groups
    of ROW_GROUP rows whatever the engine's batches were (the spill stage's tasks are cut by row group, so
    both engines' rows must fall into the same ones); the rows."""
    schema = output_schema(entity, view)
    key = view.entity_column or entity.name
    rows = 0
    pending: list[pa.RecordBatch] = []
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for raw in batches:
            if raw.num_rows == 0:
                continue
            keys = raw.column(key).cast(schema.field(0).type)
            cols: list[pa.Array] = [keys]
            if view.event_timestamp:
                cols.append(raw.column(view.event_timestamp).cast(schema.field(1).type))
            for f in view.features:
                cols.append(_typed(_value(raw, f), f, keys, view))
            pending.append(pa.RecordBatch.from_arrays(cols, schema=schema))
            rows += raw.num_rows
            if sum(b.num_rows for b in pending) >= ROW_GROUP:
                table = pa.Table.from_batches(pending, schema)
                whole = table.num_rows - table.num_rows % ROW_GROUP
                writer.write_table(table.slice(0, whole), row_group_size=ROW_GROUP)
                pending = table.slice(whole).to_batches()
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=ROW_GROUP)
    return rows


def _value(raw: pa.RecordBatch, f: FeatureDef) -> pa.Array:
    if f.agg is not None and f.agg.fn == "avg":
        total, count = (raw.column(c) for c in avg_parts(f))
        return pc.divide(_float(total), count.cast(pa.float64()))   # 0 events: a null sum
    return raw.column(f.column)


def _float(col: pa.Array) -> pa.Array:
    """A decimal column as float64, correctly rounded: through its decimal text (Arrow's direct cast scales a
    binary value and can be an ulp off: 830.4 would read 830.4000000000001)."""
    return col.cast(pa.string()).cast(pa.float64()) if pa.types.is_decimal(col.type) else col.cast(pa.float64())


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "fraction"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    return str(t)


_FITS = {"bool": {"bool"}, "int32": {"int", "fraction"}, "int64": {"int", "fraction"},
         "float32": {"int", "fraction"}, "float64": {"int", "fraction"}, "string": {"string"}, "bytes": {"bytes"}}


def _typed(col: pa.Array, f: FeatureDef, keys: pa.Array, view: ViewDef) -> pa.Array:
    """A computed column in its declared type. Integers must fit exactly; a value that does not is refused,
    naming the view, the feature and a key."""
    target = arrow_type(f)
    if col.type.equals(target):
        return col
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), target)
    where = f"view {view.name!r}, feature {f.name!r}"
    if _kind(col.type) not in _FITS[f.type]:
        raise DataError(f"{where}: the expression gives {col.type}, declared {f.type}")
    if f.type in ("float32", "float64"):
        return _float(col).cast(target, safe=False)
    try:
        return col.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        i = _first_misfit(col, target)
        raise DataError(f"{where}: {col[i].as_py()!r} does not fit {f.type} (key {keys[i].as_py()!r}); declare a "
                        f"wider type or change the expression") from None


def _first_misfit(col: pa.Array, target: pa.DataType) -> int:
    """The first row a safe cast refuses, by halving: a slice fails if and only if it holds such a row."""
    lo, hi = 0, len(col)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            col.slice(lo, mid - lo).cast(target, safe=True)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


# -- the local engine's SQL: DuckDB over the Parquet sources -----------------------------------------


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def duckdb_compute(job: ComputeJob, threads: int) -> Iterator[pa.RecordBatch]:
    """The view's query on DuckDB, streamed as Arrow batches. A per-row view's rows carry their source
    position: (FILE, ROW) = (the file's index in load order, the row's index in its file)."""
    import duckdb

    # no time zone setting: times are compared as epoch microseconds, and DuckDB without its icu extension
    # (not bundled) knows only UTC
    con = duckdb.connect(config={"threads": threads, "preserve_insertion_order": True,
                                 "temp_directory": job.work})
    try:
        files = "[" + ", ".join(_sql_text(p) for p in job.paths) + "]"
        if job.view.aggregated:
            relation = f"read_parquet({files})"
        else:
            which = " ".join(f"WHEN {_sql_text(p)} THEN {i}" for i, p in enumerate(job.paths))
            relation = (f"(SELECT *, CASE filename {which} END AS {FILE}, file_row_number AS {ROW} "
                        f"FROM read_parquet({files}, filename = true, file_row_number = true))")
        try:
            reader = con.execute(job.sql("duckdb", relation)).to_arrow_reader(BATCH_ROWS)
            yield from reader
        except duckdb.Error as e:
            raise DataError(f"view {job.view.name!r}: computing its features failed (DuckDB): "
                            f"{str(e).splitlines()[0]}") from None
    finally:
        con.close()
