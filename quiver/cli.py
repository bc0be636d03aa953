"""The `quiver` command: a thin wrapper over the Python API. Each command module registers its
own subcommands with `register(subparsers)` and returns an exit code from its handler."""

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = [
    "quiver.loader.commands",
    "quiver.service.commands",
    "quiver.distribution",
    "quiver.ops",
    "quiver.review",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quiver", description="Versioned feature snapshots served over gRPC.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
