"""The page cache, as tests see it: what util-linux's fincore counts resident, and files dropped from it."""

import os
import subprocess
from pathlib import Path


def resident(paths: list[Path]) -> list[int]:
    """Bytes of each file in the page cache."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *map(str, paths)],
                         capture_output=True, text=True, check=True).stdout
    return [int(line) for line in out.split()]


def evict(paths: list[Path]) -> list[Path]:
    """Drops the files' pages (written back first); refuses to go on if the kernel kept them."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    assert sum(resident(paths)) < 1 << 20, "the page cache kept files fadvise(DONTNEED) dropped"
    return paths
