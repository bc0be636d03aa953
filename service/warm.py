"""Warm before swap: a new version's online files are read into the page cache before it takes traffic,
so that its first requests do not all wait on the disk (the server reads SST blocks through mmap, straight
from the page cache).

Runs on the thread that opened and checked the version (SCHED_IDLE, idle IO class; snapshots.py), while the
served version keeps answering. Two passes over the files not shared with the served version (a file
hard-linked from it is the same inode, whose pages are as warm as they will get):
  1. each file's tail, where a block-based SST keeps its filter and index partitions (TAIL_FRACTION of the
     file; at 10 bits a key and 8 KB blocks they are well under 1%), so every lookup finds them cached;
  2. whole files in order, until the budget is spent.
The budget (--warm-mb) defaults to every tail, plus half of the memory available at the swap (the
machine's, or the memory cgroup's limit when that is less) beyond the served version's online files, so that
warming the next version does not push the served one's pages out while it still answers. A budget smaller
than the version warms part of it; the rest comes from the disk on first read, as without warming.
Reads that go to the disk may be paced (--warm-mb-per-s; default unpaced): their IO completions run on the
core that submitted them, the serving core, at normal priority whatever the warming thread's. Unpaced
(~300 MB/s here) they held the served version's P99 at 4.3-5.8 ms for the ~22 s of a 10M-user warm; paced
at 100 MB/s, at 1.5-4.6 ms (median ~2.6) for ~90 s (bench/README.md, "Mapped before it answers"). A chunk
already in the page cache (a sync that just wrote it) is not read at all.

Then, once RocksDB has opened the version, its mappings are filled (`map_resident`): a page in the page cache
is still not mapped into this process until a read faults on it, and at 10M users a lookup that faults costs
2.6x one that does not (bench/README.md, "Mapped before it answers"). Only pages already resident are
mapped, so this reads nothing from the disk and holds no page the kernel could not have evicted anyway; the
page tables cost 8 bytes per 4 KB page mapped (24 MB for a 12 GB version), which a worker that has run long
enough holds anyway, one fault at a time."""

import ctypes
import errno
import logging
import mmap
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quiver.snapshot.manifest import Manifest

log = logging.getLogger("quiver.warm")

TAIL_FRACTION = 0.02
_CHUNK = 4 << 20   # large reads, few IO completions on the serving core (bench/README: 1 MB was worse)
MADV_POPULATE_READ = 22   # Linux 5.14: fault a range in for reading, as reads would, without touching it
_PAGE = os.sysconf("SC_PAGE_SIZE")
_RESIDENT = re.compile(b"\x01+")
_ODD = bytes(i & 1 for i in range(256))   # mincore: bit 0 of each page's byte says resident
_libc = ctypes.CDLL(None, use_errno=True)   # CDLL calls release the GIL while they run
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


@dataclass
class Warmed:
    files: int = 0      # files read, in part or whole
    shared: int = 0     # files the served version holds too (same inode): not read
    bytes: int = 0
    seconds: float = 0.0
    budget: int = 0
    disk_bytes: int = 0   # of `bytes`, those that were not in the page cache


