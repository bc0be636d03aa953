"""Leases: which versions a running server holds, so that no retention rule deletes them.

ROOT/leases/<host>-<pid>.json = {"host", "pid", "versions", "updated"}, written by each `quiver serve`
worker (`ServerLease`): rewritten on every swap and every `refresh_seconds` (REFRESH_SECONDS unless the
server's configuration says otherwise: `quiver serve --lease-refresh-seconds`, service/config.py), removed
on a clean exit.

A lease is live while it is fresh (rewritten within FRESH_SECONDS), or while its process is alive on
this host. Fresh alone is enough because the reader may sit in another container of the pod (another
PID namespace), where the server's pid means nothing; a stale lease from another host is dead.

A lease file that cannot be parsed might hold anything: `read_leases` returns it by name among
`unreadable`, and retention removes nothing while one exists (see `retention`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from quiver.snapshot.layout import SnapshotRoot, write_atomic

__all__ = ["FRESH_SECONDS", "REFRESH_SECONDS", "Lease", "Leases", "ServerLease", "read_leases"]

REFRESH_SECONDS = 30.0
FRESH_SECONDS = 600.0


def leases_dir(root: SnapshotRoot) -> Path:
    return root.path / "leases"


@dataclass(frozen=True)
class Lease:
    path: Path
    host: str
    pid: int
    versions: tuple[str, ...]
    updated: float

    @property
    def holder(self) -> str:
        return f"{self.host}-{self.pid}"

    def live(self, now: float | None = None, host: str | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self.updated < FRESH_SECONDS:
            return True
        return self.host == (host or socket.gethostname()) and _pid_alive(self.pid)


@dataclass
class Leases:
    """Every lease file of a root, read once: the parsed ones, and the paths of those that are garbage."""

    leases: list[Lease] = field(default_factory=list)
    unreadable: dict[Path, str] = field(default_factory=dict)   # path -> why it could not be parsed

    def held(self, now: float | None = None, host: str | None = None) -> dict[str, list[str]]:
        """version -> holders of a live lease on it."""
        now, host = time.time() if now is None else now, host or socket.gethostname()
        out: dict[str, list[str]] = {}
        for lease in self.leases:
            if lease.live(now, host):
                for v in lease.versions:
                    out.setdefault(v, []).append(lease.holder)
        return out

    def dead_here(self, now: float | None = None, host: str | None = None) -> list[Lease]:
        """Dead leases of processes on this host: safe to remove (their process is gone)."""
        now, host = time.time() if now is None else now, host or socket.gethostname()
        return [lease for lease in self.leases if lease.host == host and not lease.live(now, host)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def read_leases(root: SnapshotRoot) -> Leases:
    """Every lease file under ROOT/leases/; one that cannot be parsed is listed in `unreadable`."""
    out = Leases()
    for p in sorted(leases_dir(root).glob("*.json")):
        try:
            d = json.loads(p.read_bytes())
            out.leases.append(Lease(p, str(d["host"]), int(d["pid"]), tuple(str(v) for v in d["versions"]),
                                    float(d["updated"])))
        except FileNotFoundError:
            continue  # released while we listed
        except (OSError, ValueError, KeyError, TypeError) as e:
            out.unreadable[p] = f"{type(e).__name__}: {e}"
    return out


class ServerLease:
    """The lease one server worker writes for the versions it holds open, rewritten by `refresh()` once
    `refresh_seconds` have passed since it was last written (well under FRESH_SECONDS, or it goes stale)."""

    def __init__(self, root: SnapshotRoot, refresh_seconds: float = REFRESH_SECONDS) -> None:
        if not 0 < refresh_seconds < FRESH_SECONDS:
            raise ValueError(f"lease refresh every {refresh_seconds} s: expected more than 0 and less than "
                             f"{FRESH_SECONDS:.0f} (a lease not rewritten for that long is stale)")
        self.refresh_seconds = refresh_seconds
        self.host = socket.gethostname()
        self.path = leases_dir(root) / f"{self.host}-{os.getpid()}.json"
        self.written = 0.0
        self.versions: list[str] = []

    def hold(self, versions: list[str]) -> None:
        self.versions = versions
        self.path.parent.mkdir(exist_ok=True)
        data = {"host": self.host, "pid": os.getpid(), "versions": versions, "updated": time.time()}
        write_atomic(self.path, json.dumps(data).encode())
        self.written = time.monotonic()

    def refresh(self) -> None:
        if self.versions and time.monotonic() - self.written > self.refresh_seconds:
            self.hold(self.versions)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
