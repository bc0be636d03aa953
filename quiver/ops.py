"""CLI: `quiver verify` and `quiver gc`, the operator's checks and clean-up of a snapshot root."""

import argparse
import sys

from quiver.base.args import at_least
from quiver.base.errors import RootError
from quiver.snapshot import ManifestError, SnapshotRoot


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("verify", help="compare a version's online RocksDB with its offline Parquet",
                       description="Compare both stored forms of one version key by key; exit 1 on a mismatch.")
    p.add_argument("--root", required=True, help="snapshot root folder (required)")
    p.add_argument("--version", default=None, help="version id to check (default: the root's CURRENT)")
    p.add_argument("--sample", type=at_least(1), default=None, metavar="N",
                   help="compare N random keys per view instead of every key; row counts are always checked "
                   "(default: every key)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --sample draw (default: 0)")
    p.add_argument("--workers", type=at_least(1), default=None, metavar="N",
                   help="worker processes comparing in parallel (default: one per CPU)")
    p.add_argument("--spill-dir", default=None, metavar="DIR",
                   help="where the offline rows are partitioned by key range while comparing; needs about 1.7 "
                   "times the offline Parquet's size (default: the temporary folder, TMPDIR)")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("gc", help="remove old versions: kept are CURRENT, the previous, leased and the newest K",
                       description="Apply the retention rule (kept: CURRENT, the previous, leased, the newest K) "
                       "and clean up after killed runs. An unreadable lease file stops gc before it removes "
                       "anything (exit 1).")
    p.add_argument("--root", required=True, help="snapshot root folder (required)")
    p.add_argument("--keep", type=at_least(0), required=True, metavar="K",
                   help="how many of the newest versions to keep besides CURRENT, the previous and leased "
                   "ones (required)")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing "
                   "(default: remove)")
    p.set_defaults(handler=_gc)


def _verify(args: argparse.Namespace) -> int:
    from quiver.verify import verify

    if not SnapshotRoot(args.root).path.is_dir():
        raise RootError(f"{args.root}: no such snapshot root")
    try:
        report = verify(args.root, args.version, args.sample, args.seed, args.workers, args.spill_dir)
    except (FileNotFoundError, ManifestError) as e:
        raise RootError(str(e)) from None
    for m in report.mismatches:
        print(f"MISMATCH {m}")
    checked = ", ".join(f"{v}={n}" for v, n in report.compared.items())
    if report.ok:
        print(f"ok: {report.version}: online and offline agree ({checked} key(s) compared)")
        return 0
    more = f" (and {report.unnamed} more not named)" if report.unnamed else ""
    print(f"quiver verify: {len(report.mismatches)} mismatch(es){more} in {report.version} ({checked} key(s) compared)",
          file=sys.stderr)
    return 1


def _gc(args: argparse.Namespace) -> int:
    from quiver.gc import collect

    result = collect(args.root, args.keep, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for v, why in result.removed.items():
        print(f"{verb} {v}: {why}")
    for v, why in result.kept.items():
        print(f"kept {v}: {why}")
    for note in result.notes:
        print(note)
    return 0
