"""Training reads against real loaded roots: training_frame equals the served version's rows, and
as_of_join never answers a label with data from after its event time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from quiver.snapshot import Manifest, SnapshotRoot
from quiver.training import TrainingDataError, as_of_join, training_frame
from support.canon import canon_column
from support.processes import UsersSnapshots, quiver_load, run_quiver


def T(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Three versions of two views over user_id. `stats` has no event timestamp; `profile` does, and some of its
# rows are stamped after their version's as-of time (a late-arriving or mis-dated source).
VERSIONS: list[dict[str, Any]] = [
    {"as_of": "2026-01-01T00:00:00Z",
     "stats": {1: 10, 2: 20, 3: 30},
     "profile": {1: ("2025-12-31T00:00:00", "a1"), 2: ("2026-01-05T00:00:00", "a2")}},
    {"as_of": "2026-01-02T00:00:00Z",
     "stats": {1: 11, 2: 21, 4: 41},                       # user 3 gone, user 4 new
     "profile": {1: ("2026-01-01T12:00:00", "b1"), 2: ("2025-12-20T00:00:00", "b2")}},
    {"as_of": "2026-01-03T00:00:00Z",
     "stats": {1: 12, 2: 22, 3: 32, 4: 42},
     "profile": {1: ("2026-01-03T12:00:00", "c1"), 2: ("2026-01-02T00:00:00", "c2")}},
]


@pytest.fixture(scope="module")
def timeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A root holding the three VERSIONS, each loaded by `quiver load` from its own Parquet."""
    base = tmp_path_factory.mktemp("timeline")
    root = base / "root"
    doc = {"entity": {"name": "user_id", "key_type": "int64"},
           "views": [{"name": "stats", "source": "stats.parquet", "features": [{"name": "n", "type": "int64"}]},
                     {"name": "profile", "source": "profile.parquet", "event_timestamp": "updated_at",
                      "features": [{"name": "tier", "type": "string"}]}]}
    ids = []
    for i, v in enumerate(VERSIONS):
        src = base / f"src-{i}"
        src.mkdir()
        (src / "features.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        pq.write_table(pa.table({"user_id": pa.array(list(v["stats"]), pa.int64()),
                                 "n": pa.array(list(v["stats"].values()), pa.int64())}), src / "stats.parquet")
        prof = v["profile"]
        pq.write_table(pa.table({"user_id": pa.array(list(prof), pa.int64()),
                                 "updated_at": pa.array([T(ts) for ts, _ in prof.values()], pa.timestamp("us", "UTC")),
                                 "tier": [tier for _, tier in prof.values()]}), src / "profile.parquet")
        ids.append(quiver_load(src, root, v["as_of"]))
    return root, ids


def labels(rows: list[tuple[int | None, str | None]]) -> pa.Table:
    return pa.table({"label": pa.array(range(len(rows)), pa.int64()),
                     "uid": pa.array([u for u, _ in rows], pa.int64()),
                     # nanoseconds and naive (UTC) on purpose: labels come in whatever unit they come in
                     "event_time": pa.array([None if t is None else datetime.fromisoformat(t) for _, t in rows],
                                            pa.timestamp("ns"))})


def test_as_of_join_uses_the_newest_version_at_or_before_each_label_and_never_a_later_row(
        timeline: tuple[Path, list[str]]) -> None:
    root, _ = timeline
    cases = [  # (uid, event time) -> (stats.n, profile.tier)
        ((1, "2025-12-31T23:59:59"), (None, None)),     # before every version
        ((1, "2026-01-01T00:00:00"), (10, "a1")),       # exactly version A's as-of time: A
        ((1, "2026-01-01T23:59:59.999999"), (10, "a1")),  # a microsecond before B: still A
        ((1, "2026-01-02T00:00:00"), (11, "b1")),       # B
        ((3, "2026-01-02T10:00:00"), (None, None)),     # B has no user 3: null, never A's older 30
        ((4, "2026-01-01T10:00:00"), (None, None)),     # A has no user 4: null, never B's later 41
        ((2, "2026-01-01T10:00:00"), (20, None)),       # A's profile row is stamped Jan 5: not used, nothing older
        ((2, "2026-01-02T00:00:00"), (21, "b2")),
        ((1, "2026-01-03T00:00:00"), (12, "b1")),       # C's profile row is stamped later (Jan 3 12:00): B's row
        ((1, "2026-01-04T00:00:00"), (12, "c1")),
        ((2, "2030-01-01T00:00:00"), (22, "c2")),       # after every version: the newest
        ((None, "2026-01-04T00:00:00"), (None, None)),  # null id
        ((1, None), (None, None)),                      # null time
    ]
    order = list(range(len(cases)))
    random.Random(3).shuffle(order)
    table = labels([cases[i][0] for i in order])
    out = as_of_join(table, root, entity_column="uid", time_column="event_time")
    assert out.column_names == ["label", "uid", "event_time", "stats__n", "profile__updated_at", "profile__tier"]
    assert out.select(["label", "uid", "event_time"]).equals(table)  # label order and columns preserved
    got = list(zip(out.column("stats__n").to_pylist(), out.column("profile__tier").to_pylist(), strict=True))
    assert got == [cases[i][1] for i in order]
    stamps = out.column("profile__updated_at").to_pylist()
    for (_, t), stamp in zip([cases[i][0] for i in order], stamps, strict=True):
        if stamp is not None:
            assert t is not None and stamp <= datetime.fromisoformat(t).replace(tzinfo=UTC)


