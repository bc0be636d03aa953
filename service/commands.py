"""CLI: `quiver serve`, `quiver get`."""

import argparse

import grpc

from quiver.base.args import positive_float
from quiver.base.errors import QuiverError, UsageError
from quiver.service.config import add_arguments, from_sources


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve the current snapshot over gRPC, following CURRENT",
                       description="Serve the root's CURRENT version over gRPC, swapping to each new one. Every "
                       "flag has a QUIVER_* environment variable of the same name; flags win over the "
                       "environment. A root that does not exist yet is waited for (NOT_SERVING), so a sync "
                       "sidecar can create it.")
    add_arguments(p)
    p.set_defaults(handler=_serve)

    p = sub.add_parser("get", help="print one entity's features as JSON, decoded by name")
    p.add_argument("--target", required=True, help="server address: HOST:PORT or unix:///path (required)")
    p.add_argument("--entity", required=True,
                   help="entity id, int64 or string as the entity is keyed (required)")
    p.add_argument("--views", default="", help="comma-separated views to read (default: all)")
    p.add_argument("--version", default="", help="pin a version (default: the server's current)")
    p.add_argument("--timeout", type=positive_float, default=5.0, metavar="SECONDS",
                   help="deadline of each call (default: 5.0)")
    p.set_defaults(handler=_get)


def _serve(args: argparse.Namespace) -> int:
    from quiver.service.supervisor import run

    try:
        config = from_sources(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return run(config)


def _get(args: argparse.Namespace) -> int:
    from quiver.client import FeatureClient, dumps

    views = [v for v in args.views.split(",") if v]
    with FeatureClient(args.target) as c:
        try:
            key_type = c.schema(args.version, timeout=args.timeout).entity_key_type
            entity: int | str = int(args.entity) if key_type == "int64" else args.entity
            print(dumps(c.get_features([entity], views, args.version, timeout=args.timeout)))  # type: ignore[arg-type]
        except ValueError:
            raise UsageError(f"entity {args.entity!r} is not an int64 id") from None
        except grpc.RpcError as e:
            raise QuiverError(f"{e.code().name}: {e.details()}") from None
    return 0
