"""Stage 1, plan: the version's id, what this load re-encodes, what it takes from the current version,
and the key ranges each storage group is cut into.

Reuse, from the cheapest:
- a group whose views and their sources are all unchanged (same views, same order) links its online
  files from the current version;
- a view whose definition and sources are unchanged links its offline files, and inside a group that
  must be rebuilt (another view changed) its stored bytes are cut out of the current version's group
  values, in key order, instead of being re-read from Parquet;
- everything else is read from Parquet and encoded.
"""

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from quiver.loader.errors import DefinitionError, SourceError
from quiver.loader.normalize import normalize
from quiver.loader.partition import Partitioner
from quiver.loader.sources import SourceFile, open_parquet
from quiver.loader.spill import SpillRows, source_columns
from quiver.snapshot.integrity import check_version
from quiver.snapshot.layout import FORMAT_VERSION, SnapshotRoot
from quiver.snapshot.manifest import FileEntry, Manifest, ManifestError
from quiver.snapshot.schema import EntityDef, FeatureSet, ViewDef

log = logging.getLogger("quiver.loader")

SAMPLE_TARGET = 200_000       # keys sampled per group to draw its key-range boundaries
SIZE_ROWS = 2048              # rows of a source encoded to measure the spilled bytes per row
# Kept views' bytes in memory per byte of the previous group's (LZ4) files: ViewRows of random floats
# barely compress, so the files are close to the in-memory size.
KEPT_BYTES_PER_FILE_BYTE = 1.5


def utc_text(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def version_id(features: FeatureSet, sources: dict[str, list[FileEntry]], as_of: datetime,
               deltas: dict[str, str] | None = None) -> str:
    """`deltas`: per view, the digest of the changes (loader/delta.py) its rows carry beyond its sources."""
    content = {"format": FORMAT_VERSION, "schema": features.to_json(), "as_of": utc_text(as_of),
               "sources": {v: [(s.size, s.checksum) for s in ss] for v, ss in sources.items()}}
    if deltas:
        content["deltas"] = deltas
    h = hashlib.sha256()
    h.update(json.dumps(content, sort_keys=True).encode())
    return f"{as_of.astimezone(UTC):%Y%m%dT%H%M%SZ}-{h.hexdigest()[:12]}"


def kept_deltas(current: Manifest | None, features: FeatureSet, sources: dict[str, list[FileEntry]]) -> dict[str, str]:
    """The views a full load takes from `current` with the changes applied to them since their sources
    (a view whose sources changed is rebuilt from them, and its changes are superseded): view -> digest."""
    if current is None:
        return {}
    return {v.name: current.views[v.name].delta.digest for v in features.views  # type: ignore[union-attr]
            if v.name in current.views and current.views[v.name].delta is not None
            and reusable(current, v, sources[v.name])}


def definition_hash(view: ViewDef) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(view.definition_json(), sort_keys=True).encode()).hexdigest()


def group_definition_hash(name: str, views: list[ViewDef]) -> str:
    """What decides a group's stored bytes besides the data: its views, their order and encodings."""
    text = json.dumps({"group": name, "views": [definition_hash(v) for v in views]})
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def current_manifest(root: SnapshotRoot) -> Manifest | None:
    """The manifest CURRENT names: what this load may reuse and must not change types against. A
    version of another format (or an unreadable one) reuses nothing: the load rebuilds every view."""
    cur = root.current()
    if cur is None:
        return None
    try:
        return Manifest.load(root.manifest_path(cur))
    except ManifestError:
        return None


def check_type_changes(current: Manifest | None, features: FeatureSet) -> None:
    """A client decoding feature X by name must never get a silently different type: a type change
    is refused unless the load says --allow-type-change (clients then read the new type by schema)."""
    if current is None:
        return
    for view in features.views:
        if view.name not in current.views:
            continue
        old = {f.name: f for f in current.schema.view(view.name).features}
        for f in view.features:
            o = old.get(f.name)
            if o is not None and (o.type, o.length) != (f.type, f.length):
                was = o.type + (f"[{o.length}]" if o.length else "")
                now = f.type + (f"[{f.length}]" if f.length else "")
                raise DefinitionError(
                    f"{features.source_file}: view {view.name!r}, feature {f.name!r}: type changes from {was} "
                    f"(version {current.version}) to {now}; give the feature a new name, or load with "
                    f"--allow-type-change if every client reads it by schema")


