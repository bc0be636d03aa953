"""One server worker process: builds the grpc.aio server and serves until SIGTERM.

`create_server` builds one grpc.aio server (tested on port 0; the one place services are registered);
`serve` runs it on an event loop; `run_worker` is the process's entry point (supervisor.py starts it).

Lifecycle of a worker: health NOT_SERVING -> first snapshot open -> SERVING -> SIGTERM ->
NOT_SERVING -> drain in-flight RPCs for up to drain_seconds -> exit.
"""

import asyncio
import logging
import os
import signal
import stat
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from rocksdict import Cache

from quiver.base.errors import AddressInUse
from quiver.base.logs import setup_logging
from quiver.base.process import die_with_parent
from quiver.service import metrics, warm
from quiver.service.config import ServeConfig
from quiver.service.reader import FeatureReader
from quiver.service.reflection import enable_reflection
from quiver.service.servicer import SERVICE, FeatureStoreServicer
from quiver.service.snapshots import Snapshots
from quiver.service.store import LoadedVersion
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.leases import ServerLease
from quiver.snapshot.manifest import Manifest, ManifestError

log = logging.getLogger("quiver.server")
MAX_MESSAGE = 64 << 20
# Calls that reached this worker's gRPC core but not yet its event loop. Past grpc's defaults (1,000
# soft, 3,000 hard) core drops such calls with a bare CANCELLED, which clients read as their own doing
# and do not retry: a flood of 3,000 calls got ~650 of them. Raised so that every call reaches the
# servicer, whose admission answers RESOURCE_EXHAUSTED with the reason. One pending 100-id call holds
# ~7 KB (140 MB for 20,000, measured), so 16,384 bound the worker's memory at ~120 MB in a flood;
# beyond them core cancels again (README "Faults and overload").
PENDING_CALLS = 16384


def _server_credentials(config: ServeConfig) -> grpc.ServerCredentials:
    key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
    ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _unlink_stale_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def create_server(config: ServeConfig, servicer: FeatureStoreServicer, worker: int = 0,
                  ) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """(server, health servicer, bound TCP port or 0). Not started; health says NOT_SERVING."""
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", MAX_MESSAGE),
                 ("grpc.max_send_message_length", MAX_MESSAGE),
                 # rebalance long-lived client connections across SO_REUSEPORT workers and pods
                 ("grpc.max_connection_age_ms", 5 * 60_000), ("grpc.max_connection_age_grace_ms", 30_000),
                 ("grpc.server.max_pending_requests", PENDING_CALLS),
                 ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS)])
    # --max-concurrent is enforced by the servicer (GetFeatures only, counted in the errors metric):
    # grpc's own limiter rejects before any handler, uncounted, and sheds health checks too
    handlers = servicer.handlers()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    enable_reflection(server, [SERVICE, health.SERVICE_NAME])
    port = 0
    try:
        if config.listen:
            if config.tls_cert:
                port = server.add_secure_port(config.listen, _server_credentials(config))
            else:
                port = server.add_insecure_port(config.listen)
        if config.uds:
            path = config.uds_path(worker)
            _unlink_stale_socket(path)
            server.add_insecure_port(f"unix:{path}")
    except RuntimeError as e:  # grpc says only "Failed to bind to address X"
        raise AddressInUse(f"worker {worker}: {e}; check --listen and --uds") from None
    return server, hs, port


async def _set_health(hs: health.aio.HealthServicer, status: int) -> None:
    for name in ("", SERVICE):
        await hs.set(name, status)


async def _settle(servicer: FeatureStoreServicer, until: float) -> None:
    """Serves the calls that already reached this worker before server.stop(), which drains the calls
    handed to a handler but cancels those still queued in gRPC core: waits until no GetFeatures call is
    running and none has started for 0.1 s, or until the loop time `until`."""
    loop = asyncio.get_running_loop()
    seen = -1
    while loop.time() < until and (servicer.active or servicer.started != seen):
        seen = servicer.started
        await asyncio.sleep(0.1)


