"""loader/plan.py, a load's plan: what it takes from the current version (links a whole group, keeps a view's
stored bytes, or re-encodes it), the checks against the current version (type changes, regrouping), intact(),
the version id, and the key ranges a rebuilt group is cut into.

The current version is written by hand into a real SnapshotRoot in tmp_path (a manifest.json and files of the
sizes it lists), so no load runs here; tests/e2e/test_loader.py and test_evolution.py run real loads."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver.loader.errors import DefinitionError, SourceError
from quiver.loader.partition import Partitioner
from quiver.loader.plan import (
    KEPT_BYTES_PER_FILE_BYTE,
    GroupPlan,
    Sample,
    SampleJob,
    definition_hash,
    draw_boundaries,
    group_definition_hash,
    intact,
    plan_against_current,
    plan_groups,
    range_bounds,
    sample,
    sample_keys,
    version_id,
)
from quiver.loader.sources import SourceFile
from quiver.snapshot import FeatureSet, FileEntry, GroupStats, Manifest, SnapshotRoot
from quiver.snapshot.layout import VERSION_ID
from quiver.snapshot.manifest import ViewStats

V1 = "20260101T000000Z-aaaaaaaaaaaa"
SIGN = 1 << 63


def view(name: str, group: str = "default", features: list[dict[str, Any]] | None = None,
         **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": f"{name}.parquet", "group": group,
            "features": features or [{"name": "x", "type": "float64"}], **extra}


def feature_set(*views: dict[str, Any]) -> FeatureSet:
    return FeatureSet.from_json({"entity": {"name": "user_id", "key_type": "int64"}, "views": list(views)})


def src(tag: str, size: int = 100) -> list[FileEntry]:
    return [FileEntry(f"/data/{tag}.parquet", size, f"sha256:{tag}")]


def previous(features: FeatureSet, sources: dict[str, list[FileEntry]], files: list[FileEntry] | None = None,
             version: str = V1) -> Manifest:
    """A current version's manifest as the loader records it: each view's definition and sources, each
    group's views in schema order."""
    views = {v.name: ViewStats(10, sources[v.name], definition_hash(v)) for v in features.views}
    groups = {g: GroupStats([v.name for v in vs], 10, group_definition_hash(g, vs))
              for g, vs in features.groups().items()}
    return Manifest(version, "2026-01-01T00:00:01Z", "2026-01-01T00:00:00Z", features, views, groups, files or [])


def summary(plans: list[GroupPlan]) -> dict[str, tuple[list[str], list[str], bool]]:
    """group -> (views re-encoded, views whose stored bytes are kept, linked whole)."""
    return {p.name: ([v.name for v in p.encode], p.kept, p.linked) for p in plans}


# ---------------------------------------------------------------------------------------------------------
# plan_groups: reuse
# ---------------------------------------------------------------------------------------------------------

OLD = feature_set(view("a"), view("b"), view("c", group="other"))
OLD_SOURCES = {"a": src("a"), "b": src("b"), "c": src("c")}


def test_without_a_current_version_everything_is_encoded() -> None:
    plans = plan_groups(OLD, OLD_SOURCES, None)
    assert summary(plans) == {"default": (["a", "b"], [], False), "other": (["c"], [], False)}
    assert [[v.name for v in p.views] for p in plans] == [["a", "b"], ["c"]]


def test_unchanged_groups_are_linked_whole() -> None:
    assert summary(plan_groups(OLD, OLD_SOURCES, previous(OLD, OLD_SOURCES))) == {
        "default": ([], [], True), "other": ([], [], True)}


@pytest.mark.parametrize("changed", [src("a-new"), [FileEntry("/data/a.parquet", 101, "sha256:a")],
                                     src("a") + src("a-more")],
                         ids=["checksum", "size-only", "file-added"])
def test_a_changed_source_re_encodes_its_view_and_keeps_the_rest_of_its_group(changed: list[FileEntry]) -> None:
    sources = {**OLD_SOURCES, "a": changed}
    assert summary(plan_groups(OLD, sources, previous(OLD, OLD_SOURCES))) == {
        "default": (["a"], ["b"], False), "other": ([], [], True)}


