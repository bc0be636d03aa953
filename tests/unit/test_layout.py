"""The snapshot root: only versions with a manifest are published, CURRENT moves atomically."""

from pathlib import Path

import pytest

from quiver.snapshot import SnapshotRoot
from quiver.snapshot.layout import VERSION_ID, write_atomic


def test_versions_are_those_with_a_manifest(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path)
    assert root.versions() == [] and root.current() is None
    root.ensure()
    for v, complete in [("20261102T000000Z-bbbbbbbbbbbb", True), ("20261101T000000Z-aaaaaaaaaaaa", True),
                        ("20261103T000000Z-cccccccccccc", False)]:
        root.version_dir(v).mkdir()
        if complete:
            root.manifest_path(v).write_text("{}")
    assert root.versions() == ["20261101T000000Z-aaaaaaaaaaaa", "20261102T000000Z-bbbbbbbbbbbb"]
    assert all(VERSION_ID.match(v) for v in root.versions())
    root.set_current("20261102T000000Z-bbbbbbbbbbbb")
    assert root.current() == "20261102T000000Z-bbbbbbbbbbbb"
    with pytest.raises(FileNotFoundError, match="no such published version"):
        root.set_current("20261103T000000Z-cccccccccccc")
    assert root.current() == "20261102T000000Z-bbbbbbbbbbbb"


def test_write_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "CURRENT"
    write_atomic(target, b"a\n")
    write_atomic(target, b"b\n")
    assert target.read_bytes() == b"b\n" and [p.name for p in tmp_path.iterdir()] == ["CURRENT"]
