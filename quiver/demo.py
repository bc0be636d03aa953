"""`make demo`: generate users, load them, serve, query, and show P50/P99 under a short fixed-rate load.

    python -m quiver.demo --users 1000000 --dir demo-data
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver.client import FeatureClient
from quiver.loader.generate import generate
from quiver.loader.load import LoadOptions, load

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(target: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"server at {target} not SERVING after {timeout} s")


def find_ghz() -> str | None:
    local = REPO / ".tools" / "bin" / "ghz"
    return str(local) if local.exists() else shutil.which("ghz")


def ghz(binary: str, target: str, users: int, entities: int, rate: int, seconds: int) -> dict[str, Any]:
    """One fixed-rate ghz run; latencies in ms. Ids cycle through a spread of users. Errors by status
    code: when its time is up ghz closes its connections with calls still in flight, which end as
    Canceled or Unavailable ("use of closed network connection"), so a few are expected."""
    step = max(1, users // 5000)
    data = [{"int64_ids": [str((i * step + j * 7919) % users) for j in range(entities)]} for i in range(200)]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(data, f)
    out = subprocess.run(
        [binary, "--insecure", "--proto", str(REPO / "proto/quiver/v1/quiver.proto"), "-i", str(REPO / "proto"),
         "--call", "quiver.v1.FeatureStore.GetFeatures", "-D", f.name, "--rps", str(rate), "-z", f"{seconds}s",
         "-c", "16", "--connections", "2", "-O", "json", target], capture_output=True, text=True, check=True)
    os.unlink(f.name)
    report = json.loads(out.stdout)
    pct = {d["percentage"]: d["latency"] / 1e6 for d in report["latencyDistribution"]}
    codes = {c: n for c, n in report["statusCodeDistribution"].items() if c != "OK"}
    return {"p50": pct[50], "p90": pct[90], "p99": pct[99], "rps": report["rps"],
            "errors": ", ".join(f"{n} {c}" for c, n in sorted(codes.items())) or "none"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--dir", default="demo-data")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=int, default=10)
    args = p.parse_args()
    base = Path(args.dir)
    source, root = base / "source", base / "snapshots"
    marker = source / f".users-{args.users}-events"   # a source from before the event table is written again
    print(f"== 1. generate {args.users:,} users into {source}", flush=True)
    if not marker.exists():
        shutil.rmtree(source, ignore_errors=True)
        t = time.monotonic()
        generate(args.users, source, seed=1, events_per_user=10)
        marker.touch()
        print(f"   {time.monotonic() - t:.1f} s", flush=True)
    else:
        print("   already there", flush=True)
    print(f"== 2. load into {root} with {args.workers} workers", flush=True)
    result = load(source / "features.yaml", root, LoadOptions(workers=args.workers))
    if not result.published:
        note = " (already published)"
    elif result.reused_views:
        note = (f" ({', '.join(result.reused_views)} unchanged since the current version: hard-linked, not"
                f" re-encoded; delete {root} to time a full load)")
    else:
        note = f" ({args.users / result.seconds:,.0f} users/s)"
    print(f"   version {result.version}: {result.manifest.rows()} in {result.seconds:.1f} s{note}", flush=True)
    port = free_port()
    target = f"127.0.0.1:{port}"
    print(f"== 3. serve on {target}", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "quiver.cli", "serve", "--root", str(root), "--listen", target,
                               "--workers", str(args.workers), "--metrics-port", "0"],
                              stdout=subprocess.DEVNULL, stderr=open(base / "server.log", "w"))
    try:
        wait_serving(target)
        print("== 4. query a few users", flush=True)
        with FeatureClient(target) as c:
            got = c.get_features([0, 1, args.users - 1, args.users + 5])
            print(f"   answered by version {got.version}")
            for uid, row in zip([0, 1, args.users - 1, args.users + 5], got.rows, strict=True):
                prof, act, emb, ads = (row.get(v) for v in ("profile", "activity", "embedding", "ads"))
                if prof is None:
                    print(f"   user {uid}: not found in any view")
                    continue
                eng = row.get("engagement")
                print(f"   user {uid}: country={prof['country']} device={prof['device']} "
                      f"is_mobile={prof['is_mobile']} (computed) age={prof['age']} "
                      f"premium={prof['is_premium']} act_000={act and act['act_000']} "
                      f"embedding[:3]={emb and [round(x, 3) for x in emb['user_embedding'][:3]]} "
                      f"ads={'not found' if ads is None else ads['recent_ad_ids']}")
                print("      engagement (computed from events/): " + ("no events" if eng is None else
                      f"clicks_7d={eng['clicks_7d']} clicks_30d={eng['clicks_30d']} spend_30d={eng['spend_30d']} "
                      f"last_item={eng['last_item']} items_30d={eng['items_30d']}"))
        binary = find_ghz()
        if binary is None:
            print("== 5. ghz not found (run `make tools`); skipping the load run")
        else:
            print(f"== 5. fixed-rate load with ghz, {args.seconds} s each (this machine, loopback, generator included)")
            for entities, rate in ((1, 1000), (1, 2000), (100, 200)):
                r = ghz(binary, target, args.users, entities, rate, args.seconds)
                print(f"   {entities:>3} entity x all views @ {rate:>4}/s: P50 {r['p50']:.3f} ms  P90 {r['p90']:.3f} ms"
                      f"  P99 {r['p99']:.3f} ms  ({r['rps']:.0f}/s, errors: {r['errors']})", flush=True)
            print("   (a few Canceled/Unavailable are the calls in flight when ghz stops and closes its connections;"
                  " bench/ has the Rust open-loop generator's figures)", flush=True)
    finally:
        print("== 6. stop the server (SIGTERM: NOT_SERVING, drain, exit)", flush=True)
        server.send_signal(signal.SIGTERM)
        print(f"   exited with {server.wait(timeout=60)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
