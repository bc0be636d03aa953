"""loader/spill.py, a load's encode-and-spill stage, run in-process on real Parquet in tmp_path: which source
columns are read, the rows spilled to each key range (key bytes, ViewRow bytes, source file index), the
offline Parquet an encode task writes and its checksum, the offline writer's encodings, and how a view's
row groups are cut into tasks. Values are checked with support.oracle's decoder against the source columns."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from quiver.loader.errors import SourceError
from quiver.loader.sources import SourceFile
from quiver.loader.spill import (
    OFFLINE_COMPRESSION,
    TASKS_PER_WORKER,
    EncodeTask,
    SpillRows,
    encode_task,
    encode_tasks,
    offline_writer,
    source_columns,
    spills_all_columns,
)
from quiver.snapshot import FeatureSet
from support.canon import canon_column, canon_default
from support.oracle import decode_int64_key, decode_view_row

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
FEATURES: list[dict[str, Any]] = [
    {"name": "x", "type": "float64"},
    {"name": "s", "type": "string", "default": "none"},
    {"name": "n", "type": "int32", "source_column": "n_src"},
    {"name": "emb", "type": "list<float32>", "length": 2},
]
SET = FeatureSet.from_json({
    "entity": {"name": "user_id", "key_type": "int64"},
    "views": [{"name": "plain", "source": "plain.parquet", "features": FEATURES},
              {"name": "events", "source": "events.parquet", "event_timestamp": "ts", "entity_column": "uid",
               "features": [{"name": "x", "type": "float64"}]}]})
PLAIN, EVENTS = SET.view("plain"), SET.view("events")
SPLITS = [-1000, 0, 5000]   # key ranges: < -1000, [-1000, 0), [0, 5000), >= 5000
ROWS, ROW_GROUP = 400, 100


def order(k: int) -> int:
    """A key's place in the encoded (bytewise) order: what boundaries are given in."""
    return int.from_bytes(((k ^ (1 << 63)) & (2**64 - 1)).to_bytes(8, "big"), "big")


def expected_range(k: int) -> int:
    return sum(1 for s in SPLITS if k >= s)


def plain_table(seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    edge = [I64_MIN, -1001, -1000, -999, -1, 0, 1, 4999, 5000, I64_MAX]   # on and beside the splits
    rest = rng.choice(np.setdiff1d(np.arange(-20_000, 20_000), edge), ROWS - len(edge), replace=False)
    keys = edge + [int(k) for k in rest]
    keys = [keys[i] for i in rng.permutation(ROWS)]   # sources are not sorted by key
    nulls = rng.random(ROWS) < 0.2
    return pa.table({
        "user_id": pa.array(keys, pa.int64()),
        "x": pa.array(rng.standard_normal(ROWS), mask=nulls),
        "s": pa.array([None if m else f"s{i}" for i, m in enumerate(nulls[::-1])], pa.string()),
        "n_src": pa.array(rng.integers(-(2**31), 2**31, ROWS, dtype=np.int64).astype(np.int32)),
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(2 * ROWS).astype(np.float32)), 2),
        "unused": pa.array(["never read"] * ROWS),
    })


def expected_rows(table: pa.Table) -> dict[int, dict[str, Any]]:
    """key -> feature -> canonical value, defaults applied, computed from the source columns."""
    keys = table.column("user_id").to_pylist()
    out: dict[int, dict[str, Any]] = {k: {} for k in keys}
    for f in PLAIN.features:
        default = canon_default(f.type, f.default) if f.default is not None else None
        for k, v in zip(keys, canon_column(f.type, table.column(f.column)), strict=True):
            out[k][f.name] = default if v is None else v
    return out


def write(path: Path, table: pa.Table) -> SourceFile:
    pq.write_table(table, path, row_group_size=ROW_GROUP)
    md = pq.ParquetFile(path).metadata
    return SourceFile(str(path), path.stat().st_size, md.num_rows, md.num_row_groups)


def task(view: Any, src: SourceFile, spill: Path, offline: str, row_groups: tuple[int, ...], task_id: int = 3,
         file_index: int = 2, batch_rows: int = 100) -> EncodeTask:
    return EncodeTask(view, SET.entity, src.path, file_index, row_groups, str(spill), task_id,
                      [order(s) for s in SPLITS], batch_rows, offline, view_rows=src.rows)


