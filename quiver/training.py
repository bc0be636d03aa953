"""Training reads: the exact rows a version served, from its offline Parquet, as Arrow tables.

    frame = training_frame("snapshots/")                       # CURRENT, every view, every entity
    frame = training_frame("snapshots/", version="20260101T000000Z-feb6c9165211", views=["profile"],
                           entities=[42, 7])
    joined = as_of_join(labels, "snapshots/", entity_column="user_id", time_column="ts")
    polars.from_arrow(joined); joined.to_pandas()

Columns: the entity key (named as the entity, e.g. `user_id`), then `<view>__<feature>` for every feature of
every chosen view, in schema order. Feature names are unique only within a view, so the view prefix keeps two
views' `score` apart and says where a column came from. A view with an event_timestamp column also contributes
`<view>__<that column>`, so a training job can see how fresh each row was.

Roots are local paths, `file://` URIs, or any URI `pyarrow.fs.FileSystem.from_uri` understands (s3://, gs://,
hdfs://), read through pyarrow: the offline files a manifest lists are the only data files read.
"""

import bisect
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from quiver.snapshot import FeatureDef, Manifest, ManifestError, ViewDef
from quiver.snapshot.manifest import DELETED

__all__ = ["SEPARATOR", "SnapshotFiles", "TrainingDataError", "arrow_type", "as_of_join", "column_name",
           "training_frame"]

SEPARATOR = "__"
_TS = pa.timestamp("us", tz="UTC")


class TrainingDataError(ValueError):
    """A training read that cannot be answered: unknown version or view, or labels of the wrong shape."""


def column_name(view: str, feature: str) -> str:
    return f"{view}{SEPARATOR}{feature}"


