"""Whether a version on disk is whole: the one check the server runs before it serves a version, the
loader before it reuses one, and `quiver verify` before it compares one.

Levels, as the server's --verify names them: "none" reads the manifest only; "size" also finds every
file with the size the manifest records (a stat each); "full" also compares every file's checksum
(reads every byte). What only an open RocksDB can tell (its live files, its row count) is the
server's, in service/store.py."""

from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.manifest import Manifest, ManifestError

__all__ = ["LEVELS", "check_version"]

LEVELS = ("none", "size", "full")
SHOWN = 5   # damaged files named in one message; the rest are counted


def check_version(root: SnapshotRoot, version: str, level: str, prefix: str = "") -> Manifest:
    """The manifest of `version`, once it is checked: it loads, it names this version, (level) the files
    under `prefix` match it, and its groups hold its views as its schema says. Raises ManifestError
    starting "version <id>: " and naming what is wrong."""
    if level not in LEVELS:
        raise ValueError(f"check level {level!r}: expected one of {', '.join(LEVELS)}")
    vdir = root.version_dir(version)
    try:
        manifest = Manifest.load(vdir / "manifest.json")
    except ManifestError as e:
        raise ManifestError(f"version {version}: {e}") from None
    if manifest.version != version:
        raise ManifestError(f"version {version}: its manifest names {manifest.version}")
    if level != "none":
        problems = manifest.verify_files(vdir, full=(level == "full"), prefix=prefix)
        if problems:
            more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
            raise ManifestError(f"version {version}: " + "; ".join(problems[:SHOWN]) + more)
    grouped = {v: g for g, s in manifest.groups.items() for v in s.views}
    stray = [(v.name, v.group) for v in manifest.schema.views if grouped.get(v.name) != v.group]
    if stray or len(grouped) != len(manifest.schema.views):
        raise ManifestError(f"version {version}: the manifest's groups do not hold its views as the schema says "
                            f"(views and groups: {stray or sorted(grouped.items())})")
    return manifest
