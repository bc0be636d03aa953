"""The two systems under test, set up the way the benchmark needs them: a generated data set, quiver
loaded from it and served, and Redis holding the same bytes in the layout Redis feature stores use."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from procs import MemorySampler, Processes, disk_mb, free_port, wait_for

BENCH = Path(__file__).resolve().parent
QUIVER = str(Path(sys.executable).parent / "quiver")
MB = 1 << 20


def dataset(work: Path, users: int, seed: int = 1) -> tuple[Path, dict[str, Any]]:
    """`quiver generate` output for `users` users under work/users-N/source, reused when complete."""
    source = work / f"users-{users}" / "source"
    done = source / ".complete"
    if done.exists():
        return source, {"generated": False}
    shutil.rmtree(source, ignore_errors=True)
    source.parent.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    subprocess.run([QUIVER, "generate", "--events-per-user", "0",
                    "--users", str(users), "--out", str(source), "--seed", str(seed)],
                   check=True, stdout=subprocess.DEVNULL, timeout=3600)
    done.touch()
    return source, {"generated": True, "generate_s": time.monotonic() - t}


def load_quiver(source: Path, root: Path, users: int, workers: int, log: Path, fresh: bool = True,
                as_of: str = "") -> dict[str, Any]:
    """`quiver load` with its wall time and the peak memory of the loader's process tree; `fresh`: into an
    emptied root with --no-reuse, otherwise into the root as it is (reusing what did not change)."""
    if fresh:
        shutil.rmtree(root, ignore_errors=True)
    cmd = [QUIVER, "load", "--features", str(source / "features.yaml"), "--root", str(root),
           "--workers", str(workers), *(["--no-reuse"] if fresh else []), *(["--as-of", as_of] if as_of else [])]
    t = time.monotonic()
    with open(log, "ab") as err:
        start = err.tell()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        with MemorySampler(p.pid, interval=0.2) as mem:
            out, _ = p.communicate(timeout=3 * 3600)
    wall = time.monotonic() - t
    if p.returncode != 0:
        raise RuntimeError(f"quiver load failed ({p.returncode}); see {log}")
    version = out.decode().split()[-1]
    vdir = root / "versions" / version
    source_mb = disk_mb(source, ".parquet")
    online_mb, offline_mb = disk_mb(vdir / "online"), disk_mb(vdir / "offline")
    manifest = json.loads((vdir / "manifest.json").read_text())
    return {
        "users": users, "workers": workers, "version": version, "wall_s": wall,
        "users_per_s": users / wall, "source_mb": source_mb, "source_mb_per_s": source_mb / wall,
        "peak_rss_mb": mem.peak_rss / MB, "peak_pss_mb": mem.peak_pss / MB,
        "online_mb": online_mb, "offline_mb": offline_mb,
        "online_vs_source": online_mb / source_mb, "offline_vs_source": offline_mb / source_mb,
        "rows": manifest.get("rows") or manifest.get("row_counts"),
        "phases_s": load_phases(log, start),
    }


def load_phases(log: Path, offset: int) -> dict[str, float]:
    """The loader's own phase timings ("quiver[load] encode 53.7 s") from this run's part of the log."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"quiver\[load\] (?:INFO )?(\S+)\s+([\d.]+) s", text)}


def views_of(root: Path, version: str) -> list[str]:
    manifest = json.loads((root / "versions" / version / "manifest.json").read_text())
    return [v["name"] for v in manifest["schema"]["views"]]


@dataclass
class QuiverServer:
    proc: subprocess.Popen[bytes]
    target: str        # host:port
    uds: Path          # worker 0's socket; worker i>0 listens on uds.i
    workers: int


