"""The server's supervisor process: `run` starts N worker processes (worker.py) sharing one port
(SO_REUSEPORT; each opens the snapshot read-only itself, so the data is shared through the OS page cache,
not copied), serves the workers' summed metrics, forwards SIGTERM and restarts a worker that dies.
"""

import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from quiver.errors import UsageError
from quiver.service.config import ServeConfig
from quiver.service.worker import run_worker

log = logging.getLogger("quiver.server")
# A worker that dies this soon after it started, this many times in a row, cannot start (an unreadable
# certificate, a socket path it cannot bind): the supervisor exits 1 rather than restart it forever, so
# the orchestrator sees a crash loop.
STARTUP_SECONDS = 10.0
STARTUP_FAILURES = 3


def _resolve_port(config: ServeConfig) -> ServeConfig:
    """Port 0 with several workers: pick one free port they all bind (SO_REUSEPORT)."""
    if not config.listen or not config.listen.endswith(":0"):
        return config
    host = config.listen.rsplit(":", 1)[0].strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return replace(config, listen=f"{config.listen.rsplit(':', 1)[0]}:{port}")


def run(config: ServeConfig) -> int:
    """The supervisor. Returns the exit code."""
    config = _resolve_port(config)
    try:  # fail here, once, rather than in every worker
        for path in filter(None, (config.tls_cert, config.tls_key, config.tls_client_ca)):
            Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"TLS: {e}") from None
    metrics_dir = tempfile.mkdtemp(prefix="quiver-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the spawned workers
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    if config.metrics_port:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_dir)
        start_http_server(config.metrics_port, addr=config.metrics_host, registry=registry)
    ctx = multiprocessing.get_context("spawn")
    workers: dict[int, multiprocessing.process.BaseProcess] = {}
    started_at: dict[int, float] = {}

    def start(i: int) -> None:
        p = ctx.Process(target=run_worker, args=(config, i, os.getpid()), name=f"quiver-worker-{i}", daemon=False)
        p.start()
        workers[i] = p
        started_at[i] = time.monotonic()

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in workers.values():
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for i in range(config.workers):
        start(i)
    print(f"quiver: serving {config.root} on {config.listen or '-'}"
          f"{' unix:' + config.uds if config.uds else ''} with {config.workers} worker(s)"
          f"{f'; metrics on :{config.metrics_port}' if config.metrics_port else ''}", flush=True)
    deadline = None
    exit_code = 0
    quick_failures = 0
    while True:
        time.sleep(0.2)
        if stopping and deadline is None:
            deadline = time.monotonic() + config.drain_seconds + 5
        for i, p in list(workers.items()):
            if p.is_alive():
                continue
            multiprocess.mark_process_dead(p.pid)
            if stopping:
                del workers[i]
                continue
            quick_failures = quick_failures + 1 if time.monotonic() - started_at[i] < STARTUP_SECONDS else 0
            if quick_failures >= STARTUP_FAILURES:
                log.error("worker %d exited with %s within %.0f s of starting, %d times in a row; giving up",
                          i, p.exitcode, STARTUP_SECONDS, quick_failures)
                del workers[i]
                exit_code = 1
                on_signal(signal.SIGTERM, None)
                continue
            log.error("worker %d exited with %s; restarting it", i, p.exitcode)
            start(i)
        if stopping and not workers:
            return exit_code
        if deadline is not None and time.monotonic() > deadline:
            for p in workers.values():
                p.kill()
            return 1


if __name__ == "__main__":
    sys.exit("use `quiver serve`")