@pytest.mark.parametrize("new_a", [
    view("a", features=[{"name": "x", "type": "float32"}]),
    view("a", features=[{"name": "x", "type": "float64", "default": 0.0}]),
    view("a", features=[{"name": "x", "type": "float64", "source_column": "x2"}]),
    view("a", features=[{"name": "x", "type": "float64"}, {"name": "y", "type": "int64"}]),
    view("a", event_timestamp="ts"),
    view("a", entity_column="uid"),
], ids=["type", "default", "source-column", "feature-added", "event-timestamp", "entity-column"])
def test_a_changed_definition_re_encodes_its_view(new_a: dict[str, Any]) -> None:
    new = feature_set(new_a, view("b"), view("c", group="other"))
    assert summary(plan_groups(new, OLD_SOURCES, previous(OLD, OLD_SOURCES))) == {
        "default": (["a"], ["b"], False), "other": ([], [], True)}


def test_checks_and_the_source_path_are_not_part_of_a_views_definition() -> None:
    """Neither changes the stored bytes: the group stays linked."""
    new = feature_set(view("a", checks={"min_rows": 5}) | {"source": "elsewhere/*.parquet"}, view("b"),
                      view("c", group="other"))
    assert summary(plan_groups(new, OLD_SOURCES, previous(OLD, OLD_SOURCES)))["default"] == ([], [], True)


def test_a_view_added_to_a_group_rebuilds_it_from_the_kept_views_and_the_new_one() -> None:
    new = feature_set(view("a"), view("n"), view("b"), view("c", group="other"))
    sources = {**OLD_SOURCES, "n": src("n")}
    assert summary(plan_groups(new, sources, previous(OLD, OLD_SOURCES))) == {
        "default": (["n"], ["a", "b"], False), "other": ([], [], True)}


def test_a_view_removed_from_a_group_rebuilds_it_from_the_rest() -> None:
    new = feature_set(view("b"), view("c", group="other"))
    assert summary(plan_groups(new, OLD_SOURCES, previous(OLD, OLD_SOURCES))) == {
        "default": ([], ["b"], False), "other": ([], [], True)}


def test_reordered_views_rebuild_the_group_from_kept_bytes() -> None:
    """The order of the ViewRows in a stored value is the schema order: the old files cannot be linked."""
    new = feature_set(view("b"), view("a"), view("c", group="other"))
    plans = plan_groups(new, OLD_SOURCES, previous(OLD, OLD_SOURCES))
    assert summary(plans)["default"] == ([], ["b", "a"], False)


def test_a_view_moved_to_another_group_is_encoded_there_and_never_kept_from_its_old_group() -> None:
    new = feature_set(view("a"), view("b", group="other"), view("c", group="other"))
    assert summary(plan_groups(new, OLD_SOURCES, previous(OLD, OLD_SOURCES))) == {
        "default": ([], ["a"], False), "other": (["b"], ["c"], False)}


def test_a_new_group_is_encoded() -> None:
    new = feature_set(view("a"), view("b"), view("c", group="other"), view("d", group="fresh"))
    sources = {**OLD_SOURCES, "d": src("d")}
    assert summary(plan_groups(new, sources, previous(OLD, OLD_SOURCES))) == {
        "default": ([], [], True), "other": ([], [], True), "fresh": (["d"], [], False)}


def test_group_definition_hash_follows_the_views_their_order_and_the_group_name() -> None:
    a, b = OLD.view("a"), OLD.view("b")
    base = group_definition_hash("default", [a, b])
    assert base == group_definition_hash("default", [a, b])
    assert base != group_definition_hash("default", [b, a])
    assert base != group_definition_hash("other", [a, b])
    assert base != group_definition_hash("default", [a])
    a32 = feature_set(view("a", features=[{"name": "x", "type": "float32"}])).view("a")
    assert base != group_definition_hash("default", [a32, b])


# ---------------------------------------------------------------------------------------------------------
# plan_against_current: the checks against the current version, intact()
# ---------------------------------------------------------------------------------------------------------

ONLINE = FileEntry("online/default/000007.sst", 120, "sha256:s")
OFFLINE = FileEntry("offline/a/part-00000.parquet", 80, "sha256:p")


def publish(root: SnapshotRoot, m: Manifest) -> None:
    """The version's files, each of the size its manifest lists, then the manifest and CURRENT."""
    vdir = root.version_dir(m.version)
    for f in m.files:
        (vdir / f.path).parent.mkdir(parents=True, exist_ok=True)
        (vdir / f.path).write_bytes(b"x" * f.size)
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "manifest.json").write_bytes(m.dumps())
    root.set_current(m.version)


@pytest.fixture
def root(tmp_path: Path) -> SnapshotRoot:
    r = SnapshotRoot(tmp_path / "root")
    r.ensure()
    return r


