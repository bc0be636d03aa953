"""`quiver gc`: removes old versions, never one that is or may soon be read.

Kept, whatever --keep says:
  - the CURRENT version (read again just before each removal, in case a load moved it);
  - the previous one: ROOT/PREVIOUS (what CURRENT named before its last move), and the newest version
    published before CURRENT (by as-of time, then publish time): a server keeps it open for pinned requests
    and rollback;
  - every version a live lease holds: ROOT/leases/<host>-<pid>.json, written by each `quiver serve` worker.
    A lease is live when it is from this host and its process is alive, or from another host and rewritten
    within the last LEASE_FRESH_SECONDS (servers rewrite it every 30 s);
  - the K newest versions.
A version is removed by renaming it into ROOT/trash/ (one atomic step: it is either wholly visible with its
manifest or gone) and then deleting it there; trash left by a crashed gc is deleted on the next run. Files a
newer version reuses are hard links, so deleting the old path leaves the newer version intact.
Staging folders of killed loads (staging/load-*) are deleted only while no load holds ROOT/.load.lock.
"""

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from quiver.snapshot import Manifest, ManifestError, SnapshotRoot
from quiver.snapshot.layout import fsync_dir

__all__ = ["LEASE_FRESH_SECONDS", "GcError", "GcResult", "Lease", "collect", "read_leases"]

LEASE_FRESH_SECONDS = 600.0


class GcError(RuntimeError):
    """gc cannot decide safely (e.g. an unreadable lease); nothing was removed."""


@dataclass(frozen=True)
class Lease:
    path: Path
    host: str
    pid: int
    versions: tuple[str, ...]
    updated: float

    def live(self, now: float, host: str) -> bool:
        # A fresh lease counts even when its pid looks dead: gc may run in another container of the
        # pod (another pid namespace), where the server's pid means nothing.
        if now - self.updated < LEASE_FRESH_SECONDS:
            return True
        return self.host == host and _pid_alive(self.pid)


@dataclass
class GcResult:
    removed: dict[str, str] = field(default_factory=dict)   # version -> why it could go
    kept: dict[str, str] = field(default_factory=dict)      # version -> why it stays
    notes: list[str] = field(default_factory=list)          # staging, trash, dead leases


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def read_leases(root: SnapshotRoot) -> list[Lease]:
    """Every lease file; raises GcError on one it cannot read, since it might hold anything."""
    out = []
    for p in sorted((root.path / "leases").glob("*.json")):
        try:
            d = json.loads(p.read_bytes())
            out.append(Lease(p, str(d["host"]), int(d["pid"]), tuple(d["versions"]), float(d["updated"])))
        except FileNotFoundError:
            continue  # released while we listed
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GcError(f"{p}: unreadable lease ({e}); remove it if no server uses that root from there") from None
    return out


@contextmanager
def _load_lock_if_free(root: SnapshotRoot) -> Iterator[bool]:
    """True while we hold ROOT/.load.lock (no load can start), False if a load holds it."""
    path = root.path / ".load.lock"
    if not path.exists():
        yield True
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _order(root: SnapshotRoot) -> list[str]:
    """Published versions, oldest first: by as-of time, then publish (created) time, then id."""
    keyed = []
    for v in root.versions():
        try:
            m = Manifest.load(root.manifest_path(v))
            keyed.append(((m.as_of, m.created, v), v))
        except ManifestError:
            keyed.append((("", "", v), v))  # unreadable: oldest, but still subject to every protection
    return [v for _, v in sorted(keyed)]


def _remove(root: SnapshotRoot, version: str) -> None:
    trash = root.path / "trash"
    trash.mkdir(exist_ok=True)
    target = trash / f"{version}.{os.getpid()}.{time.time_ns()}"
    os.rename(root.version_dir(version), target)
    fsync_dir(root.versions_dir)
    shutil.rmtree(target)


def collect(root_dir: str | os.PathLike[str], keep: int, dry_run: bool = False) -> GcResult:
    """Removes the versions no rule keeps (see the module docstring); returns what it removed and kept, and why."""
    if keep < 0:
        raise ValueError("--keep must be 0 or more")
    root = SnapshotRoot(root_dir)
    result = GcResult()
    trash = root.path / "trash"
    if trash.is_dir() and not dry_run:
        for p in trash.iterdir():
            shutil.rmtree(p, ignore_errors=True)
            result.notes.append(f"deleted leftover trash {p.name}")
    order = _order(root)
    current = root.current()
    leases = read_leases(root)
    now, host = time.time(), socket.gethostname()
    held: dict[str, list[str]] = {}
    for lease in leases:
        if lease.live(now, host):
            for v in lease.versions:
                held.setdefault(v, []).append(f"{lease.host}-{lease.pid}")
        elif lease.host == host and not dry_run:
            lease.path.unlink(missing_ok=True)
            result.notes.append(f"removed lease {lease.path.name}: process {lease.pid} is gone")
    previous = {root.previous()}
    if current in order:
        i = order.index(current)
        previous.add(order[i - 1] if i > 0 else None)
    newest = set(order[len(order) - keep:]) if keep else set()
    for v in order:
        reasons = []
        if v == current:
            reasons.append("current")
        if v in previous:
            reasons.append("previous (before current)")
        if v in held:
            reasons.append(f"leased by {', '.join(held[v])}")
        if v in newest:
            reasons.append(f"one of the {keep} newest")
        if reasons:
            result.kept[v] = "; ".join(reasons)
            continue
        if root.current() == v:  # a load or rollback moved CURRENT since we looked
            result.kept[v] = "current"
            continue
        if not dry_run:
            _remove(root, v)
        result.removed[v] = f"older than the {keep} newest, not current, previous or leased"
    _clean_staging(root, dry_run, result)
    return result


def _clean_staging(root: SnapshotRoot, dry_run: bool, result: GcResult) -> None:
    # Held only for this step: versions are protected without it, and a load started meanwhile would fail.
    with _load_lock_if_free(root) as no_load:
        stale = sorted(root.staging_dir.glob("load-*")) if root.staging_dir.is_dir() else []
        if stale and not no_load:
            result.notes.append("a load is running: left staging/ alone")
            return
        for p in stale:
            if not dry_run:
                shutil.rmtree(p, ignore_errors=True)
            result.notes.append(f"removed stale staging {p.name}")
