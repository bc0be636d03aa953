"""A disk that fills up under a load: a real ENOSPC from a small tmpfs holding the root (mounting needs root,
as on CI). The load ends with exit 10 and one line naming the root, nothing is published, CURRENT stays,
and staging is cleaned, so the next load on a freed disk starts clean."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiver.snapshot.layout import SnapshotRoot
from support.processes import UsersSnapshots, run_quiver


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_load_that_fills_the_disk(users: UsersSnapshots, small_disk: Path) -> None:
    root = small_disk / "root"
    shutil.copytree(users.template / "versions" / users.v1, root / "versions" / users.v1)
    SnapshotRoot(root).set_current(users.v1)
    src = users.sources[users.v2]
    r = run_quiver("load", "--features", src / "features.yaml", "--root", root, "--as-of", "2026-02-01T00:00:00Z",
                   "--workers", "1", timeout=300)
    assert r.returncode == 10, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"quiver load: error: {root}: no space left on device" in r.stderr
    assert "nothing was published; CURRENT is unchanged" in r.stderr
    assert SnapshotRoot(root).current() == users.v1
    assert os.listdir(root / "versions") == [users.v1]
    assert not any((root / "staging").iterdir()) if (root / "staging").exists() else True
