"""The snapshot format: the one piece the loader and the server share.

A snapshot root holds immutable versions and one pointer::

    ROOT/CURRENT                       the served version id (replaced atomically)
    ROOT/versions/<id>/manifest.json   written last inside the version, published by one rename
    ROOT/versions/<id>/online/<group>/ one RocksDB per storage group (SST files ingested at L6), one
                                       value per entity: its EntityRow for the group's views
    ROOT/versions/<id>/offline/<view>/ the same rows as Parquet (sorted by key for views with an event
                                       timestamp, whose older duplicates are dropped; in source order otherwise)
    ROOT/staging/                      loads in progress; never read, cleaned by the next load

A root's lifecycle lives here too, in one place each: staging, trash and the load/sync locks
(`lifecycle`), server leases (`leases`), and the one retention rule `gc` and `sync` apply
(`retention`: kept are CURRENT, the previous, leased, the newest K).

FORMAT.md beside this file is the exact specification (format version 2), for readers in any language.
This package imports neither grpc nor pyarrow.
"""

from quiver.snapshot.keys import decode_int64_key, encode_int64_key, encode_int64_keys, encode_string_key
from quiver.snapshot.layout import FORMAT_VERSION, SnapshotRoot
from quiver.snapshot.manifest import FileEntry, GroupStats, Manifest, ManifestError, file_checksum
from quiver.snapshot.schema import (
    DEFAULT_GROUP,
    FEATURE_TYPES,
    EntityDef,
    FeatureDef,
    FeatureSet,
    ViewDef,
)

__all__ = [
    "DEFAULT_GROUP",
    "FEATURE_TYPES",
    "FORMAT_VERSION",
    "EntityDef",
    "FeatureDef",
    "FeatureSet",
    "FileEntry",
    "GroupStats",
    "Manifest",
    "ManifestError",
    "SnapshotRoot",
    "ViewDef",
    "decode_int64_key",
    "encode_int64_key",
    "encode_int64_keys",
    "encode_string_key",
    "file_checksum",
]
