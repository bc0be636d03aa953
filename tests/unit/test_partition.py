"""Key-range partitions: disjoint, in key order, and a key always lands in one partition."""

import numpy as np
import pyarrow as pa
import pytest

from quiver.loader.partition import Partitioner, encoded_keys


@pytest.mark.parametrize("key_type", ["int64", "string"])
@pytest.mark.parametrize("partitions", [1, 2, 7])
def test_partitions_follow_key_order(key_type: str, partitions: int) -> None:
    rng = np.random.default_rng(partitions)
    if key_type == "int64":
        keys = pa.array(rng.integers(-(2**63), 2**63 - 1, 5000, dtype=np.int64).tolist() + [-(2**63), 2**63 - 1])
    else:
        keys = pa.array(["".join(rng.choice(list("aé日Z0"), int(rng.integers(0, 6)))) for _ in range(5000)])
    sample = keys.take(pa.array(np.arange(0, len(keys), 3)))
    part = Partitioner.from_sample(sample, partitions)
    # the sample has far more distinct keys than partitions: every range must take a real share of it
    assert part.count == partitions
    shares = np.bincount(part.assign(sample), minlength=part.count)
    distinct = len(set(encoded_keys(sample).to_pylist()))
    assert shares.min() >= distinct // (2 * partitions), f"uneven ranges: {shares.tolist()}"
    assigned = part.assign(keys)
    assert assigned.min() >= 0 and assigned.max() < part.count
    enc = encoded_keys(keys).to_pylist()
    by_key = sorted(zip(enc, assigned.tolist(), strict=True))
    assert [p for _, p in by_key] == sorted(p for _, p in by_key), "a partition is not a contiguous key range"
    # every occurrence of a key goes to the same partition
    seen: dict[bytes, int] = {}
    for k, p in zip(enc, assigned.tolist(), strict=True):
        assert seen.setdefault(k, p) == p


def test_fewer_distinct_keys_than_partitions() -> None:
    """One distinct key can split the key space once at most: no empty ranges (and so no empty SST tasks)."""
    part = Partitioner.from_sample(pa.array([5, 5, 5], pa.int64()), 8)
    assert part.count <= 2
    assigned = part.assign(pa.array([5, -1, 6, 5], pa.int64())).tolist()
    assert assigned[0] == assigned[3] and assigned[1] <= assigned[0] <= assigned[2]


def test_empty_sample() -> None:
    part = Partitioner.from_sample(pa.array([], pa.string()), 4)
    assert part.count == 1 and part.assign(pa.array(["x"])).tolist() == [0]
