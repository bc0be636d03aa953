"""Moving snapshot versions between a snapshot root and object storage.

    store.py      the remote tree under any pyarrow.fs URI: PREFIX/versions/<id>/..., PREFIX/LATEST
    transfer.py   one file's bytes moved and verified; many on a few threads
    publish.py    root -> store: data files, then the manifest, then LATEST (point_latest: a rollback)
    sync.py       store -> root: download, verify, one rename, move CURRENT, then the retention rule
    errors.py     the one place foreign errors become classes of the error tree (base/errors.py)
    commands.py   `quiver publish`, `quiver sync`

A reader that follows LATEST only ever finds complete versions; a replica's CURRENT moves only after
every file of the version it names matched its checksum. Versions share files: a view the loader reused
keeps its files' paths and checksums, so `publish` copies it inside the store and `sync` hard-links it
from a version the replica holds; a change to one view moves that view's bytes only.
"""

from quiver.distribution.commands import register
from quiver.distribution.errors import (
    AccessDenied,
    BucketNotFound,
    DiskFull,
    IntegrityError,
    LocalSnapshotError,
    ObjectNotFound,
    StorageError,
    StorageUnreachable,
    translate,
)
from quiver.distribution.publish import PublishResult, point_latest, publish
from quiver.distribution.store import ENDPOINT_ENV, RemoteStore, open_store
from quiver.distribution.sync import SyncResult, prune, sync, watch

__all__ = [
    "ENDPOINT_ENV",
    "AccessDenied",
    "BucketNotFound",
    "DiskFull",
    "IntegrityError",
    "LocalSnapshotError",
    "ObjectNotFound",
    "PublishResult",
    "RemoteStore",
    "StorageError",
    "StorageUnreachable",
    "SyncResult",
    "open_store",
    "point_latest",
    "prune",
    "publish",
    "register",
    "sync",
    "translate",
    "watch",
]