def arrow_type(f: FeatureDef) -> pa.DataType:
    """The Arrow type the offline Parquet stores a feature in."""
    if f.type == "list<float32>":
        return pa.list_(pa.field("element", pa.float32()), f.length)
    if f.type == "list<int64>":
        return pa.list_(pa.field("element", pa.int64()))
    return {"bool": pa.bool_(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
            "float64": pa.float64(), "string": pa.string(), "bytes": pa.binary()}[f.type]


def _micros(rfc3339: str) -> int:
    t = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return int(t.astimezone(UTC).timestamp() * 1_000_000)


class SnapshotFiles:
    """A snapshot root read through a pyarrow filesystem (local, file://, or any URI pyarrow resolves)."""

    def __init__(self, root_or_uri: str | Any) -> None:
        text = str(root_or_uri)
        if "://" in text:
            self.fs, path = pafs.FileSystem.from_uri(text)
        else:
            self.fs, path = pafs.LocalFileSystem(), str(root_or_uri)
        self.base = path.rstrip("/")
        self._manifests: dict[str, Manifest] = {}

    def _read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(f"{self.base}/{rel}") as f:
            data: bytes = f.read()
        return data

    def current(self) -> str:
        """The served version: CURRENT of a snapshot root, or LATEST of a store `quiver publish` writes
        (the version every replica syncs to)."""
        for name in ("CURRENT", "LATEST"):
            try:
                text = self._read(name).decode().strip()
            except FileNotFoundError:
                continue
            if text:
                return text
        raise TrainingDataError(f"{self.base}: no CURRENT (snapshot root) or LATEST (published store) version; "
                                "load or publish one, or name a version")

    def versions(self) -> list[str]:
        """Published version ids (a manifest present), in id order."""
        sel = pafs.FileSelector(f"{self.base}/versions", allow_not_found=True)
        dirs = [i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory]
        infos = self.fs.get_file_info([f"{self.base}/versions/{d}/manifest.json" for d in dirs])
        return sorted(d for d, i in zip(dirs, infos, strict=True) if i.type == pafs.FileType.File)

    def manifest(self, version: str) -> Manifest:
        m = self._manifests.get(version)
        if m is None:
            try:
                m = Manifest.from_json(json.loads(self._read(f"versions/{version}/manifest.json")))
            except FileNotFoundError:
                raise TrainingDataError(f"{self.base}: no published version {version!r}") from None
            except (KeyError, TypeError, ValueError) as e:
                raise ManifestError(f"{self.base}/versions/{version}/manifest.json: {e}") from None
            self._manifests[version] = m
        return m

    def offline(self, version: str, view: str, entity: str, ids: pa.Array | None = None) -> pa.Table:
        """A view's offline rows, only those whose key is in `ids` when given (pushed down to row groups).
        A delta version's: the base's rows but those its delta changes, then the delta's rows but the
        removed ones (snapshot/FORMAT.md "Delta versions")."""
        m = self.manifest(version)
        base = self._offline(m, view, entity, m.offline_files(view, delta=False), ids)
        deltas = m.offline_files(view, delta=True)
        if not deltas:
            return base
        delta = self._offline(m, view, entity, deltas, ids, [DELETED])
        base = base.filter(pc.invert(pc.is_in(base.column(entity), value_set=delta.column(entity))))
        kept = delta.filter(pc.invert(delta.column(DELETED))).drop_columns([DELETED])
        return pa.concat_tables([base, kept.cast(base.schema)])

    def refs(self, version: str) -> dict[str, str]:
        """A published store's references: files of `version` stored under another version (refs.json,
        distribution/store.py); a snapshot root has none."""
        try:
            files: dict[str, str] = json.loads(self._read(f"versions/{version}/refs.json"))["files"]
        except FileNotFoundError:
            return {}
        return files

    def _offline(self, m: Manifest, view: str, entity: str, files: list[str], ids: pa.Array | None,
                 extra: Sequence[str] = ()) -> pa.Table:
        version = m.version
        refs = self.refs(version) if files else {}
        paths = sorted(f"{self.base}/versions/{refs.get(p) or f'{version}/{p}'}" for p in files)
        vdef = m.schema.view(view)
        columns = [entity] + ([vdef.event_timestamp] if vdef.event_timestamp else []) + [f.name for f in
                                                                                          vdef.features]
        if not paths:
            return pa.table({c: pa.array([], _column_type(m, vdef, entity, c)) for c in columns})
        columns += list(extra)
        absent = [i.path for i in self.fs.get_file_info(paths) if i.type == pafs.FileType.NotFound]
        if absent:
            raise TrainingDataError(
                f"{self.base}: version {version} has no offline form here ({absent[0]} is missing): a root "
                f"synced with `quiver sync --online-only` holds only what the server reads; read training "
                f"data from the store it syncs from")
        dataset = ds.dataset(paths, format="parquet", filesystem=self.fs)
        filt = None if ids is None else ds.field(entity).isin(ids)
        return dataset.to_table(columns=columns, filter=filt)


def _column_type(m: Manifest, vdef: ViewDef, entity: str, column: str) -> pa.DataType:
    if column == entity:
        return pa.int64() if m.schema.entity.key_type == "int64" else pa.string()
    if column == vdef.event_timestamp:
        return _TS
    return arrow_type(vdef.feature(column))


def _views(m: Manifest, views: Sequence[str] | None) -> list[ViewDef]:
    if views is None:
        return list(m.schema.views)
    unknown = [v for v in views if v not in m.schema.view_names]
    if unknown:
        raise TrainingDataError(f"version {m.version} has no view(s) {', '.join(map(repr, unknown))} "
                                f"(it has {', '.join(m.schema.view_names)})")
    return [m.schema.view(v) for v in views]


def _key_array(m: Manifest, entities: Iterable[Any]) -> pa.Array:
    key_type = pa.int64() if m.schema.entity.key_type == "int64" else pa.string()
    return pa.array(list(entities), key_type)


def _prefixed(view: ViewDef, table: pa.Table, entity: str) -> pa.Table:
    return table.drop_columns([entity]).rename_columns([column_name(view.name, c) for c in table.column_names
                                                        if c != entity])


def training_frame(root_or_uri: str | Any, version: str | None = None, views: Sequence[str] | None = None,
                   entities: Iterable[int] | Iterable[str] | None = None) -> pa.Table:
    """Every chosen view of one version (default: CURRENT), joined on the entity key.

    One row per entity found in at least one chosen view (a full outer join: a view without the entity
    contributes nulls), sorted by key. `entities` keeps only those ids; the filter is pushed down to the
    Parquet row groups, so a short list does not read whole views."""
    snap = SnapshotFiles(root_or_uri)
    m = snap.manifest(version or snap.current())
    entity = m.schema.entity.name
    chosen = _views(m, views)
    ids = None if entities is None else _key_array(m, entities)
    tables = [snap.offline(m.version, v.name, entity, ids) for v in chosen]
    keys = pc.unique(pa.chunked_array([t.column(entity) for t in tables],
                                      _column_type(m, chosen[0], entity, entity) if chosen else pa.int64()))
    keys = keys.take(pc.sort_indices(keys))
    out = pa.table({entity: keys})
    for v, t in zip(chosen, tables, strict=True):
        picked = _prefixed(v, t, entity).take(pc.index_in(keys, value_set=t.column(entity)))
        for name in picked.column_names:
            out = out.append_column(name, picked.column(name))
    return out


# ---------------------------------------------------------------------------------------------
# Point-in-time joins
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Version:
    id: str
    as_of: int       # microseconds since the epoch, UTC
    created: int


def _timeline(snap: SnapshotFiles) -> list[_Version]:
    """Every published version, oldest first by as-of time; versions with equal as-of times by publish time."""
    out = []
    for v in snap.versions():
        m = snap.manifest(v)
        out.append(_Version(v, _micros(m.as_of), _micros(m.created)))
    return sorted(out, key=lambda v: (v.as_of, v.created, v.id))


def _label_columns(labels: pa.Table, entity_column: str, time_column: str,
                   key_type: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(entity ids in the key type, label times in µs UTC, valid mask)."""
    for c in (entity_column, time_column):
        if c not in labels.column_names:
            raise TrainingDataError(f"labels have no column {c!r} (they have {', '.join(labels.column_names)})")
    try:
        ids = pc.cast(labels.column(entity_column), pa.int64() if key_type == "int64" else pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TrainingDataError(f"labels column {entity_column!r}: not usable as {key_type} entity ids: {e}") from None
    col = labels.column(time_column)
    try:
        # naive timestamps are taken as UTC; sub-microsecond times are truncated (floored for times after 1970)
        times = pc.cast(col, _TS, safe=False) if pa.types.is_timestamp(col.type) else pc.cast(col, _TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TrainingDataError(f"labels column {time_column!r} ({col.type}): not a time: {e}") from None
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    times = times.combine_chunks() if isinstance(times, pa.ChunkedArray) else times
    valid = (ids.is_valid().to_numpy(zero_copy_only=False) & times.is_valid().to_numpy(zero_copy_only=False))
    micros = times.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    return ids, micros, valid


def as_of_join(labels: pa.Table | Any, root_or_uri: str | Any, entity_column: str, time_column: str,
               views: Sequence[str] | None = None) -> pa.Table:
    """The labels, in their order, with the features each entity had at each label's time.

    Exactly what is used, per label row (entity id, event time t) and view:

    1. The version: the newest one whose as-of time is at or before t (a version with as-of == t counts;
       among versions with equal as-of times, the last published). If none, the row's features are null.
    2. That version's row for the entity; if it has none, the view's features are null for this label.
    3. Views with an event_timestamp column only: if that row's event timestamp is after t, the row is not
       used, and the previous version (by as-of time) is tried the same way, until a row stamped at or before
       t is found (used), a version has no row for the entity or no such view (null), or none is left (null).
       A version keeps only each entity's latest row, so older rows are only found in older versions.

    Labels may be a pyarrow Table or anything `pyarrow.table()` accepts (a pandas DataFrame, a polars
    DataFrame via the Arrow C stream). The time column may be any Arrow timestamp (naive means UTC) or date.
    Null ids or times get null features. Output columns: the labels' columns, then `<view>__<feature>` (and
    `<view>__<event timestamp column>`) for the chosen views of the CURRENT version (default: all of them),
    typed as CURRENT declares them; a feature an older version lacks is null in rows that version answers.
    """
    table = labels if isinstance(labels, pa.Table) else pa.table(labels)
    snap = SnapshotFiles(root_or_uri)
    timeline = _timeline(snap)
    if not timeline:
        raise TrainingDataError(f"{snap.base}: no published versions")
    try:
        reference = snap.manifest(snap.current())
    except TrainingDataError:
        reference = snap.manifest(timeline[-1].id)
    entity = reference.schema.entity.name
    ids, times, valid = _label_columns(table, entity_column, time_column, reference.schema.entity.key_type)
    as_ofs = [v.as_of for v in timeline]
    # index into timeline of the version each label row starts from; -1: none
    start = np.array([bisect.bisect_right(as_ofs, int(t)) - 1 for t in times], dtype=np.int64)
    start[~valid] = -1
    out = table
    for vdef in _views(reference, views):
        joined = _join_view(snap, timeline, vdef, entity, ids, times, start, reference)
        for name in joined.column_names:
            out = out.append_column(name, joined.column(name))
    return out


def _join_view(snap: SnapshotFiles, timeline: list[_Version], vdef: ViewDef, entity: str, ids: pa.Array,
               times: np.ndarray, start: np.ndarray, reference: Manifest) -> pa.Table:
    columns = ([vdef.event_timestamp] if vdef.event_timestamp else []) + [f.name for f in vdef.features]
    schema = pa.schema([(c, _column_type(reference, vdef, entity, c)) for c in columns])
    pieces: list[pa.Table] = []
    offset = 0
    take = np.full(len(times), -1, dtype=np.int64)
    pending: dict[int, np.ndarray] = {}
    for i in np.unique(start[start >= 0]):
        pending[int(i)] = np.flatnonzero(start == i)
    for vi in range(len(timeline) - 1, -1, -1):
        rows = pending.pop(vi, None)
        if rows is None or not len(rows):
            continue
        m = snap.manifest(timeline[vi].id)
        if vdef.name not in m.schema.view_names:
            continue  # the view did not exist then: null
        row_ids = ids.take(pa.array(rows))
        found = snap.offline(m.version, vdef.name, entity, pc.unique(row_ids))
        at = pc.index_in(row_ids, value_set=found.column(entity)).fill_null(-1).to_numpy(zero_copy_only=False)
        at = at.astype(np.int64)
        hit = at >= 0
        if vdef.event_timestamp and vdef.event_timestamp in found.column_names:
            stamps = pc.cast(found.column(vdef.event_timestamp), _TS).cast(pa.int64())
            stamps_np = stamps.fill_null(np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)
            late = hit.copy()
            late[hit] = stamps_np[at[hit]] > times[rows[hit]]
            if late.any() and vi > 0:
                pending[vi - 1] = np.sort(np.concatenate([pending.get(vi - 1, np.empty(0, np.int64)), rows[late]]))
            hit &= ~late
        if not hit.any():
            continue
        used = found.take(pa.array(at[hit]))
        pieces.append(_conform(used, schema))
        take[rows[hit]] = offset + np.arange(int(hit.sum()))
        offset += int(hit.sum())
    data = pa.concat_tables(pieces) if pieces else schema.empty_table()
    idx = pa.array(take, mask=take < 0)
    picked = data.take(idx)
    return picked.rename_columns([column_name(vdef.name, c) for c in picked.column_names])


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """An older version's rows in the reference version's columns and types: missing features are null."""
    cols = []
    for field in schema:
        if field.name in t.column_names:
            c = t.column(field.name)
            if c.type != field.type:
                try:
                    c = c.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise TrainingDataError(f"feature {field.name!r}: stored as {c.type} in an older version, "
                                            f"{field.type} now; cannot convert: {e}") from None
            cols.append(c)
        else:
            cols.append(pa.nulls(len(t), field.type))
    return pa.table(cols, schema=schema)
