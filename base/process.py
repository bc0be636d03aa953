"""Child-process hygiene shared by the loader's and the server's worker processes."""

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Call first in a worker process: when its parent dies, even by SIGKILL, so does it (Linux).

    With `parent_pid`, also covers the parent dying before this call: a spawned worker that finds
    itself orphaned exits at once instead of waiting on a queue nobody will ever write to.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