def test_as_of_join_matches_the_rule_applied_to_the_literal_versions(timeline: tuple[Path, list[str]]) -> None:
    """Random labels against the rule applied by hand to VERSIONS, the tables the versions were loaded from
    (not to anything read back through quiver): no leakage anywhere."""
    root, _ = timeline
    as_ofs = [T(v["as_of"].rstrip("Z")) for v in VERSIONS]
    rng = random.Random(11)
    start = T("2025-12-30T00:00:00")
    rows = [(rng.choice([1, 2, 3, 4, 5]), (start + timedelta(minutes=rng.randrange(0, 8 * 24 * 60))).isoformat())
            for _ in range(300)]
    rows = [(u, t.replace("+00:00", "")) for u, t in rows]
    out = as_of_join(labels(rows), root, entity_column="uid", time_column="event_time")

    hits = 0
    for (uid, t), n, tier in zip(rows, out.column("stats__n").to_pylist(), out.column("profile__tier").to_pylist(),
                                 strict=True):
        when = T(t)
        usable = [i for i, a in enumerate(as_ofs) if a <= when]
        want_n = VERSIONS[usable[-1]]["stats"].get(uid) if usable else None
        want_tier = None
        for i in reversed(usable):
            row = VERSIONS[i]["profile"].get(uid)
            if row is None:
                break
            if T(row[0]) <= when:
                want_tier = row[1]
                break
        assert (n, tier) == (want_n, want_tier), (uid, t)
        hits += want_tier is not None
    assert hits > 30, "the random labels should find profile rows"


def test_as_of_join_takes_views_and_rejects_labels_it_cannot_read(timeline: tuple[Path, list[str]]) -> None:
    root, _ = timeline
    out = as_of_join(labels([(1, "2026-01-02T00:00:00")]), f"file://{root}", entity_column="uid",
                     time_column="event_time", views=["stats"])
    assert out.column_names == ["label", "uid", "event_time", "stats__n"]
    assert out.column("stats__n").to_pylist() == [11]
    with pytest.raises(TrainingDataError, match="no column 'when'"):
        as_of_join(labels([]), root, entity_column="uid", time_column="when")
    with pytest.raises(TrainingDataError, match="no view"):
        as_of_join(labels([]), root, entity_column="uid", time_column="event_time", views=["nope"])


def test_training_frame_is_the_versions_rows_joined_by_key(users: UsersSnapshots) -> None:
    root = users.template
    m = Manifest.load(SnapshotRoot(root).manifest_path(users.v1))
    frame = training_frame(root, version=users.v1)
    assert frame.num_rows == users.users
    assert frame.column("user_id").to_pylist() == list(range(users.users))   # sorted by key
    expected_columns = ["user_id"]
    for v in m.schema.views:
        expected_columns += ([f"{v.name}__{v.event_timestamp}"] if v.event_timestamp else [])
        expected_columns += [f"{v.name}__{f.name}" for f in v.features]
    assert frame.column_names == expected_columns
    for view in ("profile", "ads", "embedding"):
        expected = users.expected(users.v1, view)
        for f in m.schema.view(view).features:
            got = canon_column(f.type, frame.column(f"{view}__{f.name}"))
            want = [expected[k][f.name] if k in expected else None for k in range(users.users)]
            assert got == want, f"{view}.{f.name}"
    # ads covers ~85% of users: the outer join leaves the rest null there, present elsewhere
    missing = users.users - m.views["ads"].rows
    assert missing > 0 and frame.column("ads__ad_00").null_count == missing


