"""manifest.json: what a version holds, and the checksums that prove it."""

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from quiver.snapshot.layout import FORMAT_VERSION
from quiver.snapshot.schema import FeatureSet

_CHUNK = 4 << 20
# Files RocksDB or rocksdict may rewrite when a version is merely opened: never checksummed.
VOLATILE_PREFIXES = ("LOG", "LOCK", "rocksdict-config.json")
# The record of proven checksums beside the manifest (written and read by integrity.py)
RECORD = "verified.json"
# Beside the data, never listed: the manifest itself, and the record (with its temporary while written)
UNLISTED = ("manifest.json", RECORD, RECORD + ".tmp")


# A view's offline delta rows live in offline/<view>/DELTA_DIR/, marked removed by DELETED (FORMAT.md)
DELTA_DIR = "delta"
DELETED = "_deleted"


class ManifestError(ValueError):
    """A manifest that is missing, unreadable, or does not match the files beside it."""


def file_checksum(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return stream_checksum(f)


def stream_checksum(f: BinaryIO) -> str:
    """The checksum of an open file, read from where it stands to its end."""
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def is_volatile(name: str) -> bool:
    return name.startswith(VOLATILE_PREFIXES)


@dataclass(frozen=True)
class FileEntry:
    path: str   # relative to the version directory, '/'-separated
    size: int
    checksum: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "checksum": self.checksum}


@dataclass
class ViewDelta:
    """A view's offline rows changed since its offline base (FORMAT.md "Delta versions"): one cumulative
    set of files under offline/<view>/delta/, a row per changed entity, `_deleted` marking removals."""

    upserted: int            # entities whose row the delta sets
    deleted: int             # entities the delta removes from the view
    digest: str              # of every change applied since the base, in order: part of later version ids

    def to_json(self) -> dict[str, Any]:
        return {"upserted": self.upserted, "deleted": self.deleted, "digest": self.digest}


@dataclass
class ViewStats:
    rows: int
    sources: list[FileEntry]
    definition: str          # sha256 of the view's definition JSON: equal means same encoding
    dropped_duplicates: int = 0
    reused_from: str = ""    # the version whose files this view reuses, if any
    delta: ViewDelta | None = None   # changed since the offline base (None: no delta)

    def to_json(self) -> dict[str, Any]:
        out = {
            "rows": self.rows,
            "dropped_duplicates": self.dropped_duplicates,
            "definition": self.definition,
            "reused_from": self.reused_from,
            "sources": [s.to_json() for s in self.sources],
        }
        if self.delta is not None:
            out["delta"] = self.delta.to_json()
        return out


@dataclass
class GroupDelta:
    """A storage group's stored values changed since its base (FORMAT.md "Delta versions"): the base's SST
    files, the same inodes, and one cumulative delta SST ingested above them."""

    base: str                # the version whose full group the base files are
    base_rows: int           # entities in the base files
    files: list[str]         # the delta's SST file(s), relative to the version
    keys: int                # entities the delta holds (a value or a tombstone)

    @property
    def entries(self) -> int:
        """Entries in the group's SST files: the base's and the delta's (tombstones included)."""
        return self.base_rows + self.keys

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "base_rows": self.base_rows, "files": self.files, "keys": self.keys}


@dataclass
class GroupStats:
    views: list[str]         # in schema order: the order of the ViewRows in each stored EntityRow
    rows: int                # keys in the group's RocksDB: entities present in at least one of its views
    definition: str          # sha256 over the group's name and its views' definitions, in order
    reused_from: str = ""    # the version whose online files this group links, if any
    delta: GroupDelta | None = None   # base + one cumulative delta (None: written in full)

    def to_json(self) -> dict[str, Any]:
        out = {"views": self.views, "rows": self.rows, "definition": self.definition,
               "reused_from": self.reused_from}
        if self.delta is not None:
            out["delta"] = self.delta.to_json()
        return out


