"""The two load generators, run once each at a fixed rate, with their output in one shape:
p50/p90/p99/p99.9/max/mean in microseconds, count, errors, achieved rate.

- quiver-loadgen (clients/rust): open loop, latency from each request's *scheduled* time, HDR histogram.
- ghz: `--rps` paces sends, but latency runs from the actual send and a request waits for a free worker
  (`-c`), so it can hide queueing that quiver-loadgen counts; it has no p99.9.
Both draw the same users in the same order (SplitMix64 from the same seed, below).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from google.protobuf.internal.encoder import _VarintBytes

from quiver.v1 import quiver_pb2

REPO = Path(__file__).resolve().parent.parent
# $BENCH_LOADGEN when set (bench/prepare.sh then builds nothing), else where bench/prepare.sh's `cargo build`
# puts it: $CARGO_TARGET_DIR (relative to clients/rust) when set
LOADGEN = (Path(os.environ["BENCH_LOADGEN"]) if os.environ.get("BENCH_LOADGEN") else
           REPO / "clients" / "rust" / os.environ.get("CARGO_TARGET_DIR", "target") / "release" / "quiver-loadgen")
GHZ = REPO / ".tools" / "bin" / "ghz"
PROTO = REPO / "proto" / "quiver" / "v1" / "quiver.proto"
SEED = 1
TIMEOUT_MS = 2000
GHZ_CONCURRENCY = 50
GHZ_MESSAGES = 20000  # distinct requests in ghz's input; it cycles through them
CUT_AT_END = ("use of closed network connection", "context canceled", "the client connection is closing")

_M64 = (1 << 64) - 1


def ids(seed: int, users: int, n: int) -> list[int]:
    """quiver-loadgen's id stream (IdStream in main.rs): SplitMix64, scaled by multiply-shift."""
    out, state = [], seed
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & _M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        z ^= z >> 31
        out.append((z * users) >> 64)
    return out


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def loadgen(target: str, addr: str, rate: float, k: int, seconds: float, warmup: float, users: int,
            connections: int, out: Path, prefix: list[str] | None = None, seed: int = SEED) -> dict[str, Any]:
    """One quiver-loadgen run; `prefix` runs it pinned (taskset) or inside the Redis namespace. The same
    `seed` asks for the same ids in the same order: a second run with it finds the first run's pages cached
    and mapped, so runs that repeat a measurement each take their own."""
    cmd = [*(prefix or []), str(LOADGEN), "--target", target, "--addr", addr, "--rate", str(rate),
           "--duration", str(seconds), "--warmup", str(warmup), "--entities-per-request", str(k),
           "--users", str(users), "--seed", str(seed), "--connections", str(connections),
           "--timeout-ms", str(TIMEOUT_MS), "--json-out", str(out)]
    before = load1()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 60)
    if r.returncode != 0:
        return {"failed": f"quiver-loadgen exit {r.returncode}: {r.stderr.strip()[-500:]}", "cmd": cmd}
    s = json.loads(out.read_text())
    out.unlink()
    return {"p50_us": s["p50_us"], "p90_us": s["p90_us"], "p99_us": s["p99_us"], "p99_9_us": s["p99_9_us"],
            "max_us": s["max_us"], "mean_us": s["mean_us"], "count": s["count"], "errors": s["errors"],
            "achieved_rate": s["achieved_rate"], "pacer_lag_p99_us": s["pacer_lag_p99_us"],
            "error_kinds": s["error_kinds"], "load1": before, "seed": seed}


def ghz_input(path: Path, users: int, k: int) -> Path:
    """GHZ_MESSAGES GetFeaturesRequests (all views) as varint-delimited binary, for `ghz -B`."""
    if path.exists():
        return path
    stream = ids(SEED, users, GHZ_MESSAGES * k)
    with open(path, "wb") as f:
        for i in range(GHZ_MESSAGES):
            m = quiver_pb2.GetFeaturesRequest(int64_ids=stream[i * k:(i + 1) * k]).SerializeToString()
            f.write(_VarintBytes(len(m)) + m)
    return path


def ghz(addr: str, rate: float | None, data: Path, seconds: float, warmup: float, connections: int,
        out: Path, prefix: list[str] | None = None) -> dict[str, Any]:
    """One ghz run at `rate` (None: as fast as GHZ_CONCURRENCY workers go). `addr` is host:port or
    unix:///path (grpc-go's resolver; bojand/ghz#454 does not document it, it works). The first
    rate*warmup requests are left out of the figures (--skipFirst)."""
    pace = ["--rps", str(int(rate)), "--skipFirst", str(int(rate * warmup))] if rate else []
    cmd = [*(prefix or []), str(GHZ), "--insecure", "--proto", str(PROTO), "-i", str(PROTO.parents[2]),
           "--call", "quiver.v1.FeatureStore.GetFeatures", "-B", str(data), *pace,
           "-z", f"{seconds + (warmup if rate else 0):g}s", "-c", str(GHZ_CONCURRENCY),
           "--connections", str(connections), "-t", f"{TIMEOUT_MS}ms", "-O", "json", "-o", str(out), addr]
    before = load1()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 60)
    if r.returncode != 0 or not out.exists():
        return {"failed": f"ghz exit {r.returncode}: {r.stderr.strip()[-500:]}", "cmd": cmd}
    s = json.loads(out.read_text())
    os.unlink(out)
    pct = {d["percentage"]: d["latency"] / 1000 for d in s.get("latencyDistribution") or []}
    ok = (s.get("statusCodeDistribution") or {}).get("OK", 0)
    kinds = s.get("errorDistribution") or {}
    # -z cancels the requests in flight when time is up; they are ghz's, not the server's, failures.
    cut = sum(n for e, n in kinds.items() if any(m in e for m in CUT_AT_END))
    # `count` leaves out the --skipFirst requests but ghz's `rps` divides it by the whole run, warm-up included.
    measured_s = s["total"] / 1e9 - (warmup if rate else 0)
    return {"p50_us": pct.get(50), "p90_us": pct.get(90), "p99_us": pct.get(99), "p99_9_us": None,
            "max_us": s["slowest"] / 1000, "mean_us": s["average"] / 1000, "count": ok,
            "errors": s["count"] - ok - cut, "cut_at_end": cut, "achieved_rate": s["count"] / measured_s,
            "error_kinds": kinds, "load1": before}
