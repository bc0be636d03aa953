"""Protobuf wire pieces built for whole Arrow arrays at once: varints (one value's varint is
snapshot/values.py's), and row-wise concatenation of byte strings. Shared by the ViewRow encoder and the
EntityRow assembler, so neither loops over rows."""

import numpy as np
import pyarrow as pa

__all__ = ["binary_parts", "concat_rows", "const", "ragged", "varint_matrix"]


def varint_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows x 5) bytes and their lengths: the varints of `values` (each < 2**35)."""
    v = values.astype(np.uint64)
    out = np.zeros((len(v), 5), dtype=np.uint8)
    n = np.ones(len(v), dtype=np.int64)
    for i in range(5):
        byte = (v & np.uint64(0x7F)).astype(np.uint8)
        v = v >> np.uint64(7)
        more = v > 0
        out[:, i] = byte | (more.astype(np.uint8) << 7)
        n += more
    return out, n


def ragged(pieces: list[tuple[np.ndarray, np.ndarray]]) -> pa.Array:
    """Concatenate per row several (rows x k) byte matrices, each cut to its per-row length."""
    mats = np.concatenate([m for m, _ in pieces], axis=1)
    lens = [n for _, n in pieces]
    mask = np.concatenate([np.arange(m.shape[1])[None, :] < n[:, None] for m, n in pieces], axis=1)
    data = mats[mask]
    offsets = np.zeros(len(mats) + 1, dtype=np.int64)
    np.cumsum(np.sum(lens, axis=0), out=offsets[1:])
    return pa.Array.from_buffers(pa.large_binary(), len(mats), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) of a large_binary array, offsets relative to data."""
    _, obuf, dbuf = arr.buffers()
    offsets = np.frombuffer(obuf, dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(dbuf, dtype=np.uint8) if dbuf is not None else np.zeros(0, np.uint8)
    return offsets, data


def concat_rows(parts: list[pa.Array]) -> pa.Array:
    """Row-wise concatenation of large_binary arrays of equal length."""
    split = [binary_parts(p) for p in parts]
    lens = [np.diff(o) for o, _ in split]
    rows = len(parts[0])
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.sum(lens, axis=0), out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.uint8)
    start = offsets[:-1].copy()
    for (o, d), n in zip(split, lens, strict=True):
        dest = np.repeat(start - o[:-1], n) + np.arange(o[0], o[-1])
        out[dest] = d[o[0]:o[-1]]
        start += n
    return pa.Array.from_buffers(pa.large_binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(out)])


def const(byte_values: bytes, rows: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.frombuffer(byte_values, dtype=np.uint8)
    return np.broadcast_to(m, (rows, len(m))), np.full(rows, len(m), dtype=np.int64)
