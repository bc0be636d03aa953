"""The Spark engine against the local one on the same data (issue 12): `quiver load --engine spark`
(local[N]) and `quiver load --engine local --workers N`, one after the other in one sitting, each into
its own empty root with the same as-of time (so both must end at the same version id). Wall time,
peak RSS/PSS of each run's whole process tree (for Spark: the CLI, its JVM and the Python workers),
and the Spark run's stage timings read back from its event log.

    .venv/bin/python bench/spark_load.py --data /work/bench-data/users-10M \
        --work /work/bench-data/spark-bench --json bench/results/$(date -u +%F)-spark-load.json \
        --repeat 2 --lock /tmp/quiver-bench.lock

With --repeat N the engines alternate (spark, local, spark, local, ...), so drift in the machine's
load hits both. With --lock each run holds that file's flock while it runs (the lead's benchmarks hold
it too), and waits for it first. Each Spark run gets its own event log and spark.local.dir (its
shuffle files) under --work, removed with its root after the run.

Not a test: the figures depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import MemorySampler, disk_mb, tree  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
AS_OF = "2026-11-01T00:00:00Z"


class TreeSampler(MemorySampler):
    """Memory as MemorySampler, and the CPU seconds of every process the tree ever held: the JVM is
    not waited for by the CLI, so the children's rusage misses it (sampled, so a process's last
    interval before it exits is lost)."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(pid, interval)
        self.ticks: dict[int, int] = {}

    def sample(self) -> None:
        super().sample()
        for pid in tree(self.pid):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            self.ticks[pid] = max(self.ticks.get(pid, 0), int(fields[11]) + int(fields[12]))  # utime + stime

    def cpu_seconds(self) -> float:
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")


_PHASE = re.compile(r"quiver\[load\] INFO (\S+)\s+([0-9.]+) s$")


def run(engine: str, features: Path, root: Path, log: Path, workers: int, master: str,
        events: Path, driver_memory: str, spark_local: Path) -> dict[str, Any]:
    cmd = [str(REPO / ".venv/bin/quiver"), "load", "--features", str(features), "--root", str(root),
           "--as-of", AS_OF, "--engine", engine]
    if engine == "spark":
        events.mkdir(parents=True, exist_ok=True)
        spark_local.mkdir(parents=True, exist_ok=True)
        cmd += ["--spark-master", master, "--spark-conf", f"spark.eventLog.dir=file://{events}",
                "--spark-conf", f"spark.driver.memory={driver_memory}",
                "--spark-conf", f"spark.local.dir={spark_local}"]
    else:
        cmd += ["--workers", str(workers)]
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=out)
        mem = TreeSampler(proc.pid, interval=0.5)
        with mem:
            stdout, _ = proc.communicate()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{engine}: exit {proc.returncode}, see {log}")
    load1, load5, _ = os.getloadavg()
    phases = {m.group(1): float(m.group(2)) for line in log.read_text(errors="replace").splitlines()
              if (m := _PHASE.search(line))}
    return {"engine": engine, "version": stdout.decode().strip(), "seconds": round(seconds, 1),
            "cpu_s": round(mem.cpu_seconds(), 1),
            **{k: round(v, 1) for k, v in mem.figures().items()},
            "online_mb": round(disk_mb(root / "versions", ".sst"), 1),
            "offline_mb": round(disk_mb(root / "versions", ".parquet"), 1), "phases": phases,
            "loadavg_at_start": round(load_before, 1), "loadavg_at_end": [round(load1, 1), round(load5, 1)],
            "cmd": " ".join(cmd)}


class _Lock:
    """The shared benchmark lock for one run (None: no lock)."""

    def __init__(self, path: str | None) -> None:
        self.path, self.fd = path, -1

    def __enter__(self) -> float:
        if self.path is None:
            return 0.0
        started = time.monotonic()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return time.monotonic() - started

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)   # releases the flock


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
    p.add_argument("--repeat", type=int, default=1, help="rounds of the engines, alternating (default: 1)")
    p.add_argument("--lock", help="a file whose flock each run holds while it runs (default: none)")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    features = Path(args.data) / "features.yaml"
    res: dict[str, Any] = {"kind": "spark-load", "date": dt.date.today().isoformat(), "data": str(args.data),
                           "cpus": os.cpu_count(), "master": args.master, "workers": args.workers, "runs": []}
    for i in range(args.repeat):
        for engine in args.engines.split(","):
            name = f"{engine}-{i + 1}"
            root, events = work / f"root-{name}", work / f"events-{name}"
            with _Lock(args.lock) as waited:
                r = run(engine, features, root, work / f"{name}.log", args.workers, args.master, events,
                        args.driver_memory, work / f"spark-local-{name}")
                # the next run gets the disk and the page cache
                shutil.rmtree(root, ignore_errors=True)
                shutil.rmtree(work / f"spark-local-{name}", ignore_errors=True)
            r["round"], r["lock_wait_s"] = i + 1, round(waited, 1)
            if engine == "spark":
                r["spark_stages"] = stage_timings(events)
            print(json.dumps({k: v for k, v in r.items() if k != "spark_stages"}), flush=True)
            res["runs"].append(r)
            res["same_version"] = len({r["version"] for r in res["runs"]}) == 1
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")   # what is done so far


if __name__ == "__main__":
    main()
