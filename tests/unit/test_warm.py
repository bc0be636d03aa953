"""service/warm.py: what warming reads into the page cache, measured with util-linux's fincore on real
files dropped from the cache first: tails first, then whole files up to the budget, never a file the
served version shares."""

import ctypes
import mmap
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from quiver.service import warm
from quiver.snapshot import FileEntry
from support.pagecache import evict, resident

MB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def version(folder: Path, sizes: dict[str, int]) -> Any:
    for rel, size in sizes.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(os.urandom(size))
    return SimpleNamespace(files=[FileEntry(rel, size, "") for rel, size in sizes.items()])


def test_tails_first_then_whole_files_up_to_the_budget(tmp_path: Path) -> None:
    m = version(tmp_path, {f"online/g/{i}.sst": 16 * MB for i in range(3)} | {"online/g/MANIFEST-1": MB,
                                                                               "offline/v/p.parquet": 4 * MB})
    ssts = evict([tmp_path / f"online/g/{i}.sst" for i in range(3)])
    others = evict([tmp_path / "online/g/MANIFEST-1", tmp_path / "offline/v/p.parquet"])
    tail = int(16 * MB * warm.TAIL_FRACTION)
    w = warm.warm(tmp_path, m, None, None, budget=20 * MB)
    assert (w.files, w.shared, w.bytes) == (3, 0, 20 * MB)
    got = resident(ssts)
    # every tail; then file 0 whole and file 1's first bytes (its tail and the budget's rest); no more
    expected = [16 * MB, 20 * MB - 16 * MB - tail, tail]
    assert all(abs(g - e) <= 2 * PAGE for g, e in zip(got, expected, strict=True)), (got, expected)  # pages
    assert resident(others) == [0, 0]   # only SST files are warmed


def test_files_the_served_version_shares_are_not_read(tmp_path: Path) -> None:
    served = version(tmp_path / "v1", {"online/g/a.sst": 8 * MB, "online/g/b.sst": 8 * MB})
    (tmp_path / "v2/online/g").mkdir(parents=True)
    os.link(tmp_path / "v1/online/g/a.sst", tmp_path / "v2/online/g/a.sst")   # an unchanged file
    new = version(tmp_path / "v2", {"online/g/c.sst": 8 * MB})
    new.files.insert(0, FileEntry("online/g/a.sst", 8 * MB, ""))
    evict([tmp_path / "v2/online/g/a.sst", tmp_path / "v2/online/g/c.sst"])
    w = warm.warm(tmp_path / "v2", new, tmp_path / "v1", served, budget=1 << 40)
    assert (w.files, w.shared, w.bytes) == (1, 1, 8 * MB)
    assert resident([tmp_path / "v2/online/g/a.sst", tmp_path / "v2/online/g/c.sst"]) == [0, 8 * MB]


