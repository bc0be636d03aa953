"""The remote side: one published tree under any pyarrow.fs URI (``s3://bucket/prefix``, ``file:///dir``).

    PREFIX/versions/<id>/<file>            data files, uploaded first
    PREFIX/versions/<id>/refs.json         files stored under another version, by reference (optional):
                                           {"files": {"<path>": "<other id>/<its path>"}}
    PREFIX/versions/<id>/manifest.json     uploaded after every file it lists
    PREFIX/LATEST                          the version replicas should serve, written last

A version that shares files with an earlier one (a delta's base, a view a load reused) stores them once:
refs.json names where each lies, always an object written in full under its own version, so a reader
resolves a reference in one step. Nothing here deletes a version; one that another references must stay.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from quiver.distribution.errors import BucketNotFound, IntegrityError, ObjectNotFound, StorageError, translated
from quiver.snapshot import Manifest, ManifestError
from quiver.snapshot.layout import VERSION_ID

__all__ = ["ENDPOINT_ENV", "LATEST", "MANIFEST", "REFS", "RemoteStore", "endpoint_from_env", "open_store",
           "remote_manifest"]

CHUNK = 8 << 20
LATEST = "LATEST"
MANIFEST = "manifest.json"
REFS = "refs.json"
ENDPOINT_ENV = ("QUIVER_S3_ENDPOINT", "AWS_ENDPOINT_URL")


def endpoint_from_env(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    for name in ENDPOINT_ENV:
        if env.get(name):
            return env[name]
    return None


@dataclass(frozen=True)
class RemoteStore:
    """One published tree: a filesystem and the base path inside it (bucket/prefix for S3)."""

    fs: pafs.FileSystem
    base: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def bucket(self) -> str:
        return self.base if self.is_local else self.base.split("/", 1)[0]

    def path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def url(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])

    def check_bucket(self) -> None:
        with translated(f"bucket {self.bucket!r} at {self.uri}"):
            info = self.fs.get_file_info(self.bucket)
        if info.type == pafs.FileType.NotFound:
            raise BucketNotFound(f"bucket {self.bucket!r} at {self.uri} does not exist: "
                                 "create it or fix the URI")

    def sizes(self, *parts: str) -> dict[str, int]:
        """Sizes of every object under a folder, by path relative to it."""
        top = self.path(*parts)
        sel = pafs.FileSelector(top, recursive=True, allow_not_found=True)
        with translated(f"listing {self.url(*parts)}"):
            infos = self.fs.get_file_info(sel)
        return {i.path[len(top) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}

    def read_bytes(self, *parts: str) -> bytes:
        with translated(f"object {self.url(*parts)}"), self.fs.open_input_stream(self.path(*parts)) as f:
            data: bytes = f.read()
        return data

    def write_bytes(self, data: bytes, *parts: str) -> None:
        with translated(f"writing {self.url(*parts)}"):
            self._write(self.path(*parts), lambda out: out.write(data))

    def upload(self, local: Path, *parts: str) -> None:
        def copy(out: Any) -> None:
            with open(local, "rb") as src:
                while chunk := src.read(CHUNK):
                    out.write(chunk)

        with translated(f"uploading {local} to {self.url(*parts)}"):
            self._write(self.path(*parts), copy)

    def copy(self, src: tuple[str, ...], dst: tuple[str, ...]) -> None:
        """One object to another inside the store (S3: a server-side copy, whole when it appears)."""
        with translated(f"copying {self.url(*src)} to {self.url(*dst)}"):
            if not self.is_local:
                self.fs.copy_file(self.path(*src), self.path(*dst))
                return
            path = self.path(*dst)
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            self.fs.copy_file(self.path(*src), tmp)
            self.fs.move(tmp, path)

    def _write(self, path: str, fill: Callable[[Any], Any]) -> None:
        # An S3 object appears whole when its (multipart) upload completes; a local file would be
        # visible half-written, so it is written beside and moved into place.
        if not self.is_local:
            with self.fs.open_output_stream(path) as out:
                fill(out)
            return
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            fill(out)
        self.fs.move(tmp, path)

    def refs(self, version: str) -> dict[str, str]:
        """A version's files stored under another version: path -> "<id>/<path>" ({} if none)."""
        try:
            data = self.read_bytes("versions", version, REFS)
        except ObjectNotFound:
            return {}
        try:
            files: dict[str, str] = json.loads(data)["files"]
        except (ValueError, KeyError, TypeError) as e:
            raise IntegrityError(f"{self.url('versions', version, REFS)}: unusable: {e}") from None
        return files

    def location(self, version: str, path: str, refs: dict[str, str]) -> tuple[str, ...]:
        """Where a file of `version` is stored: under it, or where refs.json says."""
        return ("versions", *(refs.get(path) or f"{version}/{path}").split("/"))

    def latest(self) -> str:
        try:
            text = self.read_bytes(LATEST).decode().strip()
        except ObjectNotFound:
            raise ObjectNotFound(f"{self.url(LATEST)}: missing: nothing has been published there yet"
                                 ) from None
        if not VERSION_ID.match(text):
            raise IntegrityError(f"{self.url(LATEST)}: {text[:80]!r} is not a version id")
        return text


def open_store(uri: str, endpoint: str | None = None) -> RemoteStore:
    """A RemoteStore for `uri`. S3 uses `endpoint` (default: $QUIVER_S3_ENDPOINT, $AWS_ENDPOINT_URL)."""
    endpoint = endpoint or endpoint_from_env()
    parts = urlsplit(uri)
    try:
        if parts.scheme == "s3" and endpoint and "endpoint_override" not in parts.query:
            ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            fs: pafs.FileSystem = pafs.S3FileSystem(
                endpoint_override=ep.netloc,
                scheme=ep.scheme,
                region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                connect_timeout=5,
                request_timeout=30,
                retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
            )
            base = (parts.netloc + parts.path).rstrip("/")
        else:
            fs, base = pafs.FileSystem.from_uri(uri)
            base = base.rstrip("/")
    except (OSError, ValueError, TypeError) as e:
        raise StorageError(f"{uri}: cannot open: {e}") from e
    if not base:
        raise StorageError(f"{uri}: names no bucket")
    return RemoteStore(fs, base, uri)


# ---------------------------------------------------------------------------------------------
# publish
# ---------------------------------------------------------------------------------------------

def remote_manifest(store: RemoteStore, version: str) -> tuple[Manifest, bytes]:
    url = store.url("versions", version, MANIFEST)
    try:
        data = store.read_bytes("versions", version, MANIFEST)
    except ObjectNotFound:
        raise ObjectNotFound(f"{url}: missing: {version} was never published there, or its publish did not "
                             "finish; rerun `quiver publish`") from None
    try:
        manifest = Manifest.from_json(json.loads(data))
    except (ManifestError, ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{url}: unusable manifest: {e}") from None
    if manifest.version != version:
        raise IntegrityError(f"{url}: describes version {manifest.version}, not {version}")
    return manifest, data

