"""Reading a version's two stored forms back, for comparison with the source data: the online RocksDB
(decoded by support.oracle) and the offline Parquet (in support.canon's form).

Files are found through the version's manifest.json, read here as plain JSON following snapshot/FORMAT.md,
so the tests do not hard-code where a view's online data lives (format 1: online/<view>/; format 2:
online/<group>/, one EntityRow per entity holding the group's views in manifest order)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rocksdict import AccessType, Options, Rdict

from support.canon import canon_column
from support.oracle import decode_key, decode_view_row, wire_fields


@dataclass(frozen=True)
class Feature:
    name: str
    type: str
    length: int = 0


@dataclass(frozen=True)
class View:
    name: str
    features: tuple[Feature, ...]
    group: str


@dataclass(frozen=True)
class StoredVersion:
    """One version folder as its manifest.json describes it."""

    dir: Path
    doc: dict[str, Any]

    @classmethod
    def open(cls, root: Path | str, version: str | None = None) -> StoredVersion:
        root = Path(root)
        version = version or (root / "CURRENT").read_text().strip()
        d = root / "versions" / version
        return cls(d, json.loads((d / "manifest.json").read_text()))

    @property
    def format_version(self) -> int:
        return int(self.doc["format_version"])

    @property
    def entity(self) -> str:
        return str(self.doc["schema"]["entity"]["name"])

    @property
    def key_type(self) -> str:
        return str(self.doc["schema"]["entity"]["key_type"])

    def view(self, name: str) -> View:
        v = next(v for v in self.doc["schema"]["views"] if v["name"] == name)
        return View(name, tuple(Feature(f["name"], f["type"], int(f.get("length") or 0)) for f in v["features"]),
                    str(v.get("group") or name))

    def online_dir(self, view: str) -> Path:
        """The RocksDB that holds the view."""
        return self.dir / "online" / (self.view(view).group if self.format_version >= 2 else view)

    def group_views(self, view: str) -> list[str]:
        """The views stored together with `view`, in their stored order (format 1: the view alone)."""
        if self.format_version < 2:
            return [view]
        return list(self.doc["groups"][self.view(view).group]["views"])

    def view_row(self, view: str, value: bytes) -> bytes | None:
        """The view's ViewRow bytes out of a stored value; None when the entity is not in the view."""
        if self.format_version < 2:
            return value
        views = self.group_views(view)
        fields = wire_fields(value)
        found = fields.get(2, [b""])[0]   # packed bools: one byte per view
        assert len(found) == len(fields.get(1, [])) == len(views), "a group value holds every view of its group"
        i = views.index(view)
        if not found[i]:
            assert fields[1][i] == b"", "a view that lacks the entity has an empty ViewRow"
            return None
        return fields[1][i]

    def files(self) -> list[str]:
        """Every file the manifest lists, relative to the version folder."""
        return [f["path"] for f in self.doc["files"]]


def online_files(version_dir: Path) -> list[Path]:
    """The version's online files (SST and RocksDB's own), from its manifest's file list."""
    doc = json.loads((version_dir / "manifest.json").read_text())
    return [version_dir / f["path"] for f in doc["files"] if f["path"].startswith("online/")]


def view_files(version_dir: Path, view: str) -> list[str]:
    """The data files (SST and Parquet) holding a view in either form, relative to the version folder: its
    offline Parquet, and the SST files of the RocksDB that holds it."""
    v = StoredVersion(version_dir, json.loads((version_dir / "manifest.json").read_text()))
    online = v.online_dir(view).relative_to(version_dir).as_posix() + "/"
    return [p for p in v.files() if (p.startswith(online) and p.endswith(".sst"))
            or (p.startswith(f"offline/{view}/") and p.endswith(".parquet"))]


def _open(path: Path) -> Rdict:
    return Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())


def read_online(root: Path | str, view: str, version: str | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """(key, row) for every entity the view holds in the online RocksDB, in stored (byte) order."""
    v = StoredVersion.open(root, version)
    vdef = v.view(view)
    db = _open(v.online_dir(view))
    try:
        out = []
        for k, value in db.items():
            row = v.view_row(view, bytes(value))  # type: ignore[arg-type]
            if row is not None:
                out.append((decode_key(v.key_type, bytes(k)), decode_view_row(vdef, row)))  # type: ignore[arg-type]
        return out
    finally:
        db.close()


def read_online_keys(root: Path | str, view: str, keys: list[bytes]) -> list[bytes | None]:
    """The view's ViewRow bytes stored under each key of the current version (None where absent)."""
    v = StoredVersion.open(root)
    db = _open(v.online_dir(view))
    try:
        values = list(db[keys])  # type: ignore[index, arg-type]  # raw mode: bytes in, bytes out
    finally:
        db.close()
    return [None if x is None else v.view_row(view, bytes(x)) for x in values]


def read_offline(root: Path | str, view: str, version: str | None = None) -> tuple[pa.Table, list[tuple[Any,
                                                                                                     dict[str, Any]]]]:
    """The view's offline Parquet (files in name order) and its rows in canonical form."""
    v = StoredVersion.open(root, version)
    vdef = v.view(view)
    files = sorted((v.dir / "offline" / view).glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    keys = table.column(v.entity).to_pylist()
    cols = {f.name: canon_column(f.type, table.column(f.name)) for f in vdef.features}
    rows = [(k, {name: cols[name][i] for name in cols}) for i, k in enumerate(keys)]
    return table, rows


def mismatches(expected: dict[Any, dict[str, Any]], got: list[tuple[Any, dict[str, Any]]]) -> list[str]:
    """Readable differences between expected rows and rows read back (at most ten)."""
    problems = []
    got_map = dict(got)
    if len(got_map) != len(got):
        problems.append(f"{len(got) - len(got_map)} duplicate key(s) read back")
    for k in sorted(set(expected) - set(got_map), key=repr)[:5]:
        problems.append(f"key {k!r}: missing")
    for k in sorted(set(got_map) - set(expected), key=repr)[:5]:
        problems.append(f"key {k!r}: unexpected")
    for k, row in expected.items():
        if k in got_map and got_map[k] != row:
            diff = {f: (v, got_map[k].get(f)) for f, v in row.items() if got_map[k].get(f) != v}
            problems.append(f"key {k!r}: (expected, got) {diff}")
        if len(problems) >= 10:
            break
    return problems


def content_checksum(files: list[dict[str, Any]]) -> str:
    """FORMAT.md's content_checksum of a manifest's file list."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f["path"]):
        h.update(f"{f['path']}\0{f['size']}\0{f['checksum']}\n".encode())
    return "sha256:" + h.hexdigest()


def rewrite_manifest(version_dir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edits a version's manifest.json in place and recomputes its content_checksum, so the manifest still
    parses and only the edit is wrong: a test of the checks beyond the manifest's own."""
    path = version_dir / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    doc["content_checksum"] = content_checksum(doc["files"])
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