def test_training_frame_filters_entities_and_defaults_to_current(users: UsersSnapshots) -> None:
    frame = training_frame(f"file://{users.template}", views=["embedding", "ads"], entities=[5, 1, 10**12])
    assert frame.column("user_id").to_pylist() == [1, 5]
    assert frame.column_names[:3] == ["user_id", "embedding__user_embedding", "embedding__embedding_norm"]
    assert frame.schema.field("embedding__user_embedding").type.list_size == 64
    v2 = training_frame(users.template, version=users.v2, views=["embedding"], entities=[1])
    assert v2.column("embedding__embedding_norm") != frame.slice(0, 1).column("embedding__embedding_norm")
    with pytest.raises(TrainingDataError, match="no published version"):
        training_frame(users.template, version="20990101T000000Z-000000000000")


# String keys, and versions whose schemas differ: B changes `n` from int32 to int64 (--allow-type-change), adds
# the feature `m` and the view `extra`; C has B's as-of time exactly and was published after it, so C, never B,
# answers from then on. CURRENT (C) decides the output's columns and types.
KEYS = ["ユーザー-1", "user-1", "user-10", "", "é"]
EVOLVING: list[dict[str, Any]] = [
    {"as_of": "2026-02-01T00:00:00Z", "n": ("int32", {"ユーザー-1": 1, "user-1": 2, "": 3})},
    {"as_of": "2026-02-02T00:00:00Z", "n": ("int64", {"ユーザー-1": 10, "user-10": 20}),
     "m": {"ユーザー-1": 0.5, "user-10": 1.5}, "extra": {"é": "b"}},
    {"as_of": "2026-02-02T00:00:00Z", "n": ("int64", {"ユーザー-1": 2**40, "user-1": -7}),
     "m": {"user-1": 2.5}, "extra": {"é": "c", "ユーザー-1": "c"}},
]


@pytest.fixture(scope="module")
def evolving(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("evolving")
    root = base / "root"
    for i, v in enumerate(EVOLVING):
        src = base / f"src-{i}"
        src.mkdir()
        ntype, n = v["n"]
        stats_features = [{"name": "n", "type": ntype}] + ([{"name": "m", "type": "float64"}] if "m" in v else [])
        stats = {"key": pa.array(list(n), pa.string()), "n": pa.array(list(n.values()), getattr(pa, ntype)())}
        if "m" in v:
            stats["m"] = pa.array([v["m"].get(k) for k in n], pa.float64())
        pq.write_table(pa.table(stats), src / "stats.parquet")
        views = [{"name": "stats", "source": "stats.parquet", "features": stats_features}]
        if "extra" in v:
            pq.write_table(pa.table({"key": pa.array(list(v["extra"]), pa.string()),
                                     "tag": pa.array(list(v["extra"].values()), pa.string())}), src / "extra.parquet")
            views.append({"name": "extra", "source": "extra.parquet", "features": [{"name": "tag", "type": "string"}]})
        doc = {"entity": {"name": "key", "key_type": "string"}, "views": views}
        (src / "features.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        r = run_quiver("load", "--features", src / "features.yaml", "--root", root, "--as-of", v["as_of"],
                       "--workers", "1", "--allow-type-change")
        assert r.returncode == 0, r.stderr
    return root


def test_as_of_join_across_schema_changes_equal_as_of_times_and_string_keys(evolving: Path) -> None:
    times = ["2026-01-31T00:00:00", "2026-02-01T00:00:00", "2026-02-01T23:59:59", "2026-02-02T00:00:00",
             "2026-03-01T00:00:00"]
    rows = [(k, t) for t in times for k in KEYS]
    table = pa.table({"key": pa.array([k for k, _ in rows], pa.string()),
                      "t": pa.array([datetime.fromisoformat(t) for _, t in rows], pa.timestamp("us"))})
    out = as_of_join(table, evolving, entity_column="key", time_column="t")
    assert out.column_names == ["key", "t", "stats__n", "stats__m", "extra__tag"]
    assert out.schema.field("stats__n").type == pa.int64()    # CURRENT's type; A's int32 values converted

    def expect(key: str, t: str) -> tuple[Any, Any, Any]:
        when = T(t)
        usable = [v for v in EVOLVING if T(v["as_of"].rstrip("Z")) <= when]
        if not usable:
            return None, None, None
        v = usable[-1]   # of equal as-of times, the one published last
        return v["n"][1].get(key), v.get("m", {}).get(key) if key in v["n"][1] else None, \
            v.get("extra", {}).get(key)
    got = list(zip(out.column("stats__n").to_pylist(), out.column("stats__m").to_pylist(),
                   out.column("extra__tag").to_pylist(), strict=True))
    assert got == [expect(k, t) for k, t in rows]
    # B is never used: C has its as-of time and was published after it
    assert 10 not in out.column("stats__n").to_pylist() and "b" not in out.column("extra__tag").to_pylist()
    assert 2**40 in out.column("stats__n").to_pylist() and 1 in out.column("stats__n").to_pylist()
