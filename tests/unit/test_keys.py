"""Entity keys as RocksDB keys: bytewise order is numeric order, and the loader's vectorised encoding
(quiver.loader.partition) gives exactly the bytes the server's scalar encoding looks up."""

import numpy as np
import pyarrow as pa
import pytest

from quiver.loader.partition import encoded_keys, int_order
from quiver.snapshot import decode_int64_key, encode_int64_key, encode_int64_keys, encode_string_key

EDGE = [-(2**63), -(2**63) + 1, -(2**32), -257, -256, -1, 0, 1, 255, 256, 2**32, 2**63 - 2, 2**63 - 1]


def test_int64_keys_sort_numerically_negatives_first() -> None:
    rng = np.random.default_rng(0)
    ids = EDGE + rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64, endpoint=True).tolist()
    assert sorted(ids, key=encode_int64_key) == sorted(ids)


@pytest.mark.parametrize("entity_id", EDGE)
def test_int64_key_round_trip(entity_id: int) -> None:
    key = encode_int64_key(entity_id)
    assert len(key) == 8 and decode_int64_key(key) == entity_id


def test_sign_bit_is_flipped_big_endian() -> None:
    assert encode_int64_key(0) == b"\x80" + b"\x00" * 7
    assert encode_int64_key(-1) == b"\x7f" + b"\xff" * 7
    assert encode_int64_key(-(2**63)) == b"\x00" * 8
    assert encode_int64_key(2**63 - 1) == b"\xff" * 8


def test_bulk_encodings_equal_the_scalar_one() -> None:
    ids = EDGE + list(range(-1000, 1000, 7))
    expected = [encode_int64_key(i) for i in ids]
    assert encode_int64_keys(ids) == expected
    assert encoded_keys(pa.array(ids, pa.int64())).to_pylist() == expected
    # int_order is the numeric order of the encoded bytes
    order = int_order(pa.array(ids, pa.int64()))
    assert [int(x).to_bytes(8, "big") for x in order] == expected


def test_string_keys_are_utf8_bytes() -> None:
    ids = ["", "a", "é", "日本語", "\U0001f9ed", "a\x00b"]
    assert [encode_string_key(s) for s in ids] == [s.encode("utf-8") for s in ids]
    assert encoded_keys(pa.array(ids)).to_pylist() == [encode_string_key(s) for s in ids]
