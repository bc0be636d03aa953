"""quiver/training.py in-process: training_frame and as_of_join over small roots written here in the
format training reads (snapshot/FORMAT.md: each version's manifest.json and its offline Parquet, one file
per part), so no load and no server run. The expectations are literal tables in this file.

tests/e2e/test_training.py checks the same reads against roots built by `quiver load` (the offline form the
loader really writes); this file covers the join rules, the version choice and the errors in milliseconds."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver.snapshot import FeatureSet, FileEntry, GroupStats, Manifest, SnapshotRoot
from quiver.snapshot.manifest import ViewStats
from quiver.training import TrainingDataError, as_of_join, training_frame

TS = pa.timestamp("us", tz="UTC")


def T(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def add_version(root: Path, vid: str, as_of: str, created: str, views: list[dict[str, Any]],
                rows: dict[str, list[pa.Table]], key_type: str = "int64", entity: str = "user_id") -> None:
    """One published version: its offline Parquet (each table one part file, as given) and a manifest listing
    them. `rows[view]` holds the normalized columns: the key, the event timestamp if any, the features."""
    schema = FeatureSet.from_json({"entity": {"name": entity, "key_type": key_type}, "views": views})
    vdir = SnapshotRoot(root).version_dir(vid)
    files, stats = [], {}
    for v in schema.views:
        parts = rows.get(v.name, [])
        for i, t in enumerate(parts):
            path = vdir / "offline" / v.name / f"part-{i:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(t, path)
            data = path.read_bytes()
            files.append(FileEntry(path.relative_to(vdir).as_posix(), len(data),
                                   "sha256:" + hashlib.sha256(data).hexdigest()))
        stats[v.name] = ViewStats(sum(t.num_rows for t in parts), [], "sha256:d")
    groups = {"default": GroupStats(schema.view_names, 0, "sha256:g")}
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "manifest.json").write_bytes(Manifest(vid, created, as_of, schema, stats, groups, files).dumps())


# ---------------------------------------------------------------------------------------------------------
# as_of_join over a timeline: three versions of `stats` (no event timestamp) and `profile` (one, and some of
# its rows are stamped after their version's as-of time)
# ---------------------------------------------------------------------------------------------------------

VIEWS = [{"name": "stats", "source": "s", "features": [{"name": "n", "type": "int64"}]},
         {"name": "profile", "source": "p", "event_timestamp": "updated_at",
          "features": [{"name": "tier", "type": "string"}]}]
TIMELINE: list[dict[str, Any]] = [
    {"id": "20260101T000000Z-aaaaaaaaaaaa", "as_of": "2026-01-01T00:00:00",
     "stats": {1: 10, 2: 20, 3: 30},
     "profile": {1: ("2025-12-31T00:00:00", "a1"), 2: ("2026-01-05T00:00:00", "a2")}},
    {"id": "20260102T000000Z-bbbbbbbbbbbb", "as_of": "2026-01-02T00:00:00",
     "stats": {1: 11, 2: 21, 4: 41},
     "profile": {1: ("2026-01-01T12:00:00", "b1"), 2: ("2025-12-20T00:00:00", "b2"), 5: ("2026-01-09T00:00:00", "b5")}},
    {"id": "20260103T000000Z-cccccccccccc", "as_of": "2026-01-03T00:00:00",
     "stats": {1: 12, 2: 22, 3: 32, 4: 42},
     "profile": {1: ("2026-01-03T12:00:00", "c1"), 2: ("2026-01-02T00:00:00", "c2"), 5: ("2026-01-08T00:00:00", "c5")}},
]


def stats_table(values: dict[int, int], key: str = "user_id") -> pa.Table:
    return pa.table({key: pa.array(list(values), pa.int64()), "n": pa.array(list(values.values()), pa.int64())})


def profile_table(values: dict[int, tuple[str, str]]) -> pa.Table:
    return pa.table({"user_id": pa.array(list(values), pa.int64()),
                     "updated_at": pa.array([T(ts) for ts, _ in values.values()], TS),
                     "tier": pa.array([tier for _, tier in values.values()], pa.string())})


@pytest.fixture
def timeline(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for v in TIMELINE:
        # stats in two part files (keys split), to read every file a view lists
        keys = list(v["stats"])
        halves = [{k: v["stats"][k] for k in keys[:1]}, {k: v["stats"][k] for k in keys[1:]}]
        add_version(root, v["id"], v["as_of"] + "Z", v["as_of"] + "Z", VIEWS,
                    {"stats": [stats_table(h) for h in halves], "profile": [profile_table(v["profile"])]})
    (root / "CURRENT").write_text(TIMELINE[-1]["id"] + "\n")
    return root


def labels(rows: list[tuple[int | None, str | None]]) -> pa.Table:
    return pa.table({"label": pa.array(range(len(rows)), pa.int64()),
                     "uid": pa.array([u for u, _ in rows], pa.int64()),
                     "event_time": pa.array([None if t is None else datetime.fromisoformat(t) for _, t in rows],
                                            pa.timestamp("ns"))})


CASES = [  # (uid, label time, naive = UTC) -> (stats.n, profile.tier)
    ((1, "2025-12-31T23:59:59"), (None, None)),            # before every version
    ((1, "2026-01-01T00:00:00"), (10, "a1")),              # exactly A's as-of time: A
    ((1, "2026-01-01T23:59:59.999999"), (10, "a1")),       # the last microsecond before B
    ((1, "2026-01-02T00:00:00"), (11, "b1")),
    ((3, "2026-01-02T10:00:00"), (None, None)),            # B has no user 3: null, never A's older 30
    ((4, "2026-01-01T10:00:00"), (None, None)),            # A has no user 4: never B's later 41
    ((2, "2026-01-01T10:00:00"), (20, None)),              # A's profile row is stamped later, nothing older
    ((2, "2026-01-02T00:00:00"), (21, "b2")),
    ((1, "2026-01-03T00:00:00"), (12, "b1")),              # C's row is stamped later: B's row
    ((1, "2026-01-03T12:00:00"), (12, "c1")),              # C's row stamped exactly at the label time: used
    ((1, "2026-01-04T00:00:00"), (12, "c1")),
    ((5, "2026-01-08T12:00:00"), (None, "c5")),            # C's row stamped before the label
    ((5, "2026-01-07T00:00:00"), (None, None)),            # C's and B's rows both later; A has no user 5
    ((2, "2030-01-01T00:00:00"), (22, "c2")),              # after every version: the newest
    ((None, "2026-01-04T00:00:00"), (None, None)),         # null id
    ((1, None), (None, None)),                             # null time
]


def test_as_of_join_uses_the_newest_version_at_or_before_each_label_and_never_a_later_row(timeline: Path) -> None:
    order = list(range(len(CASES)))
    random.Random(3).shuffle(order)
    table = labels([CASES[i][0] for i in order])
    out = as_of_join(table, timeline, entity_column="uid", time_column="event_time")
    assert out.column_names == ["label", "uid", "event_time", "stats__n", "profile__updated_at", "profile__tier"]
    assert out.select(["label", "uid", "event_time"]).equals(table)    # labels kept, in their order
    got = list(zip(out.column("stats__n").to_pylist(), out.column("profile__tier").to_pylist(), strict=True))
    assert got == [CASES[i][1] for i in order]
    for (_, t), stamp in zip([CASES[i][0] for i in order], out.column("profile__updated_at").to_pylist(),
                             strict=True):
        assert stamp is None or (t is not None and stamp <= T(t))
    assert out.schema.field("stats__n").type == pa.int64() and out.schema.field("profile__updated_at").type == TS


def test_as_of_join_matches_the_rule_on_random_labels(timeline: Path) -> None:
    """The rule of as_of_join's docstring applied by hand to TIMELINE."""
    rng = random.Random(11)
    start = T("2025-12-30T00:00:00")
    rows = [(rng.choice([1, 2, 3, 4, 5, 6]),
             (start + timedelta(minutes=rng.randrange(0, 12 * 24 * 60))).replace(tzinfo=None).isoformat())
            for _ in range(200)]
    out = as_of_join(labels(rows), timeline, entity_column="uid", time_column="event_time")
    found = 0
    for (uid, t), n, tier in zip(rows, out.column("stats__n").to_pylist(), out.column("profile__tier").to_pylist(),
                                 strict=True):
        usable = [v for v in TIMELINE if T(v["as_of"]) <= T(t)]
        want_n = usable[-1]["stats"].get(uid) if usable else None
        want_tier = None
        for v in reversed(usable):
            row = v["profile"].get(uid)
            if row is None:
                break
            if T(row[0]) <= T(t):
                want_tier = row[1]
                break
        assert (n, tier) == (want_n, want_tier), (uid, t)
        found += want_tier is not None
    assert found > 30


