"""Delta versions at 10M users (issue 21): the `bench/delta.*` series. Each step writes one JSON file.

    D=bench/results/$(date -u +%F)-delta
    .venv/bin/python bench/delta.py prepare --src SRC --out CH            # changes files: 0.1%, 1%, 5%, 10% of users
    flock bench/.lock .venv/bin/python bench/delta.py build  --root R --changes CH --json $D-build.json
    flock bench/.lock .venv/bin/python bench/delta.py reads  --root R --delta V15 --rebased VR --json $D-reads.json
    flock bench/.lock .venv/bin/python bench/swap.py --root R --from BASE --to V1PCT --json $D-swap.json
    flock bench/.lock .venv/bin/python bench/delta.py fresh  --root R --store S --replica P --changes CH \\
                                                             --json $D-fresh.json
    flock bench/.lock .venv/bin/python bench/delta.py equal  --root R --src SRC --changes CH --json $D-equal.json

prepare: per fraction, random users of view --view (default profile), each given another user's row, 10% of
them marked `_deleted`; the same seed draws the same users.
build: each delta applied to the base (CURRENT when it starts; `quiver rollback` between them), timed as the
operator runs it (`quiver load --changes`, wall clock, process start included); then the 15% delta (10% then
5% on top) and `quiver compact` of it: the rebase.
reads: 1 entity, every view, 1,000/s, over gRPC (reference layout: server on core 1, quiver-loadgen on
core 0) and embedded (the reader pinned to core 1), on the version with the 15% delta and on its rebase,
alternating, page cache warm for both.
fresh: a replica root synced from a file:// store, `quiver sync --every 1` and a server following it; the
clock starts when the 1% changes file is copied into place and stops when the replica's server answers a
changed user with the new version: load --changes, publish, sync, swap. Bytes the sync moved, against the
version's size.
equal: a full load of the base's sources merged with the 1% changes, and every stored pair and every
offline row of the changed view compared with the delta version's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from harness import machine

REPO = Path(__file__).resolve().parent.parent
PY = REPO / ".venv" / "bin" / "python"
QUIVER = str(REPO / ".venv" / "bin" / "quiver")
FRACTIONS = [0.001, 0.01, 0.05, 0.1]


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def quiver(*args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.monotonic()
    r = subprocess.run([QUIVER, *args], capture_output=True, text=True)
    took = time.monotonic() - t
    if check and r.returncode != 0:
        raise SystemExit(f"quiver {' '.join(args)}: exit {r.returncode}\n{r.stderr}")
    return took, r


def changes_file(d: Path, f: float) -> Path:
    return d / f"changes-{f:g}.parquet"


def manifest(root: Path, version: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "versions" / version / "manifest.json").read_text())
    return data


def current(root: Path) -> str:
    return (root / "CURRENT").read_text().strip()


# --------------------------------------------------------------------------------------------------

def prepare(args: argparse.Namespace) -> dict[str, Any]:
    files = sorted((Path(args.src) / args.view).glob("*.parquet"))
    table = pq.read_table(files)
    keys = table.column("user_id").to_numpy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    res: dict[str, Any] = {"view": args.view, "rows": table.num_rows, "files": {}}
    for f in FRACTIONS:
        n = int(len(keys) * f)
        chosen = rng.choice(len(keys), n, replace=False)
        donors = table.take(pa.array(rng.integers(0, table.num_rows, n)))
        rows = donors.set_column(donors.column_names.index("user_id"), "user_id", pa.array(keys[chosen]))
        rows = rows.append_column("_deleted", pa.array(rng.random(n) < args.deleted))
        pq.write_table(rows, changes_file(out, f))
        res["files"][f] = {"rows": n, "bytes": changes_file(out, f).stat().st_size}
        print(f"{changes_file(out, f)}: {n} rows", flush=True)
    return res


def _apply(root: Path, path: Path, view: str, *extra: str) -> dict[str, Any]:
    took, r = quiver("load", "--root", str(root), "--changes", f"{view}={path}", *extra)
    version = r.stdout.strip()
    m = manifest(root, version)
    size = sum(f["size"] for f in m["files"])
    delta = {g: d["delta"] for g, d in m["groups"].items() if d.get("delta")}
    delta_bytes = sum(f["size"] for f in m["files"]
                      if any(f["path"] in d["files"] for d in delta.values()) or "/delta/" in f["path"])
    return {"version": version, "seconds": round(took, 2), "version_bytes": size, "delta_bytes": delta_bytes,
            "delta_keys": {g: d["keys"] for g, d in delta.items()}, "rebased": "rebased in full" in r.stderr,
            "log": r.stderr.strip().splitlines()[-1], "loadavg": loadavg()}


def build(args: argparse.Namespace) -> dict[str, Any]:
    root, ch = Path(args.root), Path(args.changes)
    base = current(root)
    res: dict[str, Any] = {"machine": machine(), "base": base, "deltas": [], "repeats": args.repeats}
    for rep in range(args.repeats):
        for f in FRACTIONS:
            quiver("rollback", "--root", str(root), "--to", base)
            row = {"fraction": f, "repeat": rep, **_apply(root, changes_file(ch, f), args.view)}
            res["deltas"].append(row)
            print(f"{f:>6.1%} delta: {row['seconds']:6.2f} s, {row['delta_bytes'] >> 20} MiB of delta "
                  f"(load {row['loadavg']})", flush=True)
    quiver("rollback", "--root", str(root), "--to", base)
    if args.no_rebase:
        return res
    ten = _apply(root, changes_file(ch, 0.1), args.view)
    fifteen = _apply(root, changes_file(ch, 0.05), args.view)
    res["cumulative_15"] = {"10%": ten, "then 5%": fifteen}
    took, r = quiver("compact", "--root", str(root))
    res["rebase"] = {"version": r.stdout.strip(), "seconds": round(took, 2), "loadavg": loadavg(),
                     "log": r.stderr.strip().splitlines()[-1]}
    print(f"15% delta {fifteen['version']} ({fifteen['seconds']} s); rebase {res['rebase']['version']}: "
          f"{res['rebase']['seconds']} s", flush=True)
    full = json.loads(Path(args.full_load_json).read_text()) if args.full_load_json else None
    res["full_load_reference"] = full
    return res


# --------------------------------------------------------------------------------------------------

def _warm(root: Path, version: str) -> None:
    subprocess.run(f"find {root / 'versions' / version / 'online'} -type f -exec cat {{}} + > /dev/null",
                   shell=True, check=True)


def reads(args: argparse.Namespace) -> dict[str, Any]:
    import generators
    import systems
    from procs import Processes
    from soak import loadgen_window

    root = Path(args.root)
    res: dict[str, Any] = {"machine": machine(), "delta": args.delta, "rebased": args.rebased, "runs": []}
    work = Path(tempfile.mkdtemp(prefix="delta-reads-"))
    for rep in range(args.repeats):
        for label, version in (("delta", args.delta), ("rebased", args.rebased)):
            quiver("rollback", "--root", str(root), "--to", version)
            _warm(root, version)
            g: dict[str, Any] = {}
            if not args.embedded_only:
                procs = Processes()
                try:
                    server = systems.serve_quiver(procs, root, 1, args.cache_mb, work, work / "serve.log", cpu=1)
                    loadgen_window(f"http://{server.target}", args.rate, 5, args.users, 1, work / "w.json")  # warm-up
                    g = loadgen_window(f"http://{server.target}", args.rate, args.seconds, args.users, 7 + rep,
                                       work / "w.json")
                finally:
                    procs.stop_all()
            e = _embedded(generators.LOADGEN, root, args, work / "e.json", 7 + rep, args.rate)
            keys = ("p50_us", "p99_us", "errors", "achieved_rate")
            row = {"version": label, "repeat": rep, "loadavg": loadavg(),
                   "grpc": {k: g.get(k) for k in keys}, "embedded": {k: e.get(k) for k in keys}}
            if args.saturate:   # the reader's capacity on one core: its cost per call
                sat = _embedded(generators.LOADGEN, root, args, work / "s.json", 9 + rep, args.saturate)
                row["embedded_saturated"] = {k: sat.get(k) for k in keys}
            res["runs"].append(row)
            print(f"{label:>8} #{rep}: gRPC P50 {g.get('p50_us')} P99 {g.get('p99_us')} us; embedded P50 "
                  f"{e.get('p50_us')} P99 {e.get('p99_us')} us; saturated "
                  f"{row.get('embedded_saturated', {}).get('achieved_rate')}/s (load {row['loadavg']})", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return res


def _embedded(loadgen: Path, root: Path, args: argparse.Namespace, out: Path, seed: int,
              rate: float) -> dict[str, Any]:
    cmd = ["taskset", "-c", "0", str(loadgen), "--target", "embedded", "--root", str(root), "--pin-cpus", "1",
           "--cache-mb", str(args.cache_mb), "--rate", str(rate), "--duration", str(args.seconds),
           "--warmup", "5", "--entities-per-request", "1", "--users", str(args.users), "--seed", str(seed),
           "--json-out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"failed": r.stderr.strip()[-300:]}
    data: dict[str, Any] = json.loads(out.read_text())
    return data


# --------------------------------------------------------------------------------------------------

def fresh(args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    import systems
    from procs import Processes

    from quiver.v1 import quiver_pb2 as pb
    from quiver.v1 import quiver_pb2_grpc as pb_grpc

    root, store, replica = Path(args.root), Path(args.store), Path(args.replica)
    uri = store.resolve().as_uri()
    res: dict[str, Any] = {"machine": machine(), "base": current(root)}
    t, _ = quiver("publish", "--root", str(root), "--to", uri)
    res["publish_base_seconds"] = round(t, 1)
    t, r = quiver("sync", "--from", uri, "--root", str(replica), "--online-only")
    res["sync_base_seconds"] = round(t, 1)
    change = pq.read_table(changes_file(Path(args.changes), 0.01))
    probe = int(change.filter(pc.invert(change.column("_deleted"))).column("user_id")[0].as_py())
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="delta-fresh-"))
    try:
        procs.start(["taskset", "-c", "0", QUIVER, "sync", "--from", uri, "--root", str(replica),
                              "--online-only", "--watch", "1"], work / "sync.log")
        server = systems.serve_quiver(procs, replica, 1, 256, work, work / "serve.log", cpu=1,
                                      extra=["--poll-seconds", "1"])
        stub = pb_grpc.FeatureStoreStub(grpc.insecure_channel(server.target))
        _warm(replica, current(replica))
        before = stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[probe]), timeout=5)
        landing = Path(args.changes) / "landing" / "profile-changes.parquet"
        landing.parent.mkdir(exist_ok=True)
        landing.unlink(missing_ok=True)
        started = time.monotonic()
        shutil.copy(changes_file(Path(args.changes), 0.01), landing)       # the changes file lands
        load_s, r = quiver("load", "--root", str(root), "--changes", f"{args.view}={landing}")
        delta = r.stdout.strip()
        pub_s, p = quiver("publish", "--root", str(root), "--to", uri)
        answered = None
        while time.monotonic() - started < 120:
            got = stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[probe]), timeout=5)
            if got.version == delta:
                answered = time.monotonic() - started
                assert got.rows != before.rows, "the replica answers the delta version with the old values"
                break
            time.sleep(0.02)
        log = (work / "sync.log").read_text(errors="replace")
        res.update({"delta": delta, "probe_user": probe, "load_seconds": round(load_s, 2),
                    "publish_seconds": round(pub_s, 2), "publish_log": p.stdout.strip().splitlines()[-1:],
                    "end_to_end_seconds": round(answered, 2) if answered else None,
                    "sync_log": [x for x in log.splitlines() if delta in x][-3:], "loadavg": loadavg()})
    finally:
        procs.stop_all()
    m = manifest(replica, res["delta"])
    online = [f for f in m["files"] if f["path"].startswith("online/")]
    base_inodes = {os.stat(replica / "versions" / res["base"] / f["path"]).st_ino: f["path"]
                   for f in manifest(replica, res["base"])["files"] if f["path"].startswith("online/")}
    moved = sum(f["size"] for f in online
                if os.stat(replica / "versions" / res["delta"] / f["path"]).st_ino not in base_inodes)
    res["sync_moved_bytes"] = moved
    res["version_online_bytes"] = sum(f["size"] for f in online)
    res["version_bytes"] = sum(f["size"] for f in m["files"])
    print(f"1% delta end to end: {res['end_to_end_seconds']} s (load {res['load_seconds']} s, publish "
          f"{res['publish_seconds']} s); sync moved {moved >> 20} MiB of {res['version_bytes'] >> 20} MiB "
          f"({100 * moved / res['version_bytes']:.2f}%)", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return res


# --------------------------------------------------------------------------------------------------

def equal(args: argparse.Namespace) -> dict[str, Any]:
    """A full load of the merged sources against the delta version: every stored pair, every offline row."""
    from rocksdict import AccessType, Options, Rdict

    from quiver.training import training_frame

    root, src = Path(args.root), Path(args.src)
    delta = current(root)
    m = manifest(root, delta)
    view = next(iter(m["changes"]["sources"]))
    change = pq.read_table(m["changes"]["sources"][view][0]["path"])
    work = Path(args.work)
    merged_src = work / "src"
    shutil.rmtree(work, ignore_errors=True)
    (merged_src / view).mkdir(parents=True)
    base_rows = pq.read_table(sorted((src / view).glob("*.parquet")))
    keep = base_rows.filter(pc.invert(pc.is_in(base_rows.column("user_id"), value_set=change.column("user_id"))))
    ups = change.filter(pc.invert(change.column("_deleted"))).drop_columns(["_deleted"])
    pq.write_table(pa.concat_tables([keep, ups.cast(keep.schema)]), merged_src / view / "part-0.parquet")
    text = (src / "features.yaml").read_text()
    for v in m["schema"]["views"]:
        if v["name"] != view:
            text = text.replace(f"source: {v['source']}", f"source: {src / v['source']}")
    (merged_src / "features.yaml").write_text(text)
    oracle = work / "root"
    t, _ = quiver("load", "--features", str(merged_src / "features.yaml"), "--root", str(oracle), "--as-of",
                  m["as_of"])
    res: dict[str, Any] = {"machine": machine(), "delta": delta, "oracle_load_seconds": round(t, 1), "groups": {}}
    want_v = current(oracle)
    for g in m["groups"]:
        a = Rdict(str(root / "versions" / delta / "online" / g), Options(raw_mode=True),
                  access_type=AccessType.read_only())
        b = Rdict(str(oracle / "versions" / want_v / "online" / g), Options(raw_mode=True),
                  access_type=AccessType.read_only())
        n = diff = 0
        ia, ib = a.items(), b.items()
        for (ka, va), (kb, vb) in zip(ia, ib, strict=False):
            n += 1
            diff += (ka != kb) or (va != vb)
        rest = sum(1 for _ in ia) + sum(1 for _ in ib)
        a.close()
        b.close()
        res["groups"][g] = {"pairs": n, "differ": diff, "unpaired": rest}
    got, want = training_frame(root, delta, [view]), training_frame(oracle, want_v, [view])
    same = got.schema == want.schema and got.num_rows == want.num_rows and all(
        _same(got.column(c), want.column(c)) for c in want.column_names)
    res["offline"] = {"view": view, "rows": got.num_rows, "oracle_rows": want.num_rows, "equal": same}
    res["loadavg"] = loadavg()
    print(json.dumps({k: res[k] for k in ("groups", "offline")}), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return res


def _same(x: pa.ChunkedArray, y: pa.ChunkedArray) -> bool:
    """Equal values and nulls; floats by their bits (NaN equals the same NaN)."""
    a, b = x.combine_chunks(), y.combine_chunks()
    if not pa.types.is_floating(a.type):
        return bool(a.equals(b))
    valid = a.is_valid().to_numpy(zero_copy_only=False)
    bits = np.uint32 if a.type == pa.float32() else np.uint64
    return bool((valid == b.is_valid().to_numpy(zero_copy_only=False)).all() and (
        a.fill_null(0).to_numpy(zero_copy_only=False).view(bits)[valid]
        == b.fill_null(0).to_numpy(zero_copy_only=False).view(bits)[valid]).all())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--src", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--view", default="profile")
    s.add_argument("--deleted", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=21)
    s = sub.add_parser("build")
    s.add_argument("--root", required=True)
    s.add_argument("--changes", required=True)
    s.add_argument("--view", default="profile")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--full-load-json", default=None, help="a bench/load.sh result to quote beside")
    s.add_argument("--no-rebase", action="store_true", help="only the deltas by size, not the 15% one and its rebase")
    s = sub.add_parser("reads")
    s.add_argument("--root", required=True)
    s.add_argument("--delta", required=True)
    s.add_argument("--rebased", required=True)
    s.add_argument("--users", type=int, default=10_000_000)
    s.add_argument("--rate", type=float, default=1000)
    s.add_argument("--seconds", type=float, default=30)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--cache-mb", type=int, default=256)
    s.add_argument("--embedded-only", action="store_true", help="no gRPC runs")
    s.add_argument("--saturate", type=float, default=0, help="also an embedded run at this rate: its capacity")
    s = sub.add_parser("fresh")
    s.add_argument("--root", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--replica", required=True)
    s.add_argument("--changes", required=True)
    s.add_argument("--view", default="profile")
    s = sub.add_parser("equal")
    s.add_argument("--root", required=True)
    s.add_argument("--src", required=True)
    s.add_argument("--work", required=True)
    for s in sub.choices.values():
        if s.prog.split()[-1] != "prepare":
            s.add_argument("--json", required=True)
    args = p.parse_args()
    res = {"prepare": prepare, "build": build, "reads": reads, "fresh": fresh, "equal": equal}[args.step](args)
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
