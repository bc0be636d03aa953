"""The server's supervisor process: `run` starts N worker processes (worker.py) sharing one port
(SO_REUSEPORT; each opens the snapshot read-only itself, so the data is shared through the OS page cache,
not copied), serves the workers' summed metrics, forwards SIGTERM and restarts a worker that dies.
"""

import errno
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import stat
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from quiver.base.errors import AddressInUse, RootError, UsageError
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


def _check_tls(config: ServeConfig) -> None:
    """Readable, PEM, and a key that fits its certificate."""
    try:
        for path in filter(None, (config.tls_cert, config.tls_key, config.tls_client_ca)):
            Path(path).read_bytes()
        if config.tls_cert:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(config.tls_client_ca)
    except ssl.SSLError as e:  # before OSError, its base
        files = ", ".join(filter(None, (config.tls_cert, config.tls_key, config.tls_client_ca)))
        raise UsageError(f"TLS: {files}: not PEM certificates and a private key that fits them ({e})") from None
    except OSError as e:
        raise UsageError(f"TLS: {e}") from None


def _check_port(listen: str) -> None:
    """Nothing else listens on HOST:PORT. The probe binds without SO_REUSEPORT, so it also fails on another
    quiver server, which the workers' SO_REUSEPORT would otherwise join silently, splitting the traffic
    between two roots. Forms other than HOST:PORT (unix:PATH, ...) are left to gRPC; a worker that cannot
    bind them says so and the server exits 14."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise AddressInUse(f"--listen {listen} (QUIVER_LISTEN): cannot resolve {host!r}: {e.strerror}") from None
    failed = []
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left by a restart is fine
            try:
                s.bind(address)
            except OSError as error:
                failed.append((error, address))
    # gRPC listens on every address the host resolves to and needs one: "localhost" without IPv6 is fine
    in_use = [(e, a) for e, a in failed if e.errno == errno.EADDRINUSE]
    if in_use or len(failed) == len(addresses):
        first, where = (in_use or failed)[0]
        raise AddressInUse(f"--listen {listen} (QUIVER_LISTEN): cannot listen on {where[0]!s} port "
                           f"{where[1]!s}: {first.strerror}{_IN_USE if in_use else ''}") from None


_IN_USE = " (another process, perhaps another quiver serve, listens there)"


def _check_socket(path: str) -> None:
    """A Unix socket path is free: nothing there, or a socket nobody listens on (left by a killed server,
    removed by the worker). A live socket is not taken over: that would cut its server off."""
    where = f"--uds {path} (QUIVER_UDS)"
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise AddressInUse(f"{where}: exists and is not a socket; remove it or choose another path")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
            except OSError:
                return  # stale
        raise AddressInUse(f"{where}: a server already listens on it")
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.bind(path)
        except OSError as e:
            raise AddressInUse(f"{where}: cannot create a socket there: {e.strerror}") from None
        finally:
            if os.path.lexists(path):
                os.unlink(path)


def check_environment(config: ServeConfig) -> None:
    """Everything the workers will open that can be checked once, here, with a one-line error and an exit
    code from the table, rather than in every worker as a traceback."""
    _check_tls(config)
    if os.path.exists(config.root) and not os.path.isdir(config.root):
        raise RootError(f"--root {config.root}: exists and is not a folder")
    if config.listen:
        port = config.listen.rpartition(":")[2]
        if config.metrics_port and port == str(config.metrics_port):
            raise UsageError(f"--listen {config.listen} (QUIVER_LISTEN) and --metrics-port {config.metrics_port} "
                             "(QUIVER_METRICS_PORT) name the same port; give each its own")
        _check_port(config.listen)
    if config.uds:
        for i in range(config.workers):
            _check_socket(config.uds_path(i))


def _start_metrics(config: ServeConfig, metrics_dir: str) -> None:
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
    try:
        start_http_server(config.metrics_port, addr=config.metrics_host, registry=registry)
    except OSError as e:
        raise AddressInUse(f"--metrics-port {config.metrics_port} (QUIVER_METRICS_PORT) on {config.metrics_host}: "
                           f"{e.strerror}{_IN_USE if e.errno == errno.EADDRINUSE else ''}; "
                           "choose another port, or 0 for no metrics") from None


def run(config: ServeConfig) -> int:
    """The supervisor. Returns the exit code."""
    config = _resolve_port(config)
    check_environment(config)
    metrics_dir = tempfile.mkdtemp(prefix="quiver-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the spawned workers
    from prometheus_client import multiprocess

    if config.metrics_port:
        _start_metrics(config, metrics_dir)
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
            if p.exitcode == AddressInUse.exit_code:  # it logged which address; retrying cannot help
                log.error("worker %d could not listen; stopping the server", i)
                del workers[i]
                exit_code = AddressInUse.exit_code
                on_signal(signal.SIGTERM, None)
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
