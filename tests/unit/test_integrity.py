"""snapshot/integrity.py's check_version: what each level finds, and the messages the server refuses a
version with (the loader's reuse and `quiver verify` read the same ones)."""

from pathlib import Path

import pytest

from quiver.snapshot import FeatureSet, FileEntry, GroupStats, Manifest, ManifestError, SnapshotRoot, file_checksum
from quiver.snapshot.integrity import check_version

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
def root(tmp_path: Path) -> SnapshotRoot:
    return SnapshotRoot(tmp_path / "root")


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
