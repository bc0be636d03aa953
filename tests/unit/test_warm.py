"""service/warm.py: what warming reads into the page cache, measured with util-linux's fincore on real
files dropped from the cache first: tails first, then whole files up to the budget, never a file the
served version shares."""

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
