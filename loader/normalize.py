"""Source record batches -> normalized batches: the declared types, defaults filled, checked.

Every failure names the file, the view, the column and, where one exists, an example key.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from quiver.loader.errors import DataError
from quiver.snapshot.schema import EntityDef, FeatureDef, ViewDef

ARROW_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bytes": pa.binary(),
    "list<int64>": pa.list_(pa.int64()),
}
EVENT_TS = pa.timestamp("us", tz="UTC")

# Source types accepted for each declared type: lossless widenings only.
_INTS32 = (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16())
_INTS64 = _INTS32 + (pa.int64(), pa.uint32())
_ACCEPT: dict[str, tuple[pa.DataType, ...]] = {
    "bool": (pa.bool_(),),
    "int32": _INTS32,
    "int64": _INTS64,
    "float32": (pa.float16(), pa.float32()),
    "float64": (pa.float16(), pa.float32(), pa.float64()),
    "string": (pa.string(), pa.large_string(), pa.string_view()),
    "bytes": (pa.binary(), pa.large_binary(), pa.binary_view()),
}


def arrow_type(f: FeatureDef) -> pa.DataType:
    if f.type == "list<float32>":
        return pa.list_(pa.float32(), f.length)
    return ARROW_TYPES[f.type]


def normalized_schema(entity: EntityDef, view: ViewDef) -> pa.Schema:
    fields = [pa.field(entity.name, pa.int64() if entity.key_type == "int64" else pa.string(), nullable=False)]
    if view.event_timestamp:
        fields.append(pa.field(view.event_timestamp, EVENT_TS))
    fields += [pa.field(f.name, arrow_type(f)) for f in view.features]
    return pa.schema(fields)


def _plain(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _accepts(f: FeatureDef, t: pa.DataType) -> bool:
    t = _plain(t)
    if f.type in _ACCEPT:
        return any(t.equals(a) for a in _ACCEPT[f.type])
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return False
    inner = t.value_type
    if f.type == "list<float32>":
        return inner.equals(pa.float32()) or inner.equals(pa.float16())
    return any(inner.equals(a) for a in _INTS64 + (pa.int64(),))


def check_source_schema(entity: EntityDef, view: ViewDef, schema: pa.Schema, where: str) -> None:
    """Raise DataError for a missing column or a column of the wrong type in one source file."""
    key_col = view.entity_column or entity.name
    names = set(schema.names)
    wanted = [key_col] + ([view.event_timestamp] if view.event_timestamp else []) + [f.column for f in view.features]
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DataError(f"{where}: view {view.name!r}: missing column(s) {missing}; the file has {schema.names}")
    kt = _plain(schema.field(key_col).type)
    ok_key = (any(kt.equals(a) for a in _INTS64) if entity.key_type == "int64"
              else any(kt.equals(a) for a in _ACCEPT["string"]))
    if not ok_key:
        raise DataError(f"{where}: view {view.name!r}: entity key column {key_col!r} is {kt}, "
                        f"the entity {entity.name!r} is keyed by {entity.key_type}")
    if view.event_timestamp:
        tt = schema.field(view.event_timestamp).type
        if not (pa.types.is_timestamp(tt) or pa.types.is_date(tt)):
            raise DataError(f"{where}: view {view.name!r}: event_timestamp column {view.event_timestamp!r} "
                            f"is {tt}, expected a timestamp")
    for f in view.features:
        t = schema.field(f.column).type
        if not _accepts(f, t):
            raise DataError(f"{where}: view {view.name!r}: column {f.column!r} (feature {f.name!r}) is {t}, "
                            f"declared {f.type}" + (f" of length {f.length}" if f.length else ""))


def _example_key(keys: pa.Array, mask: pa.Array) -> str:
    idx = pc.indices_nonzero(mask)
    return repr(keys[idx[0].as_py()].as_py()) if len(idx) else "?"


def _no_null_elements(f: FeatureDef, col: pa.Array, keys: pa.Array, where: str) -> None:
    """A null inside a list has no slot in a ViewRow: it would be stored as NaN or a garbage int64 online
    while the offline Parquet keeps the null, so the two forms would disagree."""
    values = pc.list_flatten(col)
    if not values.null_count:
        return
    # the parent row of each flattened value (null lists contribute none, whatever backs them)
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(col)), lengths)[values.is_null().to_numpy(zero_copy_only=False)]
    example = repr(keys[int(rows[0])].as_py())
    raise DataError(f"{where}column {f.column!r} (feature {f.name!r}): {values.null_count} null element(s) "
                    f"inside lists, e.g. key {example}; a list may be null as a whole, not element by element")


def _event_timestamps(view: ViewDef, ts: pa.Array, keys: pa.Array, where: str) -> pa.Array:
    try:
        return ts.cast(EVENT_TS)
    except pa.ArrowInvalid as e:
        example = "?"
        if pa.types.is_timestamp(ts.type) and ts.type.unit == "ns":
            ns = ts.cast(pa.int64()).to_numpy(zero_copy_only=False)
            example = _example_key(keys, pa.array(ns % 1000 != 0))
        raise DataError(f"{where}: view {view.name!r}: event_timestamp column {view.event_timestamp!r} ({ts.type}) "
                        f"does not fit the snapshot's microsecond UTC timestamps, e.g. key {example}: {e}") from None


def _embedding(f: FeatureDef, col: pa.Array, keys: pa.Array, where: str) -> pa.Array:
    _no_null_elements(f, col, keys, where)
    if pa.types.is_fixed_size_list(col.type) and col.type.list_size == f.length and col.type.value_type.equals(
            pa.float32()):
        return col
    lengths = pc.list_value_length(col)
    bad = pc.and_(pc.is_valid(lengths), pc.not_equal(lengths, f.length))
    if pc.any(bad).as_py():
        example = _example_key(keys, bad)
        n = pc.sum(bad).as_py()
        got = lengths.filter(bad)[0].as_py()
        raise DataError(f"{where}column {f.column!r} (feature {f.name!r}): "
                        f"{n} list(s) not of the declared length {f.length}, e.g. key {example} has {got}")
    values = col.flatten().cast(pa.float32())
    valid = pc.is_valid(col)
    if col.null_count == 0:
        return pa.FixedSizeListArray.from_arrays(values, f.length)
    # null rows get a slot of zeros; the null bit in the row records that they are null
    filled = pc.if_else(valid, col, pa.scalar([0.0] * f.length, type=col.type))
    return pa.FixedSizeListArray.from_arrays(filled.flatten().cast(pa.float32()), f.length,
                                             mask=pc.invert(valid))


def normalize(entity: EntityDef, view: ViewDef, batch: pa.RecordBatch, where: str) -> pa.RecordBatch:
    """The batch in the view's normalized schema; raises DataError naming where the data is wrong."""
    key_col = view.entity_column or entity.name
    keys = batch.column(key_col)
    if pa.types.is_dictionary(keys.type):
        keys = keys.dictionary_decode()
    if keys.null_count:
        row = pc.indices_nonzero(keys.is_null())[0].as_py()
        raise DataError(f"{where}: view {view.name!r}: entity key column {key_col!r} has {keys.null_count} "
                        f"null(s), first at row {row} of this batch")
    if entity.key_type == "int64":
        if keys.type.equals(pa.uint64()):
            raise DataError(f"{where}: view {view.name!r}: key column {key_col!r} is uint64, use int64")
        keys = keys.cast(pa.int64())
    else:
        keys = keys.cast(pa.string())
    columns = [keys]
    fields = normalized_schema(entity, view)
    if view.event_timestamp:
        ts = batch.column(view.event_timestamp)
        if ts.null_count:
            example = _example_key(keys, ts.is_null())
            raise DataError(f"{where}: view {view.name!r}: event_timestamp column {view.event_timestamp!r} "
                            f"is null for key {example}")
        columns.append(_event_timestamps(view, ts, keys, where))
    for f in view.features:
        col = batch.column(f.column)
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if f.type == "list<float32>":
            col = _embedding(f, col, keys, f"{where}: view {view.name!r}: ")
        elif f.type == "list<int64>":
            _no_null_elements(f, col, keys, f"{where}: view {view.name!r}: ")
            col = col.cast(pa.list_(pa.int64()))
        else:
            col = col.cast(ARROW_TYPES[f.type])
        if f.default is not None and col.null_count:
            default = f.default.encode() if f.type == "bytes" else f.default
            col = col.fill_null(pa.scalar(default, type=col.type))
        columns.append(col)
    return pa.RecordBatch.from_arrays(columns, schema=fields)
