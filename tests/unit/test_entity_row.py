"""A storage group's stored value (snapshot/FORMAT.md), checked against the generated EntityRow class:
the loader's vectorised assembler and splitter, the snapshot's one-entity reader, and the server's cut of
a subset of views out of the stored bytes."""

from types import SimpleNamespace

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from quiver.loader.entity_row import assemble, split
from quiver.service.errors import InvalidRequest
from quiver.service.reader import plan_response
from quiver.snapshot.values import view_rows
from quiver.v1 import quiver_pb2 as pb


def rows(n: int) -> list[pa.Array]:
    """Three views over n entities: small and large ViewRows (one- and two-byte length varints), gaps."""
    a = [pb.ViewRow(int32s=[i, -i]).SerializeToString() if i % 3 else None for i in range(n)]
    b = [pb.ViewRow(strings=["x" * (i * 50)]).SerializeToString() if i % 2 else None for i in range(n)]
    c = [pb.ViewRow(float64s=[i / 7]).SerializeToString() for i in range(n)]
    return [pa.array(x, pa.large_binary()) for x in (a, b, c)]


def test_assembled_values_are_entity_rows_that_split_back() -> None:
    views = rows(40)
    values = assemble(views)
    for i, raw in enumerate(values.to_pylist()):
        row = pb.EntityRow.FromString(raw)
        assert list(row.found) == [v[i].is_valid for v in views]
        assert [r.SerializeToString() for r in row.views] == [v[i].as_py() or b"" for v in views]
        assert view_rows(raw, 3) == [v[i].as_py() for v in views]
    for offset in (0, 5):  # a slice keeps its offset into the buffers
        back = split(values.slice(offset), 3)
        assert [b.to_pylist() for b in back] == [v.slice(offset).to_pylist() for v in views]


def test_split_refuses_values_of_another_view_count() -> None:
    values = assemble(rows(5))
    with pytest.raises(ValueError, match="found flags"):
        split(values, 2)
    with pytest.raises(ValueError, match="tag"):
        split(pa.array([b"\x12\x01\x01"], pa.large_binary()), 1)


def version(groups: dict[str, tuple[str, ...]]) -> SimpleNamespace:
    names = tuple(v for views in groups.values() for v in views)
    return SimpleNamespace(version="v", groups=groups, view_names=names,
                           group_of={v: g for g, views in groups.items() for v in views})


@pytest.mark.parametrize("views", [("a", "b", "c"), ("c", "a"), ("b",), ("a", "c", "x"), ("x", "c", "a", "b")])
def test_any_order_and_subset_is_cut_out_of_the_stored_bytes(views: tuple[str, ...]) -> None:
    stored = rows(12)
    g1 = assemble(stored).to_pylist()                       # group g1 holds a, b, c
    x = [pb.ViewRow(bools=[True]).SerializeToString() if i % 4 else None for i in range(12)]
    g2 = assemble([pa.array(x, pa.large_binary())]).to_pylist()  # group g2 holds x
    g2[3] = None                                            # an entity the group lacks has no key
    p = plan_response(version({"g1": ("a", "b", "c"), "g2": ("x",)}), views)  # type: ignore[arg-type]
    column = {"a": stored[0], "b": stored[1], "c": stored[2], "x": pa.array(x, pa.large_binary())}
    for i in range(12):
        value = b"".join(r.cut({"g1": g1, "g2": g2}[r.group][i]) for r in p.runs)
        row = pb.EntityRow.FromString(value)
        assert len(row.views) == len(row.found) == len(views)
        for j, v in enumerate(views):
            want = None if (v == "x" and i == 3) else column[v][i].as_py()
            assert row.found[j] == (want is not None), (i, v)
            assert row.views[j].SerializeToString() == (want or b""), (i, v)
    whole = plan_response(version({"g1": ("a", "b", "c")}), ("a", "b", "c"))  # type: ignore[arg-type]
    assert [r.picks for r in whole.runs] == [None]  # a whole group in stored order: spliced as stored


def test_a_view_named_twice_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"\['x', 'a'\] named more than once"):
        plan_response(version({"g1": ("a", "b", "c"), "g2": ("x",)}), ("x", "a", "b", "a", "x"))  # type: ignore[arg-type]


@pytest.mark.parametrize("key_type", ["int64", "string"])
def test_a_group_holds_the_union_of_its_views_keys_in_byte_order(key_type: str) -> None:
    from quiver.loader.partition import encoded_keys
    from quiver.loader.sst import group_values
    from quiver.snapshot import ViewDef

    def keys(ids: list[int]) -> pa.Array:
        raw = pa.array(ids, pa.int64()) if key_type == "int64" else pa.array([f"u{i:03d}" for i in ids])
        enc = encoded_keys(raw)
        return enc.take(pc.sort_indices(enc))  # each view's keys arrive sorted bytewise

    ids = {"a": [-5, 1, 2, 3, 7], "b": [1, 3, 100], "c": [-5, 1, 2, 3, 7]}
    columns = {}
    for name, xs in ids.items():
        k = keys(xs)
        columns[name] = (k, pa.array([pb.ViewRow(strings=[f"{name}:{x.hex()}"]).SerializeToString()
                                      for x in k.to_pylist()], pa.large_binary()))
    views = tuple(ViewDef(n, "", ()) for n in ("a", "b", "c", "d"))  # d: no rows in this range
    got_keys, values = group_values(views, columns)
    union = sorted({k for name in ids for k in columns[name][0].to_pylist()})
    assert got_keys.to_pylist() == union
    for k, raw in zip(union, values.to_pylist(), strict=True):
        row = pb.EntityRow.FromString(raw)
        for j, name in enumerate("abcd"):
            held = name in columns and k in columns[name][0].to_pylist()
            assert row.found[j] == held
            assert row.views[j].strings == ([f"{name}:{k.hex()}"] if held else [])