def test_no_current_version_plans_a_full_build(root: SnapshotRoot) -> None:
    current, prev, plans = plan_against_current(root, OLD, OLD_SOURCES, True, False, False)
    assert current is None and prev is None
    assert summary(plans)["default"] == (["a", "b"], [], False)


def test_an_intact_current_version_is_reused(root: SnapshotRoot) -> None:
    publish(root, previous(OLD, OLD_SOURCES, [ONLINE, OFFLINE]))
    current, prev, plans = plan_against_current(root, OLD, OLD_SOURCES, True, False, False)
    assert current is not None and prev is not None and current.version == prev.version == V1
    assert summary(plans)["default"] == ([], [], True)


def test_reuse_off_rebuilds_everything_but_still_checks_against_current(root: SnapshotRoot) -> None:
    publish(root, previous(OLD, OLD_SOURCES, [ONLINE]))
    current, prev, plans = plan_against_current(root, OLD, OLD_SOURCES, False, False, False)
    assert current is not None and current.version == V1 and prev is None
    assert summary(plans)["default"] == (["a", "b"], [], False)
    changed = feature_set(view("a", features=[{"name": "x", "type": "int64"}]), view("b"), view("c", group="other"))
    with pytest.raises(DefinitionError, match="type changes"):
        plan_against_current(root, changed, OLD_SOURCES, False, False, False)


@pytest.mark.parametrize("damage", ["missing", "resized"])
def test_a_damaged_current_version_reuses_nothing(root: SnapshotRoot, caplog: pytest.LogCaptureFixture,
                                                  damage: str) -> None:
    """Reuse hard-links the current version's files: a damaged one must not pass into the new version."""
    publish(root, previous(OLD, OLD_SOURCES, [ONLINE, OFFLINE]))
    path = root.version_dir(V1) / OFFLINE.path
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"x" * (OFFLINE.size - 1))
    with caplog.at_level(logging.WARNING, logger="quiver.loader"):
        current, prev, plans = plan_against_current(root, OLD, OLD_SOURCES, True, False, False)
    assert current is not None and current.version == V1 and prev is None
    assert summary(plans) == {"default": (["a", "b"], [], False), "other": (["c"], [], False)}
    said = "missing" if damage == "missing" else f"{OFFLINE.size - 1} bytes, manifest says {OFFLINE.size}"
    assert f"{OFFLINE.path}: {said}" in caplog.text and V1 in caplog.text


def test_intact_names_at_most_five_damaged_files(root: SnapshotRoot, caplog: pytest.LogCaptureFixture) -> None:
    files = [FileEntry(f"online/default/{i:06d}.sst", 10 + i, f"sha256:{i}") for i in range(8)]
    m = previous(OLD, OLD_SOURCES, files)
    publish(root, m)
    assert intact(root, m)
    assert intact(root, previous(OLD, OLD_SOURCES, []))   # nothing listed, nothing damaged
    for f in files[:7]:
        (root.version_dir(V1) / f.path).unlink()
    with caplog.at_level(logging.WARNING, logger="quiver.loader"):
        assert not intact(root, m)
    assert "; and 2 more" in caplog.text
    assert files[4].path in caplog.text and files[5].path not in caplog.text


def test_an_unreadable_current_manifest_reuses_nothing_and_checks_nothing(root: SnapshotRoot) -> None:
    publish(root, previous(OLD, OLD_SOURCES, [ONLINE]))
    root.manifest_path(V1).write_text("{not json")
    changed = feature_set(view("a", features=[{"name": "x", "type": "int64"}]), view("b"), view("c", group="other"))
    current, prev, plans = plan_against_current(root, changed, OLD_SOURCES, True, False, False)
    assert current is None and prev is None
    assert summary(plans)["default"] == (["a", "b"], [], False)


@pytest.mark.parametrize("old_f,new_f,was,now", [
    ({"name": "x", "type": "int32"}, {"name": "x", "type": "int64"}, "int32", "int64"),
    ({"name": "x", "type": "list<float32>", "length": 4}, {"name": "x", "type": "list<float32>", "length": 8},
     "list<float32>[4]", "list<float32>[8]"),
])
def test_a_type_change_is_refused_unless_allowed(root: SnapshotRoot, old_f: dict[str, Any], new_f: dict[str, Any],
                                                  was: str, now: str) -> None:
    old = feature_set(view("a", features=[old_f]), view("b"))
    publish(root, previous(old, {"a": src("a"), "b": src("b")}))
    new = feature_set(view("a", features=[new_f]), view("b"))
    with pytest.raises(DefinitionError) as e:
        plan_against_current(root, new, {"a": src("a"), "b": src("b")}, True, False, False)
    assert f"view 'a', feature 'x': type changes from {was} (version {V1}) to {now}" in str(e.value)
    assert "--allow-type-change" in str(e.value)
    current, prev, plans = plan_against_current(root, new, {"a": src("a"), "b": src("b")}, True, True, False)
    assert summary(plans)["default"] == (["a"], ["b"], False)


