"""store.open_version: the configured block cache is the one RocksDB reads through."""

from pathlib import Path

from rocksdict import Cache

from quiver.loader.build import LoadOptions, load
from quiver.loader.generate import generate
from quiver.service.store import open_version
from quiver.snapshot.keys import encode_int64_keys
from quiver.snapshot.layout import SnapshotRoot


def test_reads_fill_the_configured_cache_and_stay_within_it(tmp_path: Path) -> None:
    features = generate(3000, tmp_path / "src", seed=3)
    version = load(features, tmp_path / "root", LoadOptions(workers=1)).version
    cache = Cache(256 << 10)  # smaller than the data: reads must evict, never grow past it
    loaded = open_version(SnapshotRoot(tmp_path / "root"), version, cache, "size")
    try:
        assert cache.get_usage() < 64 << 10   # opening reads little: no data blocks yet
        for start in range(0, 3000, 100):
            rows = loaded.get("activity", encode_int64_keys(range(start, start + 100)))
            assert all(r is not None for r in rows)
        assert 128 << 10 < cache.get_usage() <= 256 << 10
    finally:
        loaded.retire()