def test_label_times_in_any_unit_or_zone_are_instants_and_never_rounded_up(timeline: Path) -> None:
    b = int(T(TIMELINE[1]["as_of"]).timestamp())
    ns = pa.array([b * 10**9 - 1, b * 10**9 + 999], pa.timestamp("ns", tz="UTC"))
    out = as_of_join(pa.table({"uid": [1, 1], "t": ns}), timeline, entity_column="uid", time_column="t",
                     views=["stats"])
    assert out.column("stats__n").to_pylist() == [10, 11]   # a nanosecond before B is not B
    zoned = pa.array([b - 1, b], pa.timestamp("s", tz="+05:00"))   # the same instants, written in another zone
    out = as_of_join(pa.table({"uid": [1, 1], "t": zoned}), timeline, entity_column="uid", time_column="t",
                     views=["stats"])
    assert out.column("stats__n").to_pylist() == [10, 11]
    days = pa.array([date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)], pa.date32())   # midnight UTC
    out = as_of_join(pa.table({"uid": [2, 2, 2], "t": days}), timeline, entity_column="uid", time_column="t",
                     views=["stats"])
    assert out.column("stats__n").to_pylist() == [20, 21, 22]


def test_as_of_join_takes_views_other_label_types_and_file_uris(timeline: Path) -> None:
    table = pa.table({"uid": pa.array([2, 1], pa.int32()),           # castable to the int64 key
                      "t": pa.array([T("2026-01-02T00:00:00")] * 2, TS)})
    out = as_of_join(table.to_pandas(), f"file://{timeline}", entity_column="uid", time_column="t", views=["stats"])
    assert out.column_names == ["uid", "t", "stats__n"] and out.column("stats__n").to_pylist() == [21, 11]