def spilled(spill: Path, view: str) -> dict[int, pa.Table]:
    """Key range -> the rows spilled there (every task file of the view)."""
    out = {}
    for d in sorted(spill.glob("p*")):
        files = sorted((d / view).glob("*.arrow"))
        out[int(d.name[1:])] = pa.concat_tables(ipc.open_file(f).read_all() for f in files)
    return out


def test_source_columns_are_the_key_the_timestamp_and_each_features_source_column() -> None:
    assert source_columns(SET.entity, PLAIN) == sorted(["user_id", "x", "s", "n_src", "emb"])
    assert source_columns(SET.entity, EVENTS) == ["ts", "uid", "x"]


def test_only_views_with_an_event_timestamp_spill_every_column() -> None:
    assert not spills_all_columns(PLAIN) and spills_all_columns(EVENTS)
    assert SpillRows(SET.entity, PLAIN).schema.names == ["user_id", "__key", "__value", "__file"]
    assert SpillRows(SET.entity, EVENTS).schema.names == ["user_id", "ts", "x", "__key", "__value", "__file"]


def test_an_encode_task_spills_each_row_to_its_key_range_and_writes_the_offline_rows(tmp_path: Path) -> None:
    table = plain_table()
    src = write(tmp_path / "plain.parquet", table)
    offline = tmp_path / "out" / "offline" / "plain" / "part-t00003.parquet"
    result = encode_task(task(PLAIN, src, tmp_path / "spill", str(offline), tuple(range(src.row_groups))))
    expected = expected_rows(table)

    ranges = spilled(tmp_path / "spill", "plain")
    want_counts = [sum(1 for k in expected if expected_range(k) == p) for p in range(len(SPLITS) + 1)]
    assert result.counts == want_counts and all(want_counts)
    assert sorted(ranges) == [p for p, n in enumerate(want_counts) if n]
    assert all((tmp_path / "spill" / f"p{p:05d}" / "plain" / "t00003.arrow").is_file() for p in ranges)
    seen = {}
    for p, rows in ranges.items():
        assert rows.column_names == ["user_id", "__key", "__value", "__file"]
        for k, key, value, file_index in zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True):
            assert expected_range(k) == p, (k, p)
            assert decode_int64_key(key) == k
            assert file_index == 2
            seen[k] = decode_view_row(PLAIN, value)
    assert seen == expected   # every row once, every value as the source has it (defaults applied)

    # the offline rows: every row, normalized (features by name, declared types), its checksum taken
    written = pq.read_table(offline)
    assert written.column_names == ["user_id", "x", "s", "n", "emb"]
    assert written.column("user_id").to_pylist() == table.column("user_id").to_pylist()   # source order
    assert canon_column("int32", written.column("n")) == canon_column("int32", table.column("n_src"))
    assert written.column("s").null_count == 0
    assert result.checksums == {str(offline): "sha256:" + hashlib.sha256(offline.read_bytes()).hexdigest()}
    assert result.statistics is not None and result.statistics.rows == ROWS


def test_an_encode_task_reads_only_its_row_groups(tmp_path: Path) -> None:
    table = plain_table()
    src = write(tmp_path / "plain.parquet", table)
    result = encode_task(task(PLAIN, src, tmp_path / "spill", "", (1, 3)))
    want = set(table.column("user_id").to_pylist()[ROW_GROUP:2 * ROW_GROUP]
               + table.column("user_id").to_pylist()[3 * ROW_GROUP:])
    got = [k for rows in spilled(tmp_path / "spill", "plain").values() for k in rows.column("user_id").to_pylist()]
    assert sorted(got) == sorted(want) and sum(result.counts) == len(want)
    assert result.checksums == {}
    assert [p.name for p in tmp_path.rglob("*.parquet")] == ["plain.parquet"]   # no offline file: none asked


def test_a_view_with_an_event_timestamp_spills_its_full_rows_and_no_offline_file(tmp_path: Path) -> None:
    ts = pa.array([1_000_000 * i for i in range(6)], pa.timestamp("us", tz="UTC"))
    table = pa.table({"uid": pa.array([7, 7, -3, 9000, 7, -3], pa.int64()), "ts": ts,
                      "x": pa.array([0.5, 1.5, 2.5, None, 4.5, 5.5])})
    src = write(tmp_path / "events.parquet", table)
    result = encode_task(task(EVENTS, src, tmp_path / "spill", "", (0,), file_index=0))
    ranges = spilled(tmp_path / "spill", "events")
    assert result.counts == [0, 2, 3, 1]   # -3 twice; 7 three times; 9000
    assert result.statistics is None and result.checksums == {}
    rows = pa.concat_tables(ranges.values())
    # duplicates are all spilled (the sort stage keeps the latest), each with its own timestamp and value
    got = sorted(zip(rows.column("user_id").to_pylist(), rows.column("ts").to_pylist(),
                     [decode_view_row(EVENTS, v)["x"] for v in rows.column("__value").to_pylist()], strict=True))
    want = sorted(zip(table.column("uid").to_pylist(), table.column("ts").to_pylist(),
                      canon_column("float64", table.column("x")), strict=True))
    assert got == want


