"""THE independent ViewRow decoder of the test suite: every test that decodes stored or sent values
decodes them here.

It is written from snapshot/FORMAT.md and proto/quiver/v1/quiver.proto alone, sharing no code with the
decoders under test (quiver.client, quiver.verify, the Rust client) nor with the encoder (loader/encode.py)
or the schema's own layout (quiver.snapshot's ViewDef.layout): the field each type goes to, and a feature's
index in it, are derived below from the format's table. Float bits are read from the wire by hand, so a
signalling NaN or a NaN payload that a Python float would quieten compares exactly; everything else goes
through the generated ViewRow class, which is protobuf's own parser, not quiver's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from quiver.v1 import quiver_pb2
from support.canon import canon_f32, canon_f64

# FORMAT.md, "ViewRow": the type decides the field
TYPE_FIELD = {"bool": 2, "int32": 3, "int64": 4, "float32": 5, "float64": 6, "string": 7, "bytes": 8,
              "list<float32>": 9, "list<int64>": 10}


class FeatureLike(Protocol):
    name: str
    type: str
    length: int


class ViewLike(Protocol):
    @property
    def features(self) -> Iterable[FeatureLike]: ...


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def wire_fields(buf: bytes) -> dict[int, list[bytes]]:
    """A protobuf message's length-delimited and fixed-width payloads by field number, in order (varint
    fields are skipped); for reading float bits, and for cutting a response into its rows and views."""
    out: dict[int, list[bytes]] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if wt == 0:
            _, pos = _varint(buf, pos)
            continue
        size = {1: 8, 5: 4}.get(wt)
        if size is None:
            assert wt == 2, f"wire type {wt}"
            size, pos = _varint(buf, pos)
        out.setdefault(field, []).append(buf[pos:pos + size])
        pos += size
    return out


def layout(view: ViewLike) -> list[tuple[FeatureLike, int, int]]:
    """(feature, ViewRow field, index in that field) in schema order: the index is the feature's rank among
    the view's features of the same type."""
    seen: dict[int, int] = {}
    out = []
    for f in view.features:
        field = TYPE_FIELD[f.type]
        out.append((f, field, seen.get(field, 0)))
        seen[field] = seen.get(field, 0) + 1
    return out


def _zero(f: FeatureLike) -> Any:
    return {"bool": False, "int32": 0, "int64": 0, "float32": canon_f32(0), "float64": canon_f64(0),
            "string": "", "bytes": b"", "list<int64>": ()}.get(f.type, (canon_f32(0),) * f.length)


def decode_view_row(view: ViewLike, data: bytes) -> dict[str, Any]:
    """One serialized ViewRow in canonical form (support.canon) by feature name; None for a null. Fails
    when a field holds more or fewer slots than the schema's features of its type, when a list<float32>
    has another length than declared, or when a null's slot holds anything but its type's zero value."""
    row = quiver_pb2.ViewRow.FromString(data)
    raw = wire_fields(data)
    f32 = np.frombuffer(b"".join(raw.get(5, [])), "<u4")
    f64 = np.frombuffer(b"".join(raw.get(6, [])), "<u8")
    lists_f32 = [np.frombuffer(b"".join(wire_fields(m).get(1, [])), "<u4") for m in raw.get(9, [])]
    sizes = {2: len(row.bools), 3: len(row.int32s), 4: len(row.int64s), 5: len(f32), 6: len(f64),
             7: len(row.strings), 8: len(row.bytes_values), 9: len(row.float32_lists), 10: len(row.int64_lists)}
    places = layout(view)
    counts: dict[int, int] = {}
    for _, field, _ in places:
        counts[field] = counts.get(field, 0) + 1
    for field, size in sizes.items():
        assert size == counts.get(field, 0), f"field {field}: {size} slots, the schema has {counts.get(field, 0)}"
    assert len(lists_f32) == len(row.float32_lists)
    scalars = {2: row.bools, 3: row.int32s, 4: row.int64s, 7: row.strings, 8: row.bytes_values}
    out: dict[str, Any] = {}
    for pos, (f, field, i) in enumerate(places):
        value: Any
        if field == 5:
            value = canon_f32(int(f32[i]))
        elif field == 6:
            value = canon_f64(int(f64[i]))
        elif field == 9:
            assert len(lists_f32[i]) == f.length, f"{f.name}: {len(lists_f32[i])} values, declared {f.length}"
            value = tuple(canon_f32(int(b)) for b in lists_f32[i])
        elif field == 10:
            value = tuple(row.int64_lists[i].values)
        else:
            value = scalars[field][i]
        is_null = bool(row.nulls[pos // 8] >> (pos % 8) & 1) if pos // 8 < len(row.nulls) else False
        if is_null:
            assert value == _zero(f), f"{f.name}: null slot holds {value!r}"
            value = None
        out[f.name] = value
    return out


def decode_int64_key(key: bytes) -> int:
    """FORMAT.md, "Keys": 8 bytes big-endian of the id with its sign bit flipped."""
    assert len(key) == 8, key
    unsigned = int.from_bytes(key, "big") ^ (1 << 63)
    return unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned


def decode_key(key_type: str, key: bytes) -> Any:
    return decode_int64_key(key) if key_type == "int64" else key.decode("utf-8")


def response_views(raw_response: bytes) -> list[list[bytes]]:
    """A serialized GetFeaturesResponse cut into rows (field 3), each into its views' ViewRow bytes exactly
    as sent (EntityRow field 1)."""
    return [wire_fields(row).get(1, []) for row in wire_fields(raw_response).get(3, [])]
