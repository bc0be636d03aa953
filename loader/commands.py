"""CLI: `quiver load` (in full, or `--changes`: a delta version), `quiver validate`, `quiver compact`,
`quiver rollback`, `quiver snapshots`, `quiver generate` (thin wrappers over the Python API)."""

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from quiver.base.args import at_least
from quiver.base.errors import QuiverError, RootError, UsageError
from quiver.loader.definitions import load_definitions
from quiver.loader.delta import REBASE_FRACTION, ChangeOptions, compact, load_changes, rollback
from quiver.loader.errors import LoadDiskFull, disk_full
from quiver.loader.generate import generate
from quiver.loader.listing import list_snapshots
from quiver.loader.load import LoadOptions, LoadResult, load
from quiver.loader.sources import inspect
from quiver.snapshot import rocks
from quiver.snapshot.manifest import CheckSummary


def _as_of(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--as-of {text!r}: expected ISO 8601, e.g. 2026-11-27T00:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _spark_setting(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.startswith("spark."):
        raise argparse.ArgumentTypeError(f"--spark-conf {text!r}: expected spark.KEY=VALUE")
    return key, value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("load", help="build a new snapshot version from the Parquet sources in features.yaml, or "
                       "(--changes) a delta version on top of CURRENT")
    p.add_argument("--features", default=None,
                   help="features.yaml: the entity, views and their sources (required, but with --changes, where "
                   "it is optional and must declare the changed views as CURRENT holds them)")
    p.add_argument("--changes", action="append", default=[], metavar="VIEW=PATH", type=_change,
                   help="publish a delta version on top of CURRENT: PATH (a Parquet file, folder or glob) holds "
                   "changed rows of VIEW, with the entity key and every feature; a bool column _deleted removes "
                   "the entity from the view (repeatable; local engine only) (default: a full load)")
    p.add_argument("--rebase-fraction", type=_fraction, default=REBASE_FRACTION, metavar="F",
                   help="with --changes: a storage group whose cumulative delta holds more than this fraction of "
                   f"its entities is written in full (default: {REBASE_FRACTION})")
    p.add_argument("--root", required=True,
                   help="snapshot root folder; created if missing (required); or s3://bucket/prefix or "
                   "file:///dir: the version is built in --work-root, then published there as `quiver publish` does")
    p.add_argument("--workers", type=at_least(1), default=2,
                   help="local engine: worker processes that encode and sort; with --changes, threads that read and "
                   "assemble the changed entities (default: 2)")
    p.add_argument("--engine", choices=["local", "spark"], default="local",
                   help="local: worker processes on this machine; spark: a Spark job (pip extra [spark], Java 17) "
                   "(default: local)")
    p.add_argument("--spark-master", default="local[2]", metavar="URL",
                   help="--engine spark: the Spark master: local[N], spark://..., k8s://... (default: local[2])")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", type=_spark_setting,
                   help="--engine spark: a Spark setting (repeatable), e.g. spark.executor.instances=8 (default: none)")
    p.add_argument("--work-root", default=None,
                   help="with an object-store --root: the local root the version is built in (default: a folder "
                   "under TMPDIR named for the URI, removed afterwards or, if the load was killed, by the next "
                   "load to that URI; give a kept one to reuse unchanged views)")
    p.add_argument("--as-of", type=_as_of, default=None, help="the data's as-of time, ISO 8601 (default: now)")
    p.add_argument("--compression", choices=["lz4", "zstd", "snappy", "none"], default=rocks.DEFAULT_COMPRESSION,
                   help="compression of the online form's SST files (default: none, read through mmap; "
                   "bench/README.md)")
    p.add_argument("--no-reuse", action="store_true",
                   help="re-encode views even if unchanged (default: link unchanged ones from CURRENT)")
    p.add_argument("--allow-type-change", action="store_true",
                   help="accept a feature whose type differs from the current version's (default: refuse)")
    p.add_argument("--allow-regroup", action="store_true",
                   help="accept a view moved to another storage group than in the current version "
                        "(rewrites both groups on every replica) (default: refuse)")
    p.add_argument("--accept-failed-checks", action="store_true",
                   help="publish even if features.yaml checks fail, recording it in the manifest (default: a "
                        "failing version is not published and the load exits 13)")
    p.set_defaults(handler=_load)

    p = sub.add_parser("validate", help="check features.yaml without loading: every definition, every computed "
                       "feature's SQL against the allow-list, and (unless --no-sources) each view's source files' "
                       "columns; prints the views and what each computes")
    p.add_argument("--features", required=True, help="features.yaml to check (required)")
    p.add_argument("--no-sources", action="store_true",
                   help="do not open the sources (default: read each source file's footer, no data)")
    p.set_defaults(handler=_validate)

    p = sub.add_parser("compact", help="write every group and view of CURRENT that carries a delta in full, as a "
                       "new version (the same rows), while CURRENT serves")
    p.add_argument("--root", required=True, help="snapshot root folder (required)")
    p.set_defaults(handler=_compact)

    p = sub.add_parser("rollback", help="move CURRENT back to the previous version (or --to V), atomically")
    p.add_argument("--root", required=True, help="snapshot root folder (required)")
    p.add_argument("--to", default=None, metavar="VERSION",
                   help="the version to serve; refused when absent or when its files fail their checksums "
                   "(default: PREVIOUS, the version CURRENT named before its last move)")
    p.set_defaults(handler=_rollback)

    p = sub.add_parser("snapshots", help="list the versions under a root")
    p.add_argument("--root", required=True, help="snapshot root folder (required)")
    p.set_defaults(handler=_snapshots)

    p = sub.add_parser("generate", help="write a synthetic MAU-like data set and its features.yaml")
    p.add_argument("--users", type=at_least(1), required=True, help="how many users to generate (required)")
    p.add_argument("--out", required=True, help="folder to write the Parquet files and features.yaml to (required)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same data (default: 0)")
    p.add_argument("--with-checks", action="store_true",
                   help="declare about one check per feature in features.yaml (default: no checks)")
    p.add_argument("--events-per-user", type=float, default=10.0, metavar="N",
                   help="also write events/, about N click and view events per user over the 30 days before "
                   "--events-end, and the computed features over it (view engagement, profile.is_mobile); 0: "
                   "none (default: 10)")
    p.add_argument("--events-end", type=_as_of, default=None,
                   help="the end of the events' 30 days, ISO 8601 (default: today's midnight, UTC)")
    p.set_defaults(handler=_generate)


def _change(text: str) -> tuple[str, str]:
    view, eq, path = text.partition("=")
    if not eq or not view or not path:
        raise argparse.ArgumentTypeError(f"--changes {text!r}: expected VIEW=PATH")
    return view, path


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        f = -1.0
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError(f"--rebase-fraction {text!r}: expected a number in (0, 1]")
    return f


def _load_changes(args: argparse.Namespace) -> int:
    if args.engine == "spark":
        raise UsageError("--changes is built by the local engine only (a delta is small by design): drop "
                         "--engine spark")
    if "://" in str(args.root):
        raise UsageError(f"--changes applies to a snapshot root folder, not {args.root}: apply it to the root the "
                         "store is published from, then `quiver publish`")
    changes = dict(args.changes)
    if len(changes) != len(args.changes):
        raise UsageError("--changes names a view twice; give one VIEW=PATH per view (PATH may be a folder or glob)")
    r = load_changes(args.root, changes, ChangeOptions(as_of=args.as_of, rebase_fraction=args.rebase_fraction,
                                                      accept_failed_checks=args.accept_failed_checks,
                                                      features=args.features, compression=args.compression,
                                                      workers=args.workers))
    _print_checks(r.manifest.checks)
    if not r.published:
        print(f"already published; CURRENT points to it: {r.version}", file=sys.stderr)
    else:
        assert r.manifest.changes is not None
        c = r.manifest.changes
        what = ", ".join(f"{v} {c.upserted[v]} changed, {c.deleted[v]} removed" for v in c.sources)
        rebased = f"; rebased in full: {', '.join(r.rebased)}" if r.rebased else ""
        print(f"published delta {r.version} on {c.previous}: {what} in {r.seconds:.1f} s{rebased}", file=sys.stderr)
    print(r.version)
    return 0


def _print_checks(checks: CheckSummary) -> None:
    for status in ("failed", "warned", "skipped"):
        for c in checks.with_status(status):
            label = "FAILED (accepted with --accept-failed-checks)" if status == "failed" else status.upper()
            print(f"{label} {c.describe()}", file=sys.stderr)


def _load(args: argparse.Namespace) -> int:
    if args.changes:
        return _load_changes(args)
    if args.features is None:
        raise UsageError("quiver load: --features is required (but with --changes)")
    opts = LoadOptions(workers=args.workers, as_of=args.as_of, compression=args.compression,
                       reuse=not args.no_reuse, allow_type_change=args.allow_type_change,
                       allow_regroup=args.allow_regroup,
                       accept_failed_checks=args.accept_failed_checks)
    try:
        if args.engine == "spark":
            r = _load_on_spark(args, opts)
        else:
            r = load(args.features, args.root, opts, work_root=args.work_root)
    except OSError as e:
        if not disk_full(e):
            raise
        raise LoadDiskFull(f"{args.root}: no space left on device while staging the new version ({e}); free "
                           "space or remove old versions (quiver gc)") from None
    rows = sum(r.manifest.rows().values())
    note = "published" if r.published else "already published; CURRENT points to it"
    for name, n in r.dropped.items():
        if n:
            print(f"view {name!r}: dropped {n} older row(s) of duplicate keys (latest event timestamp kept)",
                  file=sys.stderr)
    _print_checks(r.checks)
    if r.reused_views:
        print(f"reused unchanged view(s) without re-encoding: {', '.join(r.reused_views)}", file=sys.stderr)
    if r.linked_groups:
        print(f"linked unchanged storage group(s): {', '.join(r.linked_groups)}", file=sys.stderr)
    print(f"{note}: {r.version} ({rows} rows in {r.seconds:.1f} s)", file=sys.stderr)
    print(r.version)
    return 0


def _load_on_spark(args: argparse.Namespace, opts: LoadOptions) -> LoadResult:
    """The same load, its data path run by Spark. Its errors are the local loader's (and, publishing to
    object storage, `quiver publish`'s), mapped to exit codes in quiver.cli like theirs."""
    from dataclasses import replace

    from quiver.loader.spark import load as spark_load
    from quiver.loader.spark import spark_session

    spark = spark_session(args.spark_master, conf=dict(args.spark_conf))
    try:
        return spark_load(spark, args.features, args.root,
                          replace(opts, workers=spark.sparkContext.defaultParallelism), work_root=args.work_root)
    finally:
        spark.stop()


def _compact(args: argparse.Namespace) -> int:
    r = compact(args.root)
    if not r.published:
        print(f"nothing to compact: CURRENT ({r.version}) carries no delta", file=sys.stderr)
    else:
        print(f"published {r.version}: {', '.join(r.rebased)} written in full in {r.seconds:.1f} s", file=sys.stderr)
    print(r.version)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    was, now = rollback(args.root, args.to)
    print(f"CURRENT moved from {was} back to {now}", file=sys.stderr)
    print(now)
    return 0


def _snapshots(args: argparse.Namespace) -> int:
    if not Path(args.root).is_dir():
        raise RootError(f"{args.root}: no such snapshot root")
    rows = list_snapshots(args.root)
    if not rows:
        print(f"no versions under {args.root}")
        return 0
    print(f"{'':2}{'version':<32}{'created':<22}{'as of':<22}{'size':>12}  {'base (of a delta)':<31}"
          f"{'delta':>11}  rows per view")
    for s in rows:
        views = ", ".join(f"{k}={v}" for k, v in s.rows.items())
        print(f"{'*' if s.current else ' ':2}{s.version:<32}{s.created:<22}{s.as_of:<22}{s.size_bytes:>12}  "
              f"{s.base or '-':<31}{s.delta_bytes:>11}  {views}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    path = Path(args.features)
    try:
        features = load_definitions(path)
        for view in features.views:
            if not args.no_sources:
                inspect(features.entity, view, path.parent)
    except QuiverError as e:
        e.note = ""   # a load's note ("nothing was published"): no load ran
        raise
    for view in features.views:
        kinds = {"agg": sum(f.agg is not None for f in view.features), "expr": sum(bool(f.expr) for f in view.features)}
        computed = ", ".join(f"{n} {k}" for k, n in kinds.items() if n) + (", a filter" if view.filter else "")
        print(f"view {view.name}: {len(view.features)} features" + (f" ({computed})" if computed else ""))
    print(f"{path}: valid" + (" (sources not opened)" if args.no_sources else ""))
    return 0


def _generate(args: argparse.Namespace) -> int:
    print(generate(args.users, args.out, args.seed, args.with_checks, args.events_per_user, args.events_end))
    return 0