def test_a_truncated_source_is_a_source_error_naming_the_file_view_and_row_groups(tmp_path: Path) -> None:
    src = write(tmp_path / "plain.parquet", plain_table())
    data = Path(src.path).read_bytes()
    # keep the footer (so the file opens) and zero the first row groups' pages
    Path(src.path).write_bytes(bytes(len(data) // 2) + data[len(data) // 2:])
    with pytest.raises(SourceError) as e:
        encode_task(task(PLAIN, src, tmp_path / "spill", "", (0, 1)))
    assert src.path in str(e.value) and "'plain'" in str(e.value) and "[0, 1]" in str(e.value)


def test_the_offline_writer_splits_float_bytes_and_dictionary_encodes_the_rest(tmp_path: Path) -> None:
    schema = pa.schema([("user_id", pa.int64()), ("f", pa.float32()), ("d", pa.float64()), ("s", pa.string()),
                        ("emb", pa.list_(pa.float32(), 2)), ("ids", pa.list_(pa.int64()))])
    table = pa.table({"user_id": [1, 2], "f": pa.array([1.0, 2.0], pa.float32()), "d": [1.0, 2.0], "s": ["a", "b"],
                      "emb": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32(), 2)),
                      "ids": [[1], [2, 3]]}, schema=schema)
    path = tmp_path / "o.parquet"
    w = offline_writer(str(path), schema)
    w.write_table(table)
    w.close()
    rg = pq.ParquetFile(path).metadata.row_group(0)
    columns = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    split = {p for p, c in columns.items() if "BYTE_STREAM_SPLIT" in c.encodings}
    dictionary = {p for p, c in columns.items() if any("DICTIONARY" in e for e in c.encodings)}
    assert split == {"f", "d", "emb.list.element"}
    # (list<int64> is not checked: offline_writer names it "ids", not its leaf "ids.list.element", so Arrow
    # writes it without a dictionary, unlike the docstring says)
    assert {"user_id", "s"} <= dictionary and dictionary.isdisjoint(split)
    assert {c.compression for c in columns.values()} == {OFFLINE_COMPRESSION.upper()}
    assert pq.read_table(path).equals(table)


def test_encode_tasks_cover_every_row_group_once_about_four_tasks_per_worker(tmp_path: Path) -> None:
    files = [SourceFile("/a.parquet", 1, 500, 5), SourceFile("/b.parquet", 1, 300, 3)]
    bounds = [order(0)]
    tasks = encode_tasks(SET.entity, PLAIN, files, tmp_path / "spill", tmp_path / "off", bounds, 64, workers=1)
    per_task = -(-8 // (1 * TASKS_PER_WORKER))   # 8 row groups, 4 tasks per worker: 2 row groups a task
    assert [(t.path, t.file_index, t.row_groups) for t in tasks] == [
        ("/a.parquet", 0, (0, 1)), ("/a.parquet", 0, (2, 3)), ("/a.parquet", 0, (4,)),
        ("/b.parquet", 1, (0, 1)), ("/b.parquet", 1, (2,))]
    assert all(len(t.row_groups) <= per_task for t in tasks)
    assert [t.task_id for t in tasks] == list(range(5))
    assert [t.offline_path for t in tasks] == [str(tmp_path / "off" / f"part-t{i:05d}.parquet") for i in range(5)]
    assert all(t.view_rows == 800 and t.boundaries == bounds and t.batch_rows == 64 for t in tasks)
    assert all(t.spill_dir == str(tmp_path / "spill") for t in tasks)
    # many workers: one row group a task; a view that dedups writes its offline rows after the sort
    many = encode_tasks(SET.entity, EVENTS, files, tmp_path / "spill", tmp_path / "off", bounds, 64, workers=8)
    assert sorted((t.file_index, g) for t in many for g in t.row_groups) == [(0, g) for g in range(5)] + [
        (1, g) for g in range(3)]
    assert all(len(t.row_groups) == 1 and t.offline_path == "" for t in many)