def test_new_removed_and_renamed_features_and_views_are_no_type_change(root: SnapshotRoot) -> None:
    publish(root, previous(OLD, OLD_SOURCES))
    new = feature_set(view("a", features=[{"name": "y", "type": "string"}]),            # x gone, y new
                      view("c", group="other", features=[{"name": "x", "type": "float64"},
                                                         {"name": "z", "type": "bool"}]),
                      view("d", features=[{"name": "x", "type": "int32"}]))             # b gone, d new
    sources = {"a": src("a"), "c": src("c"), "d": src("d")}
    plan_against_current(root, new, sources, True, False, False)   # no DefinitionError


def test_moving_a_view_to_another_group_is_refused_unless_allowed(root: SnapshotRoot) -> None:
    publish(root, previous(OLD, OLD_SOURCES))
    moved = feature_set(view("a"), view("b", group="other"), view("c", group="other"))
    with pytest.raises(DefinitionError) as e:
        plan_against_current(root, moved, OLD_SOURCES, True, False, False)
    assert f"view 'b': group changes from 'default' (version {V1}) to 'other'" in str(e.value)
    assert "--allow-regroup" in str(e.value)
    _, _, plans = plan_against_current(root, moved, OLD_SOURCES, True, False, True)
    assert summary(plans) == {"default": ([], ["a"], False), "other": (["b"], ["c"], False)}


# ---------------------------------------------------------------------------------------------------------
# version ids
# ---------------------------------------------------------------------------------------------------------

def test_version_id_is_the_utc_as_of_time_and_a_hash_of_schema_sources_and_as_of() -> None:
    as_of = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    vid = version_id(OLD, OLD_SOURCES, as_of)
    assert VERSION_ID.match(vid) and vid.startswith("20260304T050607Z-")
    # the same instant in another zone is the same version
    assert version_id(OLD, OLD_SOURCES, as_of.astimezone(timezone(timedelta(hours=-5)))) == vid
    hashes = [version_id(OLD, {**OLD_SOURCES, "a": src("a2")}, as_of)[-12:],
              version_id(OLD, {**OLD_SOURCES, "a": [FileEntry("/data/a.parquet", 101, "sha256:a")]}, as_of)[-12:],
              version_id(feature_set(view("a"), view("b"), view("c")), OLD_SOURCES, as_of)[-12:],  # c regrouped
              version_id(OLD, OLD_SOURCES, as_of + timedelta(seconds=1))[-12:]]
    assert vid[-12:] not in hashes and len(set(hashes)) == 4
    # where a source lives does not matter, only its content (size and checksum)
    moved = {**OLD_SOURCES, "a": [FileEntry("/elsewhere/a.parquet", 100, "sha256:a")]}
    assert version_id(OLD, moved, as_of) == vid


# ---------------------------------------------------------------------------------------------------------
# key ranges
# ---------------------------------------------------------------------------------------------------------

def int_key(k: int) -> bytes:
    """FORMAT.md: 8 bytes big-endian of id XOR 0x8000000000000000."""
    return ((k ^ SIGN) & (2**64 - 1)).to_bytes(8, "big")


def test_range_bounds_cover_the_key_space_and_agree_with_the_partitioner() -> None:
    keys = [-(2**63), -5, -1, 0, 1, 7, 99, 100, 2**63 - 1]
    part = Partitioner.from_sample(pa.array(keys, pa.int64()), 4)
    bounds = range_bounds(part.boundaries, True)
    assert len(bounds) == part.count and bounds[0][0] is None and bounds[-1][1] is None
    assert all(hi == lo for (_, hi), (lo, _) in zip(bounds, bounds[1:], strict=False))
    assigned = part.assign(pa.array(keys, pa.int64()))
    for k, p in zip(keys, assigned, strict=True):
        lo, hi = bounds[p]
        assert (lo is None or lo <= int_key(k)) and (hi is None or int_key(k) < hi), (k, p, bounds)
    assert range_bounds([], True) == [(None, None)]
    assert range_bounds([b"b", b"m"], False) == [(None, b"b"), (b"b", b"m"), (b"m", None)]