def test_as_of_join_rejects_labels_and_views_it_cannot_use(timeline: Path, tmp_path: Path) -> None:
    good = labels([(1, "2026-01-02T00:00:00")])
    with pytest.raises(TrainingDataError, match="labels have no column 'when'"):
        as_of_join(good, timeline, entity_column="uid", time_column="when")
    with pytest.raises(TrainingDataError, match="no view"):
        as_of_join(good, timeline, entity_column="uid", time_column="event_time", views=["nope"])
    words = pa.table({"uid": ["one"], "t": pa.array([T("2026-01-02T00:00:00")], TS)})
    with pytest.raises(TrainingDataError, match="labels column 'uid': not usable as int64 entity ids"):
        as_of_join(words, timeline, entity_column="uid", time_column="t")
    flags = pa.table({"uid": [1], "t": [True]})
    with pytest.raises(TrainingDataError, match=r"labels column 't' \(bool\): not a time"):
        as_of_join(flags, timeline, entity_column="uid", time_column="t")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingDataError, match="no published versions"):
        as_of_join(good, tmp_path / "empty", entity_column="uid", time_column="event_time")


def test_a_null_label_time_is_no_time_not_the_epoch(tmp_path: Path) -> None:
    """A version as of the epoch itself (--as-of 1970-01-01T00:00:00Z) answers labels at that instant, never
    labels without a time."""
    add_version(tmp_path, "19700101T000000Z-aaaaaaaaaaaa", "1970-01-01T00:00:00Z", "2026-01-01T00:00:00Z",
                VIEWS[:1], {"stats": [stats_table({1: 99})]})
    table = pa.table({"uid": [1, 1], "t": pa.array([0, None], TS)})
    out = as_of_join(table, tmp_path, entity_column="uid", time_column="t")
    assert out.column("stats__n").to_pylist() == [99, None]


# ---------------------------------------------------------------------------------------------------------
# as_of_join across schema changes and equal as-of times (string keys)
# ---------------------------------------------------------------------------------------------------------

