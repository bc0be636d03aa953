"""The FeatureStore gRPC methods: unpack, call, pack. GetFeatures takes and returns raw bytes, so
stored values are never decoded; ServiceError subclasses become status codes here, in one place."""

import asyncio
import json
import time
from typing import NoReturn

import grpc

from quiver.service import metrics
from quiver.service.errors import Overloaded, ServiceError
from quiver.service.reader import FeatureReader
from quiver.service.snapshots import Snapshots
from quiver.service.store import LoadedVersion
from quiver.v1 import quiver_pb2 as pb

SERVICE = "quiver.v1.FeatureStore"
# Batches larger than this are read on a thread so a big multi-get never stalls the event loop;
# smaller ones run inline, since a thread hop costs more than their read.
OFFLOAD_ENTITIES = 64
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
    def __init__(self, reader: FeatureReader, snapshots: Snapshots, max_concurrent: int = 512) -> None:
        self.reader = reader
        self.snapshots = snapshots
        self.max_concurrent = max_concurrent
        self._schemas: dict[str, pb.GetSchemaResponse] = {}
        # GetFeatures calls started so far and running now: the drain waits for both to settle
        self.started = 0
        self.active = 0

    async def get_features(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        self.started += 1
        self.active += 1
        try:
            if self.active > self.max_concurrent:  # shed here, not in grpc's limiter, so it is counted
                raise Overloaded(f"more than {self.max_concurrent} GetFeatures calls at once on this worker; "
                                 "retry with backoff or on another replica")
            req = self.reader.parse(raw)
            if len(req.int64_ids) + len(req.string_ids) > OFFLOAD_ENTITIES:
                body = await asyncio.to_thread(self.reader.get_features, req)
            else:
                body = self.reader.get_features(req)
        except ServiceError as e:
            await abort_with(context, "GetFeatures", e)
        finally:
            self.active -= 1
        metrics.GET_FEATURES_LATENCY.observe(time.perf_counter() - started)
        return body

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
