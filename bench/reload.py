"""The loader with storage groups (issue 10): a full load, then a load where one of the views changed, into
the same root, timed side by side with their phases and peak memory.

    python bench/reload.py --source bench/work/users-10000000/source --work /tmp/reload --json out.json

The changed view is `--view` (default ads) with one float column doubled in every source file; the other
views' source folders are symlinked, so their checksums and definitions are unchanged and the loader takes
their stored bytes from the first version.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import systems
from harness import machine, versions


def changed_copy(source: Path, dest: Path, view: str, column: str) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy2(source / "features.yaml", dest / "features.yaml")
    for sub in source.iterdir():
        if sub.is_dir() and sub.name != view:
            (dest / sub.name).symlink_to(sub.resolve())
    (dest / view).mkdir()
    for f in sorted((source / view).glob("*.parquet")):
        t = pq.read_table(f)
        i = t.column_names.index(column)
        t = t.set_column(i, column, pc.multiply(t.column(i), pa.scalar(2, t.schema.field(i).type)))
        pq.write_table(t, dest / view / f.name, compression="zstd")
    return dest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--view", default="ads")
    p.add_argument("--column", default="ctr_7d")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    source, work = Path(args.source).resolve(), Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    users = sum(pq.ParquetFile(f).metadata.num_rows for f in (source / "activity").glob("*.parquet"))
    res: dict[str, Any] = {"kind": "reload", "date": dt.date.today().isoformat(), "users": users,
                           "view": args.view, "machine": machine(), "versions": versions()}
    changed = changed_copy(source, work / "changed-source", args.view, args.column)
    root = work / "root"
    print("== full load", flush=True)
    res["full"] = full = systems.load_quiver(source, root, users, args.workers, work / "load.log",
                                             as_of="2026-12-01T00:00:00Z")
    print(f"   {full['wall_s']:.1f} s, {full['users_per_s']:,.0f} users/s, peak RSS {full['peak_rss_mb']:.0f} MB",
          flush=True)
    print(f"== load with {args.view!r} changed", flush=True)
    res["one_view_changed"] = one = systems.load_quiver(changed, root, users, args.workers, work / "load.log",
                                                        fresh=False, as_of="2026-12-02T00:00:00Z")
    print(f"   {one['wall_s']:.1f} s, peak RSS {one['peak_rss_mb']:.0f} MB", flush=True)
    res["ratio"] = one["wall_s"] / full["wall_s"]
    res["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    print(f"== ratio {res['ratio']:.2f}; wrote {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
