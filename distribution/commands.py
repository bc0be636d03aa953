"""CLI: `quiver publish` and `quiver sync` (thin wrappers over publish.py and sync.py)."""

from __future__ import annotations

import argparse
import signal
import threading
import time

from quiver.base.args import at_least, positive_float
from quiver.base.errors import UsageError
from quiver.distribution.publish import point_latest, publish
from quiver.distribution.sync import sync, watch

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("publish", help="upload a version to object storage and point LATEST at it",
                              description="Upload a version (data files, then its manifest, then LATEST). "
                              "S3 endpoint: $QUIVER_S3_ENDPOINT or $AWS_ENDPOINT_URL (default: AWS's own); "
                              "credentials: the usual AWS chain.")
    p.add_argument("--root", help="local snapshot root to upload from; without it, --version must already be "
                   "published there and only LATEST moves (a data rollback) (default: none)")
    p.add_argument("--to", required=True, dest="uri", metavar="URI",
                   help="where to publish: s3://bucket/prefix or file:///dir (required)")
    p.add_argument("--version", help="version id to publish; an older one rolls LATEST back "
                   "(default: the root's CURRENT)")
    p.set_defaults(handler=_cmd_publish)

    s = subparsers.add_parser("sync", help="download the published LATEST version and make it CURRENT",
                              description="Download what LATEST names, verify every file, publish it into "
                              "the root, move CURRENT, then apply the retention rule (kept: CURRENT, the "
                              "previous, leased, the newest K). S3 endpoint: $QUIVER_S3_ENDPOINT or "
                              "$AWS_ENDPOINT_URL.")
    s.add_argument("--from", required=True, dest="uri", metavar="URI",
                   help="where versions are published: s3://bucket/prefix or file:///dir (required)")
    s.add_argument("--root", required=True, help="local snapshot root; created if missing (required)")
    s.add_argument("--watch", type=positive_float, metavar="SECONDS",
                   help="keep syncing at this interval; a failed round is logged and retried "
                   "(default: sync once and exit)")
    s.add_argument("--keep", type=at_least(2), default=3, metavar="K",
                   help="the K newest versions are kept, besides CURRENT, the previous and leased ones "
                   "(at least 2; default: 3)")
    s.add_argument("--online-only", action="store_true",
                   help="fetch only the RocksDB form a server reads, not the offline Parquet (training reads "
                   "that from the store) (default: both forms)")
    s.set_defaults(handler=_cmd_sync)


def _cmd_publish(args: argparse.Namespace) -> int:
    if not args.root:
        if not args.version:
            raise UsageError("give --root (upload a version) or --version (move LATEST to it)")
        moved = point_latest(args.uri, args.version)
        print(f"LATEST at {args.uri} {'moved to' if moved else 'already'} {args.version}")
        return 0
    r = publish(args.root, args.uri, args.version)
    print(f"published {r.version} to {args.uri}: {len(r.uploaded)} files uploaded, {len(r.referenced)} "
          f"referenced in the previous version, "
          f"{len(r.skipped)} already there"
          + ("; LATEST moved" if r.latest_moved else "; LATEST unchanged"))
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    if args.watch:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        watch(args.uri, args.root, args.watch, args.keep, stop=stop, online_only=args.online_only)
        return 0
    t0 = time.monotonic()
    r = sync(args.uri, args.root, args.keep, online_only=args.online_only)
    print(f"CURRENT {r.version} (was {r.previous}): {len(r.downloaded)} files downloaded, {len(r.linked)} linked, "
          f"{len(r.resumed)} resumed, " + (f"{len(r.left_out)} offline left out, " if r.left_out else "")
          + f"{len(r.pruned)} old versions pruned in {time.monotonic() - t0:.1f}s")
    return 0