async def serve(config: ServeConfig, worker: int = 0, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    root = SnapshotRoot(config.root)
    lease = ServerLease(root, config.lease_refresh_seconds)
    snapshots: Snapshots

    def on_swap(new: LoadedVersion, old: LoadedVersion | None) -> None:
        metrics.on_swap(new, old)
        lease.hold([v.version for v in snapshots.loaded()])

    def prepare(version: str, served: LoadedVersion) -> None:
        if config.warm_mb == 0:
            return
        try:
            manifest = Manifest.load(root.manifest_path(version))
        except ManifestError:
            return   # the check that follows refuses it, naming what is wrong
        w = warm.warm(root.version_dir(version), manifest, root.version_dir(served.version), served.manifest,
                      None if config.warm_mb < 0 else config.warm_mb << 20, warm.Pacer(config.warm_mb_per_s * 1e6))
        log.info("version %s: warmed %.1f MB of %d online files in %.1f s (budget %.0f MB; %.1f MB from the disk, "
                 "paced at %g MB/s); %d files shared with %s left as they are", version, w.bytes / 1e6, w.files,
                 w.seconds, w.budget / 1e6, w.disk_bytes / 1e6, config.warm_mb_per_s, w.shared, served.version)

    def ready(version: LoadedVersion) -> None:
        if config.warm_mb == 0:
            return
        m = warm.map_resident(root.version_dir(version.version) / "online")
        log.info("version %s: mapped %.1f MB of its online files already in the page cache (%d files) in %.1f s",
                 version.version, m.bytes / 1e6, m.files, m.seconds)

    snapshots = Snapshots(root, Cache(config.cache_bytes_per_worker), config.verify,
                          on_swap=on_swap, on_refused=lambda v, why: metrics.REFUSED.inc(),
                          on_fallback=lambda serving_fallback: metrics.FALLBACK.set(int(serving_fallback)),
                          prepare=prepare, ready=ready)
    reader = FeatureReader(snapshots, config.max_entities)
    servicer = FeatureStoreServicer(reader, snapshots, config.max_concurrent, config.max_queue_ms / 1000)
    server, hs, port = create_server(config, servicer, worker)
    await _set_health(hs, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("worker %d listening on %s%s", worker, config.listen or "", f" unix:{config.uds_path(worker)}"
             if config.uds else "")

    async def follow() -> None:
        while not stop.is_set():
            try:
                await snapshots.refresh()
            except Exception:
                log.exception("refresh failed; serving continues on the loaded version")
            # NOT_SERVING again when a version served after its size check fails its full check and no
            # other passes (--verify background)
            await _set_health(hs, health_pb2.HealthCheckResponse.SERVING if snapshots.current is not None
                              else health_pb2.HealthCheckResponse.NOT_SERVING)
            metrics.flush(reader.counts, servicer.latencies, snapshots.current)
            lease.refresh()
            try:
                await asyncio.wait_for(stop.wait(), config.poll_seconds)
            except TimeoutError:
                pass

    follower = asyncio.create_task(follow())
    await stop.wait()
    log.info("worker %d: draining for up to %.0f s", worker, config.drain_seconds)
    await hs.enter_graceful_shutdown()
    deadline = asyncio.get_running_loop().time() + config.drain_seconds
    await _settle(servicer, deadline - config.drain_seconds / 2)
    await server.stop(max(deadline - asyncio.get_running_loop().time(), 0.1))
    follower.cancel()
    metrics.flush(reader.counts, servicer.latencies, None)
    snapshots.close()
    lease.release()


def run_worker(config: ServeConfig, worker: int, supervisor: int | None = None) -> None:
    die_with_parent(supervisor)
    setup_logging(f"w{worker}")
    try:
        if config.loop == "uvloop":
            import uvloop

            uvloop.run(serve(config, worker))
        else:
            asyncio.run(serve(config, worker))
    except AddressInUse as e:  # one line, and an exit code the supervisor acts on
        log.error("%s", e)
        sys.exit(e.exit_code)
