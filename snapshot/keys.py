"""Entity keys as RocksDB keys, in byte order.

int64 ids become 8 big-endian bytes with the sign bit flipped, so that bytewise order (RocksDB's
comparator) is numeric order, negatives first. String ids are their UTF-8 bytes.
"""

import struct
from collections.abc import Iterable

_SIGN = 1 << 63
_BE = struct.Struct(">Q")


def encode_int64_key(entity_id: int) -> bytes:
    return _BE.pack((entity_id + _SIGN) & 0xFFFFFFFFFFFFFFFF)


def encode_int64_keys(entity_ids: Iterable[int]) -> list[bytes]:
    pack = _BE.pack
    return [pack((i + _SIGN) & 0xFFFFFFFFFFFFFFFF) for i in entity_ids]


def decode_int64_key(key: bytes) -> int:
    return _BE.unpack(key)[0] - _SIGN


def encode_string_key(entity_id: str) -> bytes:
    return entity_id.encode("utf-8")
