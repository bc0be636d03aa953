"""CLI: `quiver serve`, `quiver get`."""

import argparse
import sys

import grpc

from quiver.service.config import add_arguments, from_sources


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve the current snapshot over gRPC, following CURRENT")
    add_arguments(p)
    p.set_defaults(handler=_serve)

    p = sub.add_parser("get", help="print one entity's features as JSON, decoded by name")
    p.add_argument("--target", required=True, help="HOST:PORT or unix:///path")
    p.add_argument("--entity", required=True, help="entity id (int64 or string, as the entity is keyed)")
    p.add_argument("--views", default="", help="comma-separated views (default: all)")
    p.add_argument("--version", default="", help="pin a version")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(handler=_get)


def _serve(args: argparse.Namespace) -> int:
    from quiver.service.server import run

    try:
        config = from_sources(args)
    except ValueError as e:
        print(f"quiver serve: error: {e}", file=sys.stderr)
        return 2
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
            print(f"quiver get: error: entity {args.entity!r} is not an int64 id", file=sys.stderr)
            return 2
        except grpc.RpcError as e:
            print(f"quiver get: error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0
