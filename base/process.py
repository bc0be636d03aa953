"""Child-process and thread hygiene shared by the loader's and the server's workers."""

import ctypes
import os
import platform
import signal
import threading

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


# ioprio_set(2): no libc wrapper; the syscall number by architecture
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}
_IOPRIO_WHO_PROCESS, _IOPRIO_CLASS_IDLE, _IOPRIO_CLASS_SHIFT = 1, 3, 13


def background_thread() -> None:
    """Call first in a thread whose work may wait: this thread only (Linux schedules threads as tasks)
    runs under SCHED_IDLE, which any normal thread that wakes on its core preempts at once (a nice value
    only shares the core in proportion), and in the idle IO class. The IO class is honoured by the BFQ
    scheduler only; elsewhere the CPU policy is what counts."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        except OSError:
            pass
    number = _SYS_IOPRIO_SET.get(platform.machine())
    if number is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(number, _IOPRIO_WHO_PROCESS, tid, _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT)
