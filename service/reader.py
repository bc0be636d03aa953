"""GetFeatures from stored bytes: validate, pick the version, encode keys, one multi-get per view,
and splice the stored ViewRow bytes into the response without decoding them.

Wire layout written here (proto/quiver/v1/quiver.proto):
    GetFeaturesResponse = version(1) views(2)* rows(3)*
    EntityRow           = views(1)* found(2, packed bool)
"""

from google.protobuf.message import DecodeError

from quiver.service.errors import InvalidRequest, UnknownView
from quiver.service.snapshots import Snapshots
from quiver.service.store import LoadedVersion
from quiver.snapshot.keys import encode_int64_keys
from quiver.v1.quiver_pb2 import GetFeaturesRequest

_VARINT_TABLE: list[bytes] = []


def varint(n: int) -> bytes:
    if n < 16384:
        return _VARINT_TABLE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINT_TABLE.extend(bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(16384))
_NOT_FOUND = b"\x0a\x00"   # EntityRow.views entry: an empty ViewRow


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


class ViewStats:
    """Entities requested and found per view, counted on the hot path with plain ints and
    published to Prometheus off it (metrics.flush)."""

    def __init__(self) -> None:
        self.requested: dict[str, int] = {}
        self.found: dict[str, int] = {}

    def add(self, view: str, requested: int, found: int) -> None:
        self.requested[view] = self.requested.get(view, 0) + requested
        self.found[view] = self.found.get(view, 0) + found

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        r, f = self.requested, self.found
        self.requested, self.found = {}, {}
        return r, f


class FeatureReader:
    def __init__(self, snapshots: Snapshots, max_entities: int) -> None:
        self.snapshots = snapshots
        self.max_entities = max_entities
        self.stats = ViewStats()
        self._headers: dict[tuple[str, tuple[str, ...]], bytes] = {}

    def _header(self, version: LoadedVersion, views: tuple[str, ...]) -> bytes:
        key = (version.version, views)
        h = self._headers.get(key)
        if h is None:
            unknown = [v for v in views if v not in version.view_names]
            if unknown:
                raise UnknownView(f"unknown view(s) {unknown} in version {version.version}; "
                                  f"it has {list(version.view_names)}")
            h = _field(b"\x0a", version.version.encode()) + b"".join(_field(b"\x12", v.encode()) for v in views)
            if len(self._headers) > 256:
                self._headers.clear()
            self._headers[key] = h
        return h

    def _keys(self, req: GetFeaturesRequest, version: LoadedVersion) -> list[bytes]:
        ints, strs = req.int64_ids, req.string_ids
        n = len(ints) + len(strs)
        if n == 0:
            raise InvalidRequest("no entity ids: set int64_ids or string_ids")
        if n > self.max_entities:
            raise InvalidRequest(f"{n} entity ids in one request; the limit is {self.max_entities}")
        if version.key_type == "int64":
            if strs:
                raise InvalidRequest(f"entity {version.schema.entity.name!r} is keyed by int64: "
                                     "send int64_ids, not string_ids")
            return encode_int64_keys(ints)
        if ints:
            raise InvalidRequest(f"entity {version.schema.entity.name!r} is keyed by string: "
                                 "send string_ids, not int64_ids")
        return [s.encode() for s in strs]

    @staticmethod
    def parse(raw: bytes) -> GetFeaturesRequest:
        try:
            return GetFeaturesRequest.FromString(raw)
        except DecodeError as e:
            raise InvalidRequest(f"malformed GetFeaturesRequest: {e}") from None

    def get_features(self, req: GetFeaturesRequest) -> bytes:
        """The serialized GetFeaturesResponse; raises ServiceError subclasses."""
        version = self.snapshots.pick(req.version)
        while not version.acquire():  # retired by a swap since the pick (this may run on a thread): pick again
            version = self.snapshots.pick(req.version)
        try:
            views = tuple(req.views) or version.view_names
            header = self._header(version, views)
            keys = self._keys(req, version)
            columns = [version.get(v, keys) for v in views]
        finally:
            version.release()
        n = len(keys)
        stats = self.stats
        framed_views = []
        found_views = []
        for view, col in zip(views, columns, strict=True):
            stats.add(view, n, n - col.count(None))
            # EntityRow.views entries: tag, length, the stored ViewRow bytes as they are
            framed_views.append([_NOT_FOUND if v is None else b"\x0a" + varint(len(v)) + v for v in col])
            found_views.append([v is not None for v in col])
        found_tag = b"\x12" + varint(len(views))
        rows = [b"".join(parts) + found_tag + bytes(found)
                for parts, found in zip(zip(*framed_views, strict=True), zip(*found_views, strict=True), strict=True)]
        return header + b"".join([b"\x1a" + varint(len(r)) + r for r in rows])
