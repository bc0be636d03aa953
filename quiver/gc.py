"""`quiver gc`: applies the root's retention rule (`quiver.snapshot.retention`: kept are CURRENT, the
previous, leased, the newest K) and cleans up after killed runs: leftover trash, dead leases of this host,
and staging folders of killed loads (only while no load holds the root's load lock).

A lease file that cannot be parsed stops gc before anything is removed (UnreadableLease, exit 1).
"""

import os
from dataclasses import dataclass, field

from quiver.base.errors import RootError, UnreadableLease
from quiver.snapshot import SnapshotRoot
from quiver.snapshot.lifecycle import clean_staging, empty_trash, lock_if_free
from quiver.snapshot.retention import apply, plan

__all__ = ["GcResult", "collect"]


@dataclass
class GcResult:
    removed: dict[str, str] = field(default_factory=dict)   # version -> why it could go
    kept: dict[str, str] = field(default_factory=dict)      # version -> why it stays
    notes: list[str] = field(default_factory=list)          # staging, trash, dead leases


def collect(root_dir: str | os.PathLike[str], keep: int, dry_run: bool = False) -> GcResult:
    """Removes the versions the retention rule does not keep; returns what it removed and kept, and why."""
    root = SnapshotRoot(root_dir)
    if not root.path.is_dir():
        raise RootError(f"{root.path}: no such snapshot root")
    result = GcResult()
    if not dry_run:
        result.notes += [f"deleted leftover trash {name}" for name in empty_trash(root)]
    retention = plan(root, keep)
    if retention.unreadable:
        raise UnreadableLease("; ".join(f"{p}: unreadable lease ({why}); remove it if no server uses that root "
                                        "from there" for p, why in retention.unreadable.items()))
    for lease in retention.leases.dead_here():
        if not dry_run:
            lease.path.unlink(missing_ok=True)
            result.notes.append(f"removed lease {lease.path.name}: process {lease.pid} is gone")
    result.removed = dict(retention.remove) if dry_run else apply(root, retention)
    result.kept = retention.kept
    # Held only for this step: versions are protected without it, and a load started meanwhile would fail.
    with lock_if_free(root, "load") as no_load:
        stale = sorted(root.staging_dir.glob("load-*")) if root.staging_dir.is_dir() else []
        if stale and not no_load:
            result.notes.append("a load is running: left staging/ alone")
        elif dry_run:
            result.notes += [f"removed stale staging {p.name}" for p in stale]
        else:
            result.notes += [f"removed stale staging {name}" for name in clean_staging(root, "load")]
    return result
