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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from quiver.loader.errors import DefinitionError, SourceError
from quiver.loader.normalize import normalize
from quiver.loader.partition import Partitioner
from quiver.loader.sources import SourceFile, open_parquet
from quiver.loader.spill import SpillRows, source_columns
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


def version_id(features: FeatureSet, sources: dict[str, list[FileEntry]], as_of: datetime) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "schema": features.to_json(), "as_of": utc_text(as_of),
                         "sources": {v: [(s.size, s.checksum) for s in ss] for v, ss in sources.items()}},
                        sort_keys=True).encode())
    return f"{as_of.astimezone(UTC):%Y%m%dT%H%M%SZ}-{h.hexdigest()[:12]}"


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
    prev = current if reuse and current is not None and intact(root, current) else None
    return current, prev, plan_groups(features, sources, prev)


def intact(root: SnapshotRoot, current: Manifest) -> bool:
    """Every file of the current version has the size its manifest records. Reuse hard-links those files,
    so a damaged one would pass into the new version under its old checksum; a stat per file costs nothing
    beside a load, and a damaged version makes this load rebuild every view instead."""
    vdir = root.version_dir(current.version)
    damaged = []
    for f in current.files:
        try:
            size = (vdir / f.path).stat().st_size
        except OSError:
            size = -1
        if size != f.size:
            damaged.append(f"{f.path} ({'missing' if size < 0 else f'{size} bytes'}, manifest: {f.size})")
    if damaged:
        more = f"; and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        log.warning("the current version %s is damaged, so this load reuses nothing from it: %s%s",
                    current.version, "; ".join(damaged[:5]), more)
    return not damaged


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


def reusable(prev: Manifest | None, view: ViewDef, sources: list[FileEntry]) -> bool:
    """The view's encoding and its sources are those of the current version."""
    if prev is None or view.name not in prev.views:
        return False
    old = prev.views[view.name]
    return old.definition == definition_hash(view) and [(s.size, s.checksum) for s in old.sources] == [
        (s.size, s.checksum) for s in sources]


def plan_groups(features: FeatureSet, sources: dict[str, list[FileEntry]], prev: Manifest | None) -> list[GroupPlan]:
    plans = []
    for name, views in features.groups().items():
        same = [v for v in views if reusable(prev, v, sources[v.name])]
        old = prev.groups.get(name) if prev is not None else None
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
    sample = pa.concat_arrays([p.cast(t) for p in parts if len(p)]) if parts else pa.array([], t)
    if head is None or head.num_rows == 0:
        return Sample(sample, 0, 0)
    batch = normalize(entity, view, head, path)
    spilled = SpillRows(entity, view).of(batch, 0)
    return Sample(sample, spilled.nbytes, spilled.num_rows)


def draw_boundaries(pool: ProcessPoolExecutor, root: SnapshotRoot, prev: Manifest | None, entity: EntityDef,
                    groups: list[GroupPlan], files: dict[str, list[SourceFile]], partition_bytes: int,
                    workers: int) -> None:
    """Sets each rebuilt group's key-range boundaries from a bounded sample of its keys: the sources of
    its re-encoded views, and the offline files of the views it keeps (the same keys, already normalized).
    The range count bounds a sort worker's memory: the spilled bytes of the re-encoded views plus the
    kept views' share of the previous group's files."""
    jobs = []
    for g in groups:
        if g.linked:
            continue
        sources = [(v, f.path, f.rows, True) for v in g.encode for f in files[v.name]]
        assert prev is not None or not g.kept
        for name in g.kept:
            assert prev is not None
            view = prev.schema.view(name)
            for f in prev.files:
                if f.path.startswith(f"offline/{name}/"):
                    path = str(root.version_dir(prev.version) / f.path)
                    sources.append((view, path, pq.ParquetFile(path).metadata.num_rows, False))
        rows = sum(r for _, _, r, _ in sources)
        stride = max(1, rows // SAMPLE_TARGET)
        jobs.append((g, [(r, m, pool.submit(sample_keys, entity, v, p, stride, m)) for v, p, r, m in sources]))
    for g, sampled in jobs:
        done = [(r, m, j.result()) for r, m, j in sampled]
        measured = [s for _, m, s in done if m]
        row_bytes = sum(s.spill_bytes for s in measured) / max(1, sum(s.spill_rows for s in measured))
        encoded = sum(r for r, m, _ in done if m) * row_bytes
        kept = 0.0
        if g.kept and prev is not None:
            old = prev.groups[g.name]
            files_bytes = sum(f.size for f in prev.files if f.path.startswith(f"online/{g.name}/"))
            kept = files_bytes * KEPT_BYTES_PER_FILE_BYTE * len(g.kept) / len(old.views)
        parts = max(workers, math.ceil((encoded + kept) / partition_bytes))
        key_type = pa.int64() if entity.key_type == "int64" else pa.string()
        keys = pa.concat_arrays([s.keys for _, _, s in done]) if done else pa.array([], key_type)
        g.boundaries = Partitioner.from_sample(keys, parts).boundaries


def range_bounds(boundaries: list[int] | list[bytes], is_int: bool) -> list[tuple[bytes | None, bytes | None]]:
    """(lower, upper) encoded keys of each key range: lower <= key < upper."""
    enc = [int(b).to_bytes(8, "big") if is_int else bytes(b) for b in boundaries]  # type: ignore[arg-type]
    cuts: list[bytes | None] = [None, *enc, None]
    return list(zip(cuts[:-1], cuts[1:], strict=True))