def check_grouping(current: Manifest | None, features: FeatureSet) -> None:
    """Moving a view to another storage group rewrites both groups on every replica and changes which
    lookups a request costs: refused unless the load says --allow-regroup."""
    if current is None:
        return
    for view in features.views:
        if view.name not in current.views:
            continue
        was = current.schema.view(view.name).group
        if was != view.group:
            raise DefinitionError(
                f"{features.source_file}: view {view.name!r}: group changes from {was!r} (version "
                f"{current.version}) to {view.group!r}; this rewrites both groups on every replica: load with "
                f"--allow-regroup to do it")


def plan_against_current(root: SnapshotRoot, features: FeatureSet, sources: dict[str, list[FileEntry]],
                         reuse: bool, allow_type_change: bool,
                         allow_regroup: bool) -> tuple[Manifest | None, Manifest | None, list["GroupPlan"]]:
    """(the current manifest, the one reuse draws on, the groups' plans): the checks against the
    current version and the reuse plan, the same for every engine."""
    current = current_manifest(root)
    if not allow_type_change:
        check_type_changes(current, features)
    if not allow_regroup:
        check_grouping(current, features)
    reuse_from = current if reuse and current is not None and intact(root, current) else None
    groups = plan_groups(features, sources, reuse_from)
    if current is not None:
        for g in groups:
            for v in g.encode:
                old = current.views.get(v.name)
                if old is not None and old.delta is not None:
                    log.warning("view %s: re-read from its sources (changed, or its definition did), so the changes "
                                "applied to it as deltas since its last full load are superseded by the sources",
                                v.name)
    return current, reuse_from, groups


def intact(root: SnapshotRoot, current: Manifest) -> bool:
    """Every file of the current version has the size its manifest records. Reuse hard-links those files,
    so a damaged one would pass into the new version under its old checksum; a stat per file costs nothing
    beside a load, and a damaged version makes this load rebuild every view instead."""
    try:
        check_version(root, current.version, "size")
    except ManifestError as e:
        log.warning("the current version is damaged, so this load reuses nothing from it: %s", e)
        return False
    return True


@dataclass
class GroupPlan:
    name: str
    views: list[ViewDef]                  # schema order: the order of the ViewRows in each stored value
    encode: list[ViewDef]                 # read from Parquet and encoded
    kept: list[str]                       # stored bytes cut out of the current version's group
    linked: bool                          # the whole group's online files are linked from the current version
    boundaries: list[int] | list[bytes] = field(default_factory=list)

    @property
    def definition(self) -> str:
        return group_definition_hash(self.name, self.views)


def reusable(reuse_from: Manifest | None, view: ViewDef, sources: list[FileEntry]) -> bool:
    """The view's encoding and its sources are those of the current version."""
    if reuse_from is None or view.name not in reuse_from.views:
        return False
    old = reuse_from.views[view.name]
    return old.definition == definition_hash(view) and [(s.size, s.checksum) for s in old.sources] == [
        (s.size, s.checksum) for s in sources]


def plan_groups(features: FeatureSet, sources: dict[str, list[FileEntry]],
                reuse_from: Manifest | None) -> list[GroupPlan]:
    plans = []
    for name, views in features.groups().items():
        same = [v for v in views if reusable(reuse_from, v, sources[v.name])]
        old = reuse_from.groups.get(name) if reuse_from is not None else None
        kept = [v.name for v in same if old is not None and v.name in old.views]
        linked = old is not None and len(kept) == len(views) and old.views == [v.name for v in views]
        encode = [] if linked else [v for v in views if v.name not in kept]
        plans.append(GroupPlan(name, views, encode, [] if linked else kept, linked))
    return plans


@dataclass(frozen=True)
class Sample:
    keys: pa.Array        # every stride-th key of one file
    spill_bytes: int      # in-memory bytes of the spilled rows of its first batch...
    spill_rows: int       # ...and how many rows that batch had


def sample_keys(entity: EntityDef, view: ViewDef, path: str, stride: int, measure: bool = True) -> Sample:
    """Every stride-th key of one file (reads the key column only), and (measure) the spilled size of its
    first rows: key ranges are sized by what a worker will hold in memory, not by Parquet's encoded size
    (a dictionary-encoded column is a fraction of its decoded width). Also samples a previous version's
    offline files, whose first column is the key."""
    pf = open_parquet(path, view) if measure else pq.ParquetFile(path)
    key_col = (view.entity_column or entity.name) if measure else pf.schema_arrow.names[0]
    parts = []
    try:
        for batch in pf.iter_batches(batch_size=1 << 16, columns=[key_col]):
            keys = batch.column(0)
            parts.append(keys.take(pa.array(np.arange(0, len(keys), stride))))
        head = next(pf.iter_batches(batch_size=SIZE_ROWS, columns=source_columns(entity, view)), None) \
            if measure else None
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{path}: view {view.name!r}: cannot read column {key_col!r}: {e}") from None
    t = pa.int64() if entity.key_type == "int64" else pa.string()
    return measured(entity, view, pa.concat_arrays([p.cast(t) for p in parts if len(p)]) if parts else
                    pa.array([], t), head, path)


