"""Stage 5, publish: link what the current version already holds, checksum every file, write the
manifest last, and make the version visible by one rename and a CURRENT move. Also the load's lock and
its staging folder, which a killed load leaves behind and the next one removes (both kept by
snapshot/lifecycle.py, the one home of a root's locks and staging)."""

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from quiver.snapshot import lifecycle
from quiver.snapshot.integrity import proven_of, write_record
from quiver.snapshot.layout import SnapshotRoot, fsync_dir
from quiver.snapshot.manifest import FileEntry, Manifest, data_files, file_checksum


def load_lock(root: SnapshotRoot) -> AbstractContextManager[None]:
    """ROOT/.load.lock for the whole load (snapshot/lifecycle.py); RootBusy when another load holds it."""
    return lifecycle.lock(root, "load")


def clean_staging(root: SnapshotRoot) -> None:
    """Leftovers of killed loads: safe to remove while we hold the load lock."""
    lifecycle.clean_staging(root, "load")


@contextmanager
def staging_removed_on_failure(root: SnapshotRoot) -> Iterator[None]:
    """A load that fails on bad input leaves nothing behind, rather than a staging folder as large as the
    version it did not build. Runs after the worker pool has shut down, under the load lock."""
    try:
        yield
    except BaseException:
        clean_staging(root)
        raise


def link_files(root: SnapshotRoot, reuse_from: Manifest, prefix: str, dest: Path,
               keep: Callable[[str], bool] = lambda path: True) -> dict[str, str]:
    """Links the previous version's files under `prefix` (`online/<group>/` or `offline/<view>/`) into the
    new version; returns the checksums of those hard-linked, the same inodes as the previous version's.
    Immutable data files are hard-linked (copied across filesystems); small metadata is copied. A copy is
    a new file, which the publish stage hashes like any file this load wrote. `keep`: which of them."""
    src = root.version_dir(reuse_from.version)
    known = {}
    for f in reuse_from.files:
        if not f.path.startswith(prefix) or not keep(f.path):
            continue
        target = dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.path.endswith((".sst", ".parquet")):
            try:
                os.link(src / f.path, target)
                known[f.path] = f.checksum
                continue
            except OSError:
                pass
        shutil.copy2(src / f.path, target)
    cfg = src / prefix / "rocksdict-config.json"
    if cfg.exists():
        shutil.copy2(cfg, dest / prefix / "rocksdict-config.json")
    return known


def checksums(map_fn: Callable[[Callable[[Path], str], list[Path]], list[str]], out: Path,
              known: dict[str, str]) -> list[FileEntry]:
    """Every file of the version; those not checksummed as they were written (RocksDB's own small
    files) are read now."""
    listed = data_files(out)
    todo = [p for p, _ in listed if p not in known]
    sums = dict(zip(todo, map_fn(file_checksum, [out / p for p in todo]), strict=True))
    return [FileEntry(p, size, known.get(p) or sums[p]) for p, size in listed]


def record_proven(root: SnapshotRoot, reuse_from: Manifest | None, out: Path, entries: list[FileEntry],
                  linked: dict[str, str]) -> int:
    """The version's record of proven checksums (snapshot/integrity.py): every file this load wrote or
    hashed, and each linked file a record of the version it comes from proves, so that a server opening
    the version with --verify full reads none of them again. Returns how many files it names."""
    proven = {f.path: f.checksum for f in entries if f.path not in linked}
    if reuse_from is not None and linked:
        proven |= proven_of(root.version_dir(reuse_from.version), [f for f in entries if f.path in linked], out)
    return write_record(out, proven)


def publish(root: SnapshotRoot, stage: Path, out: Path, manifest: Manifest) -> None:
    """The manifest is the last file written; the rename makes the version visible at once."""
    (out / "manifest.json").write_bytes(manifest.dumps())
    for d in [p for p in out.rglob("*") if p.is_dir()] + [out]:
        fsync_dir(d)
    for p in out.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    target = root.version_dir(manifest.version)
    os.rename(out, target)
    fsync_dir(root.versions_dir)
    shutil.rmtree(stage, ignore_errors=True)
    root.set_current(manifest.version)
