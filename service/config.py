"""The server's configuration: one frozen dataclass, built once from flags and QUIVER_* variables
(the same names deploy/k8s/ uses), then passed down. Nothing else reads the environment."""

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ServeConfig:
    root: str
    listen: str = "127.0.0.1:50051"      # "" to serve on the Unix socket only
    uds: str = ""                         # worker k > 0 listens on "<uds>.<k>"
    workers: int = 1
    metrics_port: int = 9095              # 0: no metrics endpoint
    metrics_host: str = "127.0.0.1"       # 0.0.0.0 in Kubernetes, for scraping
    cache_mb: int = 256                   # block cache, shared by all views and versions, split across workers
    max_entities: int = 1000
    max_concurrent: int = 512             # beyond this: RESOURCE_EXHAUSTED at once
    max_queue_ms: float = 50.0            # more queued work ahead of a call: RESOURCE_EXHAUSTED at once; 0: off
    verify: str = "full"                  # "full": every checksum before a swap; "size": sizes and row counts
    poll_seconds: float = 1.0
    drain_seconds: float = 10.0
    loop: str = "uvloop"
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""

    def __post_init__(self) -> None:
        if not self.listen and not self.uds:
            raise ValueError("nothing to listen on: give --listen HOST:PORT and/or --uds PATH")
        if self.verify not in ("full", "size"):
            raise ValueError(f"verify {self.verify!r}: expected full or size")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.workers < 1 or self.max_entities < 1 or self.max_concurrent < 1 or self.cache_mb < 1:
            raise ValueError("workers, max-entities, max-concurrent and cache-mb must be positive")
        if not self.poll_seconds > 0:  # 0 would spin the follow loop; `not >` also refuses NaN
            raise ValueError(f"poll-seconds {self.poll_seconds}: must be positive")
        if not self.max_queue_ms >= 0:
            raise ValueError(f"max-queue-ms {self.max_queue_ms}: must not be negative")
        if not self.drain_seconds >= 0:
            raise ValueError(f"drain-seconds {self.drain_seconds}: must not be negative")
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
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float}[str(f.type)]
        p.add_argument(flag, type=kind, default=None, help=f"env {env_name(f.name)}")


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
