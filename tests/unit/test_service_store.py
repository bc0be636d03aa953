"""store.open_version: the configured block cache is the one RocksDB reads through; RocksDB's log folder
lives and dies with the version."""

import tempfile
from pathlib import Path

import pytest
from rocksdict import Cache

from quiver.loader.generate import generate
from quiver.loader.load import LoadOptions, load
from quiver.service.errors import VersionRefused
from quiver.service.store import open_version
from quiver.snapshot.keys import encode_int64_keys
from quiver.snapshot.layout import SnapshotRoot


def test_reads_fill_the_configured_cache_and_stay_within_it(tmp_path: Path) -> None:
    """Compressed data blocks are read through the cache (the default, uncompressed, is read from the mmap
    and only index and filter blocks use the cache)."""
    features = generate(3000, tmp_path / "src", seed=3)
    version = load(features, tmp_path / "root", LoadOptions(workers=1, compression="lz4")).version
    cache = Cache(256 << 10)  # smaller than the data: reads must evict, never grow past it
    loaded = open_version(SnapshotRoot(tmp_path / "root"), version, cache, "size")
    try:
        assert cache.get_usage() < 64 << 10   # opening reads little: no data blocks yet
        for start in range(0, 3000, 100):
            rows = loaded.get("default", encode_int64_keys(range(start, start + 100)))
            assert all(r is not None for r in rows)
        assert 128 << 10 < cache.get_usage() <= 256 << 10
    finally:
        loaded.retire()


def test_a_group_of_many_sst_files_opens_with_every_row_counted(tmp_path: Path) -> None:
    """Found by the 10M-user benchmark: with a bounded table cache RocksDB loaded the statistics of
    only 20 files at open, so a group of 28 SST files 'held' 71% of its rows and was refused."""
    features = generate(3000, tmp_path / "src", seed=4)
    result = load(features, tmp_path / "root", LoadOptions(workers=1, partition_bytes=4096))
    ssts = [f for f in result.manifest.files if f.path.startswith("online/default/") and f.path.endswith(".sst")]
    assert len(ssts) > 20
    loaded = open_version(SnapshotRoot(tmp_path / "root"), result.version, Cache(1 << 20), "size")
    try:
        assert all(v is not None for v in loaded.get("default", encode_int64_keys(range(3000))))
    finally:
        loaded.retire()


def test_rocksdb_logs_go_to_a_folder_of_the_version_removed_when_it_closes(tmp_path: Path) -> None:
    """Never into the version (its files are checksummed), never left behind; a refused version's too."""
    features = generate(100, tmp_path / "src", seed=5)
    version = load(features, tmp_path / "root", LoadOptions(workers=1)).version
    root = SnapshotRoot(tmp_path / "root")
    before = set(Path(tempfile.gettempdir()).glob(f"quiver-rocksdb-log-{version}-*"))
    loaded = open_version(root, version, Cache(1 << 20), "full")
    [logs] = set(Path(tempfile.gettempdir()).glob(f"quiver-rocksdb-log-{version}-*")) - before
    assert logs.is_dir()
    loaded.retire()
    assert not logs.exists()
    sst = next(root.online_dir(version, "default").glob("*.sst"))
    with open(sst, "r+b") as f:                     # same size, no footer: passes "size", fails to open
        f.seek(-64, 2)
        f.write(b"\0" * 64)
    with pytest.raises(VersionRefused):
        open_version(root, version, Cache(1 << 20), "size").retire()
    assert set(Path(tempfile.gettempdir()).glob(f"quiver-rocksdb-log-{version}-*")) == before
