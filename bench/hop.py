"""The user's status quo: Redis one network hop away (0.5 ms of round trip), simulated on one machine.

Preferred: a network namespace the harness creates and removes, with its own loopback, where Redis and
its load generator run and `tc netem` delays the Redis port only (250 us per direction). Kernels without
the netem qdisc (`Specified qdisc kind is unknown`) fall back to bench/delayproxy, a userspace TCP proxy
on 127.0.0.1 that holds each chunk 250 us per direction; the results name the method used.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DELAY_US = 250  # per direction: 0.5 ms round trip


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


class Netns:
    """A network namespace with loopback up; `prefix` runs a command inside it."""

    def __init__(self) -> None:
        self.name = f"quiver-bench-{os.getpid()}"
        self.prefix = ["ip", "netns", "exec", self.name]
        self.created = False

    def create(self) -> str | None:
        """Creates the namespace and checks netem works in it; returns why not, or None."""
        r = _run(["ip", "netns", "add", self.name])
        if r.returncode != 0:
            return f"ip netns add: {r.stderr.strip()}"
        self.created = True
        r = _run([*self.prefix, "ip", "link", "set", "lo", "up"])
        if r.returncode != 0:
            return f"ip link set lo up: {r.stderr.strip()}"
        r = _run([*self.prefix, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", f"{DELAY_US}us"])
        if r.returncode != 0:
            return f"tc qdisc add dev lo root netem delay {DELAY_US}us: {r.stderr.strip()}"
        _run([*self.prefix, "tc", "qdisc", "del", "dev", "lo", "root"])
        return None

    def delay_port(self, port: int) -> None:
        """Delays packets to and from `port` on the namespace's loopback (both directions cross lo);
        all other traffic goes to an undelayed band of a prio qdisc."""
        tc = [*self.prefix, "tc"]
        steps = [
            # Every priority to band 1:2 (undelayed) unless a filter below picks 1:3.
            [*tc, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio", "bands", "3", "priomap",
             *["1"] * 16],
            [*tc, "qdisc", "add", "dev", "lo", "parent", "1:3", "handle", "30:", "netem", "delay", f"{DELAY_US}us"],
            [*tc, "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
             "match", "ip", "dport", str(port), "0xffff", "flowid", "1:3"],
            [*tc, "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
             "match", "ip", "sport", str(port), "0xffff", "flowid", "1:3"],
        ]
        for cmd in steps:
            r = _run(cmd)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")

    def undelay(self) -> None:
        _run([*self.prefix, "tc", "qdisc", "del", "dev", "lo", "root"])

    def remove(self) -> None:
        if self.created:
            _run(["ip", "netns", "del", self.name])
            self.created = False


def build_proxy(repo: Path, out: Path) -> Path:
    binary = out / "delayproxy"
    r = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=repo / "bench" / "delayproxy",
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"go build bench/delayproxy: {r.stderr.strip()}")
    return binary