def test_the_default_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tail, plus half the available memory beyond the served version's online files; available is
    the machine's or the memory cgroup's limit, whichever is less."""
    monkeypatch.setattr(warm, "_meminfo", lambda field: 8 << 30)
    monkeypatch.setattr(warm, "_cgroup_limit", lambda: 0)
    assert warm.available_bytes() == 8 << 30
    monkeypatch.setattr(warm, "_cgroup_limit", lambda: 3 << 30)
    assert warm.available_bytes() == 3 << 30
    served = version(tmp_path / "v1", {"online/g/a.sst": 8 * MB})
    new = version(tmp_path / "v2", {f"online/g/{i}.sst": 16 * MB for i in range(2)})
    tail = int(16 * MB * warm.TAIL_FRACTION)
    monkeypatch.setattr(warm, "available_bytes", lambda: 12 * MB)
    assert warm.warm(tmp_path / "v2", new, tmp_path / "v1", served).budget == 2 * tail + 2 * MB
    monkeypatch.setattr(warm, "available_bytes", lambda: 4 * MB)    # less than the served version: tails only
    w = warm.warm(tmp_path / "v2", new, tmp_path / "v1", served)
    assert w.budget == w.bytes == 2 * tail


def present(address: int, pages: int) -> list[bool]:
    """Whether each page from `address` is mapped into this process now: bit 63 of its /proc/self/pagemap
    entry (the kernel's page table, independent of what map_resident looked at)."""
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(address // PAGE * 8)
        raw = f.read(pages * 8)
    return [bool(int.from_bytes(raw[i * 8:i * 8 + 8], "little") >> 63) for i in range(pages)]


def test_map_resident_maps_the_cached_pages_of_the_versions_mappings_and_reads_nothing(tmp_path: Path) -> None:
    pages = 1024
    sst, other = tmp_path / "v" / "online" / "g" / "1.sst", tmp_path / "w" / "online" / "g" / "1.sst"
    for p in (sst, other):
        p.parent.mkdir(parents=True)
        p.write_bytes(os.urandom(pages * PAGE))
    evict([sst, other])
    half = pages // 2 * PAGE
    for p in (sst, other):   # the first half of each is in the page cache, the second is not
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)   # no readahead past the half
        os.pread(fd, half, 0)
        os.close(fd)
    assert resident([sst, other]) == [half, half]
    with open(sst, "rb") as f, open(other, "rb") as g:
        # ACCESS_COPY: a private mapping ctypes can take the address of; read-only as far as this test goes
        mine, theirs = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY), mmap.mmap(g.fileno(), 0,
                                                                                    access=mmap.ACCESS_COPY)
    try:
        at = ctypes.addressof(ctypes.c_char.from_buffer(mine))
        elsewhere = ctypes.addressof(ctypes.c_char.from_buffer(theirs))
        assert not any(present(at, pages))   # nothing mapped before (the control: reads would fault)
        m = warm.map_resident(tmp_path / "v" / "online")
        assert (m.files, m.bytes) == (1, half)
        assert present(at, pages) == [True] * (pages // 2) + [False] * (pages // 2)
        assert resident([sst]) == [half]            # nothing read from the disk
        assert not any(present(elsewhere, pages))   # another version's mapping is left alone
    finally:
        del at, elsewhere
        mine.close()
        theirs.close()


def test_reads_from_the_disk_are_paced_and_reads_from_the_page_cache_are_not(tmp_path: Path) -> None:
    m = version(tmp_path, {f"online/g/{i}.sst": 8 * MB for i in range(2)})
    files = evict([tmp_path / f"online/g/{i}.sst" for i in range(2)])
    slept: list[float] = []
    cold = warm.Pacer(64 * MB, sleep=slept.append)
    w = warm.warm(tmp_path, m, None, None, budget=16 * MB, pacer=cold)
    assert w.bytes == 16 * MB and resident(files) == [8 * MB, 8 * MB]
    assert abs(w.disk_bytes - 16 * MB) <= 2 * PAGE and cold.disk_bytes == w.disk_bytes   # every byte came from disk
    # 16 MB at 64 MB/s: the last read waits until a quarter of a second after the first began, less what the
    # reads took (the fake sleep never sleeps, so each wait counts from the first read, not the one before)
    assert 0.25 - w.seconds <= slept[-1] <= 0.25 + 1e-6, (slept, w.seconds)
    # the same files again, now cached (a sync that wrote them leaves them so): nothing paced
    slept.clear()
    again = warm.warm(tmp_path, m, None, None, budget=16 * MB, pacer=warm.Pacer(64 * MB, sleep=slept.append))
    assert again.bytes == 16 * MB and again.disk_bytes == 0 and slept == []
    # half cached: the other half is what is paced
    evict([files[1]])
    half = warm.warm(tmp_path, m, None, None, budget=16 * MB, pacer=warm.Pacer(0))
    assert abs(half.disk_bytes - 8 * MB) <= 2 * PAGE and resident(files) == [8 * MB, 8 * MB]


def test_the_pacer_spaces_reads_to_its_rate_across_gaps() -> None:
    slept: list[float] = []
    p = warm.Pacer(10 * MB, sleep=slept.append)
    p.read(5 * MB)
    assert 0.49 < slept[-1] <= 0.5   # 5 MB at 10 MB/s
    p.read(MB)
    # the first read's half second was never slept here (a fake sleep): the second waits for both
    assert 0.59 < slept[-1] <= 0.6
    assert warm.Pacer(0, sleep=slept.append).read(MB) is None and len(slept) == 2   # 0: unpaced
