"""Cold start (issue 23): the time from `quiver serve`'s exec to its first answer, caches dropped first,
for each --verify mode, on a version its record proves and on one nothing proves. The `coldstart` series.

    flock bench/.lock .venv/bin/python bench/coldstart.py --root ROOT --runs 3 --json OUT.json

The server runs as the reference layout has it (`taskset -c 1 quiver serve --workers 1`); this script polls
GetFeatures for one user every 5 ms from core 0. "unproven" moves the served version's verified.json aside
for the run (as a version copied in by hand would be) and puts it back after. For `--verify background`
it also reports when the log says the full check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
from procs import Processes, free_port, wait_for

from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.manifest import RECORD
from quiver.v1 import quiver_pb2 as pb
from quiver.v1 import quiver_pb2_grpc as pb_grpc

QUIVER = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "quiver")
PASSED = re.compile(r"its full check passed in the background: hashed (\d+) online files \(([0-9.]+) MB\)")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def one(root: Path, verify: str, log: Path) -> dict[str, Any]:
    port = free_port()
    procs = Processes()
    drop_caches()
    log.write_text("")
    started = time.monotonic()
    server = procs.start(["taskset", "-c", "1", QUIVER, "serve", "--root", str(root), "--workers", "1",
                          "--listen", f"127.0.0.1:{port}", "--metrics-port", "0", "--verify", verify], log)
    try:
        stub = pb_grpc.FeatureStoreStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

        def answered() -> str:
            try:
                return str(stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[1]), timeout=1).version)
            except grpc.RpcError:
                return ""

        version = wait_for(answered, 600, "the first answer", interval=0.005)
        first = time.monotonic() - started
        out: dict[str, Any] = {"verify": verify, "first_answer_s": round(first, 2), "version": version}
        if verify == "background":
            m = wait_for(lambda: PASSED.search(log.read_text()), 600, "the background check", interval=0.1)
            out |= {"full_check_done_s": round(time.monotonic() - started, 1), "hashed_files": int(m.group(1)),
                    "hashed_mb": float(m.group(2))}
        hashed = re.search(r"hashed (\d+) online files \(([0-9.]+) MB\) in ([0-9.]+) s", log.read_text())
        if hashed and verify == "full":
            out |= {"hashed_files": int(hashed.group(1)), "hashed_mb": float(hashed.group(2))}
        return out
    finally:
        procs.stop(server)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default="size,full,background")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    root = SnapshotRoot(args.root)
    version = root.current()
    assert version is not None, f"{args.root}: no CURRENT"
    record = root.version_dir(version) / RECORD
    aside = record.with_name(RECORD + ".aside")
    log = args.json.with_suffix(".server.log")
    res: dict[str, Any] = {"version": version, "load_avg_start": os.getloadavg(), "runs": []}
    try:
        for proven in (True, False):
            if not proven:
                shutil.move(record, aside)
            for _ in range(args.runs):
                for verify in args.modes.split(","):
                    r = one(args.root, verify, log) | {"proven": proven}
                    print(json.dumps(r), flush=True)
                    res["runs"].append(r)
    finally:
        if aside.exists():
            shutil.move(aside, record)
    res["load_avg_end"] = os.getloadavg()
    res["median_first_answer_s"] = {
        f"{v}-{'proven' if p else 'unproven'}": statistics.median(
            r["first_answer_s"] for r in res["runs"] if r["verify"] == v and r["proven"] == p)
        for v in args.modes.split(",") for p in (True, False)}
    args.json.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["median_first_answer_s"]))
    log.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
