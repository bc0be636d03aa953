"""Fixtures for the server's end-to-end tests: real `quiver generate`/`quiver load` output and real
`quiver serve` processes on free ports, always stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quiver.snapshot import SnapshotRoot
from support.processes import ServerProcess, UsersSnapshots, quiver_load, run_quiver


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts `quiver serve` processes (not waiting for health); every one is stopped at teardown."""
    started: list[ServerProcess] = []

    def start(root: Path, *flags: str, **kw: Any) -> ServerProcess:
        s = ServerProcess(root, tmp_path / f"serve-{len(started)}.log", *flags, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


# ---------------------------------------------------------------------------------------------
# Generated users data: two data sets, loaded as two versions of one root
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def users(tmp_path_factory: pytest.TempPathFactory) -> UsersSnapshots:
    base = tmp_path_factory.mktemp("users")
    template = base / "root"
    sources, versions = {}, []
    for seed, as_of in ((7, "2026-01-01T00:00:00Z"), (8, "2026-01-02T00:00:00Z")):
        src = base / f"src-{seed}"
        run_quiver("generate", "--events-per-user", "0",
            "--users", "2000", "--out", src, "--seed", str(seed), check=True, timeout=60)
        v = quiver_load(src, template, as_of)
        sources[v] = src
        versions.append(v)
    SnapshotRoot(template).set_current(versions[0])
    return UsersSnapshots(template, sources, versions[0], versions[1])
