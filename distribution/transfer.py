"""Moving one file's bytes, verified, and running many such moves on a few threads.

`upload_file` and `download_file` are the seams tests use to interrupt a publish or a sync mid-way.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from quiver.distribution.errors import IntegrityError, translated
from quiver.distribution.store import CHUNK, RemoteStore
from quiver.snapshot import FileEntry

__all__ = ["download_file", "run_all", "upload_file"]

log = logging.getLogger("quiver.distribution")


def upload_file(store: RemoteStore, local: Path, *parts: str) -> None:
    """One data file to its object (a seam for tests that interrupt an upload)."""
    store.upload(local, *parts)


def run_all(fn: Callable[[Any], None], items: list[Any], workers: int) -> None:
    """Run fn over items on a few threads (pyarrow and hashlib release the GIL); the first error wins."""
    if workers <= 1 or len(items) <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="quiver-dist") as pool:
        futures = [pool.submit(fn, it) for it in items]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise



def download_file(store: RemoteStore, dest: Path, entry: FileEntry, *parts: str) -> None:
    """Stream one object to `dest`, hashing as it goes; it takes its final name only once verified."""
    url = store.url(*parts)
    part = dest.with_name(dest.name + ".part")
    with translated(f"writing {part}", local=True):
        dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    try:
        with translated(f"downloading {url} to {part}"), store.fs.open_input_stream(store.path(*parts)) as src, \
                open(part, "wb") as out:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        checksum = "sha256:" + h.hexdigest()
        if size != entry.size or checksum != entry.checksum:
            raise IntegrityError(
                f"{url}: {size} bytes with {checksum}, "
                f"manifest says {entry.size} bytes with {entry.checksum}: "
                "the object is corrupt or was overwritten; republish the version")
        with translated(f"renaming {part}", local=True):
            os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    log.info("downloaded %s (%d bytes)", entry.path, size)
