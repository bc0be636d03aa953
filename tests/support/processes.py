"""The real CLI and `quiver serve` as processes, loaded roots for the end-to-end tests (fixtures in
tests/e2e/conftest.py), and waiting on a condition instead of sleeping.

THE helpers of the suite for these: `run_quiver` (one CLI run as a process), `free_port` (a port from the
OS, so tests can run in parallel under pytest-xdist) and `wait_for`. `support.inprocess.run_in_process`
runs the CLI's main() in the test process instead, for the failures found before any work starts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from quiver.snapshot import Manifest, SnapshotRoot
from quiver.v1 import quiver_pb2_grpc
from support.canon import canon_column, canon_default

QUIVER = str(Path(sys.executable).parent / "quiver")
SERVICE = "quiver.v1.FeatureStore"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def run_quiver(*args: str | os.PathLike[str], timeout: float = 120, env: Mapping[str, str] | None = None,
               input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs the installed `quiver` entry point as a process, output captured as text. `env`: variables set
    on top of this process's environment. `check`: fail the test, showing the output, on a non-zero exit."""
    cmd = [QUIVER, *map(str, args)]
    r = subprocess.run(cmd, env={**os.environ, **env} if env is not None else None, input=input,
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this process handed out before: the kernel may return the port
    it just released, and a server given it for both --listen and --metrics-port refuses to start."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.02) -> Any:
    """Polls until `condition()` is truthy and returns it; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def children(pid: int) -> list[int]:
    """The live child processes of `pid`, from /proc (pids in ascending order)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we listed
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return sorted(out)


def short_tmpdir() -> Path:
    """A folder for Unix sockets: pytest's tmp paths can exceed the 107-byte sun_path limit."""
    return Path(tempfile.mkdtemp(prefix="qsock-", dir="/tmp"))


def quiver_load(src: Path, root: Path, as_of: str) -> str:
    """Runs `quiver load`; returns the published version id (its last line of stdout)."""
    r = run_quiver("load", "--features", src / "features.yaml", "--root", root, "--as-of", as_of, "--workers", "1")
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]


class ServerProcess:
    """One `quiver serve` supervisor (and its workers) on a free TCP port; output goes to a log file."""

    def __init__(self, root: Path, log: Path, *flags: str, metrics: bool = False,
                 credentials: grpc.ChannelCredentials | None = None,
                 channel_options: tuple[tuple[str, Any], ...] = ()) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_port = free_port() if metrics else 0
        self.credentials = credentials
        self.channel_options = channel_options
        self.log_path = log
        cmd = [QUIVER, "serve", "--root", str(root), "--listen", self.target, "--metrics-port",
               str(self.metrics_port), "--poll-seconds", "0.2", "--drain-seconds", "5", *flags]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self._channels: list[grpc.Channel] = []
        self._health_channels: dict[str, grpc.Channel] = {}

    def worker_pids(self) -> list[int]:
        """The supervisor's worker processes, from /proc: its children started by multiprocessing's spawn
        (not multiprocessing's resource tracker, its other child)."""
        out = []
        for pid in children(self.proc.pid):
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
            except OSError:
                continue
        return out

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def channel(self, target: str | None = None) -> grpc.Channel:
        """A new channel (a new connection) to the server; closed at stop()."""
        target = target or self.target
        opts = [("grpc.max_receive_message_length", 64 << 20), *self.channel_options]
        ch = (grpc.secure_channel(target, self.credentials, options=opts)
              if self.credentials and not target.startswith("unix:") else grpc.insecure_channel(target, options=opts))
        self._channels.append(ch)
        return ch

    def stub(self, target: str | None = None) -> quiver_pb2_grpc.FeatureStoreStub:
        return quiver_pb2_grpc.FeatureStoreStub(self.channel(target))

    def health(self, service: str = SERVICE, target: str | None = None) -> int | None:
        """The health status, or None while the server does not answer."""
        try:
            stub = health_pb2_grpc.HealthStub(self._health_channel(target or self.target))
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status)
        except grpc.RpcError:
            return None

    def _health_channel(self, target: str) -> grpc.Channel:
        if target not in self._health_channels:
            self._health_channels[target] = self.channel(target)
        return self._health_channels[target]

    def wait_health(self, status: int = SERVING, timeout: float = 90.0, target: str | None = None) -> None:
        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"quiver serve exited with {self.proc.returncode}:\n{self.logs()}")
            return self.health(target=target) == status
        wait_for(check, timeout, f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named `name` whose labels include `labels` (0 when there are none)."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(s.labels, s.value) for family in text_string_to_metric_families(self.metrics_text())
                for s in family.samples if s.name == name]

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds; returns the exit code."""
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        self._health_channels.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class UsersSnapshots:
    """`quiver generate --users 2000` with seeds 7 and 8, loaded as v1 and v2 of a template root whose
    CURRENT is v1. Tests that change a root work on a copy (`root`); versions are immutable, so copying
    them stands in for loading them again."""

    template: Path
    sources: dict[str, Path]     # version -> folder of its features.yaml and Parquet
    v1: str
    v2: str
    users: int = 2000
    _expected: dict[tuple[str, str], dict[int, dict[str, Any]]] = field(default_factory=dict)

    def root(self, dest: Path, versions: tuple[str, ...] | None = None, current: str | None = None) -> Path:
        keep = set(versions or (self.v1, self.v2))
        shutil.copytree(self.template, dest, ignore=lambda d, names: [
            n for n in names if Path(d) == self.template / "versions" and n not in keep])
        SnapshotRoot(dest).set_current(current or self.v1)
        return dest

    def schema(self, version: str) -> Any:
        return Manifest.load(SnapshotRoot(self.template).manifest_path(version)).schema

    def expected(self, version: str, view: str) -> dict[int, dict[str, Any]]:
        """user_id -> feature -> canonical value (floats as bits, defaults applied), read from the
        version's source Parquet with pyarrow."""
        if (version, view) not in self._expected:
            self._expected[version, view] = self._read_expected(version, view)
        return self._expected[version, view]

    def _read_expected(self, version: str, view: str) -> dict[int, dict[str, Any]]:
        vdef = self.schema(version).view(view)
        table = pa.concat_tables(pq.read_table(f) for f in sorted((self.sources[version] / view).glob("*.parquet")))
        ids = table.column("user_id").to_pylist()
        rows: dict[int, dict[str, Any]] = {k: {} for k in ids}
        for f in vdef.features:
            default = None if f.default is None else canon_default(f.type, f.default)
            for k, v in zip(ids, canon_column(f.type, table.column(f.column)), strict=True):
                rows[k][f.name] = default if v is None else v
        return rows
