"""Range partitions of the key space, so each partition's SST file covers a disjoint key range and
a duplicate key always lands in one partition."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_FLIP = np.uint64(1 << 63)


def int_order(keys: pa.Array) -> np.ndarray:
    """int64 keys as uint64 in the order of their encoded bytes."""
    return np.asarray(keys.to_numpy(zero_copy_only=False), dtype=np.int64).view(np.uint64) ^ _FLIP


def encoded_keys(keys: pa.Array) -> pa.Array:
    """RocksDB keys (quiver.snapshot.keys) for a whole array, as binary."""
    if pa.types.is_integer(keys.type):
        be = int_order(keys).astype(">u8")
        return pa.Array.from_buffers(pa.binary(8), len(keys), [None, pa.py_buffer(be)]).cast(pa.binary())
    return keys.cast(pa.binary())


class Partitioner:
    """Assigns keys to partitions 0..n-1 by boundaries drawn from a sample of the keys."""

    def __init__(self, boundaries: list[int] | list[bytes], is_int: bool) -> None:
        self.is_int = is_int
        self.boundaries = boundaries
        self._bounds = np.asarray(boundaries, dtype=np.uint64 if is_int else object)

    @property
    def count(self) -> int:
        return len(self.boundaries) + 1

    @classmethod
    def from_sample(cls, sample: pa.Array, partitions: int) -> "Partitioner":
        is_int = pa.types.is_integer(sample.type)
        if is_int:
            values = np.unique(int_order(sample))
        else:
            uniq = pc.unique(sample.cast(pa.binary()))
            values = np.asarray(pc.take(uniq, pc.sort_indices(uniq)).to_pylist(), dtype=object)
        # an empty sample has no boundaries to pick: one partition
        pick = [values[int(len(values) * i / partitions)] for i in range(1, partitions)] if len(values) else []
        bounds = sorted({int(p) for p in pick} if is_int else set(pick))
        return cls(bounds, is_int)

    def assign(self, keys: pa.Array) -> np.ndarray:
        if self.is_int:
            return np.searchsorted(self._bounds, int_order(keys), side="right")
        enc = np.asarray(keys.cast(pa.binary()).to_pylist(), dtype=object)
        return np.searchsorted(self._bounds, enc, side="right")
