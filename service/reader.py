"""GetFeatures from stored bytes: validate, pick the version, encode keys, one multi-get per storage
group, and splice the stored EntityRow bytes into the response without decoding any ViewRow.

Wire layout written here (proto/quiver/v1/quiver.proto; the stored value is snapshot/FORMAT.md's):
    GetFeaturesResponse = version(1) views(2)* rows(3)*
    EntityRow           = views(1)* found(2, packed bool)   -- one chunk of each per run below

A request's views are cut into runs of consecutive views of one group. A run that is a whole group in
its stored order splices the stored value as it is; any other run copies the framed entries
(`0x0A len ViewRow`) of its views out of the stored value and adds its own packed `found` chunk.
Protobuf concatenates repeated fields across chunks, packed ones included, so the EntityRow lists
every requested view in request order.
"""

import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from quiver.service.errors import InvalidRequest, UnknownView
from quiver.service.snapshots import Snapshots
from quiver.service.store import LoadedVersion
from quiver.snapshot.keys import encode_int64_keys
from quiver.snapshot.values import FOUND_TAG, VIEWS_TAG, entry_spans, varint
from quiver.v1.quiver_pb2 import GetFeaturesRequest

# Reads expected to take longer than this run on a reader thread; why 150 us: bench/README.md, "The offload line".
OFFLOAD_SECONDS = 150e-6
KEY_EWMA = 0.02           # weight of the newest call in the mean time per key (about the last 50 calls)
_NOT_FOUND = bytes([VIEWS_TAG, 0])   # EntityRow.views entry: an empty ViewRow
_FOUND = bytes([FOUND_TAG])


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


class Offload:
    """Whether a call is read on a reader thread: when its RocksDB reads are expected (its keys x the recent
    mean time per key) to take longer than `seconds`, so the event loop never waits on the disk or a long
    multi-get; shorter calls are read inline. The servicer asks; the reader measures."""

    def __init__(self, seconds: float = OFFLOAD_SECONDS) -> None:
        self.seconds = seconds
        # recent mean RocksDB time per key looked up (page cache hits and misses); starts at a warm cache's
        self.key_seconds = 20e-6

    def wanted(self, keys: int) -> bool:
        return keys * self.key_seconds > self.seconds

    def observe(self, seconds: float, keys: int) -> None:
        self.key_seconds += KEY_EWMA * (seconds / keys - self.key_seconds)


class RequestCounts:
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


def _absent(views: int) -> bytes:
    """A group value for an entity none of its views holds: empty ViewRows, found all false."""
    return _NOT_FOUND * views + _FOUND + varint(views) + bytes(views)


@dataclass(frozen=True)
class Run:
    group: str
    group_views: int                 # views in the group's stored value
    picks: tuple[int, ...] | None    # the run's views by position in the group; None: the whole group
    absent: bytes                    # this run's bytes for an entity the group lacks

    def cut(self, value: bytes | None) -> bytes:
        if value is None:
            return self.absent
        if self.picks is None:
            return value
        spans = entry_spans(value, self.group_views)
        flags = value[len(value) - self.group_views:]
        return b"".join([value[s:e] for s, e in (spans[i] for i in self.picks)]) + _FOUND + varint(
            len(self.picks)) + bytes(flags[i] for i in self.picks)


@dataclass(frozen=True)
class ResponsePlan:
    """How one version answers one list of views: the response header, the runs, the groups to read."""

    header: bytes
    runs: tuple[Run, ...]
    groups: tuple[str, ...]
    # per group read: its view count and the requested (view, position in the group), for the stats
    counted: tuple[tuple[str, int, tuple[tuple[str, int], ...]], ...]


def plan_response(version: LoadedVersion, views: tuple[str, ...]) -> ResponsePlan:
    """How `version` answers `views` (cached per version and list of views by the reader)."""
    twice = [v for v in dict.fromkeys(views) if views.count(v) > 1]
    if twice:  # answering it twice would hide a client bug and double the response for nothing
        raise InvalidRequest(f"view(s) {twice} named more than once in the request; name each view once")
    unknown = [v for v in views if v not in version.group_of]
    if unknown:
        raise UnknownView(f"unknown view(s) {unknown} in version {version.version}; "
                          f"it has {list(version.view_names)}")
    runs: list[Run] = []
    i = 0
    while i < len(views):
        g = version.group_of[views[i]]
        j = i
        while j < len(views) and version.group_of[views[j]] == g:
            j += 1
        stored = version.groups[g]
        if views[i:j] == stored:
            runs.append(Run(g, len(stored), None, _absent(len(stored))))
        else:
            picks = tuple(stored.index(v) for v in views[i:j])
            runs.append(Run(g, len(stored), picks, _absent(len(picks))))
        i = j
    groups = tuple(dict.fromkeys(r.group for r in runs))
    counted = tuple((g, len(version.groups[g]), tuple((v, version.groups[g].index(v)) for v in dict.fromkeys(views)
                                                      if version.group_of[v] == g)) for g in groups)
    header = _field(b"\x0a", version.version.encode()) + b"".join(_field(b"\x12", v.encode()) for v in views)
    return ResponsePlan(header, tuple(runs), groups, counted)


class FeatureReader:
    def __init__(self, snapshots: Snapshots, max_entities: int) -> None:
        self.snapshots = snapshots
        self.max_entities = max_entities
        self.counts = RequestCounts()
        self.offload = Offload()
        self._plans: dict[tuple[str, tuple[str, ...]], ResponsePlan] = {}

    def get_features(self, req: GetFeaturesRequest) -> bytes:
        """The serialized GetFeaturesResponse; raises ServiceError subclasses."""
        with self.snapshots.reading(req.version) as version:
            p = self._plan(version, tuple(req.views) or version.view_names)
            keys = self._keys(req, version)
            t = time.perf_counter()
            stored = {g: version.get(g, keys) for g in p.groups}
            self.offload.observe(time.perf_counter() - t, len(keys) * len(p.groups))
        self._count(p, stored, len(keys))
        if len(p.runs) == 1 and p.runs[0].picks is None:  # the default: every view, one group
            absent = p.runs[0].absent
            values = [absent if v is None else v for v in stored[p.runs[0].group]]
        else:
            values = [b"".join([r.cut(stored[r.group][i]) for r in p.runs]) for i in range(len(keys))]
        parts = [p.header]
        for v in values:   # 0x1A: rows (3); one join, no copy of a value before it
            parts += (b"\x1a" + varint(len(v)), v)
        return b"".join(parts)

    @staticmethod
    def parse(raw: bytes) -> GetFeaturesRequest:
        try:
            return GetFeaturesRequest.FromString(raw)
        except DecodeError as e:
            raise InvalidRequest(f"malformed GetFeaturesRequest: {e}") from None

    def _plan(self, version: LoadedVersion, views: tuple[str, ...]) -> ResponsePlan:
        key = (version.version, views)
        p = self._plans.get(key)
        if p is None:
            p = plan_response(version, views)
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[key] = p
        return p

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

    def _count(self, p: ResponsePlan, stored: dict[str, list[bytes | None]], n: int) -> None:
        """Entities found per view, from the found flags that end each stored value."""
        for g, width, views in p.counted:
            col = stored[g]
            tails = b"".join([v[-width:] for v in col if v is not None])
            for view, i in views:
                self.counts.add(view, n, tails[i::width].count(1))
