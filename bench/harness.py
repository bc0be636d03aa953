"""quiver against Redis on the same data, in one run (issues 2, 3 and 4). Called by bench/run.sh,
bench/load.sh and bench/smoke.sh, which install what it needs first.

    python bench/harness.py serve --users 200000 --seconds 5 --runs 1 --json bench/results/DATE-NAME.json
    python bench/harness.py load --users 1000000,10000000 --json bench/results/DATE-load.json

`serve`: generate (or reuse) the data set, load quiver, load Redis with the same bytes, serve quiver, then
at the same fixed rates run quiver-loadgen and ghz against quiver (TCP, Unix socket) and quiver-loadgen
against Redis (loopback, and one simulated network hop away); then again with the generator pinned to
core 0 and a one-worker server to core 1. Every figure goes into one JSON file (see README.md).
`load`: the loader alone at several sizes (issue 2).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import generators
import systems
from hop import DELAY_US, Netns, build_proxy
from procs import MemorySampler, Processes, disk_mb, wait_for

REPO = Path(__file__).resolve().parent.parent
CAPACITY_P99_US = 1000
REDIS_BYTES_PER_USER = 1900  # used_memory per user of the generated data: 1,840 B at 5,000 users, 1,650 at 200,000


def sh(*cmd: str) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "")
    return {"nproc": int(sh("nproc") or 0), "cpu_model": cpu, "kernel": platform.release(),
            "free_g": sh("free", "-g"), "loadavg_start": Path("/proc/loadavg").read_text().strip(),
            "hostname": platform.node()}


def versions() -> dict[str, str]:
    import importlib.metadata as md
    makefile = (REPO / "Makefile").read_text()
    pinned = next((line.split(":=")[1].strip() for line in makefile.splitlines()
                   if line.startswith("GHZ_VERSION")), "")
    return {"quiver": md.version("quiver-features"), "python": platform.python_version(),
            "redis": sh("redis-server", "--version"), "ghz": f"{pinned} (go install; binary reports "
            f"{sh(str(generators.GHZ), '--version') or '?'})", "rustc": sh("rustc", "--version"),
            "go": sh("go", "version"), "git_commit": sh("git", "-C", str(REPO), "rev-parse", "HEAD")}


# ------------------------------------------------------------------------------------------------
# Rows: one (system, path, generator, entities, rate, pinned) combination, run `runs` times
# ------------------------------------------------------------------------------------------------

LATENCY_KEYS = ("p50_us", "p90_us", "p99_us", "p99_9_us", "max_us", "mean_us", "achieved_rate")


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "failed" not in r]
    out: dict[str, Any] = {"runs": len(runs), "failed_runs": len(runs) - len(ok)}
    for k in LATENCY_KEYS:
        vals = [r[k] for r in ok if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    out["count"] = sum(r["count"] for r in ok)
    out["errors"] = sum(r["errors"] for r in ok)
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, tmp: Path) -> None:
        self.args, self.work, self.tmp = args, work, tmp
        self.rows: list[dict[str, Any]] = []
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def measure(self, meta: dict[str, Any], run: Callable[[Path], dict[str, Any]]) -> None:
        runs = []
        for i in range(self.args.runs):
            r = run(self.tmp / f"run-{len(self.rows)}-{i}.json")
            runs.append(r)
            status = r.get("failed") or (f"p50 {r['p50_us'] / 1000:.3f} p99 {r['p99_us'] / 1000:.3f} ms, "
                                         f"{r['achieved_rate']:.0f}/s, {r['errors']} errors")
            print(f"   {meta['label']:<58} k={meta['entities']:<3} @ {meta['rate'] or 'max':>5}: {status}",
                  flush=True)
        self.rows.append({**meta, **median_row(runs), "each_run": runs})


def row_meta(system: str, path: str, generator: str, k: int, rate: float | None, pinned: bool,
             workers: int) -> dict[str, Any]:
    label = f"{system} {path} ({generator}{', pinned' if pinned else ''})"
    return {"id": f"{system}|{path}|{generator}|{'pinned' if pinned else 'unpinned'}", "label": label,
            "system": system, "path": path, "generator": generator, "entities": k, "rate": rate,
            "pinned": pinned, "server_workers": workers}


def serve_bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="qb-", dir="/tmp"))  # short: Unix socket paths are limited to 107 bytes
    procs = Processes()
    netns = Netns()

    def cleanup() -> None:
        procs.stop_all()
        netns.remove()
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    result: dict[str, Any] = {"kind": "serve", "name": args.name, "date": dt.date.today().isoformat(),
                              "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "quick": args.quick, "smoke": args.smoke, "users": args.users,
                              "seconds": args.seconds, "warmup_s": args.warmup, "runs": args.runs,
                              "rates": args.rates, "batch_rate": args.batch_rate, "cache_mb": args.cache_mb,
                              "workers": args.workers, "machine": machine(), "versions": versions()}
    bench = Bench(args, work, tmp)
    N, W, D, WU = args.users, args.workers, args.seconds, args.warmup

    print(f"== data set: {N:,} users", flush=True)
    source, gen = systems.dataset(work, N)
    result["generate"] = gen
    print("== quiver load", flush=True)
    root = work / f"users-{N}" / "root"
    result["load_quiver"] = ql = systems.load_quiver(source, root, N, W, bench.logs / "load.log")
    print(f"   {ql['wall_s']:.1f} s, {ql['users_per_s']:,.0f} users/s, peak RSS {ql['peak_rss_mb']:.0f} MB", flush=True)

    print("== the network hop for Redis (status quo)", flush=True)
    why = netns.create()
    if why is None:
        result["hop"] = {"method": "netns+netem", "detail": f"namespace {netns.name}, netem {DELAY_US} us each way "
                         "on the Redis port of its loopback; Redis and its generator run inside"}
        redis_prefix = netns.prefix
    else:
        netns.remove()
        proxy_bin = build_proxy(REPO, tmp)
        result["hop"] = {"method": "userspace delay proxy", "netns_failure": why,
                         "detail": f"bench/delayproxy on 127.0.0.1 holds each chunk {DELAY_US} us per direction"}
        redis_prefix = []
    print(f"   {result['hop']['method']}" + (f" (netem unavailable: {why})" if why else ""), flush=True)

    print("== Redis: same bytes, one hash per user", flush=True)
    need_mb = N * REDIS_BYTES_PER_USER / (1 << 20)
    avail_mb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemAvailable:"))) / 1024
    if need_mb > 0.85 * avail_mb:
        raise SystemExit(f"Redis would need about {need_mb:,.0f} MB for {N:,} users ({REDIS_BYTES_PER_USER} B/user "
                         f"measured) but only {avail_mb:,.0f} MB are available: use a machine with more memory "
                         "or fewer USERS")
    redis = systems.serve_redis(procs, redis_prefix, tmp, bench.logs / "redis.log")
    result["load_redis"] = rl = systems.load_redis(redis, root, ql["version"], bench.logs / "redis-load.log")
    print(f"   {rl['load_s']:.1f} s, used_memory {rl['used_memory_mb']:.0f} MB", flush=True)
    redis_addr = f"redis://127.0.0.1:{redis.port}"
    if why is None:
        def with_hop(run: Callable[[Path], dict[str, Any]]) -> Callable[[Path], dict[str, Any]]:
            def delayed(out: Path) -> dict[str, Any]:
                netns.delay_port(redis.port)
                try:
                    return run(out)
                finally:
                    netns.undelay()
            return delayed
        hop_addr = redis_addr
    else:
        pout = tmp / "proxy.out"
        with open(pout, "wb") as f:
            procs.start([str(proxy_bin), "-listen", "127.0.0.1:0", "-target", f"127.0.0.1:{redis.port}",
                         "-delay", f"{DELAY_US}us"], bench.logs / "delayproxy.log", stdout=f)
        hop_addr = "redis://" + wait_for(lambda: pout.read_text().strip().removeprefix("listening "),
                                         timeout=20, what="delayproxy listening")

        def with_hop(run: Callable[[Path], dict[str, Any]]) -> Callable[[Path], dict[str, Any]]:
            return run

    datafile = {k: generators.ghz_input(tmp / f"ghz-k{k}.bin", N, k) for k in (1, 100)}

    def quiver_rows(server: systems.QuiverServer, pinned: bool, k: int, rate: float) -> None:
        pin = ["taskset", "-c", "0"] if pinned else []
        w = server.workers
        uds_path = f"unix socket{' (' + str(w) + ' worker sockets)' if w > 1 else ''}"
        # worker k > 0 listens on <uds>.k: the generator spreads its connections over all of them
        uds_addrs = ",".join(f"unix://{server.uds}" + (f".{i}" if i else "") for i in range(w))
        bench.measure(row_meta("quiver", "tcp loopback", "rust", k, rate, pinned, w),
                      lambda o: generators.loadgen("quiver", f"http://{server.target}", rate, k, D, WU, N, w, o, pin))
        bench.measure(row_meta("quiver", uds_path, "rust", k, rate, pinned, w),
                      lambda o: generators.loadgen("quiver", uds_addrs, rate, k, D, WU, N, w, o, pin))
        bench.measure(row_meta("quiver", "tcp loopback", "ghz", k, rate, pinned, w),
                      lambda o: generators.ghz(server.target, rate, datafile[k], D, WU, w, o, pin))

    def redis_rows(k: int, rate: float) -> None:
        bench.measure(row_meta("redis", "loopback", "rust", k, rate, False, 1),
                      lambda o: generators.loadgen("redis", redis_addr, rate, k, D, WU, N, W, o, redis_prefix))
        bench.measure(row_meta("redis", "hop +0.5 ms RTT", "rust", k, rate, False, 1),
                      with_hop(lambda o: generators.loadgen("redis", hop_addr, rate, k, D, WU, N, W, o,
                                                            redis_prefix)))

    print(f"== unpinned: quiver serve --workers {W} --cache-mb {args.cache_mb}, generators unpinned", flush=True)
    server = systems.serve_quiver(procs, root, W, args.cache_mb, tmp, bench.logs / "serve.log")
    with MemorySampler(server.proc.pid, interval=1.0) as mem:
        mem.sample()
        idle = mem.figures()
        for rate in args.rates:
            quiver_rows(server, False, 1, rate)
            redis_rows(1, rate)
        quiver_rows(server, False, 100, args.batch_rate)
        redis_rows(100, args.batch_rate)
        bench.measure(row_meta("quiver", "tcp loopback", "ghz", 1, None, False, W),
                      lambda o: generators.ghz(server.target, None, datafile[1], D, 0, W, o))
    procs.stop(server.proc)
    result["serve_quiver"] = {"workers": W, "cache_mb": args.cache_mb, "idle": idle, "under_load": mem.figures(),
                              "online_disk_mb": ql["online_mb"], "version_disk_mb": disk_mb(root / "versions")}

    print("== pinned: quiver serve --workers 1 on core 1, generator on core 0", flush=True)
    server = systems.serve_quiver(procs, root, 1, args.cache_mb, tmp, bench.logs / "serve-pinned.log", cpu=1)
    with MemorySampler(server.proc.pid, interval=1.0) as mem:
        for rate in args.rates:
            quiver_rows(server, True, 1, rate)
        quiver_rows(server, True, 100, args.batch_rate)
    procs.stop(server.proc)
    result["serve_quiver_pinned"] = {"workers": 1, "cache_mb": args.cache_mb, "under_load": mem.figures()}
    result["redis_after_runs"] = redis.info_memory()

    result["rows"] = bench.rows
    result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    result["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result["capacity"] = capacities(bench.rows, args.rates)
    result["ratios"] = ratios(result)
    result["targets"] = targets(result)
    return result


# ------------------------------------------------------------------------------------------------
# Derived figures: sub-millisecond capacity, quiver/Redis ratios, the issues' targets
# ------------------------------------------------------------------------------------------------

def find(rows: list[dict[str, Any]], rid: str, k: int, rate: float | None) -> dict[str, Any] | None:
    return next((r for r in rows if r["id"] == rid and r["entities"] == k and r["rate"] == rate), None)


def sustained(r: dict[str, Any] | None, p99_us: float) -> bool:
    return (r is not None and r["failed_runs"] == 0 and r["errors"] == 0 and r["p99_us"] is not None
            and r["p99_us"] <= p99_us and r["achieved_rate"] >= 0.95 * r["rate"])


def capacities(rows: list[dict[str, Any]], rates: list[float]) -> dict[str, Any]:
    """Highest swept rate with P99 <= 1 ms, no errors and the rate achieved (None: not even the lowest)."""
    out = {}
    for rid in dict.fromkeys(r["id"] for r in rows if r["entities"] == 1 and r["rate"]):
        ok = [rate for rate in rates if sustained(find(rows, rid, 1, rate), CAPACITY_P99_US)]
        out[rid] = {"rate": max(ok) if ok else None, "at_top_of_sweep": bool(ok) and max(ok) == max(rates)}
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(res: dict[str, Any]) -> dict[str, Any]:
    rows = res["rows"]
    q, qu = "quiver|tcp loopback|rust|unpinned", next(
        (r["id"] for r in rows if r["id"].startswith("quiver|unix socket") and not r["pinned"]), "")
    rl, rh = "redis|loopback|rust|unpinned", "redis|hop +0.5 ms RTT|rust|unpinned"
    p99 = []
    for k, rate in [(1, rate) for rate in res["rates"]] + [(100, res["batch_rate"])]:
        get = {name: (find(rows, rid, k, rate) or {}).get("p99_us") for name, rid in
               (("quiver_tcp", q), ("quiver_uds", qu), ("redis_loopback", rl), ("redis_hop", rh))}
        p99.append({"entities": k, "rate": rate, **{f"{n}_p99_us": v for n, v in get.items()},
                    "quiver_tcp_vs_redis_hop": ratio(get["quiver_tcp"], get["redis_hop"]),
                    "quiver_uds_vs_redis_hop": ratio(get["quiver_uds"], get["redis_hop"]),
                    "quiver_tcp_vs_redis_loopback": ratio(get["quiver_tcp"], get["redis_loopback"])})
    sq, rd = res["serve_quiver"]["under_load"], res["load_redis"]
    return {"p99": p99, "memory": {
        "quiver_peak_rss_mb": sq["peak_rss_mb"], "quiver_peak_pss_mb": sq["peak_pss_mb"],
        "redis_used_memory_mb": rd["used_memory_mb"], "redis_rss_mb": rd["used_memory_rss_mb"],
        "quiver_rss_vs_redis_used_memory": ratio(sq["peak_rss_mb"], rd["used_memory_mb"]),
        "quiver_pss_vs_redis_used_memory": ratio(sq["peak_pss_mb"], rd["used_memory_mb"])}}


def target(issue: int, what: str, goal: str, value: Any, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"issue": issue, "what": what, "target": goal, "value": value, "met": met, "note": note}


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows, cap = res["rows"], res["capacity"]
    ghz_cap = cap.get("quiver|tcp loopback|ghz|unpinned", {}).get("rate")
    rust_cap = cap.get("quiver|tcp loopback|rust|unpinned", {}).get("rate")
    top = f"(sweep {', '.join(f'{r:g}' for r in res['rates'])})"
    ghz100 = find(rows, "quiver|tcp loopback|ghz|unpinned", 100, res["batch_rate"])
    rust100 = find(rows, "quiver|tcp loopback|rust|unpinned", 100, res["batch_rate"])
    peak = find(rows, "quiver|tcp loopback|ghz|unpinned", 1, None)
    ql, mem = res["load_quiver"], res["ratios"]["memory"]
    vs_hop = [(p["rate"], p["quiver_tcp_vs_redis_hop"]) for p in res["ratios"]["p99"] if p["entities"] == 1]
    beaten = [f"{rate:g}: {x:.2f}" for rate, x in vs_hop if x is not None]
    sq = res["serve_quiver"]["under_load"]

    def p99_ms(r: dict[str, Any] | None) -> float | None:
        return None if r is None or r["p99_us"] is None else round(r["p99_us"] / 1000, 3)

    return [
        target(2, "load throughput, 2 workers", ">= 300,000 users/s", round(ql["users_per_s"]),
               ql["users_per_s"] >= 300_000, f"{res['users']:,} users"),
        target(3, "sub-ms capacity, 1 entity x all views (ghz, all workers)", ">= 2,000 req/s",
               ghz_cap, ghz_cap is not None and ghz_cap >= 2000, top),
        target(3, "P99, 100 entities x all views @ 200 req/s (ghz)", "<= 2 ms", p99_ms(ghz100),
               sustained(ghz100, 2000) if ghz100 else None, "ms"),
        target(3, "peak throughput, all workers (ghz unpaced, c=50)", ">= 5,000 req/s",
               None if peak is None or peak["achieved_rate"] is None else round(peak["achieved_rate"]),
               peak is not None and (peak["achieved_rate"] or 0) >= 5000),
        target(3, "serving memory (PSS sum, under load) vs --cache-mb", "<= cache + fixed overhead",
               round(sq["peak_pss_mb"]), None,
               f"MB; cache {res['cache_mb']} MB; flat as users grow needs runs at two sizes"),
        target(4, "sub-ms capacity, 1 entity x all views (Rust, TCP, all workers)", ">= 2,000 req/s",
               rust_cap, rust_cap is not None and rust_cap >= 2000, top),
        target(4, "quiver P99 <= status-quo Redis (hop) P99 at the same rate, 1 entity (Rust, TCP)",
               "ratio <= 1 at every rate", "; ".join(beaten) or None,
               bool(beaten) and all(x <= 1 for _, x in vs_hop if x is not None), "quiver/Redis P99 by rate"),
        target(4, "P99, 100 entities x all views @ 200 req/s (Rust, TCP)", "<= 2 ms", p99_ms(rust100),
               sustained(rust100, 2000) if rust100 else None, "ms"),
        target(4, "quiver RSS (sum of processes) vs Redis used_memory", "<= 0.10",
               None if mem["quiver_rss_vs_redis_used_memory"] is None
               else round(mem["quiver_rss_vs_redis_used_memory"], 3),
               (mem["quiver_rss_vs_redis_used_memory"] or 99) <= 0.10,
               f"stated for 10M users; this run {res['users']:,}"),
    ]


def load_bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"kind": "load", "name": args.name, "date": dt.date.today().isoformat(),
                           "machine": machine(), "versions": versions(), "workers": args.workers, "sizes": []}
    for n in args.load_users:
        print(f"== {n:,} users", flush=True)
        source, gen = systems.dataset(work, n)
        r = systems.load_quiver(source, work / f"users-{n}" / "root", n, args.workers, work / "logs" / "load.log")
        r["generate"] = gen
        res["sizes"].append(r)
        print(f"   {r['wall_s']:.1f} s, {r['users_per_s']:,.0f} users/s, {r['source_mb_per_s']:.1f} MB/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    res["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    sizes = res["sizes"]
    res["targets"] = [target(2, f"load throughput, {s['users']:,} users, {args.workers} workers",
                             ">= 300,000 users/s", round(s["users_per_s"]), s["users_per_s"] >= 300_000)
                      for s in sizes]
    if len(sizes) > 1:
        growth = sizes[-1]["peak_rss_mb"] / sizes[0]["peak_rss_mb"]
        res["targets"].append(target(2, "peak RSS flat as users grow", "largest/smallest <= 1.25",
                                     round(growth, 2), growth <= 1.25,
                                     f"{sizes[0]['users']:,} -> {sizes[-1]['users']:,} users"))
    return res


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["serve", "load"])
    p.add_argument("--users", default="10000000", help="serve: N; load: N,M,...")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--warmup", type=float, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rates", default="500,1000,2000,3000,5000")
    p.add_argument("--batch-rate", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache-mb", type=int, default=256)
    p.add_argument("--name", default="")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--work", default=str(REPO / "bench" / "work"))
    p.add_argument("--json", required=True, help="where to write the results (bench/results/<date>-<name>.json)")
    args = p.parse_args()
    args.rates = numbers(args.rates)
    args.load_users = numbers(args.users)
    args.users = args.load_users[-1]
    # SIGTERM/SIGINT become a normal exit, so atexit stops every process the harness started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = serve_bench(args) if args.mode == "serve" else load_bench(args)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"== wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
