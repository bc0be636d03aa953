"""snapshot/integrity.py's check_version: what each level finds, and the messages the server refuses a
version with (the loader's reuse and `quiver verify` read the same ones); which files "full" reads, and
which it takes as proven."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from quiver.snapshot import (
    FeatureSet,
    FileEntry,
    GroupStats,
    Manifest,
    ManifestError,
    SnapshotRoot,
    file_checksum,
    integrity,
)
from quiver.snapshot.integrity import RECORD, Proven, check_version, write_record

SCHEMA = FeatureSet.from_json({"entity": {"name": "u", "key_type": "int64"},
                               "views": [{"name": "v", "source": "v.parquet",
                                          "features": [{"name": "x", "type": "float32"}]}]})
V = "20261101T000000Z-0123456789ab"


def publish(root: SnapshotRoot, files: dict[str, bytes], groups: dict[str, GroupStats] | None = None,
            version: str = V) -> Path:
    vdir = root.version_dir(V)
    for rel, data in files.items():
        (vdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (vdir / rel).write_bytes(data)
    vdir.mkdir(parents=True, exist_ok=True)
    entries = [FileEntry(rel, len(data), file_checksum(vdir / rel)) for rel, data in files.items()]
    m = Manifest(version, "2026-11-01T00:00:05Z", "2026-11-01T00:00:00Z", SCHEMA, {},
                 groups if groups is not None else {"default": GroupStats(["v"], 1, "sha256:ef")}, entries)
    (vdir / "manifest.json").write_bytes(m.dumps())
    return vdir


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SnapshotRoot:
    monkeypatch.setattr(integrity, "SEEN", Proven())   # what this process hashed: nothing yet
    return SnapshotRoot(tmp_path / "root")


def hashed(root: SnapshotRoot, level: str = "full") -> tuple[int, int]:
    """(files, bytes) a full check read."""
    seen: list[tuple[int, int]] = []
    check_version(root, V, level, on_hashed=lambda files, size: seen.append((files, size)))
    return seen[0] if seen else (0, 0)


def age(vdir: Path, seconds: float = 3600) -> None:
    """Every file modified `seconds` ago: past the racily-clean window."""
    then = time.time() - seconds
    for p in vdir.rglob("*"):
        if p.is_file():
            os.utime(p, (then, then))


FILES = {f"online/default/{i:06d}.sst": bytes([i]) * 100 for i in range(4)} | {"offline/v/p.parquet": b"pq"}


def test_each_level_finds_what_it_reads(root: SnapshotRoot) -> None:
    vdir = publish(root, {f"online/default/{i:06d}.sst": b"s" * 10 for i in range(7)} | {"offline/v/p.parquet": b"pq"})
    assert check_version(root, V, "full").version == V
    (vdir / "online/default/000000.sst").write_bytes(b"S" * 10)          # same size, other bytes
    assert check_version(root, V, "size").version == V
    with pytest.raises(ManifestError, match=rf"^version {V}: online/default/000000.sst: checksum differs"):
        check_version(root, V, "full")
    for i in range(1, 7):
        (vdir / f"online/default/{i:06d}.sst").unlink()
    (vdir / "offline/v/p.parquet").write_bytes(b"p")
    with pytest.raises(ManifestError) as e:
        check_version(root, V, "size")
    # in the manifest's order, five named: 000006.sst and the resized Parquet are counted
    assert str(e.value) == (f"version {V}: " + "; ".join(f"online/default/{i:06d}.sst: missing" for i in range(1, 6))
                            + "; and 2 more")
    with pytest.raises(ManifestError, match="offline/v/p.parquet"):
        check_version(root, V, "size", prefix="offline/")
    assert check_version(root, V, "none").version == V                  # no file is looked at


def test_the_manifest_itself(root: SnapshotRoot) -> None:
    with pytest.raises(ManifestError, match=rf"^version {V}: .*manifest.json: missing"):
        check_version(root, V, "none")
    publish(root, {}, version="20261101T000000Z-ffffffffffff")
    with pytest.raises(ManifestError, match=rf"^version {V}: its manifest names 20261101T000000Z-ffffffffffff$"):
        check_version(root, V, "none")
    publish(root, {}, groups={"default": GroupStats([], 1, "sha256:ef"), "g": GroupStats(["v"], 1, "sha256:ef")})
    with pytest.raises(ManifestError, match="groups do not hold its views as the schema says"):
        check_version(root, V, "none")
    with pytest.raises(ValueError, match="check level 'quick'"):
        check_version(root, V, "quick")


def test_a_record_proves_what_its_writer_wrote(root: SnapshotRoot) -> None:
    vdir = publish(root, FILES)
    assert hashed(root) == (5, 402)   # no record yet: every file is read
    sums = {f.path: f.checksum for f in Manifest.load(vdir / "manifest.json").files}
    assert write_record(vdir, sums) == 5
    integrity.SEEN = Proven()         # a fresh process: only the record speaks
    assert hashed(root) == (0, 0)
    # a copy is another inode, a rewrite another time: each read again, and a damaged one found
    sst = vdir / "online/default/000001.sst"
    shutil.copy2(sst, sst.with_suffix(".tmp"))
    os.replace(sst.with_suffix(".tmp"), sst)
    assert hashed(root) == (1, 100)
    (vdir / "online/default/000002.sst").write_bytes(b"X" * 100)
    with pytest.raises(ManifestError, match="000002.sst: checksum differs"):
        check_version(root, V, "full")
    # a record that names another checksum proves nothing
    doc = json.loads((vdir / RECORD).read_text())
    doc["files"] = [[*f[:4], "sha256:00"] for f in doc["files"]]
    (vdir / RECORD).write_text(json.dumps(doc))
    (vdir / "online/default/000002.sst").write_bytes(bytes([2]) * 100)
    integrity.SEEN = Proven()
    assert hashed(root) == (5, 402)


def test_an_unreadable_record_proves_nothing(root: SnapshotRoot) -> None:
    vdir = publish(root, FILES)
    for garbage in (b"", b"{", b'{"files": [[1, 2]]}', b"[]"):
        (vdir / RECORD).write_bytes(garbage)
        assert hashed(root) == (5, 402)
    assert hashed(root, "size") == (0, 0)   # "size" reads no file's bytes


def test_this_process_remembers_what_it_hashed_unless_racily_clean(root: SnapshotRoot) -> None:
    vdir = publish(root, FILES)
    # just written: a write in the same clock tick would keep the time, so nothing is remembered
    assert hashed(root) == (5, 402)
    assert hashed(root) == (5, 402)
    age(vdir)
    assert hashed(root) == (5, 402)
    assert hashed(root) == (0, 0)
    # a failed check remembers nothing, not even its intact files
    sst = vdir / "online/default/000003.sst"
    sst.write_bytes(b"Y" * 100)
    age(vdir, 7200)
    integrity.SEEN = Proven()
    with pytest.raises(ManifestError):
        check_version(root, V, "full")
    assert len(integrity.SEEN) == 0
    # the file in a second version hard-linked from the first is the same inode: proven once for both
    sst.write_bytes(bytes([3]) * 100)
    age(vdir)
    assert hashed(root) == (5, 402)
    other = root.version_dir(V).with_name(V + "-copy")
    other.mkdir()
    os.link(vdir / "offline/v/p.parquet", other / "p.parquet")
    assert integrity.SEEN.holds(integrity.file_key(other / "p.parquet"), file_checksum(other / "p.parquet"))


def test_the_memory_is_bounded() -> None:
    p = Proven(limit=3)
    for i in range(5):
        p.add((0, i, 1, 0), f"sha256:{i}")
    assert len(p) == 3 and not p.holds((0, 0, 1, 0), "sha256:0") and p.holds((0, 4, 1, 0), "sha256:4")
