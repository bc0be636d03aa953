"""Canonical values: how tests compare feature values. Floats are kept as their bits (("f32", bits),
("f64", bits)), so NaN payloads, signalling NaN and -0.0 compare exactly; lists become tuples; None is null."""

from __future__ import annotations

import struct
from typing import Any

import pyarrow as pa


def canon_f32(bits: int) -> tuple[str, int]:
    return ("f32", bits)


def canon_f64(bits: int) -> tuple[str, int]:
    return ("f64", bits)


def _f32_bits(x: float) -> int:
    return int(struct.unpack("<I", struct.pack("<f", x))[0])


def canon_default(ftype: str, value: Any) -> Any:
    """A features.yaml default in canonical form."""
    if ftype == "float32":
        return canon_f32(_f32_bits(value))
    if ftype == "float64":
        return canon_f64(int(struct.unpack("<Q", struct.pack("<d", value))[0]))
    if ftype == "list<float32>":
        return tuple(canon_f32(_f32_bits(x)) for x in value)
    if ftype == "list<int64>":
        return tuple(value)
    if ftype == "bytes":
        return value.encode()
    return value


def canon_column(ftype: str, col: pa.Array) -> list[Any]:
    """An Arrow column of a declared type in canonical form, None for nulls; never goes through a Python float."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if ftype in ("float32", "float64"):
        zero = pa.scalar(0, col.type)
        raw = col.fill_null(zero).to_numpy(zero_copy_only=False)
        bits = raw.view("<u4" if ftype == "float32" else "<u8")
        mk = canon_f32 if ftype == "float32" else canon_f64
        return [mk(int(b)) if ok else None for b, ok in zip(bits, valid, strict=True)]
    if ftype == "list<float32>":
        out: list[Any] = []
        for i, ok in enumerate(valid):
            if not ok:
                out.append(None)
                continue
            values = col[i].values  # a slice of the float32 child: read its bits directly
            bits = values.to_numpy(zero_copy_only=False).view("<u4")
            out.append(tuple(canon_f32(int(b)) for b in bits))
        return out
    if ftype == "list<int64>":
        return [tuple(v) if v is not None else None for v in col.to_pylist()]
    return col.to_pylist()


