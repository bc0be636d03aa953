"""Protobuf wire format read column-wise: a batch of N serialized messages in one byte buffer is
scanned field by field for all N rows at once (numpy; one Python step per field slot, not per row).

Only what `quiver verify` needs to read stored EntityRows and ViewRows (snapshot/FORMAT.md) without
decoding them row by row: where each field occurrence lies, which it is, and gathers of fixed-width
slots and length-delimited payloads. Written from the protobuf encoding rules, independently of the
loader's encoder, so verify checks the loader rather than repeating it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

_PAD = 16  # zero bytes after the data (to a multiple of 8): reads past a truncated message stop there


def pack(values: list[bytes | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(buffer, starts, ends, absent) of messages laid end to end; None is an absent, empty message.
    Arrow copies the bytes in one C loop."""
    arr = pa.array(values, pa.large_binary())
    absent = arr.is_null().to_numpy(zero_copy_only=False)
    offsets = np.frombuffer(arr.buffers()[1], np.int64, len(arr) + 1, arr.offset * 8)
    data = arr.buffers()[2]
    size = int(offsets[-1])
    buf = np.zeros(size + _PAD - size % 8 + 8, np.uint8)
    if data is not None and size:
        buf[:size] = np.frombuffer(data, np.uint8, size)
    return buf, offsets[:-1].copy(), offsets[1:].copy(), absent


def _varint(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value, position after it) of the varint at each position (at most 10 bytes)."""
    value = np.zeros(len(pos), np.uint64)
    going = np.ones(len(pos), bool)
    size = np.zeros(len(pos), np.int64)
    for k in range(10):
        b = buf[np.minimum(pos + k, len(buf) - 1)].astype(np.uint64)
        value |= np.where(going, (b & np.uint64(0x7F)) << np.uint64(7 * k), np.uint64(0))
        size += going
        going &= (b & np.uint64(0x80)) != 0
        if not going.any():
            break
    return value, pos + size


@dataclass
class Fields:
    """Every field occurrence of N messages: its row, field number, payload start and length, ordered
    by (field, occurrence number among the row's fields of that number, row). `bad` marks rows that
    do not parse."""

    n: int
    row: np.ndarray
    start: np.ndarray
    length: np.ndarray
    slices: dict[tuple[int, int], tuple[int, int]]   # (field, occurrence) -> [lo, hi) in the arrays
    bad: np.ndarray

    def span(self, field: int, occurrence: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) per row of one occurrence of a field; start -1 where the row lacks it."""
        start = np.full(self.n, -1, np.int64)
        length = np.zeros(self.n, np.int64)
        lo, hi = self.slices.get((field, occurrence), (0, 0))
        start[self.row[lo:hi]] = self.start[lo:hi]
        length[self.row[lo:hi]] = self.length[lo:hi]
        return start, length


def scan(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Fields:
    """The fields of the messages buf[starts[i]:ends[i]]. A varint field's payload is its varint bytes,
    a length-delimited one's the bytes after the length, a fixed one's its 4 or 8 bytes."""
    n = len(starts)
    pos = starts.astype(np.int64).copy()
    bad = np.zeros(n, bool)
    rows, fields, pstarts, plens, steps = [], [], [], [], []
    live = np.flatnonzero(pos < ends)
    step = 0
    while live.size:
        p = pos[live]
        tag, p = _varint(buf, p)
        wire = (tag & np.uint64(7)).astype(np.int64)
        number = (tag >> np.uint64(3)).astype(np.int64)
        length = np.zeros(live.size, np.int64)
        varint = wire == 0
        if varint.any():
            _, after = _varint(buf, p[varint])
            length[varint] = after - p[varint]
        delimited = wire == 2
        if delimited.any():
            size, after = _varint(buf, p[delimited])
            length[delimited] = size.astype(np.int64)
            p[delimited] = after
        length[wire == 1] = 8
        length[wire == 5] = 4
        broken = ~np.isin(wire, (0, 1, 2, 5)) | (number == 0) | (p + length > ends[live]) | (length < 0)
        if broken.any():
            bad[live[broken]] = True
        ok = ~broken
        rows.append(live[ok])
        fields.append(number[ok])
        pstarts.append(p[ok])
        plens.append(length[ok])
        steps.append(np.full(int(ok.sum()), step, np.int64))
        pos[live] = np.where(ok, p + length, ends[live])
        live = live[ok & (pos[live] < ends[live])]
        step += 1
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    field = np.concatenate(fields) if fields else np.zeros(0, np.int64)
    start = np.concatenate(pstarts) if pstarts else np.zeros(0, np.int64)
    length = np.concatenate(plens) if plens else np.zeros(0, np.int64)
    order = np.lexsort((np.concatenate(steps) if steps else np.zeros(0, np.int64), field, row))
    row, field, start, length = row[order], field[order], start[order], length[order]
    first = np.ones(len(row), bool)
    first[1:] = (row[1:] != row[:-1]) | (field[1:] != field[:-1])
    occurrence = np.arange(len(row)) - np.maximum.accumulate(np.where(first, np.arange(len(row)), 0))
    order = np.lexsort((row, occurrence, field))
    row, field, start, length, occurrence = row[order], field[order], start[order], length[order], occurrence[order]
    cut = np.flatnonzero((field[1:] != field[:-1]) | (occurrence[1:] != occurrence[:-1])) + 1
    bounds = np.concatenate(([0], cut, [len(row)])) if len(row) else np.zeros(1, np.int64)
    slices = {(int(field[lo]), int(occurrence[lo])): (int(lo), int(hi))
              for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)}
    return Fields(n, row, start, length, slices, bad)


def fixed(buf: np.ndarray, start: np.ndarray, length: np.ndarray, index: int, width: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """(values as unsigned ints of `width` bytes, present) of slot `index` of packed fixed-width payloads."""
    present = (start >= 0) & (length >= (index + 1) * width)
    at = np.where(present, start + index * width, 0)
    # two aligned 8-byte words around each value, shifted together: two gathers, not `width`
    words = buf.view("<u8")
    shift = ((at % 8) * 8).astype(np.uint64)
    lo = words[at // 8] >> shift
    hi = np.where(shift > 0, words[at // 8 + 1] << (np.uint64(64) - shift), np.uint64(0))
    value = lo | hi
    if width < 8:
        value &= np.uint64((1 << (8 * width)) - 1)
    return value.astype(f"<u{width}"), present


def matrix(buf: np.ndarray, start: np.ndarray, length: np.ndarray, size: int) -> np.ndarray:
    """The first `size` bytes of each payload as an (N, size) array; zeros past a payload's end or
    where start is -1."""
    at = np.where(start >= 0, start, 0)[:, None] + np.arange(size)
    inside = np.arange(size) < np.where(start >= 0, length, 0)[:, None]
    return np.where(inside, buf[at], 0).astype(np.uint8)


def binary(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> pa.BinaryArray:
    """The payloads as one Arrow binary array (empty where start is -1)."""
    length = np.where(start >= 0, length, 0)
    offsets = np.zeros(len(length) + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    index = np.repeat(np.where(start >= 0, start, 0) - offsets[:-1], length) + np.arange(offsets[-1])
    data = buf[index].tobytes()
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(length),
                                            [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])
