"""Lease files: which versions a running server holds, so `quiver gc` never deletes them.

ROOT/leases/<host>-<pid>.json = {"host", "pid", "versions", "updated"}; rewritten on every swap and
every REFRESH_SECONDS, removed on a clean exit. gc trusts a lease while its process is alive (same
host) or while it is fresh (another host sharing the volume).
"""

import json
import os
import socket
import time
from pathlib import Path

from quiver.snapshot.layout import SnapshotRoot, write_atomic

REFRESH_SECONDS = 30.0


class Lease:
    def __init__(self, root: SnapshotRoot) -> None:
        self.host = socket.gethostname()
        self.path = root.path / "leases" / f"{self.host}-{os.getpid()}.json"
        self.written = 0.0
        self.versions: list[str] = []

    def hold(self, versions: list[str]) -> None:
        self.versions = versions
        self.path.parent.mkdir(exist_ok=True)
        data = {"host": self.host, "pid": os.getpid(), "versions": versions, "updated": time.time()}
        write_atomic(self.path, json.dumps(data).encode())
        self.written = time.monotonic()

    def refresh(self) -> None:
        if self.versions and time.monotonic() - self.written > REFRESH_SECONDS:
            self.hold(self.versions)

    def release(self) -> None:
        Path(self.path).unlink(missing_ok=True)
