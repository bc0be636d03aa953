"""Whether a version on disk is whole: the one check the server runs before it serves a version, the
loader before it reuses one, and `quiver verify` before it compares one.

Levels, as the server's --verify names them: "none" reads the manifest only; "size" also finds every
file with the size the manifest records (a stat each); "full" also compares every file's checksum
(reads every byte) but those already proven. What only an open RocksDB can tell (its live files, its row
count) is the server's, in service/store.py.

Proven files. A checksum is computed once per file, not once per open: the loader that wrote a file, the
sync that downloaded it and every process that hashed it record the checksum against the file itself
(device, inode, size, modification time). A version's record is RECORD beside its manifest, written in
staging before the version becomes visible; this process also remembers what it hashed. A file hard-linked
into a new version (an unchanged group, a delta's base) is the same inode, so it is not read again. A file
rewritten, replaced or copied gets another inode or time and is hashed. As git does with its index, a file
this process hashes in a published version is remembered only if it was modified at least RACY_NS before:
an in-place write in the same clock tick would keep its time. README "Trust model" says what this guards
against and what it does not."""

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.manifest import RECORD, FileEntry, Manifest, ManifestError

__all__ = ["LEVELS", "RECORD", "Proven", "check_version", "proven_of", "read_record", "write_record"]

LEVELS = ("none", "size", "full")
SHOWN = 5   # damaged files named in one message; the rest are counted
RACY_NS = 2_000_000_000   # above any filesystem's timestamp granularity (ext4, xfs: one jiffy; FAT: 2 s)

FileKey = tuple[int, int, int, int]   # st_dev, st_ino, st_size, st_mtime_ns


def file_key(path: Path) -> FileKey | None:
    """The file as a checksum was proven on; None when it cannot be stat'ed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class Proven:
    """Checksums proven on files, by FileKey: a version's record, or what this process hashed. Bounded:
    the oldest entries go first (a server swapping every minute for weeks sees many files)."""

    def __init__(self, limit: int = 200_000) -> None:
        self._sums: dict[FileKey, str] = {}
        self._limit = limit

    def add(self, key: FileKey | None, checksum: str, hashed_at_ns: int | None = None) -> None:
        """`hashed_at_ns`: when the file was read, for a file others may write (a published version);
        one modified less than RACY_NS before is not kept, as a write in the same clock tick would not show."""
        if key is None or (hashed_at_ns is not None and key[3] > hashed_at_ns - RACY_NS):
            return
        self._sums.pop(key, None)
        self._sums[key] = checksum
        if len(self._sums) > self._limit:
            del self._sums[next(iter(self._sums))]

    def holds(self, key: FileKey | None, checksum: str) -> bool:
        return key is not None and self._sums.get(key) == checksum

    def __len__(self) -> int:
        return len(self._sums)


SEEN = Proven()   # this process's


def read_record(version_dir: Path) -> Proven:
    """A version's RECORD; an absent or unreadable one proves nothing (its files are hashed)."""
    out = Proven()
    try:
        for dev, ino, size, mtime, checksum in json.loads((version_dir / RECORD).read_bytes())["files"]:
            out.add((int(dev), int(ino), int(size), int(mtime)), str(checksum))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return out


def write_record(version_dir: Path, checksums: Mapping[str, str]) -> int:
    """RECORD for the files of `version_dir` (in staging) whose checksum (path -> checksum) the caller
    proved: wrote them, hashed them or downloaded and verified them. Staging has one writer, the caller,
    so no file there can change between its proof and the record. Returns how many files it names."""
    files = [[*key, checksum] for rel, checksum in sorted(checksums.items())
             if (key := file_key(version_dir / rel)) is not None]
    tmp = version_dir / (RECORD + ".tmp")
    tmp.write_text(json.dumps({"files": files}))
    os.replace(tmp, version_dir / RECORD)
    return len(files)


def proven_of(version_dir: Path, entries: Iterable[FileEntry], at: Path) -> dict[str, str]:
    """Of `entries` (files under `at` hard-linked from the version in `version_dir`), those its record or
    this process proves: path -> checksum, for the new version's record."""
    record = read_record(version_dir)
    out = {}
    for f in entries:
        key = file_key(at / f.path)
        if SEEN.holds(key, f.checksum) or record.holds(key, f.checksum):
            out[f.path] = f.checksum
    return out


def check_version(root: SnapshotRoot, version: str, level: str, prefix: str = "",
                  on_hashed: Callable[[int, int], None] = lambda files, size: None) -> Manifest:
    """The manifest of `version`, once it is checked: it loads, it names this version, (level) the files
    under `prefix` match it, and its groups hold its views as its schema says. Raises ManifestError
    starting "version <id>: " and naming what is wrong. `on_hashed(files, bytes)`: what "full" had to
    read, the files not already proven."""
    if level not in LEVELS:
        raise ValueError(f"check level {level!r}: expected one of {', '.join(LEVELS)}")
    vdir = root.version_dir(version)
    try:
        manifest = Manifest.load(vdir / "manifest.json")
    except ManifestError as e:
        raise ManifestError(f"version {version}: {e}") from None
    if manifest.version != version:
        raise ManifestError(f"version {version}: its manifest names {manifest.version}")
    if level != "none":
        record = read_record(vdir) if level == "full" else Proven()   # "size" reads no file's bytes
        hashed: list[FileEntry] = []

        def proven(path: Path, f: FileEntry) -> bool:
            key = file_key(path)
            if SEEN.holds(key, f.checksum) or record.holds(key, f.checksum):
                return True
            hashed.append(f)
            return False

        started = time.time_ns()
        problems = manifest.verify_files(vdir, full=(level == "full"), prefix=prefix, proven=proven)
        if level == "full":
            on_hashed(len(hashed), sum(f.size for f in hashed))
            if not problems:
                for f in hashed:
                    SEEN.add(file_key(vdir / f.path), f.checksum, hashed_at_ns=started)
        if problems:
            more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
            raise ManifestError(f"version {version}: " + "; ".join(problems[:SHOWN]) + more)
    grouped = {v: g for g, s in manifest.groups.items() for v in s.views}
    stray = [(v.name, v.group) for v in manifest.schema.views if grouped.get(v.name) != v.group]
    if stray or len(grouped) != len(manifest.schema.views):
        raise ManifestError(f"version {version}: the manifest's groups do not hold its views as the schema says "
                            f"(views and groups: {stray or sorted(grouped.items())})")
    return manifest
