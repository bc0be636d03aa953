"""CLI: `quiver load`, `quiver snapshots`, `quiver generate` (thin wrappers over the Python API)."""

import argparse
import logging
import sys
from datetime import UTC, datetime

from quiver.loader.errors import LoadError
from quiver.loader.generate import generate
from quiver.loader.listing import list_snapshots
from quiver.loader.load import LoadOptions, load
from quiver.snapshot import rocks


def _as_of(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--as-of {text!r}: expected ISO 8601, e.g. 2026-11-27T00:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("load", help="build a new snapshot version from the Parquet sources in features.yaml")
    p.add_argument("--features", required=True, help="features.yaml")
    p.add_argument("--root", required=True, help="snapshot root folder")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--as-of", type=_as_of, default=None, help="the data's as-of time (default: now)")
    p.add_argument("--compression", choices=["lz4", "zstd", "snappy", "none"], default=rocks.DEFAULT_COMPRESSION,
                   help="of the online form's SST files (default: none, read through mmap; bench/README.md)")
    p.add_argument("--no-reuse", action="store_true", help="re-encode views even if unchanged")
    p.add_argument("--allow-type-change", action="store_true",
                   help="accept a feature whose type differs from the current version's")
    p.add_argument("--allow-regroup", action="store_true",
                   help="accept a view moved to another storage group than in the current version "
                        "(rewrites both groups on every replica)")
    p.set_defaults(handler=_load)

    p = sub.add_parser("snapshots", help="list the versions under a root")
    p.add_argument("--root", required=True)
    p.set_defaults(handler=_snapshots)

    p = sub.add_parser("generate", help="write a synthetic MAU-like data set and its features.yaml")
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_generate)


def _load(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s quiver[load] %(message)s")
    try:
        r = load(args.features, args.root, LoadOptions(workers=args.workers, as_of=args.as_of,
                                                        compression=args.compression, reuse=not args.no_reuse,
                                                        allow_type_change=args.allow_type_change,
                                                        allow_regroup=args.allow_regroup))
    except LoadError as e:
        print(f"quiver load: error: {e}", file=sys.stderr)
        print("quiver load: nothing was published; CURRENT is unchanged", file=sys.stderr)
        return e.exit_code
    rows = sum(r.manifest.rows().values())
    note = "published" if r.published else "already published; CURRENT points to it"
    for name, n in r.dropped.items():
        if n:
            print(f"view {name!r}: dropped {n} older row(s) of duplicate keys (latest event timestamp kept)",
                  file=sys.stderr)
    if r.reused_views:
        print(f"reused unchanged view(s) without re-encoding: {', '.join(r.reused_views)}", file=sys.stderr)
    if r.linked_groups:
        print(f"linked unchanged storage group(s): {', '.join(r.linked_groups)}", file=sys.stderr)
    print(f"{note}: {r.version} ({rows} rows in {r.seconds:.1f} s)", file=sys.stderr)
    print(r.version)
    return 0


def _snapshots(args: argparse.Namespace) -> int:
    rows = list_snapshots(args.root)
    if not rows:
        print(f"no versions under {args.root}")
        return 0
    print(f"{'':2}{'version':<32}{'created':<22}{'as of':<22}{'size':>12}  rows per view")
    for s in rows:
        views = ", ".join(f"{k}={v}" for k, v in s.rows.items())
        print(f"{'*' if s.current else ' ':2}{s.version:<32}{s.created:<22}{s.as_of:<22}{s.size_bytes:>12}  {views}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    print(generate(args.users, args.out, args.seed))
    return 0
