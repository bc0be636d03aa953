"""gRPC server reflection in both forms tools speak: `grpc.reflection.v1` (grpcurl, ghz and grpc-go's
client try it first) and `grpc.reflection.v1alpha` (older clients).

grpcio-reflection 1.85 serves only v1alpha, and resolves a symbol through the descriptor pool, whose
upb implementation finds services and messages but not methods: ghz asks for the file containing
`quiver.v1.FeatureStore.GetFeatures` and got NOT_FOUND. Here a method symbol resolves to its service's
file, and v1 is the same servicer under v1's name: the two protocols' messages have the same fields and
numbers (v1 is v1alpha renamed), so v1alpha's classes read and write v1's bytes. v1's descriptor is
added to the pool, renamed from v1alpha's, so clients can describe the reflection service itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    for message in proto.message_type:
        for f in message.field:
            if f.HasField("type_name"):
                f.type_name = f.type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
    for service in proto.service:
        for m in service.method:
            m.input_type = m.input_type.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
            m.output_type = m.output_type.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
    pool.AddSerializedFile(proto.SerializeToString())


class _Servicer(ReflectionServicer):
    """grpcio-reflection's servicer, resolving `package.Service.Method` to the service's file."""

    def _file_containing_symbol(self, request, fully_qualified_name):  # type: ignore[no-untyped-def]
        service, _, method = fully_qualified_name.rpartition(".")
        try:
            self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            try:
                if method in self._pool.FindServiceByName(service).methods_by_name:
                    fully_qualified_name = service
            except KeyError:
                pass
        return super()._file_containing_symbol(request, fully_qualified_name)


def enable_reflection(server: grpc.aio.Server, services: Iterable[str]) -> None:
    """Serves reflection (v1 and v1alpha) on `server` for `services` and the reflection services."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    servicer = _Servicer([*services, V1, V1ALPHA], pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=v1alpha.ServerReflectionRequest.FromString,
        response_serializer=v1alpha.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
                                     for name in (V1, V1ALPHA)])
