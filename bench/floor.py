"""The floor: a do-nothing grpc.aio server on uvloop with quiver's raw-bytes GetFeatures handler shape,
answering every request with the same pre-built response of a given size. Run in the same harness as
quiver, it measures what the gRPC hop costs by itself; what quiver adds is everything above it.

    python bench/floor.py --listen 127.0.0.1:50099 --bytes 1400
"""

import argparse

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from quiver.v1 import quiver_pb2 as pb

SERVICE = "quiver.v1.FeatureStore"


async def serve(listen: str, size: int) -> None:
    # a valid response (generators may decode it) of about `size` bytes, built once
    body = pb.GetFeaturesResponse(version="floor", views=["floor"], rows=[pb.EntityRow(
        views=[pb.ViewRow(bytes_values=[b"x" * size])], found=[True])]).SerializeToString()

    schema = pb.GetSchemaResponse(version="floor", entity_name="user_id", entity_key_type="int64",
                                  views=[pb.View(name="floor")]).SerializeToString()

    async def get_features(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return body

    async def get_schema(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:  # generators ask once
        return schema

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        SERVICE, {"GetFeatures": grpc.unary_unary_rpc_method_handler(get_features),
                  "GetSchema": grpc.unary_unary_rpc_method_handler(get_schema)})])
    hs = health.aio.HealthServicer()
    await hs.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", required=True)
    p.add_argument("--bytes", type=int, default=1400, help="size of the one EntityRow in every response")
    args = p.parse_args()
    uvloop.run(serve(args.listen, args.bytes))


if __name__ == "__main__":
    main()