class Pacer:
    """Spaces reads from the disk to `rate` bytes a second on average (0: no pacing)."""

    def __init__(self, rate: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self.sleep = sleep
        self.disk_bytes = 0
        self._due = time.monotonic()

    def read(self, n: int) -> None:
        """`n` bytes were just read from the disk: wait until the rate allows the next read."""
        self.disk_bytes += n
        if self.rate > 0:
            now = time.monotonic()
            self._due = max(self._due, now) + n / self.rate
            self.sleep(self._due - now)


@dataclass
class Mapped:
    files: int = 0      # SST mappings found
    bytes: int = 0      # resident bytes mapped
    seconds: float = 0.0


def available_bytes() -> int:
    """Memory the page cache may use now: MemAvailable, or the memory cgroup's limit when that is less."""
    avail = _meminfo("MemAvailable")
    limit = _cgroup_limit()
    return min(avail, limit) if limit else avail


def _meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _cgroup_limit() -> int:
    """This process's memory cgroup limit in bytes (v1 or v2); 0 when there is none."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            candidates = [Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes"]
        elif controllers == "":
            candidates = [Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max"]
        else:
            continue
        for c in candidates:
            try:
                text = c.read_text().strip()
            except OSError:
                continue
            # v1 writes a huge number for "no limit", v2 writes "max"
            if text.isdigit() and int(text) < 1 << 60:
                return int(text)
    return 0


def warm(version_dir: Path, manifest: Manifest, served_dir: Path | None, served: Manifest | None,
         budget: int | None = None, pacer: Pacer | None = None) -> Warmed:
    """Reads up to `budget` bytes (None: the default above) of the version's online SST files not shared
    with the served version, those from the disk at the pacer's rate (None: unpaced)."""
    started = time.monotonic()
    out = Warmed()
    pacer = pacer or Pacer(0)
    shared_inodes = set()
    served_bytes = 0
    if served_dir is not None and served is not None:
        for f in served.files:
            if f.path.startswith("online/"):
                try:
                    st = (served_dir / f.path).stat()
                except OSError:
                    continue
                shared_inodes.add((st.st_dev, st.st_ino))
                served_bytes += st.st_size
    todo: list[tuple[Path, int]] = []
    for f in manifest.files:
        if not (f.path.startswith("online/") and f.path.endswith(".sst")):
            continue
        p = version_dir / f.path
        try:
            st = p.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in shared_inodes:
            out.shared += 1
        else:
            todo.append((p, st.st_size))
    tails = {p: min(size, max(256 << 10, int(size * TAIL_FRACTION))) for p, size in todo}
    if budget is None:
        budget = sum(tails.values()) + max(0, available_bytes() - served_bytes) // 2
    out.budget = budget
    left = budget
    buf = bytearray(_CHUNK)
    for p, size in todo:                                   # 1: filter and index partitions
        if left <= 0:
            break
        n = _read(p, size - tails[p], min(tails[p], left), buf, pacer)
        left -= n
        out.bytes += n
        out.files += 1
    for p, size in todo:                                   # 2: the data blocks, file by file
        if left <= 0:
            break
        n = _read(p, 0, min(size - tails[p], left), buf, pacer)
        left -= n
        out.bytes += n
    out.seconds = time.monotonic() - started
    out.disk_bytes = pacer.disk_bytes
    return out


def _read(path: Path, offset: int, length: int, buf: bytearray, pacer: Pacer) -> int:
    """Brings `length` bytes at `offset` into the page cache; returns the bytes now there. A chunk the page
    cache already holds is not read; one that misses is read whole (one large IO), and its missing bytes
    paced."""
    done = 0
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0
    try:
        # no readahead past what is asked for: the budget is what the page cache gets
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        view = memoryview(buf)
        with _Residency(fd, os.fstat(fd).st_size) as cached:
            while done < length:
                want = min(_CHUNK, length - done)
                missing = cached.missing(offset + done, want)
                if missing:
                    n = os.preadv(fd, [view[:want]], offset + done)
                    if n <= 0:
                        break
                    pacer.read(min(missing, n))
                else:
                    n = want
                done += n
    finally:
        os.close(fd)
    return done


class _Residency:
    """Which pages of a file the page cache holds: mincore over a mapping of it that is never read. (Asking
    with a read, RWF_NOWAIT, was tried first: its paced swaps measured worse than unpaced ones, perhaps
    because a miss starts the kernel's readahead in small pieces; bench/README.md.)"""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0) if size else None
        self.addr: int | None = None if addr in (None, _MAP_FAILED) else addr

    def __enter__(self) -> "_Residency":
        return self

    def __exit__(self, *_: object) -> None:
        if self.addr is not None:
            _libc.munmap(self.addr, self.size)

    def missing(self, offset: int, length: int) -> int:
        """Bytes of the range not in the page cache (all of them when it cannot tell)."""
        if self.addr is None:
            return length
        first = offset - offset % _PAGE
        pages = (offset + length - first + _PAGE - 1) // _PAGE
        resident = _resident(self.addr + first, pages)
        if resident is None:
            return length
        return min(length, (pages - resident.count(1)) * _PAGE)


def map_resident(online_dir: Path) -> Mapped:
    """Fills this process's page tables for the resident pages of its mappings of the SST files under
    `online_dir` (RocksDB maps each whole file when it opens it, read-only). Pages not in the page cache are
    left to fault on first read, as before: nothing is read from the disk here."""
    started = time.monotonic()
    out = Mapped()
    for start, end in _mappings(os.path.realpath(online_dir) + os.sep):
        pages = _resident(start, (end - start) // _PAGE)
        if pages is None:
            continue   # unmapped since: the version closed under us, nothing left to map
        out.files += 1
        for run in _RESIDENT.finditer(pages):
            begin, length = start + run.start() * _PAGE, (run.end() - run.start()) * _PAGE
            if _libc.madvise(begin, length, MADV_POPULATE_READ) != 0:
                e = ctypes.get_errno()
                if e == errno.EINVAL:   # a kernel before 5.14: reads fault their pages in, as they always did
                    raise OSError(e, "madvise(MADV_POPULATE_READ) needs Linux 5.14 or later")
                continue   # ENOMEM: unmapped since; EFAULT: evicted and unreadable now; the read will say
            out.bytes += length
    out.seconds = time.monotonic() - started
    return out


def _resident(address: int, pages: int) -> bytes | None:
    """One byte per page of the mapping at `address`: 1 where the page cache holds it, else 0 (mincore);
    None when the range is not mapped."""
    vec = ctypes.create_string_buffer(pages)
    if _libc.mincore(address, pages * _PAGE, vec) != 0:
        return None
    return vec.raw.translate(_ODD)


def _mappings(prefix: str) -> list[tuple[int, int]]:
    """Address ranges of this process's file mappings of SST files whose path starts with `prefix`."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(prefix) and fields[5].rstrip("\n").endswith(".sst"):
                a, b = fields[0].split("-")
                ranges.append((int(a, 16), int(b, 16)))
    return ranges
