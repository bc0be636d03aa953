"""The snapshot format: the one piece the loader and the server share.

A snapshot root holds immutable versions and one pointer::

    ROOT/CURRENT                       the served version id (replaced atomically)
    ROOT/versions/<id>/manifest.json   written last inside the version, published by one rename
    ROOT/versions/<id>/online/<view>/  one RocksDB per feature view (SST files ingested at L6)
    ROOT/versions/<id>/offline/<view>/ the same rows as Parquet (sorted by key for views with an event
                                       timestamp, whose older duplicates are dropped; in source order otherwise)
    ROOT/staging/                      loads in progress; never read, cleaned by the next load

A root's lifecycle lives here too, in one place each: staging, trash and the load/sync locks
(`lifecycle`), server leases (`leases`), and the one retention rule `gc` and `sync` apply
(`retention`: kept are CURRENT, the previous, leased, the newest K).

This package imports neither grpc nor pyarrow.
"""

from quiver.snapshot.keys import decode_int64_key, encode_int64_key, encode_int64_keys, encode_string_key
from quiver.snapshot.layout import FORMAT_VERSION, SnapshotRoot
from quiver.snapshot.manifest import FileEntry, Manifest, ManifestError, file_checksum
from quiver.snapshot.schema import (
    FEATURE_TYPES,
    EntityDef,
    FeatureDef,
    FeatureSet,
    SchemaError,
    ViewDef,
)

__all__ = [
    "FEATURE_TYPES",
    "FORMAT_VERSION",
    "EntityDef",
    "FeatureDef",
    "FeatureSet",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "SchemaError",
    "SnapshotRoot",
    "ViewDef",
    "decode_int64_key",
    "encode_int64_key",
    "encode_int64_keys",
    "encode_string_key",
    "file_checksum",
]
