"""Which RocksDB table and read options matter for the storage-group layout (issue 10, item 5).

Copies the first --keys entities of a loaded group (their stored EntityRow values, unchanged) into one
fresh RocksDB per candidate, written and read with that candidate's options, warms the page cache, and
times in-process reads through rocksdict with a block cache much smaller than the data (as a node at
90M users has): one random entity per get, and batches of 100 random entities (one batched multi-get).

    python bench/read_options.py --group ROOT/versions/V/online/default --json out.json [--keys 500000]

Candidates differ from the baseline (snapshot/rocks.py as shipped) in one option each.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DataBlockIndexType,
    DBCompressionType,
    IngestExternalFileOptions,
    Options,
    Rdict,
    SstFileWriter,
)

from quiver.snapshot import rocks

Tweak = Callable[[BlockBasedOptions, Options], None]


def _block(size: int) -> Tweak:
    return lambda b, o: b.set_block_size(size)


def _no_compression(b: BlockBasedOptions, o: Options) -> None:
    o.set_compression_type(DBCompressionType.none())


def _mmap(b: BlockBasedOptions, o: Options) -> None:
    o.set_compression_type(DBCompressionType.none())
    o.set_allow_mmap_reads(True)


def _mmap_4k(b: BlockBasedOptions, o: Options) -> None:
    _mmap(b, o)
    b.set_block_size(4 << 10)


def _binary_search(b: BlockBasedOptions, o: Options) -> None:
    b.set_data_block_index_type(DataBlockIndexType.binary_search())


def _whole_index(b: BlockBasedOptions, o: Options) -> None:
    b.set_index_type(BlockBasedIndexType.binary_search())
    b.set_partition_filters(False)


CANDIDATES: dict[str, tuple[str, Tweak | None]] = {
    "baseline": ("8 KB blocks, LZ4, data-block hash index, partitioned index+filters, top level pinned", None),
    "block 4 KB": ("4 KB data blocks", _block(4 << 10)),
    "block 16 KB": ("16 KB data blocks", _block(16 << 10)),
    "no compression": ("data blocks stored uncompressed", _no_compression),
    "no compression + mmap": ("uncompressed, read through mmap (no block-cache copy)", _mmap),
    "no compression + mmap + 4 KB": ("uncompressed, mmap, 4 KB data blocks", _mmap_4k),
    "binary-search data index": ("no data-block hash index", _binary_search),
    "whole index+filter": ("one index and filter block per file, not partitioned", _whole_index),
}


def options(tweak: Tweak | None, cache: Cache | None) -> Options:
    """The baseline: snapshot/rocks.py's table options with LZ4 and pread (what shipped before issue 10)."""
    b = rocks.table_options(cache)
    o = Options(raw_mode=True)
    o.set_compression_type(DBCompressionType.lz4())
    if tweak is not None:
        tweak(b, o)
    o.set_block_based_table_factory(b)
    o.set_max_open_files(-1)
    return o


def build(src: Rdict, dest: Path, tweak: Tweak | None, keys: int) -> list[bytes]:
    writer_opts = options(tweak, None)
    sst = dest.with_suffix(".sst")
    w = SstFileWriter(writer_opts)
    w.open(str(sst))
    taken: list[bytes] = []
    for k, v in src.items():
        w[k] = v
        taken.append(k)  # type: ignore[arg-type]
        if len(taken) >= keys:
            break
    w.finish()
    o = options(tweak, None)
    o.create_if_missing(True)
    db = Rdict(str(dest), o)
    io = IngestExternalFileOptions()
    io.set_move_files(True)
    db.ingest_external_file([str(sst)], io)
    db.close()
    return taken


def measure(path: Path, tweak: Tweak | None, keys: list[bytes], cache_mb: int, rounds: int) -> dict[str, Any]:
    subprocess.run(f"cat {path}/*.sst > /dev/null", shell=True, check=True)  # page cache warm
    o = options(tweak, Cache(cache_mb << 20))
    db = Rdict(str(path), o, column_families={"default": o}, access_type=AccessType.read_only())
    rng = random.Random(1)
    single, batch = [], []
    try:
        for r in range(rounds + 1):  # the first round fills the block cache and is not counted
            picks = [keys[rng.randrange(len(keys))] for _ in range(20000)]
            t = time.perf_counter()
            for k in picks:
                db.get(k)
            s = (time.perf_counter() - t) / len(picks) * 1e6
            batches = [[keys[rng.randrange(len(keys))] for _ in range(100)] for _ in range(300)]
            t = time.perf_counter()
            for b in batches:
                db.get(b)  # type: ignore[arg-type]
            m = (time.perf_counter() - t) / len(batches) * 1e6
            if r:
                single.append(s)
                batch.append(m)
    finally:
        db.close()
    size = sum(f.stat().st_size for f in path.glob("*.sst"))
    return {"single_get_us": statistics.median(single), "batch_100_us": statistics.median(batch),
            "per_key_in_batch_us": statistics.median(batch) / 100, "sst_mb": size / (1 << 20)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", required=True, help="a loaded group's RocksDB folder (online/<group>)")
    p.add_argument("--json", required=True)
    p.add_argument("--keys", type=int, default=500_000)
    p.add_argument("--cache-mb", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated candidate names")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qro-", dir=str(Path(args.json).resolve().parent)))
    src = Rdict(args.group, Options(raw_mode=True), access_type=AccessType.read_only())
    results = []
    try:
        for name, (what, tweak) in CANDIDATES.items():
            if args.only and name not in args.only.split(","):
                continue
            dest = work / name.replace(" ", "-").replace("+", "")
            keys = build(src, dest, tweak, args.keys)
            r = {"candidate": name, "what": what, **measure(dest, tweak, keys, args.cache_mb, args.rounds)}
            print(f"{name:<26} single {r['single_get_us']:6.1f} us  batch of 100 {r['batch_100_us']:7.0f} us "
                  f"({r['per_key_in_batch_us']:.1f} us/key)  {r['sst_mb']:.0f} MB", flush=True)
            results.append(r)
            shutil.rmtree(dest, ignore_errors=True)
    finally:
        src.close()
        shutil.rmtree(work, ignore_errors=True)
    out = {"keys": args.keys, "cache_mb": args.cache_mb, "rounds": args.rounds, "group": args.group,
           "loadavg": Path("/proc/loadavg").read_text().strip(), "candidates": results}
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