def write_keys(path: Path, keys: list[int], name: str = "user_id", **columns: pa.Array) -> SourceFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({name: pa.array(keys, pa.int64()), **columns}), path, row_group_size=250)
    md = pq.ParquetFile(path).metadata
    return SourceFile(str(path), path.stat().st_size, md.num_rows, md.num_row_groups)


def decode(boundary: int) -> int:
    """A boundary is in the order of the encoded keys (uint64 of the flipped sign bit): back to the id."""
    return (boundary ^ SIGN) - (1 << 64) if (boundary ^ SIGN) >= SIGN else boundary ^ SIGN


def test_sample_keys_of_an_offline_file_reads_its_first_column_every_stride(tmp_path: Path) -> None:
    f = write_keys(tmp_path / "offline.parquet", list(range(1000, 2000)), name="anything", x=pa.array([1.0] * 1000))
    sample = sample_keys(OLD.entity, OLD.view("a"), f.path, stride=7, measure=False)
    assert sample.keys.to_pylist() == list(range(1000, 2000, 7))
    assert (sample.spill_bytes, sample.spill_rows) == (0, 0)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match="bad.parquet"):
        sample_keys(OLD.entity, OLD.view("a"), str(tmp_path / "bad.parquet"), stride=1)


def test_draw_boundaries_samples_encoded_sources_and_kept_views_and_sizes_ranges(root: SnapshotRoot,
                                                                                  tmp_path: Path) -> None:
    """Group `default` re-encodes `a` (keys 0..999): as many ranges as workers when memory allows. Group
    `other` keeps `c` and drops `d`: its keys are sampled from the current version's offline files of `c`
    (5000..5999), and its range count comes from the kept share of its online files."""
    old = feature_set(view("a"), view("c", group="other"), view("d", group="other"), view("e", group="third"))
    sources = {"a": src("a"), "c": src("c"), "d": src("d"), "e": src("e")}
    online_bytes = 4000
    files = [FileEntry("online/other/000001.sst", online_bytes, "sha256:o"),
             FileEntry("offline/c/part-00000.parquet", 1, "sha256:c")]
    prev = previous(old, sources, files)
    write_keys(root.version_dir(V1) / "offline" / "c" / "part-00000.parquet", list(range(5000, 6000)))
    new = feature_set(view("a"), view("c", group="other"), view("e", group="third"))
    plans = plan_groups(new, {**sources, "a": src("a-new")}, prev)
    assert summary(plans) == {"default": (["a"], [], False), "other": ([], ["c"], False),
                              "third": ([], [], True)}
    a_file = write_keys(tmp_path / "a.parquet", list(range(999, -1, -1)), x=pa.array([0.5] * 1000))
    partition_bytes = 1000
    with ThreadPoolExecutor(2) as pool:
        def samples(jobs: list[SampleJob]) -> list[Sample]:
            return list(pool.map(sample, jobs))

        drawn = draw_boundaries(samples, root, prev, new.entity, plans, {"a": [a_file]}, 1 << 40, 3)
        assert [p.boundaries for p in plans] == [[], [], []], "the plans given are not changed"
        by_name = {p.name: p for p in drawn}
        assert by_name["third"].boundaries == []          # linked: never cut
        a_cuts = [decode(b) for b in by_name["default"].boundaries]
        assert len(a_cuts) == 2 and a_cuts == sorted(a_cuts) and all(0 < c < 1000 for c in a_cuts)
        sizes = [a_cuts[0], a_cuts[1] - a_cuts[0], 1000 - a_cuts[1]]
        assert all(300 <= s <= 370 for s in sizes), sizes   # even thirds of the keys
        c_cuts = [decode(b) for b in by_name["other"].boundaries]
        assert len(c_cuts) == 2 and all(5000 < c < 6000 for c in c_cuts)

        by_name = {p.name: p for p in draw_boundaries(samples, root, prev, new.entity, plans, {"a": [a_file]},
                                                      partition_bytes, 1)}
    # the kept view's share (1 of the group's 2 old views) of the online bytes, per partition_bytes
    kept = online_bytes * KEPT_BYTES_PER_FILE_BYTE / 2
    assert len(by_name["other"].boundaries) == -(-int(kept) // partition_bytes) - 1
    assert all(5000 < decode(b) < 6000 for b in by_name["other"].boundaries)
    # the re-encoded view's measured bytes: far more than one range of 1000 bytes for 1000 rows
    assert len(by_name["default"].boundaries) > 10
