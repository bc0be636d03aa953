"""The read path's named series (issue 10), measured the same way every run on a 2-core machine:

    floor    a do-nothing grpc.aio raw-bytes server (bench/floor.py) on core 1, the generator on core 0:
             what the gRPC hop costs by itself
    pinned   `taskset -c 1 quiver serve --workers 1 --cache-mb 256`, `taskset -c 0 quiver-loadgen`, page
             cache warm: 1 entity x all views over a rate sweep, 100 entities x all views over another
    capped   the same server inside a cgroup v1 memory limit of 25% of the online form, caches dropped
             first: a node that can hold only a quarter of its data in memory, as 90M users on one node

Server CPU per request is the server's user+system CPU time over a row divided by the requests it
answered. `--realtime` runs the server and the generator under SCHED_FIFO (`chrt -f 10`), so on a
machine shared with other work they get their pinned cores as on a quiet one (the results say so).
Every figure goes into one JSON file; `--readme` renders it into bench/README.md.

    python bench/readpath.py --root ROOT --json bench/results/DATE-readpath-10M.json --readme bench/README.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import generators
import systems
from harness import machine, median_row, versions
from procs import Processes, disk_mb, free_port, tree, wait_for

CGROUP = Path("/sys/fs/cgroup/memory")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICK


def users_of(root: Path) -> int:
    version = (root / "CURRENT").read_text().strip()
    m = json.loads((root / "versions" / version / "manifest.json").read_text())
    return max(g["rows"] for g in m["groups"].values())


class Series:
    def __init__(self, args: argparse.Namespace, tmp: Path, users: int) -> None:
        self.args, self.tmp, self.users = args, tmp, users
        self.rows: list[dict[str, Any]] = []

    def row(self, series: str, server_pid: int, target: str, k: int, rate: float) -> dict[str, Any]:
        runs = []
        pin = [*rt_prefix(self.args), "taskset", "-c", "0"]
        for i in range(self.args.runs):
            cpu0 = cpu_seconds(server_pid)
            # every run its own ids: a run that repeated the previous one's found their pages cached and
            # mapped, and the capped series' second and third runs read as if 75% of reads did not miss
            seed = generators.SEED + 1 + 100 * len(self.rows) + i
            r = generators.loadgen("quiver", f"http://{target}", rate, k, self.args.seconds, self.args.warmup,
                                   self.users, 1, self.tmp / f"r{len(self.rows)}-{i}.json", pin, seed)
            cpu = cpu_seconds(server_pid) - cpu0
            total = (self.args.seconds + self.args.warmup) * rate
            r["server_cpu_us_per_request"] = cpu / total * 1e6 if "failed" not in r else None
            runs.append(r)
            status = r.get("failed") or (f"p50 {r['p50_us'] / 1000:.3f} p99 {r['p99_us'] / 1000:.3f} ms, "
                                         f"{r['achieved_rate']:.0f}/s, {r['errors']} errors, "
                                         f"{r['server_cpu_us_per_request']:.0f} us CPU/req")
            print(f"   {series:<8} k={k:<3} @ {rate:>5g}/s: {status}", flush=True)
        out = {"series": series, "entities": k, "rate": rate, **median_row(runs),
               "server_cpu_us_per_request": _median([r.get("server_cpu_us_per_request") for r in runs]),
               "each_run": runs}
        self.rows.append(out)
        return out


def _median(xs: list[float | None]) -> float | None:
    vals = sorted(x for x in xs if x is not None)
    return vals[len(vals) // 2] if vals else None


def rt_prefix(args: argparse.Namespace) -> list[str]:
    return ["chrt", "-f", "10"] if args.realtime else []


def start_quiver(procs: Processes, root: Path, log: Path, cache_mb: int, cgroup: Path | None,
                 prefix: list[str]) -> tuple[Any, str]:
    port = free_port()
    cmd = [*prefix, "taskset", "-c", "1", systems.QUIVER, "serve", "--root", str(root), "--listen", f"127.0.0.1:{port}",
           "--workers", "1", "--metrics-port", "0", "--cache-mb", str(cache_mb)]
    if cgroup is not None:  # join the group before exec, so every page the server touches is charged to it
        cmd = ["bash", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "serve", *cmd]
    proc = procs.start(cmd, log)
    target = f"127.0.0.1:{port}"
    wait_for(lambda: systems.health_serving(target, proc, log), timeout=600, what="quiver serving", interval=0.5)
    return proc, target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="a loaded snapshot root (10M generated users for the reference)")
    p.add_argument("--json", required=True)
    p.add_argument("--readme", default="", help="render the results into this markdown file")
    p.add_argument("--series", default="floor,pinned,capped")
    p.add_argument("--rates", default="500,1000,2000,3000,4000", help="1 entity x all views")
    p.add_argument("--batch-rates", default="50,100,200,300", help="100 entities x all views")
    p.add_argument("--capped-rates", default="500,1000,2000")
    p.add_argument("--capped-batch-rates", default="100,200")
    p.add_argument("--cap-fraction", type=float, default=0.25)
    p.add_argument("--cache-mb", type=int, default=256)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--warmup", type=float, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--name", default="readpath")
    p.add_argument("--realtime", action="store_true", help="server and generator under SCHED_FIFO (chrt -f 10)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(args.root).resolve()
    rates = [float(x) for x in args.rates.split(",")]
    batch = [float(x) for x in args.batch_rates.split(",")]
    series = args.series.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="qrp-", dir="/tmp"))
    logs = tmp / "logs"
    logs.mkdir()
    procs = Processes()
    users = users_of(root)
    version = (root / "CURRENT").read_text().strip()
    online_mb = disk_mb(root / "versions" / version / "online")
    res: dict[str, Any] = {"kind": "readpath", "name": args.name, "date": dt.date.today().isoformat(),
                           "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "users": users,
                           "version": version, "online_mb": online_mb, "cache_mb": args.cache_mb,
                           "seconds": args.seconds, "warmup_s": args.warmup, "runs": args.runs,
                           "realtime": args.realtime,
                           "machine": machine(), "versions": versions()}
    s = Series(args, tmp, users)
    cgroup: Path | None = None
    try:
        if "floor" in series:
            print("== floor: do-nothing grpc.aio server, pinned", flush=True)
            port = free_port()
            floor = str(Path(__file__).with_name("floor.py"))
            proc = procs.start([*rt_prefix(args), "taskset", "-c", "1", sys.executable, floor,
                                "--listen", f"127.0.0.1:{port}", "--bytes", "1400"], logs / "floor.log")
            wait_for(lambda: systems.health_serving(f"127.0.0.1:{port}", proc, logs / "floor.log"), timeout=60,
                     what="floor serving", interval=0.3)
            for rate in rates:
                s.row("floor", proc.pid, f"127.0.0.1:{port}", 1, rate)
            procs.stop(proc)
        if "pinned" in series:
            print(f"== pinned: quiver serve --workers 1 --cache-mb {args.cache_mb} on core 1, page cache warm",
                  flush=True)
            subprocess.run(["cat", *map(str, (root / "versions" / version / "online").rglob("*.sst"))],
                           stdout=subprocess.DEVNULL, check=False)  # warm the page cache
            proc, target = start_quiver(procs, root, logs / "serve-pinned.log", args.cache_mb, None, rt_prefix(args))
            for rate in rates:
                s.row("pinned", proc.pid, target, 1, rate)
            for rate in batch:
                s.row("pinned", proc.pid, target, 100, rate)
            procs.stop(proc)
        if "capped" in series:
            if not CGROUP.is_dir():
                raise SystemExit(f"{CGROUP}: no cgroup v1 memory controller here: cannot run the capped series")
            limit = int(online_mb * args.cap_fraction) << 20
            cgroup = CGROUP / f"quiver-bench-{os.getpid()}"
            cgroup.mkdir()
            (cgroup / "memory.limit_in_bytes").write_text(str(limit))
            res["capped"] = {"limit_mb": limit >> 20, "fraction_of_online": args.cap_fraction}
            print(f"== capped: the same server in a {limit >> 20} MB memory cgroup "
                  f"({args.cap_fraction:.0%} of {online_mb:.0f} MB online), caches dropped", flush=True)
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            proc, target = start_quiver(procs, root, logs / "serve-capped.log", args.cache_mb, cgroup, rt_prefix(args))
            for rate in [float(x) for x in args.capped_rates.split(",")]:
                s.row("capped", proc.pid, target, 1, rate)
            for rate in [float(x) for x in args.capped_batch_rates.split(",")]:
                s.row("capped", proc.pid, target, 100, rate)
            res["capped"]["max_usage_mb"] = int((cgroup / "memory.max_usage_in_bytes").read_text()) >> 20
            procs.stop(proc)
    finally:
        procs.stop_all()
        if cgroup is not None:
            for _ in range(50):
                try:
                    cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.2)
        res["rows"] = s.rows
        res["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
        res["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"== wrote {out}", flush=True)
    if args.readme:
        render(res, Path(args.readme))
    return 0


def table(res: dict[str, Any]) -> str:
    floor = {r["rate"]: r for r in res["rows"] if r["series"] == "floor"}
    lines = [f"Read path, {res['date']}: {res['users']:,} users, online form {res['online_mb'] / 1024:.1f} GB, "
             f"{res['seconds']:g} s runs after {res['warmup_s']:g} s warm-up, median of {res['runs']}; server "
             f"pinned to core 1 (one worker, {res['cache_mb']} MB block cache), quiver-loadgen pinned to core 0; "
             f"load average at start {res['machine']['loadavg_start'].split()[0]}"
             + ("; server and generator under SCHED_FIFO (`--realtime`), the machine shared with other work."
                if res.get("realtime") else ".")
             + (f" Capped: {res['capped']['limit_mb']} MB memory cgroup, peak usage "
                f"{res['capped'].get('max_usage_mb', '?')} MB." if "capped" in res else ""), "",
             "| series | entities | rate/s | achieved/s | P50 ms | P99 ms | P99.9 ms | errors | server CPU us/req "
             "| P99 above floor ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        f = floor.get(r["rate"]) if r["entities"] == 1 and r["series"] != "floor" else None

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v / 1000:.3f}"
        above = "-" if f is None or f["p99_us"] is None or r["p99_us"] is None else \
            f"{(r['p99_us'] - f['p99_us']) / 1000:+.3f}"
        cpu = "-" if r["server_cpu_us_per_request"] is None else f"{r['server_cpu_us_per_request']:.0f}"
        lines.append(f"| {r['series']} | {r['entities']} | {r['rate']:g} | {r['achieved_rate'] or 0:.0f} | "
                     f"{ms(r['p50_us'])} | {ms(r['p99_us'])} | {ms(r['p99_9_us'])} | {r['errors']} | {cpu} | {above} |")
    return "\n".join(lines) + "\n"


def render(res: dict[str, Any], readme: Path) -> None:
    start, end = "<!-- readpath:start -->", "<!-- readpath:end -->"
    text = readme.read_text()
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table(res)}{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
