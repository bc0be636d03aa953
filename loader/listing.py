"""What `quiver snapshots` shows."""

import os
from dataclasses import dataclass

from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.manifest import Manifest, ManifestError


@dataclass(frozen=True)
class SnapshotSummary:
    version: str
    created: str
    as_of: str
    rows: dict[str, int]
    size_bytes: int
    current: bool
    base: str = ""          # a delta version: the oldest version its delta groups stand on
    delta_bytes: int = 0    # its delta files' bytes (online and offline)


def list_snapshots(root_dir: str | os.PathLike[str]) -> list[SnapshotSummary]:
    root = SnapshotRoot(root_dir)
    current = root.current()
    out = []
    for v in root.versions():
        try:
            m = Manifest.load(root.manifest_path(v))
        except ManifestError:
            continue
        out.append(SnapshotSummary(v, m.created, m.as_of, m.rows(), m.size_bytes, v == current, m.base,
                                   m.delta_bytes()))
    return out