@dataclass
class Changes:
    """What made a delta version: the version it was applied to and, per view, the changes read."""

    previous: str
    sources: dict[str, list[FileEntry]]
    upserted: dict[str, int]
    deleted: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"previous": self.previous, "sources": {v: [s.to_json() for s in ss] for v, ss in self.sources.items()},
                "upserted": self.upserted, "deleted": self.deleted}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Changes":
        return cls(d["previous"], {v: [FileEntry(**s) for s in ss] for v, ss in d["sources"].items()},
                   dict(d["upserted"]), dict(d["deleted"]))


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict on one view or feature (quality/checks.py evaluates them)."""

    view: str
    feature: str          # "" for a view check
    check: str
    status: str           # passed | failed | warned | skipped
    measured: Any
    limit: Any
    examples: list[Any] = field(default_factory=list)   # a few offending entity keys
    detail: str = ""

    @property
    def where(self) -> str:
        return f"view {self.view!r}" + (f", feature {self.feature!r}" if self.feature else "")

    def describe(self) -> str:
        if self.status == "skipped":
            return f"{self.where}: {self.check} skipped: {self.detail}"
        text = f"{self.where}: {self.check} {self.status}: measured {_show(self.measured)}, limit {_show(self.limit)}"
        if self.detail:
            text += f" ({self.detail})"
        if self.examples:
            text += f"; e.g. key(s) {', '.join(repr(k) for k in self.examples)}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"view": self.view, "feature": self.feature, "check": self.check, "status": self.status,
                "measured": self.measured, "limit": self.limit, "examples": self.examples, "detail": self.detail}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "CheckResult":
        return cls(d["view"], d["feature"], d["check"], d["status"], d.get("measured"), d.get("limit"),
                   list(d.get("examples", [])), d.get("detail", ""))


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list) and len(v) > 8:
        return repr(v[:8])[:-1] + ", ...]"
    return repr(v)


@dataclass
class CheckSummary:
    """What a version's checks found, as the manifest's `checks` records it: every failed, warned and
    skipped check (passed ones are counted), and whether the version was published despite failures
    (`quiver load --accept-failed-checks`); the server exports these as metrics, so an alert can fire on
    a forced version."""

    results: list[CheckResult] = field(default_factory=list)   # every result but the passed ones
    passed: int = 0
    accepted_failures: bool = False    # published although checks failed

    @classmethod
    def of(cls, results: list[CheckResult], accepted_failures: bool = False) -> "CheckSummary":
        return cls([r for r in results if r.status != "passed"], sum(r.status == "passed" for r in results),
                   accepted_failures)

    def with_status(self, status: str) -> list[CheckResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> int:
        return len(self.with_status("failed"))

    @property
    def warned(self) -> int:
        return len(self.with_status("warned"))

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed, "warned": self.warned,
                "skipped": len(self.with_status("skipped")),
                "accepted_failures": self.accepted_failures, "results": [r.to_json() for r in self.results]}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "CheckSummary":
        if not d:
            return cls()
        return cls([CheckResult.from_json(r) for r in d.get("results", [])], int(d.get("passed", 0)),
                   bool(d.get("accepted_failures", False)))


@dataclass
class Manifest:
    version: str
    created: str
    as_of: str
    schema: FeatureSet
    views: dict[str, ViewStats]
    groups: dict[str, GroupStats]
    files: list[FileEntry] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    checks: CheckSummary = field(default_factory=CheckSummary)
    changes: Changes | None = None     # a delta version: what it applied to which version

    @property
    def base(self) -> str:
        """The oldest version whose full group files a delta group of this version stands on ("" if none)."""
        return min((g.delta.base for g in self.groups.values() if g.delta is not None), default="")

    def offline_files(self, view: str, delta: bool) -> list[str]:
        """A view's offline Parquet files, in path order: its delta's (delta) or its base's (FORMAT.md)."""
        return sorted(f.path for f in self.files if f.path.startswith(f"offline/{view}/")
                      and f.path.endswith(".parquet") and is_offline_delta(f.path) == delta)

    def delta_bytes(self) -> int:
        """Bytes of the delta's files: the groups' delta SSTs and the views' offline delta files."""
        online = {p for g in self.groups.values() if g.delta is not None for p in g.delta.files}
        return sum(f.size for f in self.files if f.path in online or is_offline_delta(f.path))

    @property
    def content_checksum(self) -> str:
        h = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            h.update(f"{f.path}\0{f.size}\0{f.checksum}\n".encode())
        return "sha256:" + h.hexdigest()

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def rows(self) -> dict[str, int]:
        return {name: v.rows for name, v in self.views.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "version": self.version,
            "created": self.created,
            "as_of": self.as_of,
            "schema": self.schema.to_json(),
            "views": {name: v.to_json() for name, v in self.views.items()},
            "groups": {name: g.to_json() for name, g in self.groups.items()},
            "files": [f.to_json() for f in self.files],
            "content_checksum": self.content_checksum,
            "checks": self.checks.to_json(),
            **({"changes": self.changes.to_json()} if self.changes is not None else {}),
        }

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        found = d.get("format_version")
        if found != FORMAT_VERSION:
            hint = (" (one RocksDB per view, before storage groups): rebuild it with `quiver load` into a new root, "
                    "or load the same features.yaml into this root, which rebuilds every view"
                    if found == 1 else "")
            raise ManifestError(f"format_version {found!r}{hint}; this quiver reads {FORMAT_VERSION}")
        views = {
            name: ViewStats(
                v["rows"],
                [FileEntry(**s) for s in v["sources"]],
                v["definition"],
                v.get("dropped_duplicates", 0),
                v.get("reused_from", ""),
                ViewDelta(**v["delta"]) if v.get("delta") else None,
            )
            for name, v in d["views"].items()
        }
        groups = {name: GroupStats(list(g["views"]), g["rows"], g["definition"], g.get("reused_from", ""),
                                   GroupDelta(g["delta"]["base"], g["delta"]["base_rows"], list(g["delta"]["files"]),
                                              g["delta"]["keys"])
                                   if g.get("delta") else None)
                  for name, g in d["groups"].items()}
        m = cls(d["version"], d["created"], d["as_of"], FeatureSet.from_json(d["schema"]), views, groups,
                [FileEntry(**f) for f in d["files"]], checks=CheckSummary.from_json(d.get("checks")),
                changes=Changes.from_json(d["changes"]) if d.get("changes") else None)
        if d.get("content_checksum") != m.content_checksum:
            raise ManifestError(f"manifest of {m.version}: content_checksum does not match its file list")
        return m

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Manifest":
        try:
            data = json.loads(Path(path).read_bytes())
        except FileNotFoundError:
            raise ManifestError(f"{path}: missing") from None
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path}: unreadable: {e}") from None
        try:
            return cls.from_json(data)
        except (KeyError, TypeError) as e:
            raise ManifestError(f"{path}: malformed, missing {e}") from None

    def verify_files(self, version_dir: str | os.PathLike[str], full: bool = True, prefix: str = "",
                     proven: Callable[[Path, "FileEntry"], bool] = lambda path, f: False) -> list[str]:
        """Problems with the files beside this manifest (those under `prefix`): missing, wrong size,
        or (full) wrong checksum, for the files `proven` does not vouch for (snapshot/integrity.py)."""
        base = Path(version_dir)
        problems = []
        for f in self.files:
            if not f.path.startswith(prefix):
                continue
            p = base / f.path
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                problems.append(f"{f.path}: missing")
                continue
            except OSError as e:
                problems.append(f"{f.path}: cannot stat: {e.strerror}")
                continue
            if size != f.size:
                problems.append(f"{f.path}: {size} bytes, manifest says {f.size}")
            elif full and not proven(p, f) and file_checksum(p) != f.checksum:
                problems.append(f"{f.path}: checksum differs from the manifest")
        return problems


def is_offline_delta(path: str) -> bool:
    """A file of a view's offline delta: offline/<view>/delta/..."""
    parts = path.split("/")
    return len(parts) > 3 and parts[0] == "offline" and parts[2] == DELTA_DIR


def data_files(version_dir: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """(relative path, size) of every file a manifest lists: all but volatile ones and itself."""
    base = Path(version_dir)
    return [(p.relative_to(base).as_posix(), p.stat().st_size) for p in sorted(base.rglob("*"))
            if p.is_file() and p.name not in UNLISTED and not is_volatile(p.name)]

