"""Processes the benchmark starts, and what it reads about them from /proc.

Every process goes through `Processes.start`, in its own process group, so `stop_all` (called at exit,
also on SIGTERM/SIGINT) ends it and its children: nothing the harness started outlives it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Polls until `condition()` is truthy and returns it; raises after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Processes:
    """The long-running processes of one benchmark run (servers, proxies)."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: Sequence[str], log: Path, stdout: int | IO[bytes] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as err:
            p = subprocess.Popen(list(cmd), stdout=stdout if stdout is not None else err, stderr=err,
                                 start_new_session=True)
        self._procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 20) -> None:
        """SIGTERM to the process group (a quiver server drains), SIGKILL if it outlives `timeout`."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=timeout)
            except (ProcessLookupError, PermissionError):
                pass
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        # Children left in the group after the leader exited (a worker that ignored SIGTERM).
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p in self._procs:
            self._procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self._procs)):
            self.stop(p, timeout=10)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the command name, which is in parentheses and may hold spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a quiver supervisor, its workers, multiprocessing helpers)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def memory(pids: Sequence[int]) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over `pids`. RSS counts pages shared between workers (the mmapped
    snapshot, the interpreter) once per process; PSS splits them, so it is the honest sum."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
    return rss, pss


class MemorySampler:
    """Peak and last (RSS, PSS) of a process tree, sampled on a thread every `interval` seconds."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = self.last_rss = self.last_pss = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def sample(self) -> None:
        pids = tree(self.pid)
        rss, pss = memory(pids)
        if rss:
            self.last_rss, self.last_pss, self.processes = rss, pss, len(pids)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def figures(self) -> dict[str, float]:
        mb = 1 << 20
        return {"peak_rss_mb": self.peak_rss / mb, "peak_pss_mb": self.peak_pss / mb,
                "rss_mb": self.last_rss / mb, "pss_mb": self.last_pss / mb, "processes": self.processes}


def disk_mb(path: Path, suffix: str = "") -> float:
    """Space used on disk (allocated blocks) by the files under `path` whose name ends with `suffix`."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            if name.endswith(suffix):
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass
    return total / (1 << 20)
