"""RocksDB options shared by the loader (baked into SST files) and the server (read side).

The SST writer's table options are what the files hold: bloom filters and compression are set
here once, so what the loader writes is what the server expects to read.
"""

from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, DataBlockIndexType, DBCompressionType, Options

BLOCK_SIZE = 8 << 10
BLOOM_BITS_PER_KEY = 10
COMPRESSION = {
    "none": DBCompressionType.none,
    "lz4": DBCompressionType.lz4,
    "zstd": DBCompressionType.zstd,
    "snappy": DBCompressionType.snappy,
}


def table_options(cache: Cache | None = None) -> BlockBasedOptions:
    b = BlockBasedOptions()
    b.set_block_size(BLOCK_SIZE)
    b.set_bloom_filter(BLOOM_BITS_PER_KEY, False)  # full filter: a miss costs no data block read
    b.set_data_block_index_type(DataBlockIndexType.binary_and_hash())
    # Partitioned index and filters: a lookup that misses the cache loads one small partition, not a
    # whole file's index and filter, so a cache much smaller than the data does not thrash on them.
    b.set_index_type(BlockBasedIndexType.two_level_index_search())
    b.set_partition_filters(True)
    b.set_metadata_block_size(4096)
    # Table format 5, not rocksdict's default 6 (RocksDB >= 8.6 only): the Rust embedded reader links
    # Debian 12's RocksDB 7.8.3, which refuses format 6. Format 6 adds only per-block context
    # checksums; the sha256 in the manifest and the blocks' own checksums still guard every file.
    b.set_format_version(5)
    if cache is None:
        b.disable_cache()
    else:
        b.set_block_cache(cache)
        # index and filter blocks count against the cache, so memory is bounded by its size
        b.set_cache_index_and_filter_blocks(True)
        b.set_pin_top_level_index_and_filter(True)
    return b


# Stored uncompressed and read through mmap: a lookup then reads its block straight from the page
# cache, with no pread, no decompression and no copy into the block cache. Measured with
# bench/read_options.py on 300,000 entities of the 10M-user group (64 MB cache, page cache warm):
# 4.3 us per key in batches of 100 against 8.7-9.6 us with LZ4 and pread, for 1.4x the bytes on disk.
DEFAULT_COMPRESSION = "none"


def writer_options(compression: str = DEFAULT_COMPRESSION) -> Options:
    o = Options(raw_mode=True)
    o.set_block_based_table_factory(table_options())
    o.set_compression_type(COMPRESSION[compression]())
    return o


def reader_options(cache: Cache) -> Options:
    o = Options(raw_mode=True)
    o.set_block_based_table_factory(table_options(cache))
    # Every table reader opened at once (index and filter blocks live in the cache, so each costs
    # little): no table-cache lookup per read, and RocksDB loads every file's statistics at open
    # (with a limit it loads 20, and the row count check below would see a fraction of the rows).
    o.set_max_open_files(-1)
    o.set_keep_log_file_num(1)
    # Uncompressed blocks come straight from the mapping (compressed ones, from older loads or
    # --compression, still go through the block cache).
    o.set_allow_mmap_reads(True)
    return o


def empty_db_options() -> Options:
    """For the fresh DB each view's SST files are ingested into."""
    o = Options(raw_mode=True)
    o.create_if_missing(True)
    o.set_block_based_table_factory(table_options())
    o.set_disable_auto_compactions(True)
    o.set_keep_log_file_num(1)
    return o
