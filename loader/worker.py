"""What every load worker process needs, whatever stage it runs: start-up and returning memory between
tasks. Stage functions are module-level so they pickle under the spawn start method."""

import ctypes
import ctypes.util
import resource

import pyarrow as pa

from quiver.base.process import die_with_parent


def return_memory() -> None:
    """Give the allocators' freed pages back between tasks, so a worker's RSS is what it holds now,
    not the high-water mark of every task it ran: Arrow's pool, and glibc's heap (the values handed
    to the SST writer are Python bytes, allocated by malloc)."""
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (musl has none)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def worker_init(parent_pid: int) -> None:
    """Each encode task keeps one spill file open per key range: lift the soft open-files limit to
    the hard one, so a large load's hundreds of ranges do not hit the usual 1024. The load already
    runs a process per core, so Arrow's own pool gets one thread, not one per core in each worker."""
    die_with_parent(parent_pid)
    pa.set_cpu_count(1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
