"""CLI: `quiver verify` and `quiver gc`, the operator's checks and clean-up of a snapshot root.

Exit codes: 0 fine; 1 `verify` found mismatches, or `gc` could not decide safely; 2 bad arguments
(no such version or root)."""

import argparse
import sys

from quiver.snapshot import ManifestError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("verify", help="compare a version's online RocksDB with its offline Parquet")
    p.add_argument("--root", required=True, help="snapshot root folder")
    p.add_argument("--version", default=None, help="version id (default: CURRENT)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="compare N random keys per view instead of every key (row counts are always checked)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --sample draw")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes comparing in parallel (default: one per CPU)")
    p.add_argument("--spill-dir", default=None, metavar="DIR",
                   help="where the offline rows are partitioned by key range while comparing (default: the "
                        "temporary folder, TMPDIR); needs about 1.7 times the offline Parquet's size")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("gc", help="remove old versions: keeps the K newest, CURRENT, the previous one and leased ones")
    p.add_argument("--root", required=True, help="snapshot root folder")
    p.add_argument("--keep", type=int, required=True, metavar="K", help="how many of the newest versions to keep")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.set_defaults(handler=_gc)


def _verify(args: argparse.Namespace) -> int:
    from quiver.verify import verify

    if args.sample is not None and args.sample < 1:
        print("quiver verify: error: --sample must be at least 1", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print("quiver verify: error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        report = verify(args.root, args.version, args.sample, args.seed, args.workers, args.spill_dir)
    except (FileNotFoundError, ManifestError) as e:
        print(f"quiver verify: error: {e}", file=sys.stderr)
        return 2
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
    from quiver.gc import GcError, collect

    try:
        result = collect(args.root, args.keep, args.dry_run)
    except ValueError as e:
        print(f"quiver gc: error: {e}", file=sys.stderr)
        return 2
    except GcError as e:
        print(f"quiver gc: error: {e}; nothing was removed", file=sys.stderr)
        return 1
    verb = "would remove" if args.dry_run else "removed"
    for v, why in result.removed.items():
        print(f"{verb} {v}: {why}")
    for v, why in result.kept.items():
        print(f"kept {v}: {why}")
    for note in result.notes:
        print(note)
    return 0