def evolving_root(root: Path, current: bool = True) -> list[str]:
    """A: stats.n int32. B: n int64, a new feature m, a new view extra. C: B's as-of time, published after B.
    D: an older as-of time than all, published last, with n as a string (not convertible)."""
    ids = ["20260201T000000Z-aaaaaaaaaaaa", "20260202T000000Z-ffffffffffff", "20260202T000000Z-111111111111"]

    def stats(n_type: str, with_m: bool) -> list[dict[str, Any]]:
        features = [{"name": "n", "type": n_type}] + ([{"name": "m", "type": "float64"}] if with_m else [])
        return [{"name": "stats", "source": "s", "features": features}]
    extra = [{"name": "extra", "source": "e", "features": [{"name": "tag", "type": "string"}]}]

    def table(columns: dict[str, pa.Array]) -> pa.Table:
        return pa.table(columns)
    add_version(root, ids[0], "2026-02-01T00:00:00Z", "2026-02-01T01:00:00Z", stats("int32", False),
                {"stats": [table({"key": pa.array(["ユーザー", "u1", ""]), "n": pa.array([1, 2, 3], pa.int32())})]},
                key_type="string", entity="key")
    add_version(root, ids[1], "2026-02-02T00:00:00Z", "2026-02-02T01:00:00Z", stats("int64", True) + extra,
                {"stats": [table({"key": pa.array(["ユーザー", "u10"]), "n": pa.array([10, 20], pa.int64()),
                                  "m": pa.array([0.5, 1.5])})],
                 "extra": [table({"key": pa.array(["é"]), "tag": pa.array(["b"])})]},
                key_type="string", entity="key")
    add_version(root, ids[2], "2026-02-02T00:00:00Z", "2026-02-02T02:00:00Z", stats("int64", True) + extra,
                {"stats": [table({"key": pa.array(["ユーザー", "u1"]), "n": pa.array([2**40, -7], pa.int64()),
                                  "m": pa.array([None, 2.5])})],
                 "extra": [table({"key": pa.array(["é", "ユーザー"]), "tag": pa.array(["c", "c"])})]},
                key_type="string", entity="key")
    if current:
        (root / "CURRENT").write_text(ids[2] + "\n")
    return ids


KEYS = ["ユーザー", "u1", "u10", "", "é"]
TIMES = ["2026-01-31T00:00:00", "2026-02-01T00:00:00", "2026-02-01T23:59:59", "2026-02-02T00:00:00",
         "2026-03-01T00:00:00"]
# key, time -> (stats.n, stats.m, extra.tag): A answers on Feb 1, C (never B) from Feb 2
EXPECTED = {
    ("ユーザー", 1): (1, None, None), ("u1", 1): (2, None, None), ("", 1): (3, None, None),
    ("ユーザー", 2): (1, None, None), ("u1", 2): (2, None, None), ("", 2): (3, None, None),
    ("ユーザー", 3): (2**40, None, "c"), ("u1", 3): (-7, 2.5, None), ("é", 3): (None, None, "c"),
    ("ユーザー", 4): (2**40, None, "c"), ("u1", 4): (-7, 2.5, None), ("é", 4): (None, None, "c"),
}


def test_as_of_join_across_schema_changes_and_equal_as_of_times(tmp_path: Path) -> None:
    evolving_root(tmp_path / "root")
    rows = [(k, t) for t in TIMES for k in KEYS]
    table = pa.table({"key": pa.array([k for k, _ in rows], pa.string()),
                      "t": pa.array([datetime.fromisoformat(t) for _, t in rows], pa.timestamp("us"))})
    out = as_of_join(table, tmp_path / "root", entity_column="key", time_column="t")
    assert out.column_names == ["key", "t", "stats__n", "stats__m", "extra__tag"]
    assert out.schema.field("stats__n").type == pa.int64()     # CURRENT's type: A's int32 values converted
    got = list(zip(out.column("stats__n").to_pylist(), out.column("stats__m").to_pylist(),
                   out.column("extra__tag").to_pylist(), strict=True))
    assert got == [EXPECTED.get((k, TIMES.index(t)), (None, None, None)) for k, t in rows]


def test_without_current_the_newest_version_decides_the_columns(tmp_path: Path) -> None:
    evolving_root(tmp_path / "root", current=False)
    table = pa.table({"key": ["u1"], "t": pa.array([T("2026-02-01T12:00:00")], TS)})
    out = as_of_join(table, tmp_path / "root", entity_column="key", time_column="t")
    assert out.column_names == ["key", "t", "stats__n", "stats__m", "extra__tag"]
    assert out.column("stats__n").to_pylist() == [2] and out.column("stats__m").to_pylist() == [None]


def test_a_value_an_older_version_stored_in_another_type_that_cannot_convert_is_an_error(tmp_path: Path) -> None:
    evolving_root(tmp_path / "root")
    add_version(tmp_path / "root", "20260115T000000Z-dddddddddddd", "2026-01-15T00:00:00Z", "2026-03-01T00:00:00Z",
                [{"name": "stats", "source": "s", "features": [{"name": "n", "type": "string"}]}],
                {"stats": [pa.table({"key": ["u1"], "n": ["twelve"]})]}, key_type="string", entity="key")
    table = pa.table({"key": ["u1"], "t": pa.array([T("2026-01-20T00:00:00")], TS)})
    with pytest.raises(TrainingDataError, match="feature 'n': stored as string in an older version, int64 now"):
        as_of_join(table, tmp_path / "root", entity_column="key", time_column="t", views=["stats"])
    later = pa.table({"key": ["u1"], "t": pa.array([T("2026-02-01T12:00:00")], TS)})
    assert as_of_join(later, tmp_path / "root", entity_column="key", time_column="t",
                      views=["stats"]).column("stats__n").to_pylist() == [2]


