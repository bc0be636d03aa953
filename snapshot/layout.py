"""Paths of a snapshot root, and the atomic moves that publish a version and the CURRENT pointer."""

import os
import re
from pathlib import Path

FORMAT_VERSION = 2   # snapshot/FORMAT.md; 1 stored one RocksDB per view
VERSION_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}$")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class SnapshotRoot:
    """The folder that holds every version of one feature store."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.path = Path(root)

    @property
    def versions_dir(self) -> Path:
        return self.path / "versions"

    @property
    def staging_dir(self) -> Path:
        return self.path / "staging"

    @property
    def current_file(self) -> Path:
        return self.path / "CURRENT"

    @property
    def previous_file(self) -> Path:
        return self.path / "PREVIOUS"

    def previous(self) -> str | None:
        """The version CURRENT named before its last move (the rollback target), if any."""
        try:
            return self.previous_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def version_dir(self, version: str) -> Path:
        return self.versions_dir / version

    def manifest_path(self, version: str) -> Path:
        return self.version_dir(version) / "manifest.json"

    def online_dir(self, version: str, group: str) -> Path:
        """One storage group's RocksDB."""
        return self.version_dir(version) / "online" / group

    def offline_dir(self, version: str, view: str) -> Path:
        return self.version_dir(version) / "offline" / view

    def current(self) -> str | None:
        try:
            text = self.current_file.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def set_current(self, version: str) -> None:
        if not self.manifest_path(version).is_file():
            raise FileNotFoundError(f"{self.manifest_path(version)}: no such published version")
        old = self.current()
        if old and old != version:
            write_atomic(self.previous_file, (old + "\n").encode())
        write_atomic(self.current_file, (version + "\n").encode())

    def versions(self) -> list[str]:
        """Published versions (those with a manifest), oldest first by as-of time then id."""
        if not self.versions_dir.is_dir():
            return []
        found = [p.name for p in self.versions_dir.iterdir() if (p / "manifest.json").is_file()]
        return sorted(found)

    def ensure(self) -> None:
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
