"""The Spark engine against the local one on the same data (issue 12): `quiver load --engine spark`
(local[N]) and `quiver load --engine local --workers N`, one after the other in one sitting, each into
its own empty root with the same as-of time (so both must end at the same version id). Wall time,
peak RSS/PSS of each run's whole process tree (for Spark: the CLI, its JVM and the Python workers),
and the Spark run's stage timings read back from its event log.

    .venv/bin/python bench/spark_load.py --data /work/bench-data/users-10M \
        --work /work/bench-data/spark-bench --json bench/results/$(date -u +%F)-spark-load.json

Not a test: the figures depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import MemorySampler, disk_mb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
AS_OF = "2026-11-01T00:00:00Z"


def run(engine: str, features: Path, root: Path, log: Path, workers: int, master: str,
        events: Path, driver_memory: str) -> dict[str, Any]:
    cmd = [str(REPO / ".venv/bin/quiver"), "load", "--features", str(features), "--root", str(root),
           "--as-of", AS_OF, "--engine", engine]
    if engine == "spark":
        cmd += ["--spark-master", master, "--spark-conf", f"spark.eventLog.dir=file://{events}",
                "--spark-conf", f"spark.driver.memory={driver_memory}"]
    else:
        cmd += ["--workers", str(workers)]
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out)
        with MemorySampler(proc.pid, interval=0.5) as mem:
            stdout, _ = proc.communicate()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{engine}: exit {proc.returncode}, see {log}")
    load1, load5, _ = os.getloadavg()
    return {"engine": engine, "version": stdout.decode().strip(), "seconds": round(seconds, 1),
            **{k: round(v, 1) for k, v in mem.figures().items()},
            "online_mb": round(disk_mb(root / "versions", ".sst"), 1),
            "loadavg_at_end": [round(load1, 1), round(load5, 1)], "cmd": " ".join(cmd)}


def _read(path: Path) -> str:
    """An event-log part, zstd-compressed as Spark 4 writes it by default, or plain."""
    if path.suffix == ".zstd":
        import pyarrow as pa

        with pa.CompressedInputStream(pa.OSFile(str(path)), "zstd") as f:
            return f.read().decode()
    return path.read_text()


def stage_timings(events: Path) -> list[dict[str, Any]]:
    """Per Spark stage: name, tasks, wall seconds, and the tasks' summed run time (executor CPU is
    in there; the gap between the two is waiting for a core)."""
    # Spark 4 writes a folder per application (eventlog_v2_<app>/events_<n>_<app>), rolled in parts
    logs = sorted(p for p in events.rglob("events_*") if p.is_file())
    if not logs:
        return []
    stages: dict[int, dict[str, Any]] = {}
    lines = [line for p in logs for line in _read(p).splitlines()]
    for line in lines:
        e = json.loads(line)
        kind = e.get("Event")
        if kind == "SparkListenerTaskEnd":
            s = stages.setdefault(e["Stage ID"], {"task_run_s": 0.0, "task_cpu_s": 0.0, "shuffle_write_mb": 0.0})
            m = e.get("Task Metrics") or {}
            s["task_run_s"] += m.get("Executor Run Time", 0) / 1000
            s["task_cpu_s"] += m.get("Executor CPU Time", 0) / 1e9
            s["shuffle_write_mb"] += (m.get("Shuffle Write Metrics") or {}).get("Shuffle Bytes Written", 0) / 2**20
        elif kind == "SparkListenerStageCompleted":
            info = e["Stage Info"]
            s = stages.setdefault(info["Stage ID"], {"task_run_s": 0.0, "task_cpu_s": 0.0, "shuffle_write_mb": 0.0})
            s.update({"stage": info["Stage ID"], "name": info["Stage Name"].split(" at ")[0],
                      "tasks": info["Number of Tasks"],
                      "wall_s": (info.get("Completion Time", 0) - info.get("Submission Time", 0)) / 1000})
    out = [s for s in stages.values() if "name" in s]
    for s in out:
        for k in ("task_run_s", "task_cpu_s", "shuffle_write_mb", "wall_s"):
            s[k] = round(s[k], 1)
    return sorted(out, key=lambda s: s["stage"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a `quiver generate` folder (features.yaml inside)")
    p.add_argument("--work", required=True, help="roots, logs and the event log go here (emptied first)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="2g")
    p.add_argument("--engines", default="spark,local")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    events = work / "events"
    events.mkdir(parents=True)
    features = Path(args.data) / "features.yaml"
    res: dict[str, Any] = {"kind": "spark-load", "date": dt.date.today().isoformat(), "data": str(args.data),
                           "cpus": os.cpu_count(), "master": args.master, "workers": args.workers, "runs": []}
    for engine in args.engines.split(","):
        root = work / f"root-{engine}"
        r = run(engine, features, root, work / f"{engine}.log", args.workers, args.master, events,
                args.driver_memory)
        print(json.dumps(r), flush=True)
        res["runs"].append(r)
        shutil.rmtree(root, ignore_errors=True)   # the next run gets the disk and the page cache
    res["spark_stages"] = stage_timings(events)
    versions = {r["version"] for r in res["runs"]}
    res["same_version"] = len(versions) == 1
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["spark_stages"], indent=1))


if __name__ == "__main__":
    main()