# ---------------------------------------------------------------------------------------------------------
# training_frame
# ---------------------------------------------------------------------------------------------------------

def test_training_frame_is_one_versions_views_outer_joined_by_key(timeline: Path) -> None:
    b = TIMELINE[1]
    frame = training_frame(timeline, version=b["id"])
    keys = sorted(set(b["stats"]) | set(b["profile"]))
    assert frame.column_names == ["user_id", "stats__n", "profile__updated_at", "profile__tier"]
    assert frame.column("user_id").to_pylist() == keys                  # sorted, each entity once
    assert frame.column("stats__n").to_pylist() == [b["stats"].get(k) for k in keys]
    assert frame.column("profile__tier").to_pylist() == [b["profile"][k][1] if k in b["profile"] else None
                                                         for k in keys]
    assert frame.column("profile__updated_at").to_pylist() == [T(b["profile"][k][0]) if k in b["profile"] else None
                                                               for k in keys]


def test_training_frame_defaults_to_current_and_filters_entities_and_views(timeline: Path) -> None:
    c = TIMELINE[2]
    frame = training_frame(f"file://{timeline}", views=["profile", "stats"], entities=[5, 3, 10**12, 1])
    assert frame.column_names == ["user_id", "profile__updated_at", "profile__tier", "stats__n"]   # views' order
    assert frame.column("user_id").to_pylist() == [1, 3, 5]
    assert frame.column("stats__n").to_pylist() == [c["stats"][1], c["stats"][3], None]
    assert frame.column("profile__tier").to_pylist() == ["c1", None, "c5"]
    assert training_frame(timeline, entities=[]).num_rows == 0


def test_training_frame_of_a_published_store_reads_latest(timeline: Path) -> None:
    (timeline / "CURRENT").unlink()
    with pytest.raises(TrainingDataError, match="no CURRENT .* or LATEST"):
        training_frame(timeline)
    (timeline / "LATEST").write_text(TIMELINE[0]["id"] + "\n")
    assert training_frame(timeline, views=["stats"]).column("stats__n").to_pylist() == [10, 20, 30]


def test_training_frame_errors_name_what_is_missing(timeline: Path) -> None:
    with pytest.raises(TrainingDataError, match="no published version '20990101T000000Z-000000000000'"):
        training_frame(timeline, version="20990101T000000Z-000000000000")
    with pytest.raises(TrainingDataError, match="has no view\\(s\\) 'nope'"):
        training_frame(timeline, views=["stats", "nope"])
    # an online-only replica: the manifest lists offline files that are not there
    part = SnapshotRoot(timeline).offline_dir(TIMELINE[2]["id"], "profile") / "part-00000.parquet"
    part.unlink()
    with pytest.raises(TrainingDataError, match="no offline form here .*--online-only"):
        training_frame(timeline, views=["profile"])


def test_a_view_without_offline_files_contributes_typed_nulls(tmp_path: Path) -> None:
    views = VIEWS + [{"name": "emb", "source": "e",
                      "features": [{"name": "vec", "type": "list<float32>", "length": 3}]}]
    add_version(tmp_path, "20260101T000000Z-aaaaaaaaaaaa", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", views,
                {"stats": [stats_table({2: 7, 1: 5})]})   # profile and emb: no rows, no files
    (tmp_path / "CURRENT").write_text("20260101T000000Z-aaaaaaaaaaaa")
    frame = training_frame(tmp_path)
    assert frame.column("user_id").to_pylist() == [1, 2]
    assert frame.column("stats__n").to_pylist() == [5, 7]
    assert frame.column("profile__tier").null_count == 2 and frame.column("emb__vec").null_count == 2
    assert frame.schema.field("profile__updated_at").type == TS
    assert frame.schema.field("emb__vec").type.list_size == 3
    only_empty = training_frame(tmp_path, views=["profile"])
    assert only_empty.num_rows == 0 and only_empty.column_names == ["user_id", "profile__updated_at", "profile__tier"]
