"""`quiver verify` against `quiver load` on the same data, in one run (issue 14). Called by bench/verify.sh.

    python bench/verify_bench.py --users 1000000,10000000 [--source 10000000=/path/to/users-10M] \\
        --json bench/results/DATE-verify.json

For each size: `quiver load --workers W --no-reuse` into an empty root, then `quiver verify --workers W`
of that version; wall time, CPU time (user + system of the process tree) and peak RSS of both. At the
first size, one offline value is then changed in a hard-linked copy of the root (its Parquet file
rewritten, so the original keeps its inode) and verify must name exactly that value. `--phase load`
and then `--phase verify` split the two over one sitting (the load of a size takes long; the JSON
records when each finished).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import systems
from harness import machine, versions
from procs import MemorySampler

QUIVER, MB = systems.QUIVER, systems.MB


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], log: Path) -> dict[str, Any]:
    """Runs `cmd` (stderr to the log); wall s, CPU s of its process tree, peak RSS MB, stdout."""
    cpu, t = cpu_s(), time.monotonic()
    with open(log, "ab") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        with MemorySampler(p.pid, interval=0.2) as mem:
            out, _ = p.communicate(timeout=3 * 3600)
    return {"wall_s": time.monotonic() - t, "cpu_s": cpu_s() - cpu, "peak_rss_mb": mem.peak_rss / MB,
            "exit": p.returncode, "stdout": out.decode()}


def changed_value(root: Path, version: str, copy: Path) -> tuple[str, int, str]:
    """A hard-linked copy of the root with one offline value of the ads view changed; (view, key, feature)."""
    shutil.rmtree(copy, ignore_errors=True)
    subprocess.run(["cp", "-al", str(root), str(copy)], check=True)
    part = sorted((copy / "versions" / version / "offline" / "ads").glob("*.parquet"))[-1]
    table = pq.read_table(part)
    uid = table.column("user_id")[len(table) // 2].as_py()
    col = table.column("ad_01")
    table = table.set_column(table.column_names.index("ad_01"), "ad_01",
                             pc.if_else(pc.equal(table.column("user_id"), uid), pa.scalar(-5, pa.int32()), col))
    part.unlink()  # a new inode: the original root's file is untouched
    pq.write_table(table, part)
    return "ads", uid, "ad_01"


def load_size(n: int, source: Path, work: Path, workers: int, log: Path) -> dict[str, Any]:
    root = work / f"root-{n}"
    shutil.rmtree(root, ignore_errors=True)
    load = timed([QUIVER, "load", "--features", str(source / "features.yaml"), "--root", str(root),
                  "--workers", str(workers), "--no-reuse"], log)
    assert load["exit"] == 0, f"quiver load failed; see {log}"
    version = load.pop("stdout").split()[-1]
    print(f"   load {load['wall_s']:.1f} s ({load['cpu_s']:.0f} s CPU)", flush=True)
    return {"users": n, "version": version, "root": str(root), "load": load,
            "load_finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def verify_size(size: dict[str, Any], workers: int, work: Path, log: Path, changed: bool) -> None:
    root, n = Path(size["root"]), size["users"]
    verify = timed([QUIVER, "verify", "--root", str(root), "--workers", str(workers)], log)
    assert verify["exit"] == 0, f"quiver verify found mismatches in a fresh load: {verify['stdout'][-2000:]}"
    size["verify"] = {k: v for k, v in verify.items() if k != "stdout"}
    size["verify_finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    size["verify_vs_load_wall"] = verify["wall_s"] / size["load"]["wall_s"]
    size["verify_vs_load_cpu"] = verify["cpu_s"] / size["load"]["cpu_s"]
    print(f"   verify {verify['wall_s']:.1f} s ({verify['cpu_s']:.0f} s CPU)", flush=True)
    if not changed:
        return
    copy = work / f"root-{n}-changed"
    view, key, feature = changed_value(root, size["version"], copy)
    found = timed([QUIVER, "verify", "--root", str(copy), "--workers", str(workers)], log)
    lines = [line for line in found["stdout"].splitlines() if line.startswith("MISMATCH")]
    size["changed_value"] = {"view": view, "key": key, "feature": feature, "wall_s": found["wall_s"],
                             "exit": found["exit"], "reported": lines,
                             "found": found["exit"] == 1 and len(lines) == 1
                             and f"view '{view}' key {key} feature '{feature}'" in lines[0]}
    shutil.rmtree(copy)
    print(f"   one changed value: {'found' if size['changed_value']['found'] else 'NOT FOUND'}: {lines}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", default="1000000,10000000")
    p.add_argument("--source", action="append", default=[], metavar="N=PATH",
                   help="an existing `quiver generate` folder for N users (else generated under --work)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", required=True, help="folder for data sets and roots")
    p.add_argument("--phase", choices=["both", "load", "verify"], default="both",
                   help="load: load each size and record it in --json; verify: verify the sizes --json records")
    p.add_argument("--changed-at", type=int, default=None, metavar="N",
                   help="the size at which to change one value (default: the first; 0: none)")
    p.add_argument("--name", default="verify")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    work = Path(args.work).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log = work / "logs" / "verify-bench.log"
    path = Path(args.json)
    sources = {int(n): Path(src) for n, src in (s.split("=", 1) for s in args.source)}
    users = [int(x) for x in args.users.split(",")]
    if args.phase == "verify" or (args.phase == "load" and path.exists()):
        res = json.loads(path.read_text())
    else:
        res = {"kind": "verify", "name": args.name, "date": dt.date.today().isoformat(), "machine": machine(),
               "versions": versions(), "workers": args.workers, "sizes": []}
    by_users = {s["users"]: s for s in res["sizes"]}
    for i, n in enumerate(users):
        print(f"== {n:,} users", flush=True)
        if args.phase in ("both", "load"):
            by_users[n] = load_size(n, sources.get(n) or systems.dataset(work, n)[0], work, args.workers, log)
        if args.phase in ("both", "verify"):
            changed = n == args.changed_at if args.changed_at is not None else i == 0
            verify_size(by_users[n], args.workers, work, log, changed=changed)
        res["sizes"] = [by_users[k] for k in sorted(by_users)]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1) + "\n")
    if args.phase != "load":
        res["versions"] = versions()  # the code that verified
    res["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"== wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
