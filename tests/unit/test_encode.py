"""The vectorised ViewRow encoder against the generated ViewRow class: every type, nulls, NaN bits,
slices, and null bitmaps that span several bytes."""


import numpy as np
import pyarrow as pa
import pytest
from google.protobuf.internal import encoder

from quiver.loader.encode import ViewEncoder
from quiver.loader.normalize import normalize
from quiver.snapshot import EntityDef, FeatureDef, ViewDef
from quiver.snapshot.values import varint
from quiver.v1 import quiver_pb2
from support.canon import canon_column
from support.datasets import generated_column
from support.oracle import decode_view_row

ENTITY = EntityDef("k", "int64")


def every_type_view(embedding: int = 3) -> ViewDef:
    return ViewDef("v", "v.parquet", (
        FeatureDef("b", "bool"), FeatureDef("i32", "int32"), FeatureDef("i64", "int64"),
        FeatureDef("f32", "float32"), FeatureDef("f64", "float64"), FeatureDef("s", "string"),
        FeatureDef("by", "bytes"), FeatureDef("emb", "list<float32>", embedding), FeatureDef("ids", "list<int64>"),
        FeatureDef("s2", "string"), FeatureDef("f32b", "float32")))


def batch_for(view: ViewDef, n: int, seed: int = 0) -> pa.RecordBatch:
    """n >= 16 rows of the shared data set's values (edge values first, then random ones, some null)."""
    rng = np.random.default_rng(seed)
    cols: dict[str, pa.Array] = {"k": pa.array(np.arange(n, dtype=np.int64))}
    for f in view.features:
        cols[f.name] = generated_column(rng, f.to_json(), n)
    return normalize(ENTITY, view, pa.record_batch(cols), "test")


def check(view: ViewDef, batch: pa.RecordBatch) -> None:
    encoded = ViewEncoder(view).encode(batch)
    assert len(encoded) == batch.num_rows
    expected = {f.name: canon_column(f.type, batch.column(f.name)) for f in view.features}
    for r, data in enumerate(encoded.to_pylist()):
        got = decode_view_row(view, data)
        assert got == {name: col[r] for name, col in expected.items()}, f"row {r}"


@pytest.mark.parametrize("rows", [1, 16, 700])
def test_every_type_round_trips(rows: int) -> None:
    view = every_type_view()
    check(view, batch_for(view, max(rows, 16)).slice(0, rows))


def test_sliced_batches_encode_their_own_rows() -> None:
    view = every_type_view()
    batch = batch_for(view, 300)
    for start, length in [(1, 10), (13, 200), (299, 1)]:
        check(view, batch.slice(start, length))


def test_long_embedding_and_long_lists_use_multi_byte_lengths() -> None:
    view = ViewDef("v", "v.parquet", (FeatureDef("e", "list<float32>", 300), FeatureDef("l", "list<int64>"),
                                      FeatureDef("s", "string")))
    n = 4
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(n * 300, dtype=np.float32)), 300)
    lists = pa.array([list(range(2000)), [], None, [-(2**63)] * 17], pa.list_(pa.int64()))
    strings = pa.array(["é" * 70_000, "", None, "x"])
    batch = normalize(ENTITY, view, pa.record_batch({"k": pa.array(range(n), pa.int64()), "e": emb, "l": lists,
                                                     "s": strings}), "t")
    check(view, batch)


def test_null_bitmap_spans_bytes() -> None:
    view = ViewDef("v", "v.parquet", tuple(FeatureDef(f"f{i}", "int32") for i in range(19)))
    n = 40
    rng = np.random.default_rng(3)
    cols = {f"f{i}": pa.array(rng.integers(0, 9, n).astype(np.int32), mask=rng.random(n) < 0.5) for i in range(19)}
    batch = normalize(ENTITY, view, pa.record_batch({"k": pa.array(range(n), pa.int64()), **cols}), "t")
    check(view, batch)
    row = quiver_pb2.ViewRow.FromString(ViewEncoder(view).encode(batch)[0].as_py())
    assert len(row.nulls) == 3


def test_only_variable_width_features() -> None:
    view = ViewDef("v", "v.parquet", (FeatureDef("s", "string"), FeatureDef("l", "list<int64>")))
    batch = normalize(ENTITY, view, pa.record_batch({"k": pa.array([1, 2], pa.int64()), "s": pa.array(["a", None]),
                                                     "l": pa.array([None, [1]], pa.list_(pa.int64()))}), "t")
    check(view, batch)


def test_empty_batch() -> None:
    view = every_type_view()
    assert len(ViewEncoder(view).encode(batch_for(view, 20).slice(0, 0))) == 0


def test_bytes_equal_the_generated_serializer_for_plain_values() -> None:
    """Without NaN (which has no equality), the encoder's bytes parse to what ViewRow builds itself."""
    view = ViewDef("v", "v.parquet", (FeatureDef("b", "bool"), FeatureDef("f", "float64"), FeatureDef("s", "string"),
                                      FeatureDef("e", "list<float32>", 2), FeatureDef("l", "list<int64>")))
    batch = normalize(ENTITY, view, pa.record_batch({
        "k": pa.array([1, 2], pa.int64()), "b": pa.array([True, None]), "f": pa.array([-0.0, 2.5]),
        "s": pa.array(["日本", None]), "e": pa.array([[1.0, 2.0], None], pa.list_(pa.float32())),
        "l": pa.array([[5, -5], None], pa.list_(pa.int64()))}), "t")
    got = [quiver_pb2.ViewRow.FromString(x) for x in ViewEncoder(view).encode(batch).to_pylist()]
    want = [
        quiver_pb2.ViewRow(nulls=b"\x00", bools=[True], float64s=[-0.0], strings=["日本"],
                           float32_lists=[quiver_pb2.Float32List(values=[1.0, 2.0])],
                           int64_lists=[quiver_pb2.Int64List(values=[5, -5])]),
        quiver_pb2.ViewRow(nulls=bytes([0b11101]), bools=[False], float64s=[2.5], strings=[""],
                           float32_lists=[quiver_pb2.Float32List(values=[0.0, 0.0])],
                           int64_lists=[quiver_pb2.Int64List()]),
    ]
    assert got == want


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**35 - 1])
def test_varint(n: int) -> None:
    assert varint(n) == encoder._VarintBytes(n)
