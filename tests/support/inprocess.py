"""The CLI's entry point, `quiver.cli.main(argv)`, run inside the test process: the failures found before a
command starts any work (a bad flag, a missing or busy root, a wrong features.yaml, an unreadable source)
in milliseconds instead of a Python start each.

`run_in_process(*args)` returns what a process run shows: the exit code (main's return value, or the code
of the SystemExit argparse raises on a usage error), stdout and stderr (log lines included: main sets
logging up to write to stderr). It refuses to be the wrong tool: a case that starts a process (a loader
or verify worker pool, a server's workers, a subprocess), leaves a thread running, installs a signal
handler or changes the environment fails with StartedWork, and stays a process test (run_quiver).
That main() passes its return value to the process's exit status is proven by one process test per
exit code (tests/e2e/test_cli_exit_status.py says which tests they are).
"""

from __future__ import annotations

import io
import logging
import multiprocessing.process
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from typing import Any, NamedTuple
from unittest import mock

from quiver import cli


class InProcess(NamedTuple):
    """(code, stdout, stderr); also readable as a CompletedProcess is (returncode, stdout, stderr)."""

    returncode: int
    stdout: str
    stderr: str


class StartedWork(AssertionError):
    """An in-process case did what only a process test may do."""


def _refuse(what: str, argv: list[str]) -> Any:
    def refuse(*args: object, **kwargs: object) -> None:
        raise StartedWork(f"`quiver {' '.join(argv)}` started {what}: keep this case a process test (run_quiver)")
    return refuse


@contextmanager
def _no_processes(argv: list[str]) -> Iterator[None]:
    with ExitStack() as stack:
        for target, name, what in ((ProcessPoolExecutor, "__init__", "a process pool"),
                                   (multiprocessing.process.BaseProcess, "start", "a process"),
                                   (subprocess.Popen, "__init__", "a subprocess")):
            stack.enter_context(mock.patch.object(target, name, _refuse(what, argv)))
        yield


def run_in_process(*args: str | os.PathLike[str]) -> InProcess:
    """`quiver ARGS` through quiver.cli.main in this process; see the module's docstring."""
    argv = [str(a) for a in args]
    cli.build_parser()  # imports every command's module first: one runs ldconfig (ctypes.util) as it loads
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    environ = dict(os.environ)
    threads = set(threading.enumerate())
    # main's setup_logging replaces the root logger's handlers (basicConfig(force=True)) with one that
    # writes to sys.stderr, here `err`: pytest's own handlers are set aside, not closed, and put back after
    root.handlers = []
    try:
        with _no_processes(argv), redirect_stdout(out), redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse: a usage error (2), or --help (0)
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if isinstance(e.code, str):
                    print(e.code, file=err)
    finally:
        for h in root.handlers:
            h.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        changed = [sig for sig, h in handlers.items() if signal.getsignal(sig) != h]
        for sig in changed:
            if handlers[sig] is not None:
                signal.signal(sig, handlers[sig])
        environ_changed = dict(os.environ) != environ
        if environ_changed:
            os.environ.clear()
            os.environ.update(environ)
    left = [t.name for t in threading.enumerate() if t not in threads and t.is_alive()]
    if left:
        raise StartedWork(f"`quiver {' '.join(argv)}` left thread(s) running: {left}")
    if changed:
        raise StartedWork(f"`quiver {' '.join(argv)}` installed handler(s) for {[sig.name for sig in changed]}")
    if environ_changed:
        raise StartedWork(f"`quiver {' '.join(argv)}` changed the environment")
    return InProcess(code, out.getvalue(), err.getvalue())
