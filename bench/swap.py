"""One swap under load (issue 23): what a client sees while CURRENT moves to a version the server has not
open, and how long the worker takes to answer from it.

    flock bench/.lock .venv/bin/python bench/swap.py --root ROOT --from V1 --to V2 --json out.json
    .venv/bin/python bench/swap.py --plot out.png LABEL=out.json [LABEL=other.json ...]

The reference layout: `quiver serve --workers 1` (default --verify full) on core 1, quiver-loadgen on core 0
at --rate calls of 1 entity a second in back-to-back --window second runs; V1's online files are read
once first (page cache warm), V2's are as the load or sync left them. CURRENT moves --before seconds in;
a poller (core 0) asks for the served version every 50 ms until it is V2. Run it with another tree's
Python (its venv's quiver serves) to compare trees: `/other/.venv/bin/python bench/swap.py ...`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import systems
from harness import machine
from procs import Processes
from soak import loadgen_window, warm

from quiver.snapshot.layout import SnapshotRoot
from quiver.v1 import quiver_pb2 as pb
from quiver.v1 import quiver_pb2_grpc as pb_grpc


def served(stub: pb_grpc.FeatureStoreStub) -> str:
    try:
        return str(stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[0]), timeout=5).version)
    except grpc.RpcError:
        return ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = SnapshotRoot(args.root)
    root.set_current(args.source)
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="swap-"))
    res: dict[str, Any] = {"machine": machine(), "args": vars(args), "quiver": systems.QUIVER}
    try:
        server = systems.serve_quiver(procs, Path(args.root), 1, args.cache_mb, work, work / "serve.log",
                                      cpu=1, extra=["--verify", args.verify, "--poll-seconds", "1"])
        warm(Path(args.root) / "versions" / args.source / "online")
        stub = pb_grpc.FeatureStoreStub(grpc.insecure_channel(server.target))
        windows: list[dict[str, Any]] = []
        stop = threading.Event()
        t0 = time.monotonic()

        def generate() -> None:
            i = 0
            while not stop.is_set():
                t = time.monotonic() - t0
                w = loadgen_window(f"http://{server.target}", args.rate, args.window, args.users, 2000 + i,
                                   work / "w.json")
                windows.append({"t": round(t, 2), **{k: w.get(k) for k in ("p50_us", "p99_us", "errors",
                                                                           "achieved_rate", "failed")}})
                i += 1

        gen = threading.Thread(target=generate, daemon=True)
        gen.start()
        time.sleep(args.before)
        moved = time.monotonic()
        root.set_current(args.to)
        while served(stub) != args.to and time.monotonic() - moved < args.after:
            time.sleep(0.05)
        swap_s = time.monotonic() - moved
        res["swap_seconds"] = round(swap_s, 2) if swap_s < args.after else None
        time.sleep(max(0.0, args.after - swap_s))
        stop.set()
        gen.join(timeout=args.window + 120)
        res["moved_at"] = round(moved - t0, 2)
        res["windows"] = windows
        log = (work / "serve.log").read_text(errors="replace")
        res["hashed"] = re.findall(r"version \S+: hashed .*", log)
        res["warmed"] = re.findall(r"version \S+: warmed .*", log)
        res["mapped"] = re.findall(r"version \S+: mapped .*", log)
        res["summary"] = summary(res, args.window)
        res["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    finally:
        procs.stop_all()
    return res


def summary(res: dict[str, Any], window: float) -> dict[str, Any]:
    """Issue 23's test: the P99 of each window in the 60 s after CURRENT moves against the steady P99 before
    it (the median of the windows before the move, the first one left out: it starts with the worker)."""
    moved = res["moved_at"]
    ok = [w for w in res["windows"] if w.get("p99_us") is not None]
    before = sorted(w["p99_us"] for w in ok[1:] if w["t"] + window <= moved)
    after = [w["p99_us"] for w in ok if w["t"] + window > moved and w["t"] < moved + 60]
    steady = before[len(before) // 2] if before else None
    return {"steady_p99_us": steady, "windows_after": len(after), "max_p99_after_us": max(after, default=None),
            "median_p99_after_us": sorted(after)[len(after) // 2] if after else None,
            "windows_after_over_2x_steady": sum(p > 2 * steady for p in after) if steady else None,
            "errors_after": sum(w.get("errors") or 0 for w in ok if w["t"] + window > moved)}


def plot(results: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    """P99 per window against seconds since CURRENT moved, one line per result; a dot marks the swap."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for label, r in results:
        window = r["args"]["window"]
        w = [x for x in r["windows"] if x.get("p99_us") is not None]
        t = [x["t"] + window - r["moved_at"] for x in w]
        line, = ax.plot(t, [x["p99_us"] / 1000 for x in w], ".-", label=f"{label} (swap after {r['swap_seconds']} s)")
        if r["swap_seconds"] is not None:
            ax.axvline(r["swap_seconds"], color=line.get_color(), linestyle=":", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since CURRENT moved (dotted: the worker answers from the new version)")
    ax.set_ylabel("P99 per 2 s window, ms")
    ax.set_title("1 entity @1,000/s, 10M users, one worker on core 1: a swap to a version not yet read")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True)
    p.add_argument("--from", dest="source", required=True, help="the version served first")
    p.add_argument("--to", required=True, help="the version CURRENT moves to")
    p.add_argument("--json", required=True)
    p.add_argument("--users", type=int, default=10_000_000)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--window", type=float, default=2)
    p.add_argument("--before", type=float, default=10)
    p.add_argument("--after", type=float, default=60, help="seconds of load after CURRENT moves (and the limit)")
    p.add_argument("--verify", default="full")
    p.add_argument("--cache-mb", type=int, default=256)
    if "--plot" in sys.argv[1:2]:   # bench/swap.py --plot OUT.png LABEL=RESULT.json ...
        out, *pairs = sys.argv[2:]
        plot([(label, json.loads(Path(f).read_text())) for label, f in (x.split("=", 1) for x in pairs)], Path(out))
        return 0
    args = p.parse_args()
    res = run(args)
    Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"swap after {res['swap_seconds']} s ({res['quiver']}); {res['hashed']}")
    for w in res["windows"]:
        mark = " <- CURRENT moved" if w["t"] <= res["moved_at"] < w["t"] + args.window else ""
        print(f"  t={w['t']:6.1f}s p50 {w['p50_us']} us p99 {w['p99_us']} us errors {w['errors']}{mark}")
    print(f"{res['summary']}\n{res['warmed']}\n{res['mapped']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
