"""The FeatureStore gRPC methods: unpack, call, pack. GetFeatures takes and returns raw bytes, so
stored values are never decoded; ServiceError subclasses become status codes here, in one place."""

import asyncio
import json
import time
from typing import NoReturn

import grpc

from quiver.service import metrics
from quiver.service.errors import DeadlineExpired, Overloaded, ServiceError
from quiver.service.reader import FeatureReader
from quiver.service.snapshots import Snapshots
from quiver.service.store import LoadedVersion
from quiver.v1 import quiver_pb2 as pb

SERVICE = "quiver.v1.FeatureStore"
SERVICE_EWMA = 0.05   # weight of the newest call in the mean service time (about the last 20 calls)
_TYPES = {"bool": pb.BOOL, "int32": pb.INT32, "int64": pb.INT64, "float32": pb.FLOAT32, "float64": pb.FLOAT64,
          "string": pb.STRING, "bytes": pb.BYTES, "list<float32>": pb.FLOAT32_LIST, "list<int64>": pb.INT64_LIST}


async def abort_with(context: grpc.aio.ServicerContext, method: str, error: ServiceError) -> NoReturn:
    metrics.RPC_ERRORS.labels(method, error.code.name).inc()
    await context.abort(error.code, str(error))
    raise AssertionError("unreachable: abort raises")


def schema_response(v: LoadedVersion) -> pb.GetSchemaResponse:
    s = v.schema
    views = []
    for view in s.views:
        feats = [pb.Feature(name=f.name, type=_TYPES[f.type], list_length=f.length, group_field=g, group_index=i,
                            position=pos, default_json="" if f.default is None else json.dumps(f.default))
                 for pos, (f, g, i) in enumerate(view.layout())]
        views.append(pb.View(name=view.name, features=feats, rows=v.manifest.views[view.name].rows,
                             event_timestamp_column=view.event_timestamp))
    return pb.GetSchemaResponse(version=v.version, entity_name=s.entity.name, entity_key_type=s.entity.key_type,
                                views=views)


def version_info(v: LoadedVersion) -> pb.VersionInfo:
    m = v.manifest
    return pb.VersionInfo(version=v.version, created=m.created, as_of=m.as_of, rows=m.rows(),
                          size_bytes=m.size_bytes, content_checksum=m.content_checksum)


class FeatureStoreServicer:
    def __init__(self, reader: FeatureReader, snapshots: Snapshots, max_concurrent: int = 512,
                 max_queue: float = 0.05) -> None:
        self.reader = reader
        self.snapshots = snapshots
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue      # seconds of queued work a call may wait behind; 0: no limit
        self.service_time = 0.0         # recent mean seconds a call spends reading and packing
        self._schemas: dict[str, pb.GetSchemaResponse] = {}
        self.latencies = metrics.Latencies()   # flushed into the histogram by metrics.flush
        # GetFeatures calls started so far and running now: the drain waits for both to settle
        self.started = 0
        self.active = 0

    async def get_features(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        self.started += 1
        self.active += 1
        try:
            self._admit(context)
            req = self.reader.parse(raw)
            if self.reader.offload.wanted(len(req.int64_ids) + len(req.string_ids)):
                body = await asyncio.to_thread(self._read_after_queue, req, time.perf_counter(),
                                               context.time_remaining(), self.active > 1)
            else:
                body = self._read(req)
        except ServiceError as e:
            await abort_with(context, "GetFeatures", e)
        finally:
            self.active -= 1
        self.latencies.observe(time.perf_counter() - started)
        return body

    def _admit(self, context: grpc.aio.ServicerContext) -> None:
        """Sheds a call at once rather than letting it queue for seconds. Calls in flight on this worker
        share one core, so the work ahead of this one is about (calls in flight) x (mean service time)."""
        if self.active > self.max_concurrent:  # shed here, not in grpc's limiter, so it is counted
            raise Overloaded(f"more than {self.max_concurrent} GetFeatures calls at once on this worker; "
                             "retry with backoff or on another replica")
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExpired("the call's deadline passed before this worker could start it")
        ahead = (self.active - 1) * self.service_time
        if self.max_queue and ahead > self.max_queue:
            raise Overloaded(f"~{ahead * 1000:.0f} ms of calls queued ahead on this worker (limit "
                             f"{self.max_queue * 1000:.0f} ms); retry with backoff or on another replica")

    def _read(self, req: pb.GetFeaturesRequest) -> bytes:
        t = time.perf_counter()
        body = self.reader.get_features(req)
        self.service_time += SERVICE_EWMA * (time.perf_counter() - t - self.service_time)
        return body

    def _read_after_queue(self, req: pb.GetFeaturesRequest, queued: float, remaining: float | None,
                          behind_others: bool) -> bytes:
        """On a reader thread: a call that waited for one longer than its deadline, or longer than the
        queue limit behind other calls, is answered at once instead of read late. A lone call is never
        shed for its wait: that is the scheduler's latency, not a queue."""
        waited = time.perf_counter() - queued
        if remaining is not None and waited >= remaining:
            raise DeadlineExpired(f"the call's deadline passed after {waited * 1000:.0f} ms waiting for a reader "
                                  "thread")
        if self.max_queue and behind_others and waited > self.max_queue:
            raise Overloaded(f"waited {waited * 1000:.0f} ms for a reader thread on this worker (limit "
                             f"{self.max_queue * 1000:.0f} ms); retry with backoff or on another replica")
        return self._read(req)

    async def get_schema(self, req: pb.GetSchemaRequest, context: grpc.aio.ServicerContext) -> pb.GetSchemaResponse:
        try:
            v = self.snapshots.pick(req.version)
        except ServiceError as e:
            await abort_with(context, "GetSchema", e)
        resp = self._schemas.get(v.version)
        if resp is None:
            resp = self._schemas[v.version] = schema_response(v)
            for old in [k for k in self._schemas if k not in {x.version for x in self.snapshots.loaded()}]:
                del self._schemas[old]
        return resp

    async def get_snapshot_info(self, req: pb.GetSnapshotInfoRequest,
                                context: grpc.aio.ServicerContext) -> pb.GetSnapshotInfoResponse:
        cur = self.snapshots.current
        if cur is None:
            return pb.GetSnapshotInfoResponse()
        age = time.time() - metrics.as_of_seconds(cur)
        return pb.GetSnapshotInfoResponse(current_version=cur.version, current_age_seconds=age,
                                          loaded=[version_info(v) for v in self.snapshots.loaded()])

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            # no (de)serializers: raw request bytes in, spliced response bytes out
            "GetFeatures": grpc.unary_unary_rpc_method_handler(self.get_features),
            "GetSchema": grpc.unary_unary_rpc_method_handler(
                self.get_schema, request_deserializer=pb.GetSchemaRequest.FromString,
                response_serializer=pb.GetSchemaResponse.SerializeToString),
            "GetSnapshotInfo": grpc.unary_unary_rpc_method_handler(
                self.get_snapshot_info, request_deserializer=pb.GetSnapshotInfoRequest.FromString,
                response_serializer=pb.GetSnapshotInfoResponse.SerializeToString),
        }
