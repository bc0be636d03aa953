"""Load stage before publish: the version's statistics and its checks.

Statistics are accumulated inside the load's existing passes (quality/statistics.py): by the encode
tasks for views that keep every row, and by the sort tasks after dedup for views with an event
timestamp, so they describe exactly the rows the version serves. Reused views carry theirs from the
version they are linked from. This stage merges them, writes STATISTICS_FILE into the version (listed
and checksummed by the manifest like any file), evaluates every check against them and against the
version it is compared against (CURRENT, read by the plan: the rule is in quality/__init__.py), and
refuses the version when a check fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from quiver.base.errors import ChecksFailed
from quiver.quality.checks import evaluate_view
from quiver.quality.statistics import StatisticsMissing, ViewAccumulator, read_statistics, write_statistics
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.manifest import CheckResult, CheckSummary, Manifest, ViewStats
from quiver.snapshot.schema import FeatureSet

if TYPE_CHECKING:   # the load's plan, passed in: quality imports nothing of the loader
    from quiver.loader.plan import GroupPlan


def check(root: SnapshotRoot, reuse_from: Manifest | None, current: Manifest | None, features: FeatureSet,
          groups: list[GroupPlan], partials: dict[str, list[ViewAccumulator]], per_view: dict[str, ViewStats],
          out: Path, accept_failed: bool) -> CheckSummary:
    """The stage, for both engines (loader/load.py, loader/spark/build.py): statistics of every view
    (re-read views' merged from their tasks' partials, in the order given: the local engine's task order,
    so both engines merge the same partials in the same order; reused views' carried from the version
    they come from), written into the version; the checks' verdict, which raises ChecksFailed unless
    accept_failed. `current` is the version this one is compared against: CURRENT, which it replaces."""
    carried_from = views_of(root, reuse_from)
    statistics = {}
    for g in groups:
        for v in g.views:
            if g.linked or v.name in g.kept:
                statistics[v.name] = carried(carried_from, v.name, per_view[v.name].rows)
            else:
                statistics[v.name] = merged(partials[v.name]) if partials[v.name] else \
                    ViewAccumulator(v).to_json()
    results = evaluate(features, statistics, current, views_of(root, current))
    summary = verdict(results, accept_failed)   # raises: nothing is published
    write_statistics(out, {v.name: statistics[v.name] for v in features.views})
    return summary


def merged(partials: list[ViewAccumulator]) -> dict[str, Any]:
    total = partials[0]
    for p in partials[1:]:
        total.merge(p)
    return total.to_json()


def views_of(root: SnapshotRoot, manifest: Manifest | None) -> dict[str, Any]:
    """Per view, the statistics a published version recorded ({} for none, e.g. a version older than them)."""
    if manifest is None:
        return {}
    try:
        data = read_statistics(root, manifest.version)
    except (StatisticsMissing, ValueError):
        return {}
    views: dict[str, Any] = data.get("views", {})
    return views


def carried(previous: dict[str, Any], view: str, rows: int) -> dict[str, Any]:
    """A reused view's statistics, from the version its files are linked from."""
    return previous.get(view) or {"rows": rows, "features": {}, "missing": True}


def evaluate(features: FeatureSet, stats: dict[str, dict[str, Any]], current: Manifest | None,
             current_stats: dict[str, Any]) -> list[CheckResult]:
    results: list[CheckResult] = []
    for view in features.views:
        s = stats[view.name]
        if s.get("missing"):
            results += [CheckResult(view.name, f.name, c, "skipped", None, f.checks[c], [],
                                    "no statistics: the view is reused from a version loaded before quiver "
                                    "recorded them; load with --no-reuse to check it")
                        for f in view.features for c in f.checks if c != "warn"]
            continue
        previous = current_stats.get(view.name)
        if previous is not None and previous.get("missing"):
            previous = None
        results += evaluate_view(view, s, previous, current.version if current else "")
    return results


def verdict(results: list[CheckResult], accept_failed: bool) -> CheckSummary:
    """The manifest's summary; raises ChecksFailed naming every failed check unless accept_failed."""
    summary = CheckSummary.of(results, accepted_failures=False)
    failed = summary.with_status("failed")
    if failed and not accept_failed:
        lines = "\n".join(f"  FAILED {r.describe()}" for r in failed)
        raise ChecksFailed(f"{len(failed)} check(s) failed; the version is not published:\n{lines}\n"
                           f"fix the data or the checks, or load with --accept-failed-checks to publish anyway")
    summary.accepted_failures = bool(failed)
    return summary
