"""Stage 4, ingest: each storage group's SST files into one fresh RocksDB."""

import os

from rocksdict import IngestExternalFileOptions, Rdict

from quiver.loader.sst import SstFile
from quiver.snapshot import rocks


def ingest_task(db_dir: str, sst_files: list[SstFile]) -> dict[str, str]:
    """One fresh RocksDB per group; its key ranges are disjoint, so every file lands in L6. Returns
    the checksum of each ingested file under its new name (RocksDB renumbers the files it moves in,
    so they are matched by key range and size)."""
    db = Rdict(db_dir, rocks.empty_db_options())
    try:
        io = IngestExternalFileOptions()
        io.set_move_files(True)
        if sst_files:
            db.ingest_external_file([f.path for f in sst_files], io)
        db.flush()
        by_range = {(f.first_key, f.last_key, f.size): f.checksum for f in sst_files}
        live = db.live_files()
    finally:
        db.close()
    out = {}
    for f in live:
        checksum = by_range.get((f["start_key"], f["end_key"], f["size"]))
        if checksum is not None:
            out[os.path.join(db_dir, f["name"].lstrip("/"))] = checksum
    return out


def ingest_group(task: tuple[str, list[SstFile]]) -> dict[str, str]:
    """ingest_task over (db_dir, sst_files), as an engine maps it."""
    return ingest_task(*task)
