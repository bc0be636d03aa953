"""The served version's check summary as gauges, set when a version is swapped in; GetFeatures latencies,
counted on the hot path and flushed into the histogram."""

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from quiver.service import metrics
from quiver.service.reader import RequestCounts
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


def histogram(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {s.labels.get("le", s.name): s.value for m in registry.collect() for s in m.samples
            if s.name in (f"{name}_bucket", f"{name}_sum", f"{name}_count") and s.labels.get("method") == "GetFeatures"}


def test_latencies_counted_on_the_hot_path_flush_into_what_observe_would_have_written() -> None:
    # the oracle: prometheus_client's own Histogram.observe, call by call, on the same buckets
    registry = CollectorRegistry()
    oracle = Histogram("oracle", "", ["method"], buckets=metrics.LATENCY_BUCKETS,
                       registry=registry).labels("GetFeatures")
    latencies = metrics.Latencies()
    before = histogram(REGISTRY, "quiver_rpc_latency_seconds")
    # every bound exactly (le is inclusive), just above each, zero and past the last bucket
    seen = [0.0, *metrics.LATENCY_BUCKETS, *(b * 1.0001 for b in metrics.LATENCY_BUCKETS), 7.5, 0.00042, 0.00042]
    for s in seen:
        latencies.observe(s)
        oracle.observe(s)
    metrics.flush(RequestCounts(), latencies, None)
    after = histogram(REGISTRY, "quiver_rpc_latency_seconds")
    want = histogram(registry, "oracle")
    assert len(after) == len(metrics.LATENCY_BUCKETS) + 3   # the buckets, +Inf, _sum and _count
    for key, value in after.items():
        name = key.replace("quiver_rpc_latency_seconds", "oracle")
        assert value - before.get(key, 0) == pytest.approx(want[name]), key
    # taken: a second flush adds nothing
    metrics.flush(RequestCounts(), latencies, None)
    assert histogram(REGISTRY, "quiver_rpc_latency_seconds") == after
