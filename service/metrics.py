"""Prometheus metrics. Workers write them through prometheus_client's multiprocess mode (files in
PROMETHEUS_MULTIPROC_DIR, set by the supervisor before any worker starts); the supervisor serves
the sum over workers on --metrics-port. Per-request counts and latencies are counted in plain ints on the hot
path and flushed once a second, not per call."""

import calendar
import time
from bisect import bisect_left

from prometheus_client import Counter, Gauge, Histogram

from quiver.service.reader import RequestCounts
from quiver.service.store import LoadedVersion

LATENCY_BUCKETS = (0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025,
                   0.05, 0.1, 0.25, 1.0)

RPC_LATENCY = Histogram("quiver_rpc_latency_seconds", "Server-side handling time per RPC", ["method"],
                        buckets=LATENCY_BUCKETS)
RPC_ERRORS = Counter("quiver_rpc_errors_total", "RPCs answered with an error status", ["method", "code"])
ENTITIES_REQUESTED = Counter("quiver_entities_requested_total", "Entity ids requested, per view", ["view"])
ENTITIES_FOUND = Counter("quiver_entities_found_total", "Entity ids found, per view", ["view"])
ENTITIES_MISSING = Counter("quiver_entities_missing_total", "Entity ids not found, per view", ["view"])
SNAPSHOT_INFO = Gauge("quiver_snapshot_current", "1 for the version each worker serves", ["version"],
                      multiprocess_mode="liveall")
SNAPSHOT_AS_OF = Gauge("quiver_snapshot_as_of_timestamp_seconds", "As-of time of the served version",
                       multiprocess_mode="livemin")
SNAPSHOT_AGE = Gauge("quiver_snapshot_age_seconds", "Seconds since the served version's as-of time",
                     multiprocess_mode="livemax")
SWAPS = Counter("quiver_snapshot_swaps_total", "Versions swapped in")
REFUSED = Counter("quiver_snapshot_refused_total", "New versions refused by their checks")
FALLBACK = Gauge("quiver_snapshot_fallback", "1 while a worker serves another version because CURRENT's was refused "
                 "at start", multiprocess_mode="livemax")
# the served version's feature checks, as its load recorded them (manifest "checks")
CHECKS_FAILED = Gauge("quiver_snapshot_checks_failed", "Feature checks that failed in the served version",
                      multiprocess_mode="livemax")
CHECKS_WARNED = Gauge("quiver_snapshot_checks_warned", "Warn-only feature checks that fired in the served version",
                      multiprocess_mode="livemax")
ACCEPTED_FAILURES = Gauge("quiver_snapshot_accepted_failed_checks",
                          "1 when the served version was published despite failed checks (--accept-failed-checks)",
                          multiprocess_mode="livemax")

GET_FEATURES_LATENCY = RPC_LATENCY.labels("GetFeatures")


class Latencies:
    """GetFeatures latencies, counted into LATENCY_BUCKETS on the hot path and added to the histogram by
    `flush`. A Histogram.observe in multiprocess mode takes a lock, two getpid calls and two writes to the
    mmap'd file per call, about 4 us of the one core."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)   # the last: above every bucket (+Inf)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1   # le: the first bound >= seconds
        self.total += seconds

    def take(self) -> tuple[list[int], float]:
        counts, total = self.counts, self.total
        self.counts, self.total = [0] * len(counts), 0.0
        return counts, total


def as_of_seconds(version: LoadedVersion) -> float:
    return calendar.timegm(time.strptime(version.manifest.as_of, "%Y-%m-%dT%H:%M:%SZ"))


def on_swap(version: LoadedVersion, previous: LoadedVersion | None) -> None:
    if previous is not None:
        SNAPSHOT_INFO.labels(previous.version).set(0)
    SNAPSHOT_INFO.labels(version.version).set(1)
    SNAPSHOT_AS_OF.set(as_of_seconds(version))
    checks = version.manifest.checks
    CHECKS_FAILED.set(checks.failed)
    CHECKS_WARNED.set(checks.warned)
    ACCEPTED_FAILURES.set(1 if checks.accepted_failures else 0)
    SWAPS.inc()


def flush(counts: RequestCounts, latencies: Latencies, current: LoadedVersion | None) -> None:
    # latencies first: once a call's entity counts are visible, so is its latency
    buckets, total = latencies.take()
    if any(buckets):
        # prometheus_client 0.26 stores a histogram as per-bucket counts and a sum, and has no call that
        # adds many observations at once: add to those values as observe() does, one call per bucket
        for value, n in zip(GET_FEATURES_LATENCY._buckets, buckets, strict=True):
            if n:
                value.inc(n)
        GET_FEATURES_LATENCY._sum.inc(total)
    if current is not None:
        SNAPSHOT_AGE.set(time.time() - as_of_seconds(current))
    requested, found = counts.take()
    for view, n in requested.items():
        f = found.get(view, 0)
        ENTITIES_REQUESTED.labels(view).inc(n)
        ENTITIES_FOUND.labels(view).inc(f)
        ENTITIES_MISSING.labels(view).inc(n - f)
