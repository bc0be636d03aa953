"""The one retention rule of a snapshot root; `quiver gc` and `quiver sync --keep` both apply it.

**Kept: CURRENT, the previous, leased, the newest K.** Every other published version is removed.

- CURRENT: the served version; read again just before each removal, in case a load or rollback moved it.
- the previous: ROOT/PREVIOUS (what CURRENT named before its last move), and the version published just
  before CURRENT in version order; a server keeps it open for pinned requests and instant rollback.
- leased: every version named by a live lease in ROOT/leases/ (see `leases`: fresh, or its process alive
  on this host).
- the newest K: the last K in version order.

Version order is by as-of time, then publish (created) time, then id; a version whose manifest cannot be
read sorts oldest, and is still kept by every other clause.

A lease file that cannot be parsed might hold any version: while one exists the rule removes nothing,
and names the file (`Retention.unreadable`).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.leases import Leases, read_leases
from quiver.snapshot.lifecycle import remove_version
from quiver.snapshot.manifest import Manifest, ManifestError

__all__ = ["Retention", "apply", "plan", "version_order"]


@dataclass
class Retention:
    """What the rule decided for one root: every published version is in exactly one of kept/remove."""

    keep: int
    kept: dict[str, str] = field(default_factory=dict)     # version -> why it stays
    remove: dict[str, str] = field(default_factory=dict)   # version -> why it may go
    unreadable: dict[Path, str] = field(default_factory=dict)   # garbage lease files: nothing is removed
    leases: Leases = field(default_factory=Leases)


def version_order(root: SnapshotRoot) -> list[str]:
    """Published versions, oldest first: by as-of time, then publish (created) time, then id."""
    keyed = []
    for v in root.versions():
        try:
            m = Manifest.load(root.manifest_path(v))
            keyed.append(((m.as_of, m.created, v), v))
        except ManifestError:
            keyed.append((("", "", v), v))
    return [v for _, v in sorted(keyed)]


def plan(root: SnapshotRoot, keep: int, now: float | None = None) -> Retention:
    """Apply the rule to the root as it is now; removes nothing."""
    if keep < 0:
        raise ValueError("keep must be 0 or more")
    now, host = time.time() if now is None else now, socket.gethostname()
    order = version_order(root)
    current = root.current()
    leases = read_leases(root)
    held = leases.held(now, host)
    previous = {root.previous()}
    if current in order and order.index(current) > 0:
        previous.add(order[order.index(current) - 1])
    newest = set(order[len(order) - keep:]) if keep else set()
    out = Retention(keep, unreadable=dict(leases.unreadable), leases=leases)
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
            out.kept[v] = "; ".join(reasons)
        elif out.unreadable:
            out.kept[v] = "an unreadable lease might hold it: " + ", ".join(str(p) for p in out.unreadable)
        else:
            out.remove[v] = f"older than the {keep} newest, not current, previous or leased"
    return out


def apply(root: SnapshotRoot, retention: Retention) -> dict[str, str]:
    """Remove what `plan` allowed; returns version -> why for those removed. A version CURRENT names by
    now (a load or rollback since the plan) stays, and moves to `retention.kept`."""
    removed = {}
    for v, why in retention.remove.items():
        if root.current() == v:
            retention.kept[v] = "current"
            continue
        remove_version(root, v)
        removed[v] = why
    for v in set(retention.remove) - set(removed):
        del retention.remove[v]
    return removed