def health_serving(target: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    """The server at `target` reports SERVING; raises when its process has exited."""
    if proc.poll() is not None:
        raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}; see {log}")
    try:
        with grpc.insecure_channel(target) as ch:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return bool(r.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def serve_quiver(procs: Processes, root: Path, workers: int, cache_mb: int, sock_dir: Path, log: Path,
                 cpu: int | None = None, extra: Sequence[str] = ()) -> QuiverServer:
    port = free_port()
    uds = sock_dir / f"q{port}.sock"
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    cmd = [*pin, QUIVER, "serve", "--root", str(root), "--listen", f"127.0.0.1:{port}", "--uds", str(uds),
           "--workers", str(workers), "--metrics-port", "0", "--cache-mb", str(cache_mb), *extra]
    proc = procs.start(cmd, log)
    target = f"127.0.0.1:{port}"
    wait_for(lambda: health_serving(target, proc, log), timeout=180,
             what=f"quiver serve health SERVING on {target}", interval=0.3)
    # Every worker must be up before load starts; each creates its own socket.
    wait_for(lambda: all(Path(f"{uds}.{i}" if i else uds).exists() for i in range(workers)),
             timeout=60, what="every worker's Unix socket")
    return QuiverServer(proc, target, uds, workers)


@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    port: int
    prefix: list[str]  # runs a command where Redis is reachable on 127.0.0.1:port (a netns, or nothing)

    def cli(self, *args: str) -> str:
        r = subprocess.run([*self.prefix, "redis-cli", "-p", str(self.port), *args], capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def info_memory(self) -> dict[str, int]:
        fields = dict(line.split(":", 1) for line in self.cli("INFO", "memory").splitlines() if ":" in line)
        return {k: int(fields[k]) for k in ("used_memory", "used_memory_rss", "used_memory_dataset")}


def serve_redis(procs: Processes, prefix: list[str], workdir: Path, log: Path) -> RedisServer:
    port = free_port()
    cmd = [*prefix, "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--protected-mode", "yes", "--dir", str(workdir), "--logfile", str(log)]
    proc = procs.start(cmd, log)
    server = RedisServer(proc, port, prefix)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {log}")
        try:
            return server.cli("PING").strip() == "PONG"
        except RuntimeError:
            return False

    wait_for(up, timeout=30, what=f"redis-server on 127.0.0.1:{port}")
    return server


def load_redis(redis: RedisServer, root: Path, version: str, log: Path, parallel: int = 2) -> dict[str, Any]:
    """Every view's stored rows into Redis, one `redis_feed.py | redis-cli --pipe` per view, `parallel`
    at a time; returns load time and memory."""
    views = views_of(root, version)
    t = time.monotonic()
    pending, replies = list(views), 0
    running: list[tuple[str, subprocess.Popen[bytes], subprocess.Popen[bytes]]] = []
    with open(log, "ab") as err:
        while pending or running:
            while pending and len(running) < parallel:
                view = pending.pop(0)
                feed = subprocess.Popen([sys.executable, str(BENCH / "redis_feed.py"),
                                         str(root / "versions" / version), view],
                                        stdout=subprocess.PIPE, stderr=err)
                pipe = subprocess.Popen([*redis.prefix, "redis-cli", "-p", str(redis.port), "--pipe"],
                                        stdin=feed.stdout, stdout=subprocess.PIPE, stderr=err)
                assert feed.stdout is not None
                feed.stdout.close()  # the pipe's reader owns it now
                running.append((view, feed, pipe))
            view, feed, pipe = running.pop(0)
            out, _ = pipe.communicate(timeout=3 * 3600)
            feed.wait(timeout=60)
            text = out.decode()
            if feed.returncode != 0 or pipe.returncode != 0 or "errors: 0," not in text:
                raise RuntimeError(f"loading view {view} into Redis failed: {text.strip()[-300:]}; see {log}")
            replies += int(text.rsplit("replies:", 1)[1].split()[0])
    seconds = time.monotonic() - t
    mem = redis.info_memory()
    keys = int(redis.cli("DBSIZE").strip())
    return {"load_s": seconds, "hset_commands": replies, "keys": keys, "users_per_s": keys / seconds,
            "used_memory_mb": mem["used_memory"] / MB, "used_memory_rss_mb": mem["used_memory_rss"] / MB,
            "used_memory_dataset_mb": mem["used_memory_dataset"] / MB,
            "bytes_per_user": mem["used_memory"] / max(keys, 1)}
