"""Logging, set up in one place: `quiver`'s main calls `setup_logging` once per command, and each server
worker process once as it starts (a spawned process does not inherit the parent's handlers)."""

import logging
import os
import sys

LOG_LEVEL_ENV = "QUIVER_LOG_LEVEL"


def setup_logging(tag: str) -> None:
    """`<time> quiver[<tag>] <LEVEL> <message>` on stderr, at $QUIVER_LOG_LEVEL (default INFO)."""
    logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO").upper(), stream=sys.stderr,
                        format=f"%(asctime)s quiver[{tag}] %(levelname)s %(message)s", force=True)
