"""quiver/wire_columns.py against the protobuf runtime: messages written by protobuf, read column-wise."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa

from quiver import wire_columns as wc
from quiver.v1 import quiver_pb2 as pb


def _rows(n: int, seed: int) -> list[pb.ViewRow]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        r = pb.ViewRow(nulls=bytes([rng.randrange(256)]) if rng.random() < 0.5 else b"",
                       bools=[rng.random() < 0.5 for _ in range(3)],
                       int32s=[rng.randrange(-2**31, 2**31) for _ in range(2)],
                       int64s=[rng.randrange(-2**63, 2**63) for _ in range(rng.randrange(0, 3))],
                       float64s=[rng.random() for _ in range(2)],
                       strings=["x" * rng.randrange(0, 300), "é"],
                       float32_lists=[pb.Float32List(values=[rng.random() for _ in range(rng.randrange(0, 5))])])
        rows.append(r)
    return rows


def test_scan_finds_every_field_occurrence_as_protobuf_wrote_it() -> None:
    rows = _rows(300, 1)
    raw = [r.SerializeToString() for r in rows]
    buf, starts, ends, absent = wc.pack([*raw, None])
    assert absent.tolist() == [False] * 300 + [True]
    fields = wc.scan(buf, starts, ends)
    assert not fields.bad.any()
    for g, width, name in ((3, 4, "int32s"), (4, 8, "int64s"), (6, 8, "float64s"), (2, 1, "bools")):
        for i in range(3):
            values, present = wc.fixed(buf, *fields.span(g), i, width)
            for k, r in enumerate(rows):
                expected = list(getattr(r, name))
                assert present[k] == (i < len(expected)), (name, i, k)
                if i < len(expected):
                    want = np.array([expected[i]]).astype({1: "u1", 4: "<i4", 8: "<i8" if g == 4 else "<f8"}[width])
                    assert values[k] == want.view(f"<u{width}")[0], (name, i, k)
    for i in range(2):
        strings = wc.binary(buf, *fields.span(7, i)).to_pylist()
        assert strings[:300] == [r.strings[i].encode() for r in rows]
    start, length = fields.span(9)
    inner = wc.scan(buf, start, start + length)
    floats = wc.binary(buf, *inner.span(1)).to_pylist()
    assert floats[:300] == [np.array(r.float32_lists[0].values, "<f4").tobytes() for r in rows]
    assert wc.binary(buf, *fields.span(1)).to_pylist()[:300] == [r.nulls for r in rows]


def test_a_truncated_or_malformed_message_is_marked_bad_not_read_past() -> None:
    good = pb.ViewRow(int32s=[1, 2], strings=["abc"]).SerializeToString()
    buf, starts, ends, _ = wc.pack([good, good[:-1], b"\x0f\x00", good])
    fields = wc.scan(buf, starts, ends)
    assert fields.bad.tolist() == [False, True, True, False]
    assert wc.binary(buf, *fields.span(7)).to_pylist() == [b"abc", b"", b"", b"abc"]
    assert isinstance(wc.binary(buf, *fields.span(7)), pa.LargeBinaryArray)
