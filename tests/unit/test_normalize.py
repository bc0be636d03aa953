"""Source batches -> the declared types: lossless widenings accepted, defaults filled, bad data named."""

import datetime

import numpy as np
import pyarrow as pa
import pytest

from quiver.loader.errors import DataError
from quiver.loader.normalize import check_source_schema, normalize, normalized_schema
from quiver.snapshot import EntityDef, FeatureDef, ViewDef

ENTITY = EntityDef("k", "int64")


def one(ftype: str, column: pa.Array, **kw: object) -> pa.Array:
    f = FeatureDef("x", ftype, **kw)  # type: ignore[arg-type]
    view = ViewDef("v", "v.parquet", (f,))
    keys = pa.array(range(len(column)), pa.int64())
    batch = pa.record_batch({"k": keys, "x": column})
    check_source_schema(ENTITY, view, batch.schema, "f.parquet")
    out = normalize(ENTITY, view, batch, "f.parquet")
    assert out.schema == normalized_schema(ENTITY, view)
    return out.column("x")


@pytest.mark.parametrize(("ftype", "column", "expected"), [
    ("int32", pa.array([-128, 127], pa.int8()), [-128, 127]),
    ("int32", pa.array([65535], pa.uint16()), [65535]),
    ("int64", pa.array([2**32 - 1], pa.uint32()), [2**32 - 1]),
    ("float32", pa.array([np.float16(1.5)], pa.float16()), [1.5]),
    ("float64", pa.array([0.25], pa.float32()), [0.25]),
    ("string", pa.array(["é", None], pa.large_string()), ["é", None]),
    ("string", pa.array(["a", "b", "a"]).dictionary_encode(), ["a", "b", "a"]),
    ("string", pa.array(["v"], pa.string_view()), ["v"]),
    ("bytes", pa.array([b"\x00"], pa.large_binary()), [b"\x00"]),
    ("list<int64>", pa.array([[1, 2], [], None], pa.list_(pa.int32())), [[1, 2], [], None]),
    ("list<int64>", pa.array([[2**40]], pa.large_list(pa.int64())), [[2**40]]),
])
def test_lossless_widenings(ftype: str, column: pa.Array, expected: list[object]) -> None:
    assert one(ftype, column).to_pylist() == expected


def test_embedding_from_variable_lists_keeps_null_rows_null() -> None:
    out = one("list<float32>", pa.array([[1.0, 2.0], None], pa.list_(pa.float32())), length=2)
    assert out.type == pa.list_(pa.float32(), 2)
    assert out.to_pylist() == [[1.0, 2.0], None]


@pytest.mark.parametrize(("ftype", "column", "default", "expected"), [
    ("bool", pa.array([None, False]), True, [True, False]),
    ("int32", pa.array([None, 1], pa.int32()), -(2**31), [-(2**31), 1]),
    ("int64", pa.array([None], pa.int64()), 2**63 - 1, [2**63 - 1]),
    ("float32", pa.array([None, float("nan")], pa.float32()), 1.5, [1.5, "nan"]),
    ("float64", pa.array([None], pa.float64()), float("-inf"), [float("-inf")]),
    ("string", pa.array([None, ""]), "n/ä", ["n/ä", ""]),
    ("bytes", pa.array([None], pa.binary()), "zz", [b"zz"]),
    ("list<int64>", pa.array([None, []], pa.list_(pa.int64())), [1, 2], [[1, 2], []]),
])
def test_defaults_replace_nulls_only(ftype: str, column: pa.Array, default: object, expected: list[object]) -> None:
    got = one(ftype, column, default=default).to_pylist()
    assert got[0] == expected[0]
    if expected[1:] == ["nan"]:
        assert got[1] != got[1]  # NaN is a value, not a null: the default does not replace it
    else:
        assert got[1:] == expected[1:]


def test_embedding_default() -> None:
    out = one("list<float32>", pa.array([None, [3.0, 4.0]], pa.list_(pa.float32())), length=2, default=[0.5, -1])
    assert out.to_pylist() == [[0.5, -1.0], [3.0, 4.0]] and out.null_count == 0