def measured(entity: EntityDef, view: ViewDef, keys: pa.Array, head: pa.RecordBatch | None, where: str) -> Sample:
    """A sample of keys, with the spilled size of a source's first rows (`head`)."""
    if head is None or head.num_rows == 0:
        return Sample(keys, 0, 0)
    spilled = SpillRows(entity, view).of(normalize(entity, view, head, where), 0)
    return Sample(keys, spilled.nbytes, spilled.num_rows)


@dataclass(frozen=True)
class SampleJob:
    entity: EntityDef
    view: ViewDef
    path: str             # a source file, a kept view's offline file, or a late source's name (a DataFrame)
    stride: int
    measure: bool         # a source to encode: measure its spilled bytes per row too


def sample(job: SampleJob) -> Sample:
    return sample_keys(job.entity, job.view, job.path, job.stride, job.measure)


def draw_boundaries(samples: Callable[[list[SampleJob]], list[Sample]], root: SnapshotRoot,
                    reuse_from: Manifest | None, entity: EntityDef, groups: list[GroupPlan],
                    files: dict[str, list[SourceFile]], partition_bytes: int, workers: int) -> list[GroupPlan]:
    """The groups' plans with each rebuilt group's key-range boundaries, drawn from a bounded sample of its
    keys: the sources of its re-encoded views, and the offline files of the views it keeps (the same keys,
    already normalized). The range count bounds a sort worker's memory: the spilled bytes of the
    re-encoded views plus the kept views' share of the previous group's files. `samples` runs the jobs
    (on the engine's workers), results in job order."""
    planned: list[tuple[GroupPlan, list[tuple[int, SampleJob]]]] = []
    for g in groups:
        if g.linked:
            continue
        sources = [(v, f.path, f.rows, True) for v in g.encode for f in files[v.name]]
        assert reuse_from is not None or not g.kept
        for name in g.kept:
            assert reuse_from is not None
            view = reuse_from.schema.view(name)
            for f in reuse_from.files:
                if f.path.startswith(f"offline/{name}/"):
                    path = str(root.version_dir(reuse_from.version) / f.path)
                    sources.append((view, path, pq.ParquetFile(path).metadata.num_rows, False))
        stride = max(1, sum(r for _, _, r, _ in sources) // SAMPLE_TARGET)
        planned.append((g, [(r, SampleJob(entity, v, p, stride, m)) for v, p, r, m in sources]))
    done = iter(samples([job for _, jobs in planned for _, job in jobs]))
    boundaries = {}
    for g, jobs in planned:
        got = [(r, job.measure, next(done)) for r, job in jobs]
        measured = [s for _, m, s in got if m]
        row_bytes = sum(s.spill_bytes for s in measured) / max(1, sum(s.spill_rows for s in measured))
        encoded = sum(r for r, m, _ in got if m) * row_bytes
        kept = 0.0
        if g.kept and reuse_from is not None:
            old = reuse_from.groups[g.name]
            files_bytes = sum(f.size for f in reuse_from.files if f.path.startswith(f"online/{g.name}/"))
            kept = files_bytes * KEPT_BYTES_PER_FILE_BYTE * len(g.kept) / len(old.views)
        parts = max(workers, math.ceil((encoded + kept) / partition_bytes))
        key_type = pa.int64() if entity.key_type == "int64" else pa.string()
        keys = pa.concat_arrays([s.keys for _, _, s in got]) if got else pa.array([], key_type)
        boundaries[g.name] = Partitioner.from_sample(keys, parts).boundaries
    return [replace(g, boundaries=boundaries[g.name]) if g.name in boundaries else g for g in groups]


def range_bounds(boundaries: list[int] | list[bytes], is_int: bool) -> list[tuple[bytes | None, bytes | None]]:
    """(lower, upper) encoded keys of each key range: lower <= key < upper."""
    enc = [int(b).to_bytes(8, "big") if is_int else bytes(b) for b in boundaries]  # type: ignore[arg-type]
    cuts: list[bytes | None] = [None, *enc, None]
    return list(zip(cuts[:-1], cuts[1:], strict=True))
