"""One view's rows compared column-wise: stored ViewRows (scanned with quiver/wire_columns.py, never
decoded row by row) against the offline rows of the same entities, feature by feature; and, to name
a mismatch, one row decoded on each side. Floats compare by their bits, so NaN equals NaN when the
bits match and a changed NaN payload is a mismatch."""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from quiver import wire_columns as wc
from quiver.snapshot import ViewDef
from quiver.v1 import quiver_pb2 as pb

_FIXED = {3: 4, 4: 8, 5: 4, 6: 8, 2: 1}   # ViewRow field -> bytes per value (bools: one-byte varints)
_LISTS = {9: 4, 10: 8}                     # list field -> bytes per element
_GROUPS = {2: "bools", 3: "int32s", 4: "int64s", 7: "strings", 8: "bytes_values"}


class FloatBits(NamedTuple):
    """A float by its bits: equal when the bits are equal (NaN payloads included)."""

    width: int   # 32 or 64
    bits: int

    def __str__(self) -> str:
        fmt, ifmt = ("<f", "<I") if self.width == 32 else ("<d", "<Q")
        value = struct.unpack(fmt, struct.pack(ifmt, self.bits))[0]
        return f"{value!r} (0x{self.bits:0{self.width // 4}x})" if value != value else repr(value)


def show(v: Any) -> str:
    if isinstance(v, FloatBits):
        return str(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return repr(v)


def offline_value(ftype: str, col: pa.Array, i: int) -> Any:
    v = col[i]
    if not v.is_valid:
        return None
    if ftype in ("float32", "float64"):
        width = 32 if ftype == "float32" else 64
        return FloatBits(width, int(col.slice(i, 1).to_numpy(zero_copy_only=False).view(f"<u{width // 8}")[0]))
    if ftype == "list<float32>":
        return tuple(FloatBits(32, int(b)) for b in v.values.to_numpy(zero_copy_only=False).view("<u4"))
    if ftype == "list<int64>":
        return tuple(v.as_py())
    return v.as_py()


def online_value(view: ViewDef, raw: bytes, feature: str) -> Any:
    """One feature of one stored ViewRow: floats by their bits (wire_columns), the rest by the
    protobuf runtime."""
    try:
        row = pb.ViewRow.FromString(raw)
    except Exception:
        return "<unparseable stored row>"
    buf, starts, ends, _ = wc.pack([raw])
    fields = wc.scan(buf, starts, ends)
    pos, (f, g, i) = next((p, x) for p, x in enumerate(view.layout()) if x[0].name == feature)
    if pos // 8 < len(row.nulls) and row.nulls[pos // 8] >> (pos % 8) & 1:
        return None
    absent = "<absent from the stored row>"
    if g in (5, 6):
        values, present = wc.fixed(buf, *fields.span(g), i, _FIXED[g])
        return FloatBits(_FIXED[g] * 8, int(values[0])) if present[0] else absent
    if g == 9:
        start, length = fields.span(9, i)
        if start[0] < 0:
            return absent
        inner = wc.scan(buf, start, start + length)
        s, n = inner.span(1)
        bits = np.frombuffer(buf[s[0]:s[0] + n[0]].tobytes() if s[0] >= 0 else b"", "<u4")
        return tuple(FloatBits(32, int(b)) for b in bits)
    try:
        return tuple(row.int64_lists[i].values) if g == 10 else getattr(row, _GROUPS[g])[i]
    except IndexError:
        return absent


def _offline_binary(ftype: str, col: pa.Array) -> pa.Array:
    """A column as one binary value per row, in the stored bytes' form: strings as UTF-8, lists as
    their elements' little-endian bytes."""
    if ftype in ("string", "bytes"):
        return pc.cast(col, pa.large_binary())
    width = _LISTS[9 if ftype == "list<float32>" else 10]
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    data = values.view(f"<u{width}").astype(f"<u{width}").tobytes()
    offsets = np.zeros(len(col) + 1, np.int64)
    np.cumsum(lengths * width, out=offsets[1:])
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(col),
                                            [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])


def _offline_bits(ftype: str, col: pa.Array) -> np.ndarray:
    """A fixed-width column as unsigned ints of the stored width (nulls as 0)."""
    filled = pc.fill_null(col, False if ftype == "bool" else 0).to_numpy(zero_copy_only=False)
    if ftype == "bool":
        return filled.astype(np.uint8)
    width = {"int32": 4, "int64": 8, "float32": 4, "float64": 8}[ftype]
    return filled.astype(f"<{'i' if ftype.startswith('int') else 'f'}{width}").view(f"<u{width}")


def compare_view(view: ViewDef, table: pa.Table, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray
                 ) -> list[tuple[int, str]]:
    """(row, feature) of every mismatch between the table's rows and the stored ViewRows at
    buf[starts[i]:ends[i]] (row i's). Each packed field and the null bitmap are gathered once for all of
    their features; "<unparseable stored row>" stands for a stored row that does not parse."""
    fields = wc.scan(buf, starts, ends)
    out: list[tuple[int, str]] = [(int(r), "<unparseable stored row>") for r in np.flatnonzero(fields.bad)]
    layout = view.layout()
    nulls = np.unpackbits(wc.matrix(buf, *fields.span(1), (len(layout) + 7) // 8), axis=1, bitorder="little")
    counts: dict[int, int] = {}
    for _, g, _ in layout:
        counts[g] = counts.get(g, 0) + 1
    packed = {}
    for g, n in counts.items():
        if g in _FIXED:
            start, length = fields.span(g)
            width = _FIXED[g]
            packed[g] = (wc.matrix(buf, start, length, n * width).view(f"<u{width}"),
                         np.where(start >= 0, length, 0) // width)
    for pos, (f, g, i) in enumerate(layout):
        col = table.column(f.name).combine_chunks()
        offline_null = col.is_null().to_numpy(zero_copy_only=False)
        online_null = nulls[:, pos].astype(bool)
        if g in packed:
            values, slots = packed[g]
            same = (slots > i) & (values[:, i] == _offline_bits(f.type, col))
        else:
            start, length = fields.span(g, i)
            present = start >= 0
            if g in _LISTS:  # a Float32List/Int64List message: its packed field 1 holds the elements
                inner = wc.scan(buf, np.where(present, start, 0), np.where(present, start + length, 0))
                start, length = inner.span(1)
                present &= ~inner.bad
            online = wc.binary(buf, start, length)
            same = present & pc.fill_null(pc.equal(online, _offline_binary(f.type, col)), False).to_numpy(
                zero_copy_only=False)
        wrong = (online_null != offline_null) | (~offline_null & ~same)
        out += [(int(r), f.name) for r in np.flatnonzero(wrong & ~fields.bad)]
    return out
