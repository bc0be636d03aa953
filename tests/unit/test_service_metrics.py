"""The served version's check summary as gauges, set when a version is swapped in."""

from prometheus_client import REGISTRY

from quiver.service import metrics
from quiver.service.store import LoadedVersion
from quiver.snapshot import EntityDef, FeatureSet, Manifest
from quiver.snapshot.manifest import CheckResult, CheckSummary


def version(name: str, summary: CheckSummary) -> LoadedVersion:
    m = Manifest(name, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", FeatureSet(EntityDef("u", "int64"), ()), {},
                 {}, checks=summary)
    return LoadedVersion(name, m, {}, "")


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_swap_sets_the_check_gauges() -> None:
    failed = CheckResult("v", "f", "min", "failed", -1, 0)
    warned = CheckResult("v", "g", "max", "warned", 9, 5)
    forced = version("20260101T000000Z-000000000001", CheckSummary.of([failed, failed, warned], True))
    metrics.on_swap(forced, None)
    assert gauge("quiver_snapshot_checks_failed") == 2
    assert gauge("quiver_snapshot_checks_warned") == 1
    assert gauge("quiver_snapshot_accepted_failed_checks") == 1
    clean = version("20260102T000000Z-000000000002", CheckSummary.of([CheckResult("v", "f", "min", "passed", 1, 0)]))
    metrics.on_swap(clean, forced)
    assert (gauge("quiver_snapshot_checks_failed"), gauge("quiver_snapshot_checks_warned"),
            gauge("quiver_snapshot_accepted_failed_checks")) == (0, 0, 0)
