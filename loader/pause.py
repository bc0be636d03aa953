"""A test seam: stops a load at a named stage so a test can kill it exactly there.

Only when the environment names the stage does anything happen; a load never sets these itself:

    QUIVER_LOAD_PAUSE_AT=<stage>       the stage to stop at after it finished: "plan", "encode", "sort+sst",
                                       "ingest", "checksums" (the phase names of loader/load.py);
                                       "read", "offline", "online", "checks", "publish" (a delta's, loader/delta.py)
    QUIVER_LOAD_PAUSE_FILE=<path>      written (with the loader's pid) once the load has stopped there

The load then waits while that file exists: a test kills it, or deletes the file to let it go on.
tests/e2e/test_loader.py uses it to SIGKILL a load mid-build, deterministically instead of after a guessed
delay. It is read here rather than in the load's options because it is not configuration: no command, flag
or deployment sets it.
"""

import os
import time
from pathlib import Path

PAUSE_AT = "QUIVER_LOAD_PAUSE_AT"
PAUSE_FILE = "QUIVER_LOAD_PAUSE_FILE"


def pause_point(stage: str) -> None:
    """Returns at once unless QUIVER_LOAD_PAUSE_AT names `stage`."""
    if os.environ.get(PAUSE_AT) != stage:
        return
    marker = Path(os.environ[PAUSE_FILE])
    marker.write_text(str(os.getpid()))
    while marker.exists():
        time.sleep(0.05)