def test_dictionary_encoded_and_widened_keys() -> None:
    view = ViewDef("v", "v.parquet", (FeatureDef("x", "int64"),))
    batch = pa.record_batch({"k": pa.array([5, 6], pa.int32()), "x": pa.array([1, 2], pa.int64())})
    assert normalize(ENTITY, view, batch, "f").column(0).type == pa.int64()
    skey = EntityDef("k", "string")
    batch = pa.record_batch({"k": pa.array(["a", "b"]).dictionary_encode(), "x": pa.array([1, 2], pa.int64())})
    check_source_schema(skey, view, batch.schema, "f")
    assert normalize(skey, view, batch, "f").column(0).to_pylist() == ["a", "b"]


def test_entity_column_and_source_column_are_renamed() -> None:
    view = ViewDef("v", "v.parquet", (FeatureDef("x", "int64", source_column="x_src"),), entity_column="uid")
    batch = pa.record_batch({"uid": pa.array([5], pa.int64()), "x_src": pa.array([1], pa.int64())})
    check_source_schema(ENTITY, view, batch.schema, "f")
    assert normalize(ENTITY, view, batch, "f").schema.names == ["k", "x"]


def test_event_timestamps_of_other_units_and_dates() -> None:
    view = ViewDef("v", "v.parquet", (FeatureDef("x", "int64"),), event_timestamp="ts")
    for ts in (pa.array([1], pa.timestamp("s")), pa.array([1000], pa.timestamp("ns", tz="Europe/Paris")),
               pa.array([datetime.date(2026, 1, 1)], pa.date32())):
        batch = pa.record_batch({"k": pa.array([1], pa.int64()), "ts": ts, "x": pa.array([1], pa.int64())})
        check_source_schema(ENTITY, view, batch.schema, "f")
        assert normalize(ENTITY, view, batch, "f").column(1).type == pa.timestamp("us", tz="UTC")


@pytest.mark.parametrize(("batch", "message"), [
    (pa.record_batch({"k": pa.array([1, None], pa.int64()), "x": pa.array([1, 2], pa.int64())}),
     "entity key column 'k' has 1 null(s), first at row 1"),
    (pa.record_batch({"k": pa.array([1, 2], pa.int64()), "ts": pa.array([1, None], pa.timestamp("us")),
                      "x": pa.array([1, 2], pa.int64())}), "event_timestamp column 'ts' is null for key 2"),
])
def test_null_keys_and_timestamps(batch: pa.RecordBatch, message: str) -> None:
    view = ViewDef("v", "v.parquet", (FeatureDef("x", "int64"),),
                   event_timestamp="ts" if "ts" in batch.schema.names else "")
    with pytest.raises(DataError, match="^f.parquet: view 'v': ") as e:
        normalize(ENTITY, view, batch, "f.parquet")
    assert message in str(e.value)


@pytest.mark.parametrize(("ftype", "column"), [
    ("int32", pa.array([1], pa.int64())),
    ("int32", pa.array([1], pa.uint32())),
    ("int64", pa.array([1], pa.uint64())),
    ("float32", pa.array([1.0], pa.float64())),
    ("float64", pa.array([1], pa.int64())),
    ("bool", pa.array([1], pa.int8())),
    ("string", pa.array([b"a"], pa.binary())),
    ("bytes", pa.array(["a"])),
    ("list<int64>", pa.array([[1.0]])),
    ("list<int64>", pa.array([[1]], pa.list_(pa.uint64()))),
    ("list<float32>", pa.array([[1.0]], pa.list_(pa.float64()))),
])
def test_wrong_types_are_rejected_before_reading(ftype: str, column: pa.Array) -> None:
    kw = {"length": 1} if ftype == "list<float32>" else {}
    with pytest.raises(DataError, match=r"^f.parquet: view 'v': column 'x' \(feature 'x'\) is .*, declared"):
        one(ftype, column, **kw)
