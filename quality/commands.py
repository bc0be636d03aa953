"""CLI: `quiver diff` (the drift table between two versions) and `quiver report` (one HTML page of a
version's statistics and checks).

Exit codes (base/errors.py): 0 done; 9 no such root or version, or a version without statistics."""

import argparse
from pathlib import Path

from quiver.base.errors import RootError
from quiver.quality.drift import compare, compared_against, format_table, versions_to_compare
from quiver.quality.report import page_data, render
from quiver.quality.statistics import read_statistics
from quiver.snapshot import Manifest, ManifestError, SnapshotRoot


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("diff", help="what changed between two versions: PSI per feature, row and null-rate changes")
    p.add_argument("--root", required=True, help="snapshot root folder (required)")
    p.add_argument("a", nargs="?", default=None,
                   help="older version (default: ROOT/PREVIOUS, the version CURRENT replaced)")
    p.add_argument("b", nargs="?", default=None, help="newer version (default: CURRENT)")
    p.set_defaults(handler=_diff)

    p = sub.add_parser("report", help="write one self-contained HTML page of a version's statistics and checks")
    p.add_argument("--root", required=True, help="snapshot root folder (required)")
    p.add_argument("version", nargs="?", default=None, help="version id (default: CURRENT)")
    p.add_argument("--html", required=True, metavar="FILE", help="where to write the page (required)")
    p.add_argument("--against", metavar="VERSION", default=None,
                   help="the version whose histograms are drawn beneath (default for CURRENT: ROOT/PREVIOUS, "
                        "the version it replaced; for any other version: none)")
    p.set_defaults(handler=_report)


def _diff(args: argparse.Namespace) -> int:
    root = SnapshotRoot(args.root)
    try:
        a, b = versions_to_compare(root, args.a, args.b)
        print(format_table(compare(read_statistics(root, a), read_statistics(root, b)), a, b))
    except FileNotFoundError as e:
        raise RootError(str(e)) from None
    return 0


def _report(args: argparse.Namespace) -> int:
    root = SnapshotRoot(args.root)
    try:
        version = args.version or root.current()
        if version is None or version not in root.versions():
            raise FileNotFoundError(f"{root.path}: no version {version or '(CURRENT is not set)'}")
        manifest = Manifest.load(root.manifest_path(version))
        stats = read_statistics(root, version)
        previous, previous_stats = args.against, None
        if previous is not None:        # named: it must be there, with statistics
            if previous not in root.versions():
                raise FileNotFoundError(f"{root.path}: no version {previous}")
            previous_stats = read_statistics(root, previous)
        elif (previous := compared_against(root, version)) is not None:
            try:
                previous_stats = read_statistics(root, previous)
            except FileNotFoundError:   # gone, or loaded before statistics: the page shows this version alone
                previous = None
    except (FileNotFoundError, ManifestError) as e:
        raise RootError(str(e)) from None
    Path(args.html).write_text(render(page_data(manifest, stats, previous, previous_stats)))
    print(args.html)
    return 0
