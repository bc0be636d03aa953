"""The `quiver` command: a thin wrapper over the Python API.

Each command module registers its subcommands with `register(subparsers)`; a handler returns 0 or raises
a QuiverError (base/errors.py), which `main` maps to its message and exit code, here and nowhere else.
Logging is set up here too, once per command (base/logs.py).
"""

import argparse
import importlib
import sys
from collections.abc import Sequence

from quiver.base.errors import QuiverError, exit_code_table
from quiver.base.logs import LOG_LEVEL_ENV, setup_logging

COMMAND_MODULES = [
    "quiver.loader.commands",
    "quiver.service.commands",
    "quiver.distribution.commands",
    "quiver.ops",
    "quiver.quality.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quiver", description="Versioned feature snapshots served over gRPC.",
        epilog=exit_code_table() + f"\n\nlogging: stderr, level ${LOG_LEVEL_ENV} (default INFO)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("main" if args.command == "serve" else args.command)
    try:
        code: int = args.handler(args)
    except QuiverError as e:
        print(f"quiver {args.command}: error: {e}", file=sys.stderr)
        if e.note:
            print(f"quiver {args.command}: {e.note}", file=sys.stderr)
        return e.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
