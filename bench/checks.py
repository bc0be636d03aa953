"""Load time with statistics and feature checks against the same load without them (issue 13).

    .venv/bin/python bench/checks.py --data /work/bench-data/users-10M --work /work/bench-data/checks-bench \
        --reps 3 --json bench/results/<date>-checks.json

Two configurations of one loader on one data set, alternated in the same sitting (ABBA...) so a
shared machine's load drifts over both alike. Both wall seconds and the CPU seconds (user + system) of
the load's whole process tree are recorded: on a machine other jobs share, the wall time follows their
load, the CPU time much less so. The configurations: `baseline` (LoadOptions(statistics=False): no
statistics, no checks, the loader as it was) and `checks` (statistics of every feature plus the
generator's realistic checks, about one per feature: loader/generate.py checks()). Each run is a fresh
process loading into an empty root (--no-reuse semantics: nothing to reuse). The figure is the median
of the per-pair ratios checks/baseline, of wall and of CPU time; the target is <= 1.10.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

AS_OF = "2026-12-01T00:00:00Z"


def features_files(data: Path, work: Path) -> dict[str, Path]:
    """The data set's features.yaml with absolute sources, once as is and once with checks."""
    from quiver.loader.generate import with_checks

    doc = yaml.safe_load((data / "features.yaml").read_text())
    for v in doc["views"]:
        v["source"] = str(data / v["source"])
    work.mkdir(parents=True, exist_ok=True)
    plain = work / "features-plain.yaml"
    plain.write_text(yaml.safe_dump(doc, sort_keys=False))
    checked = work / "features-checks.yaml"
    checked.write_text(yaml.safe_dump(with_checks(doc, _users(data)), sort_keys=False))
    return {"baseline": plain, "checks": checked}


def _users(data: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted((data / "profile").glob("*.parquet")))


def run_one(features: Path, root: Path, stats: bool, workers: int) -> dict[str, Any]:
    """One load in a fresh process; wall seconds, the loader's phase lines, and what it published."""
    code = ("import sys, logging; from quiver.loader.load import load, LoadOptions; from datetime import datetime;"
            "logging.basicConfig(level=logging.INFO, format='%(message)s');"
            f"r = load({str(features)!r}, {str(root)!r}, LoadOptions(workers={workers}, statistics={stats}, "
            f"as_of=datetime.fromisoformat({AS_OF.replace('Z', '+00:00')!r})));"
            "print(r.version, r.checks.failed, r.checks.warned, r.checks.passed)")
    shutil.rmtree(root, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)   # reaped descendants: the load and its workers
    started = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if p.returncode != 0:
        raise SystemExit(f"load failed ({p.returncode}):\n{p.stderr[-3000:]}")
    version, failed, warned, passed = p.stdout.split()
    phases = {}
    for line in p.stderr.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "s":
            phases[parts[0]] = float(parts[1])
    size = sum(f.stat().st_size for f in (root / "versions" / version).rglob("*") if f.is_file())
    shutil.rmtree(root, ignore_errors=True)
    checks = {"failed": int(failed), "warned": int(warned), "passed": int(passed)}
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "phases": phases, "checks": checks,
            "bytes": size}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    files = features_files(args.data, args.work)
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        order = ["baseline", "checks"] if rep % 2 == 0 else ["checks", "baseline"]
        for name in order:
            load = open("/proc/loadavg").read().split()[0]
            r = run_one(files[name], args.work / "root", name == "checks", args.workers)
            r |= {"config": name, "rep": rep, "loadavg_before": float(load)}
            runs.append(r)
            print(json.dumps(r), flush=True)
    result: dict[str, Any] = {"data": str(args.data), "workers": args.workers, "reps": args.reps,
                              "cpus": os.cpu_count()}
    for measure in ("seconds", "cpu_seconds"):
        base = [r[measure] for r in runs if r["config"] == "baseline"]
        chk = [r[measure] for r in runs if r["config"] == "checks"]
        pairs = [c / b for b, c in zip(base, chk, strict=True)]
        result[measure] = {"median_baseline": statistics.median(base), "median_checks": statistics.median(chk),
                           "ratio_of_medians": round(statistics.median(chk) / statistics.median(base), 3),
                           "median_pair_ratio": round(statistics.median(pairs), 3),
                           "pair_ratios": [round(x, 3) for x in pairs]}
    result["runs"] = runs
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
