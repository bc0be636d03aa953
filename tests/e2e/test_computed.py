"""Computed features on the local engine (DuckDB): windows, every fn, both window edges, empty windows,
nulls, filters and each allowed kind of expression against an independent oracle (tests/support/computed.py,
plain Python over the raw rows); the served (online) values equal the training (offline) rows; refusals of
results that do not fit. The Spark engine's equality is in test_spark_engine.py."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from quiver.loader.errors import DataError
from quiver.loader.load import LoadOptions, load
from quiver.quality.statistics import STATISTICS_FILE
from quiver.snapshot import Manifest, SnapshotRoot
from support import computed, stored
from support.processes import run_quiver


def _load(features: Path, root: Path, **kw: object) -> str:
    return load(features, root, LoadOptions(workers=2, as_of=computed.T, **kw)).version  # type: ignore[arg-type]


def _offline(root: Path, view: str) -> object:
    return stored.read_offline(root, view)[0]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[computed.Computed, Path]:
    folder = tmp_path_factory.mktemp("computed")
    data = computed.write(folder / "src")
    _load(data.features_path, folder / "root")
    return data, folder / "root"


def test_window_aggregations_equal_the_oracle(loaded: tuple[computed.Computed, Path]) -> None:
    data, root = loaded
    table = _offline(root, "activity")
    assert computed.differences(data.expected_activity, table) == []   # type: ignore[arg-type]
    assert len(data.expected_activity) > 2500


def test_window_edges_empty_windows_ties_and_filters(loaded: tuple[computed.Computed, Path]) -> None:
    _, root = loaded
    rows = {r["user_id"]: r for r in _offline(root, "activity").to_pylist()}   # type: ignore[attr-defined]
    edge = rows[10_000]
    # T - 7d is out and T is in; T + 1us is never read; T - 30d is out, T - 30d + 1us in
    assert edge["clicks_7d"] == 1 and edge["clicks_1h"] == 1 and edge["last_item"] == 2
    assert edge["items_30d"] == 3   # items 1 (at T - 7d), 2 and 5
    assert 10_001 not in rows       # every event after T: not in the view
    empty = rows[10_002]            # events, none in any window: count 0, declared default, else null
    assert (empty["clicks_7d"], empty["items_30d"], empty["spend_30d"], empty["max_price_7d"],
            empty["last_item"]) == (0, 0, 0.0, None, None)
    tie = rows[10_003]              # two events at one instant: the greater value; a later null is no value
    assert (tie["last_item"], tie["last_label"]) == (9, "beta")
    assert rows[10_004]["clicks_7d"] == 0   # only 'view' events: filtered out


def test_expressions_of_each_allowed_kind_equal_the_oracle(loaded: tuple[computed.Computed, Path]) -> None:
    data, root = loaded
    table = _offline(root, "profile")
    assert computed.differences(data.expected_profile, table) == []   # type: ignore[arg-type]
    # the filter dropped rows; the rest keep their source order (two files, in name order)
    kept = [r["user_id"] for r in data.rows if r["country"] != "XX"]
    assert table.column("user_id").to_pylist() == kept   # type: ignore[attr-defined]


def test_served_values_are_the_training_rows(loaded: tuple[computed.Computed, Path]) -> None:
    _, root = loaded
    for view in ("activity", "profile"):
        online = stored.read_online(root, view)
        _, offline = stored.read_offline(root, view)
        assert dict(online) == dict(offline), view
    version = SnapshotRoot(root).current()
    m = Manifest.load(SnapshotRoot(root).manifest_path(version))
    assert m.schema.view("activity").window_end == "2026-11-01T00:00:00Z"
    stats = json.loads((SnapshotRoot(root).version_dir(version) / STATISTICS_FILE).read_text())["views"]
    assert "spend_30d" in json.dumps(stats["activity"]) and "twice" in json.dumps(stats["profile"])


def test_a_later_as_of_recomputes_the_windows_and_reuses_the_rest(loaded: tuple[computed.Computed, Path],
                                                                  tmp_path: Path) -> None:
    data, _ = loaded
    root = tmp_path / "root"
    first = _load(data.features_path, root)
    later = load(data.features_path, root, LoadOptions(workers=2, as_of=computed.T + timedelta(days=1)))
    assert later.version != first and later.published
    assert later.reused_views == ["profile"]   # its rows do not depend on the as-of time
    rows = {r["user_id"]: r for r in _offline(root, "activity").to_pylist()}   # type: ignore[attr-defined]
    assert rows[10_000]["clicks_7d"] == 2 and rows[10_001]["clicks_7d"] == 1   # T + 1us and T + 1d now count


def test_a_result_that_does_not_fit_is_refused_naming_view_feature_and_key(tmp_path: Path) -> None:
    data = computed.write(tmp_path / "src", users=300)
    doc = yaml.safe_load(data.features_path.read_text())
    doc["views"][1]["features"].append({"name": "huge", "type": "int32", "expr": "cast(age as bigint) * 100000000"})
    data.features_path.write_text(yaml.safe_dump(doc))
    with pytest.raises(DataError) as e:
        _load(data.features_path, tmp_path / "root")
    example = next(r for r in data.rows if r["country"] != "XX" and r["age"] and r["age"] * 100000000 > 2**31 - 1)
    assert "view 'profile', feature 'huge'" in str(e.value) and "does not fit int32" in str(e.value)
    assert f"(key {example['user_id']})" in str(e.value)
    r = run_quiver("load", "--features", data.features_path, "--root", tmp_path / "root",
                   "--as-of", "2026-11-01T00:00:00Z")
    assert r.returncode == 4 and "feature 'huge'" in r.stderr
    assert not SnapshotRoot(tmp_path / "root").current()


def test_a_type_the_expression_does_not_give_is_refused(tmp_path: Path) -> None:
    data = computed.write(tmp_path / "src", users=200)
    doc = yaml.safe_load(data.features_path.read_text())
    doc["views"][1]["features"].append({"name": "word", "type": "int64", "expr": "lower(name)"})
    data.features_path.write_text(yaml.safe_dump(doc))
    with pytest.raises(DataError, match="feature 'word': the expression gives string, declared int64"):
        _load(data.features_path, tmp_path / "root")


def test_demo_data_serves_its_computed_features(tmp_path: Path) -> None:
    """`quiver generate` writes the event table and features.yaml computes from it."""
    run_quiver("generate", "--users", "1500", "--out", tmp_path / "src", "--seed", "2",
               "--events-end", "2026-11-01T00:00:00Z", check=True)
    r = run_quiver("load", "--features", tmp_path / "src" / "features.yaml", "--root", tmp_path / "root",
                   "--as-of", "2026-11-01T00:00:00Z", check=True, timeout=180)
    assert "published" in r.stderr
    table = pq.read_table(sorted((tmp_path / "root" / "versions").iterdir())[0] / "offline" / "engagement")
    assert table.num_rows > 1200 and table.column("clicks_30d").to_pylist().count(0) < table.num_rows
    events = pq.read_table(tmp_path / "src" / "events").to_pylist()
    user = table.column("user_id")[0].as_py()
    mine = [e for e in events if e["user_id"] == user and e["event_type"] == "click"]
    assert table.column("clicks_30d")[0].as_py() == len(mine)
