"""manifest.json: round trip, tamper detection, and the file checks a server relies on."""

import json
from pathlib import Path

import pytest

from quiver.snapshot import FORMAT_VERSION, FeatureSet, FileEntry, Manifest, ManifestError, file_checksum
from quiver.snapshot.manifest import GroupStats, ViewStats, data_files

SCHEMA = FeatureSet.from_json({"entity": {"name": "u", "key_type": "int64"},
                               "views": [{"name": "v", "source": "v.parquet",
                                          "features": [{"name": "x", "type": "float32", "default": 1.5}]}]})


def manifest_for(vdir: Path) -> Manifest:
    (vdir / "online" / "default").mkdir(parents=True)
    (vdir / "online" / "default" / "000001.sst").write_bytes(b"sst" * 100)
    (vdir / "online" / "default" / "LOG").write_text("volatile")
    (vdir / "offline" / "v").mkdir(parents=True)
    (vdir / "offline" / "v" / "part-0.parquet").write_bytes(b"pq")
    stats = {"v": ViewStats(2, [FileEntry("/src/v.parquet", 10, "sha256:ab")], "sha256:cd", 1)}
    groups = {"default": GroupStats(["v"], 3, "sha256:ef")}
    return Manifest("20261101T000000Z-0123456789ab", "2026-11-01T00:00:05Z", "2026-11-01T00:00:00Z", SCHEMA, stats,
                    groups, [FileEntry(rel, size, file_checksum(vdir / rel)) for rel, size in data_files(vdir)])


def test_round_trip_and_listing(tmp_path: Path) -> None:
    m = manifest_for(tmp_path)
    assert [f.path for f in m.files] == ["offline/v/part-0.parquet", "online/default/000001.sst"]  # LOG is volatile
    assert m.files[1].size == 300 and m.files[1].checksum == file_checksum(tmp_path / "online/default/000001.sst")
    (tmp_path / "manifest.json").write_bytes(m.dumps())
    back = Manifest.load(tmp_path / "manifest.json")
    assert back.to_json() == m.to_json() and back.schema == SCHEMA
    assert back.rows() == {"v": 2} and back.size_bytes == 302 and back.views["v"].dropped_duplicates == 1
    assert back.groups["default"].views == ["v"] and back.groups["default"].rows == 3
    assert back.schema.view("v").group == "default"
    assert back.verify_files(tmp_path) == []


def test_tampering_is_detected(tmp_path: Path) -> None:
    m = manifest_for(tmp_path)
    d = json.loads(m.dumps())
    d["files"][0]["size"] += 1
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="content_checksum"):
        Manifest.load(tmp_path / "manifest.json")


def test_verify_files_finds_missing_resized_and_changed_files(tmp_path: Path) -> None:
    m = manifest_for(tmp_path)
    (tmp_path / "offline/v/part-0.parquet").write_bytes(b"PQ")         # same size, other bytes
    (tmp_path / "online/default/000001.sst").write_bytes(b"short")
    assert m.verify_files(tmp_path, full=False) == ["online/default/000001.sst: 5 bytes, manifest says 300"]
    problems = m.verify_files(tmp_path)
    assert "offline/v/part-0.parquet: checksum differs from the manifest" in problems
    (tmp_path / "offline/v/part-0.parquet").unlink()
    assert "offline/v/part-0.parquet: missing" in m.verify_files(tmp_path)


@pytest.mark.parametrize(("content", "message"), [
    (None, "missing"), ("{not json", "unreadable"), ('{"format_version": 2}', "malformed"),
    ('{"format_version": 1}', "one RocksDB per view, before storage groups.*rebuild it with `quiver load`"),
    (json.dumps({"format_version": FORMAT_VERSION + 1}), "format_version"),
])
def test_unusable_manifests(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ManifestError, match=message):
        Manifest.load(path)
