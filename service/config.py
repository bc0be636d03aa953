"""The server's configuration: one frozen dataclass, built once from flags and QUIVER_* variables
(the same names deploy/k8s/ uses), then passed down. Nothing else reads the environment."""

import argparse
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from quiver.snapshot.leases import FRESH_SECONDS, REFRESH_SECONDS

VERIFY_MODES = ("full", "size", "background")


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class ServeConfig:
    root: str = field(metadata=_help("snapshot root to serve; the server follows its CURRENT (required)"))
    listen: str = field(default="127.0.0.1:50051", metadata=_help(
        "HOST:PORT for gRPC over TCP; empty to serve on the Unix socket only"))
    uds: str = field(default="", metadata=_help(
        "Unix socket path for worker 0; worker k > 0 listens on PATH.k (plaintext)"))
    workers: int = field(default=1, metadata=_help("server processes sharing the port (SO_REUSEPORT)"))
    metrics_port: int = field(default=9095, metadata=_help("Prometheus metrics port, summed over workers; 0: off"))
    metrics_host: str = field(default="127.0.0.1", metadata=_help(
        "address the metrics endpoint binds (0.0.0.0 in Kubernetes, for scraping)"))
    cache_mb: int = field(default=256, metadata=_help(
        "RocksDB block cache in MB, shared by all views and versions, split across workers"))
    max_entities: int = field(default=1000, metadata=_help("most entities one GetFeatures request may ask for"))
    max_concurrent: int = field(default=512, metadata=_help(
        "GetFeatures calls in flight per worker; beyond this: RESOURCE_EXHAUSTED at once"))
    max_queue_ms: float = field(default=50.0, metadata=_help(
        "more queued work than this ahead of a call, in ms: RESOURCE_EXHAUSTED at once; 0: off"))
    verify: str = field(default="full", metadata=_help(
        "checks before a version is swapped in: full (every file's checksum not already proven: README, "
        "Trust model), size (sizes and row counts), or background (full, except that the version a worker "
        "starts with is served after the size check while its full check runs at background priority; a "
        "failure then refuses it, as a full check would have)"))
    warm_mb: int = field(default=-1, metadata=_help(
        "before a new version takes traffic, read up to this many MB of its online files not shared with the "
        "served one into the page cache, at background priority; -1: their filter and index tails, plus half "
        "the memory available then (the machine's or the memory cgroup's) beyond the served version's online "
        "files; then the page tables of its files' cached pages are filled (no disk reads); 0: neither"))
    warm_mb_per_s: float = field(default=0.0, metadata=_help(
        "pace warming's reads from the disk to this many MB a second: their IO completions run on the serving "
        "core, so a lower rate means a lower P99 while warming, for longer (bench/README.md); what the page "
        "cache already holds is not read; 0: unpaced"))
    poll_seconds: float = field(default=1.0, metadata=_help("how often each worker reads CURRENT, in seconds"))
    drain_seconds: float = field(default=10.0, metadata=_help(
        "after SIGTERM, how long in-flight calls may finish, in seconds"))
    lease_refresh_seconds: float = field(default=REFRESH_SECONDS, metadata=_help(
        "how often each worker rewrites its lease on the versions it holds (ROOT/leases/), in seconds; "
        f"below {FRESH_SECONDS:.0f}, after which a lease is stale"))
    loop: str = field(default="uvloop", metadata=_help("event loop: uvloop or asyncio"))
    tls_cert: str = field(default="", metadata=_help("PEM certificate for TLS on the TCP port (with --tls-key)"))
    tls_key: str = field(default="", metadata=_help("PEM private key for TLS on the TCP port (with --tls-cert)"))
    tls_client_ca: str = field(default="", metadata=_help(
        "PEM CA bundle: clients must present a certificate it signed (mutual TLS)"))

    def __post_init__(self) -> None:
        if not self.listen and not self.uds:
            raise ValueError("nothing to listen on: give --listen HOST:PORT and/or --uds PATH")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify {self.verify!r}: expected {', '.join(VERIFY_MODES)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.workers < 1 or self.max_entities < 1 or self.max_concurrent < 1 or self.cache_mb < 1:
            raise ValueError("workers, max-entities, max-concurrent and cache-mb must be positive")
        if self.warm_mb < -1:
            raise ValueError(f"warm-mb {self.warm_mb}: expected -1 (the default budget), 0 (off) or MB")
        if not self.warm_mb_per_s >= 0:
            raise ValueError(f"warm-mb-per-s {self.warm_mb_per_s}: must not be negative (0: unpaced)")
        if not self.poll_seconds > 0:  # 0 would spin the follow loop; `not >` also refuses NaN
            raise ValueError(f"poll-seconds {self.poll_seconds}: must be positive")
        if not self.max_queue_ms >= 0:
            raise ValueError(f"max-queue-ms {self.max_queue_ms}: must not be negative")
        if not self.drain_seconds >= 0:
            raise ValueError(f"drain-seconds {self.drain_seconds}: must not be negative")
        if not 0 < self.lease_refresh_seconds < FRESH_SECONDS:  # `not` also refuses NaN
            raise ValueError(f"lease-refresh-seconds {self.lease_refresh_seconds}: must be more than 0 and less "
                             f"than {FRESH_SECONDS:.0f} (a lease not rewritten for that long is stale)")
        if self.loop not in ("uvloop", "asyncio"):
            raise ValueError(f"loop {self.loop!r}: expected uvloop or asyncio")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics-port {self.metrics_port}: expected 0 (off) to 65535")

    @property
    def cache_bytes_per_worker(self) -> int:
        return (self.cache_mb << 20) // self.workers

    def uds_path(self, worker: int) -> str:
        return self.uds if worker == 0 else f"{self.uds}.{worker}"


def env_name(field_name: str) -> str:
    return "QUIVER_" + field_name.upper()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per field: its help says what it does, its default and its environment variable."""
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float}[str(f.type)]
        default = "" if f.default is MISSING else f" (default: {f.default if f.default != '' else 'none'})"
        p.add_argument(flag, type=kind, default=None, metavar=f.name.upper(),
                       help=f"{f.metadata['help']}{default}; env {env_name(f.name)}")


def from_sources(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> ServeConfig:
    """Flags win over QUIVER_* variables, which win over the defaults."""
    values = {}
    for f in fields(ServeConfig):
        kind = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float}[str(f.type)]
        flag = getattr(args, f.name, None)
        if flag is not None:
            values[f.name] = flag
        elif env_name(f.name) in env:
            try:
                values[f.name] = kind(env[env_name(f.name)])
            except ValueError:
                raise ValueError(f"{env_name(f.name)}={env[env_name(f.name)]!r}: expected {kind.__name__}") from None
    if "root" not in values:
        raise ValueError("no snapshot root: give --root DIR or QUIVER_ROOT")
    return ServeConfig(**values)
