"""Computed features at 10M users (issue 22): the `bench/computed` series. One JSON file per run.

    .venv/bin/python bench/computed.py prepare --out SRC [--users 10000000 --events-per-user 10]
    flock bench/.lock .venv/bin/python bench/computed.py run --src SRC --work W --runs 3 \\
        --json bench/results/$(date -u +%F)-computed.json [--spark]

prepare: SRC/events/ (about 100M events over 30 days for 10M users; loader/generate.py's events) and
SRC/computed.yaml, one view of 5 window features over it (count 7d, count 30d, sum of price * qty 30d,
max price 7d, last item 30d).
run, alternating per run, each a fresh root, page cache warm (each input read once before):
  computed:     `quiver load` of computed.yaml, local engine (DuckDB), wall clock, process start included;
                its `derive` phase (the aggregation alone, DuckDB's SQL and the Arrow finish) gives events/s;
  precomputed:  `quiver load` of the same 5 features written as Parquet (the computed version's offline
                rows, 10 files) with plain features, the load the computed one is compared with;
  --spark:      the computed load on the Spark engine, local[2] (once: a JVM start is in it).
The ratio computed / precomputed is the issue's target (<= 1.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import yaml

from quiver.loader.generate import CHUNK, ROW_GROUP, events

QUIVER = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "quiver")
END = datetime(2026, 12, 1, tzinfo=UTC)
AS_OF = "2026-12-01T00:00:00Z"
FEATURES = [
    {"name": "clicks_7d", "type": "int64", "agg": {"fn": "count", "window": "7d"}},
    {"name": "clicks_30d", "type": "int64", "agg": {"fn": "count", "window": "30d"}},
    {"name": "spend_30d", "type": "float64", "agg": {"fn": "sum", "of": "price * qty", "window": "30d"}},
    {"name": "max_price_7d", "type": "float64", "agg": {"fn": "max", "of": "price", "window": "7d"}},
    {"name": "last_item", "type": "int64", "agg": {"fn": "last", "of": "item_id", "window": "30d"}},
]


def prepare(out: Path, users: int, per_user: float) -> None:
    (out / "events").mkdir(parents=True, exist_ok=True)
    n = 0
    for chunk, start in enumerate(range(0, users, CHUNK)):
        rng = np.random.default_rng([22, chunk])
        ids = np.arange(start, min(users, start + CHUNK), dtype=np.int64)
        t = events(rng, ids, per_user, END)
        pq.write_table(t, out / "events" / f"part-{chunk:05d}.parquet", row_group_size=ROW_GROUP, compression="zstd")
        n += t.num_rows
    doc = {"entity": {"name": "user_id", "key_type": "int64"},
           "views": [{"name": "engagement", "source": {"path": "events/*.parquet", "timestamp": "event_ts"},
                      "filter": "event_type = 'click'", "features": FEATURES}]}
    (out / "computed.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    print(json.dumps({"events": n, "users": users}))


def _load(features: Path, root: Path, *extra: str) -> dict[str, Any]:
    shutil.rmtree(root, ignore_errors=True)
    t = time.monotonic()
    r = subprocess.run([QUIVER, "load", "--features", str(features), "--root", str(root), "--as-of", AS_OF,
                        "--workers", "2", *extra], capture_output=True, text=True, check=True)
    wall = time.monotonic() - t
    phases = {m.group(1): float(m.group(2)) for m in re.finditer(r"INFO (\w+) +([0-9.]+) s$", r.stderr, re.M)}
    return {"seconds": round(wall, 2), "phases": phases, "version": r.stdout.split()[-1]}


def _precomputed(src: Path, root: Path, version: str) -> Path:
    """The computed version's offline rows as plain Parquet sources, and their features.yaml."""
    out = src / "precomputed"
    if not (out / "features.yaml").exists():
        table = pq.read_table(root / "versions" / version / "offline" / "engagement")
        (out / "engagement").mkdir(parents=True, exist_ok=True)
        step = -(-table.num_rows // 10)
        for i in range(10):
            pq.write_table(table.slice(i * step, step), out / "engagement" / f"part-{i:05d}.parquet",
                           row_group_size=ROW_GROUP, compression="zstd")
        doc = {"entity": {"name": "user_id", "key_type": "int64"},
               "views": [{"name": "engagement", "source": "engagement/*.parquet",
                          "features": [{"name": f["name"], "type": f["type"]} for f in FEATURES]}]}
        (out / "features.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return out / "features.yaml"


def _warm(folder: Path) -> None:
    for p in folder.rglob("*.parquet"):
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def run(src: Path, work: Path, runs: int, spark: bool) -> dict[str, Any]:
    events_n = sum(pq.ParquetFile(p).metadata.num_rows for p in (src / "events").glob("*.parquet"))
    _warm(src / "events")
    first = _load(src / "computed.yaml", work / "computed")
    plain = _precomputed(src, work / "computed", first["version"])
    _warm(plain.parent)
    result: dict[str, Any] = {"events": events_n, "load_avg_start": os.getloadavg(), "computed": [],
                              "precomputed": []}
    for _ in range(runs):
        result["computed"].append(_load(src / "computed.yaml", work / "computed"))
        result["precomputed"].append(_load(plain, work / "precomputed"))
    if spark:
        result["spark"] = _load(src / "computed.yaml", work / "spark", "--engine", "spark")
    shutil.rmtree(work, ignore_errors=True)
    c = statistics.median(r["seconds"] for r in result["computed"])
    p = statistics.median(r["seconds"] for r in result["precomputed"])
    d = statistics.median(r["phases"].get("derive", 0) for r in result["computed"])
    result |= {"computed_median_s": c, "precomputed_median_s": p, "ratio": round(c / p, 2),
               "derive_median_s": d, "events_per_s": round(events_n / d) if d else None,
               "load_avg_end": os.getloadavg()}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--users", type=int, default=10_000_000)
    p.add_argument("--events-per-user", type=float, default=10.0)
    r = sub.add_parser("run")
    r.add_argument("--src", type=Path, required=True)
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--spark", action="store_true")
    r.add_argument("--json", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.out, a.users, a.events_per_user)
    else:
        out = run(a.src, a.work, a.runs, a.spark)
        a.json.write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps({k: v for k, v in out.items() if k not in ("computed", "precomputed", "spark")}))


if __name__ == "__main__":
    main()
