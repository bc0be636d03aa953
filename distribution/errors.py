"""Distribution's errors and the one place where foreign errors (pyarrow, the AWS SDK, the OS) become them.
The classes are those of their meaning (base/errors.py draws the one tree, with exit codes), plus
LocalSnapshotError, distribution's name for a RootError."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from quiver.base.errors import (
    AccessDenied,
    BucketNotFound,
    DiskFull,
    IntegrityError,
    ObjectNotFound,
    QuiverError,
    RootError,
    StorageError,
    StorageUnreachable,
)

__all__ = ["AccessDenied", "BucketNotFound", "DiskFull", "IntegrityError", "LocalSnapshotError", "ObjectNotFound",
           "StorageError", "StorageUnreachable", "translate", "translated"]


class LocalSnapshotError(RootError):
    """publish or sync found no such version (or an unreadable manifest) in the local snapshot root."""


# Markers in pyarrow's OSError messages (they embed the AWS SDK's error name), most specific first.
_AWS_MARKERS: list[tuple[tuple[str, ...], type[StorageError], str]] = [
    (("NO_SUCH_BUCKET",), BucketNotFound, "the bucket does not exist: create it or fix the URI"),
    (("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId",
      "SignatureDoesNotMatch", "AccessDenied"),
     AccessDenied, "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the pod's role) and the bucket policy"),
    (("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't connect", "Timeout was reached",
      "REQUEST_TIMEOUT", "Unable to connect"),
     StorageUnreachable, "check the endpoint (QUIVER_S3_ENDPOINT / AWS_ENDPOINT_URL) and the network"),
]


def translate(exc: OSError, what: str, local: bool = False) -> QuiverError:
    """The one place where foreign errors (pyarrow, the AWS SDK, the OS) become ours. `local`: the error
    came from the local snapshot root, not object storage."""
    if exc.errno == errno.ENOSPC:
        return DiskFull(f"{what}: no space left on device; free space or lower --keep")
    if local:
        return LocalSnapshotError(f"{what}: {exc.strerror or exc}")
    text = str(exc)
    for markers, cls, hint in _AWS_MARKERS:
        if any(m in text for m in markers):
            return cls(f"{what}: {text} ({hint})")
    if isinstance(exc, FileNotFoundError):
        return ObjectNotFound(f"{what}: not found")
    return StorageError(f"{what}: {text}")


@contextmanager
def translated(what: str, local: bool = False) -> Iterator[None]:
    """OSErrors raised in the block become our errors about `what` (see `translate`)."""
    try:
        yield
    except OSError as e:
        raise translate(e, what, local) from e
