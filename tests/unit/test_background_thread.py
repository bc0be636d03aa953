"""base/process.background_thread: the calling thread, and only it, runs under SCHED_IDLE (preempted at
once by any normal thread waking on its core), read back from the kernel."""

import os
import threading

from quiver.base.process import background_thread


def test_only_the_calling_thread_is_idle() -> None:
    seen: list[int] = []

    def run() -> None:
        background_thread()
        seen.append(os.sched_getscheduler(threading.get_native_id()))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [os.SCHED_IDLE]
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
