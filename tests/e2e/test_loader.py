"""`quiver load` as a process on real Parquet, read back from the real RocksDB and Parquet it writes.

Bad input found before the loader starts its worker processes (features.yaml, the sources' files and
schemas) is refused in-process in tests/unit/test_cli_bad_input.py; the bad data found in the workers is
refused here, through the process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver.loader.pause import PAUSE_AT, PAUSE_FILE
from quiver.snapshot import Manifest, SnapshotRoot, encode_int64_key, encode_string_key, file_checksum
from quiver.snapshot.integrity import file_key, read_record
from support.loads import AS_OF, assert_load_rejected
from support.oracle import decode_view_row
from support.processes import QUIVER, run_quiver, wait_for
from support.stored import mismatches, read_offline, read_online, read_online_keys

quiver = run_quiver


def load(features: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return quiver("load", "--features", features, "--root", root, "--workers", "2", *extra)


def published(root: Path) -> list[str]:
    return SnapshotRoot(root).versions()


# ---------------------------------------------------------------------------------------------
# Round trip: every value of both forms equals the source
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key_type", ["int64", "string"])
def test_every_value_round_trips_through_both_forms(request: pytest.FixtureRequest, key_type: str,
                                                    tmp_path: Path) -> None:
    data = request.getfixturevalue("every_type" if key_type == "int64" else "every_type_string_keys")
    root = tmp_path / "root"
    r = load(data.features_path, root, "--as-of", AS_OF)
    assert r.returncode == 0, r.stderr
    version = r.stdout.strip()
    assert SnapshotRoot(root).current() == version
    for view in ("every", "events"):
        online = read_online(root, view)
        assert mismatches(data.expected[view], online) == [], f"online {view}"
        table, offline = read_offline(root, view)
        assert mismatches(data.expected[view], offline) == [], f"offline {view}"
        # the online form is in key order: numeric for int64 (negatives first), UTF-8 byte order for
        # strings; the offline form holds the same rows, in key order only where duplicates were dropped
        order = sorted(data.expected[view], key=(lambda k: k) if key_type == "int64" else (lambda k: k.encode()))
        assert [k for k, _ in online] == order
        assert sorted(k for k, _ in offline) == sorted(order)
    manifest = Manifest.load(SnapshotRoot(root).manifest_path(version))
    assert manifest.views["events"].dropped_duplicates == data.dropped["events"]
    assert f"dropped {data.dropped['events']} older row(s)" in r.stderr
    assert manifest.views["every"].dropped_duplicates == 0


def test_point_reads_by_encoded_key(every_type: Any, tmp_path: Path) -> None:
    """What the server does: look keys up by their encoded bytes; unknown keys are absent."""
    root = tmp_path / "root"
    assert load(every_type.features_path, root).returncode == 0
    keys = [-(2**63), -1, 0, 2**63 - 1]
    values = read_online_keys(root, "every", [encode_int64_key(k) for k in keys] + [encode_int64_key(7)])
    assert values[-1] is None
    view = every_type.features.view("every")
    for k, v in zip(keys, values, strict=False):
        assert v is not None
        assert decode_view_row(view, v) == every_type.expected["every"][k]


def test_string_keys_point_reads(every_type_string_keys: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert load(every_type_string_keys.features_path, root).returncode == 0
    keys = ["", "日本語", "\U0001f9ed", "a\x00"]
    values = read_online_keys(root, "every", [encode_string_key(k) for k in keys] + [b"absent"])
    assert values[-1] is None
    view = every_type_string_keys.features.view("every")
    for k, v in zip(keys, values, strict=False):
        assert decode_view_row(view, v) == every_type_string_keys.expected["every"][k]


# ---------------------------------------------------------------------------------------------
# Bad data found in the loader's worker processes: a clear error naming what and where, a non-zero
# exit code, nothing published (what is found before they start: tests/unit/test_cli_bad_input.py)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def root(published_root: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "root"
    shutil.copytree(published_root, dest)
    return dest


def assert_rejected(features: Path, root: Path, exit_code: int, *needles: str) -> str:
    """Loads as a process, expects failure; returns stderr. Nothing may be published and CURRENT must not
    change."""
    return assert_load_rejected(run_quiver, features, root, exit_code, *needles)


def test_corrupt_data_pages_behind_an_intact_footer(small_view: Callable[..., Path], root: Path) -> None:
    """The footer reads fine, so the damage is found only while decoding the column chunks."""
    n = 5000
    table = pa.table({"user_id": pa.array(range(n), pa.int64()), "x": pa.array([float(i) for i in range(n)])})
    features = small_view(table)
    path = features.parent / "v.parquet"
    pq.write_table(table, path, compression="snappy")
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    start = meta.row_group(0).column(1).data_page_offset
    data[start + 20:start + 2000] = b"\xff" * 1980
    path.write_bytes(bytes(data))
    assert_rejected(features, root, 3, str(path), "view 'v'")


def test_null_entity_key(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view(pa.table({"user_id": pa.array([5, None, 7], pa.int64()), "x": pa.array([1.0, 2.0, 3.0])}))
    assert_rejected(features, root, 4, str(features.parent / "v.parquet"), "view 'v'", "'user_id'", "null")


def test_duplicate_key_without_event_timestamp(small_view: Callable[..., Path], root: Path) -> None:
    keys = list(range(1000)) + [-42, -42, 17]
    table = pa.table({"user_id": pa.array(keys, pa.int64()), "x": pa.array([float(k) for k in keys])})
    features = small_view(table)
    assert_rejected(features, root, 4, str(features.parent / "v.parquet"), "view 'v'", "entity key -42",
                    "event_timestamp")


def test_embedding_of_the_wrong_length(small_view: Callable[..., Path], root: Path) -> None:
    emb = pa.array([[1.0, 2.0], [1.0, 2.0, 3.0], None], pa.list_(pa.float32()))
    features = small_view(pa.table({"user_id": pa.array([3, 1, 2], pa.int64()), "e": emb}),
                          [{"name": "e", "type": "list<float32>", "length": 2}])
    assert_rejected(features, root, 4, str(features.parent / "v.parquet"), "view 'v'", "column 'e'",
                    "declared length 2", "key 1 has 3")


def test_fixed_size_embedding_of_the_wrong_length(small_view: Callable[..., Path], root: Path) -> None:
    emb = pa.FixedSizeListArray.from_arrays(pa.array([1.0] * 9, pa.float32()), 3)
    features = small_view(pa.table({"user_id": pa.array([3, 1, 2], pa.int64()), "e": emb}),
                          [{"name": "e", "type": "list<float32>", "length": 4}])
    assert_rejected(features, root, 4, "view 'v'", "column 'e'", "declared length 4")


@pytest.mark.parametrize(("column", "declared"), [
    (pa.array([[1], None, [2, None]], pa.list_(pa.int64())), {"type": "list<int64>"}),
    (pa.array([[1.0, 2.0], None, [2.0, None]], pa.list_(pa.float32())), {"type": "list<float32>", "length": 2}),
    (pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 3, 4, 5, None], pa.float32()), 2),
     {"type": "list<float32>", "length": 2}),
])
def test_null_inside_a_list(small_view: Callable[..., Path], root: Path, column: pa.Array,
                            declared: dict[str, Any]) -> None:
    """Found by these tests: a null element was stored as NaN or INT64_MIN online but kept null offline."""
    features = small_view(pa.table({"user_id": pa.array([3, 1, 2], pa.int64()), "x": column}),
                          [{"name": "x", **declared}])
    assert_rejected(features, root, 4, str(features.parent / "v.parquet"), "view 'v'", "column 'x'",
                    "null element(s) inside lists, e.g. key 2")


def test_event_timestamp_finer_than_microseconds(small_view: Callable[..., Path], root: Path) -> None:
    """Found by these tests: reported as a truncated or corrupt file (exit 3) instead of naming the column."""
    table = pa.table({"user_id": pa.array([3, 1, 2], pa.int64()),
                      "ts": pa.array([1000, 2000, 3001], pa.timestamp("ns")), "x": pa.array([1.0, 2.0, 3.0])})
    features = small_view(table, view_extra={"event_timestamp": "ts"})
    stderr = assert_rejected(features, root, 4, str(features.parent / "v.parquet"), "view 'v'",
                             "event_timestamp column 'ts'", "e.g. key 2")
    assert "corrupt" not in stderr


# ---------------------------------------------------------------------------------------------
# Versions: publish, identical content, listing, the manifest
# ---------------------------------------------------------------------------------------------

def test_versions_current_and_identical_content(small_view: Callable[..., Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = small_view()
    r1 = load(first, root, "--as-of", AS_OF)
    assert r1.returncode == 0, r1.stderr
    v1 = r1.stdout.strip()
    assert published(root) == [v1] and SnapshotRoot(root).current() == v1

    # the same content and as-of again: nothing new, CURRENT stays
    mtime = SnapshotRoot(root).manifest_path(v1).stat().st_mtime_ns
    again = load(first, root, "--as-of", AS_OF)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == v1 and "already published" in again.stderr
    assert published(root) == [v1]
    assert SnapshotRoot(root).manifest_path(v1).stat().st_mtime_ns == mtime

    # different data: a second version, and CURRENT moves to it
    small_view(pa.table({"user_id": pa.array([3, 1, 2, 9], pa.int64()), "x": pa.array([1.0, 2.0, None, 4.0])}))
    r2 = load(first, root, "--as-of", "2026-11-02T00:00:00Z")
    assert r2.returncode == 0, r2.stderr
    v2 = r2.stdout.strip()
    assert v2 != v1 and published(root) == [v1, v2] and SnapshotRoot(root).current() == v2

    listing = quiver("snapshots", "--root", root)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == 3
    assert lines[1].split()[0] == v1 and lines[2].split()[:2] == ["*", v2]
    assert "v=3" in lines[1] and "v=4" in lines[2]
    assert "2026-11-01T00:00:00Z" in lines[1] and "2026-11-02T00:00:00Z" in lines[2]


def test_snapshots_of_an_empty_root(tmp_path: Path) -> None:
    r = quiver("snapshots", "--root", tmp_path)
    assert r.returncode == 0 and "no versions" in r.stdout


def test_manifest_lists_every_file_and_source(every_type: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = load(every_type.features_path, root, "--as-of", "2026-10-31T23:59:59+01:00")
    assert r.returncode == 0, r.stderr
    version = r.stdout.strip()
    vdir = SnapshotRoot(root).version_dir(version)
    m = Manifest.load(vdir / "manifest.json")
    raw = json.loads((vdir / "manifest.json").read_text())
    assert m.version == version and m.as_of == "2026-10-31T22:59:59Z" and version.startswith("20261031T225959Z-")
    assert raw["content_checksum"] == m.content_checksum
    assert m.verify_files(vdir) == []
    listed = {f.path for f in m.files}
    on_disk = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()}
    volatile = {p for p in on_disk - listed if p.rsplit("/", 1)[-1].startswith(("LOG", "LOCK", "rocksdict-config"))}
    assert on_disk - listed - volatile == {"manifest.json", "verified.json"}
    # the loader's record proves every listed file, by the inode it wrote
    proven = read_record(vdir)
    assert all(proven.holds(file_key(vdir / f.path), f.checksum) for f in m.files)
    assert listed <= on_disk
    assert any(p.startswith(f"online/{m.schema.view('every').group}/") and p.endswith(".sst") for p in listed)
    assert any(p.startswith("offline/events/") and p.endswith(".parquet") for p in listed)
    for f in m.files:
        assert (vdir / f.path).stat().st_size == f.size
        assert file_checksum(vdir / f.path) == f.checksum
    assert m.rows() == {v: len(rows) for v, rows in every_type.expected.items()}
    for view, stats in m.views.items():
        sources = sorted(str(p) for p in (every_type.dir / view).rglob("*.parquet"))
        assert [s.path for s in stats.sources] == sources
        for s in stats.sources:
            assert s.size == os.path.getsize(s.path) and s.checksum == file_checksum(s.path)
    assert m.views["events"].dropped_duplicates == every_type.dropped["events"]
    assert m.schema == every_type.features


# ---------------------------------------------------------------------------------------------
# SIGKILL at each stage: nothing partial is ever visible, and the next load recovers
# ---------------------------------------------------------------------------------------------

def _processes_with(marker: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if marker.encode() in (p / "environ").read_bytes():
                found.append(int(p.name))
        except OSError:
            continue
    return found


def _cmdlines(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            continue
    return out


def _assert_only_complete_versions(root: Path, before_current: str) -> None:
    r = SnapshotRoot(root)
    for d in (root / "versions").iterdir():
        assert (d / "manifest.json").is_file(), f"{d.name}: a version without a manifest is visible"
        assert Manifest.load(d / "manifest.json").verify_files(d, full=False) == [], d.name
    current = r.current()
    assert current == before_current or (current is not None and current in r.versions())


def _kill_load_after(stage: str, features: Path, root: Path, log_path: Path) -> None:
    """Starts a load that pauses after `stage`, checks it is mid-build there, SIGKILLs it and waits for its
    workers to be gone."""
    # the workers inherit this variable, so any that outlive the kill can be found in /proc
    token = uuid.uuid4().hex
    marker = f"QUIVER_TEST_LOAD={token}"
    paused = log_path.with_name(f"paused-{token}")
    env = {**os.environ, "QUIVER_TEST_LOAD": token, PAUSE_AT: stage, PAUSE_FILE: str(paused)}
    with open(log_path, "wb") as log:  # a file, not a pipe that a survivor could hold open
        proc = subprocess.Popen([QUIVER, "load", "--features", str(features), "--root", str(root),
                                 "--workers", "2"], env=env, stdout=log, stderr=log)
        try:
            wait_for(lambda: paused.exists() or proc.poll() is not None, timeout=180,
                     what=f"the load to pause after {stage}")
            assert proc.poll() is None, f"the load exited with {proc.returncode} before pausing after {stage}:\n" \
                f"{log_path.read_text(errors='replace')}"
            assert int(paused.read_text()) == proc.pid
            assert _processes_with(marker) != [proc.pid], "no worker is running: not mid-build"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: not _processes_with(marker), timeout=30,
             what=f"the workers of a load killed after {stage} to exit")


@pytest.mark.slow  # ~20 s: six loads of 20,000 users, five of them killed mid-build
def test_sigkill_mid_build_leaves_no_partial_version(tmp_path: Path) -> None:
    """The load stops at each stage through the loader's pause point (loader/pause.py), so the kill lands
    mid-build every time, with the workers alive and staging half written, never after the load finished."""
    small = quiver("generate", "--events-per-user", "0", "--users", "2000", "--out", tmp_path / "small")
    big = quiver("generate", "--events-per-user", "0", "--users", "20000", "--out", tmp_path / "big", "--seed", "1")
    assert small.returncode == 0 and big.returncode == 0, small.stderr + big.stderr
    root = tmp_path / "root"
    first = load(tmp_path / "small" / "features.yaml", root, "--as-of", AS_OF)
    assert first.returncode == 0, first.stderr
    current = first.stdout.strip()

    for stage in ("plan", "spill", "sst", "checks", "ingest"):
        _kill_load_after(stage, tmp_path / "big" / "features.yaml", root, tmp_path / "load.log")
        _assert_only_complete_versions(root, current)
        assert SnapshotRoot(root).current() == current and published(root) == [current], stage

    done = load(tmp_path / "big" / "features.yaml", root)
    assert done.returncode == 0, done.stderr
    version = done.stdout.strip()
    assert SnapshotRoot(root).current() == version
    assert list((root / "staging").glob("load-*")) == []
    _assert_only_complete_versions(root, version)
    m = Manifest.load(SnapshotRoot(root).manifest_path(version))
    assert m.verify_files(SnapshotRoot(root).version_dir(version)) == []
    assert m.rows()["profile"] == 20_000


def test_unchanged_views_are_reused_and_read_back_exactly(every_type: Any, tmp_path: Path) -> None:
    """A second load of the same sources at another as-of links the first version's files."""
    root = tmp_path / "root"
    r1 = load(every_type.features_path, root, "--as-of", AS_OF)
    r2 = load(every_type.features_path, root, "--as-of", "2026-11-02T00:00:00Z")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    v1, v2 = r1.stdout.strip(), r2.stdout.strip()
    assert v1 != v2 and "reused unchanged view(s)" in r2.stderr
    m2 = Manifest.load(SnapshotRoot(root).manifest_path(v2))
    assert {s.reused_from for s in m2.views.values()} == {v1}
    for v in (v1, v2):
        m = Manifest.load(SnapshotRoot(root).manifest_path(v))
        assert m.verify_files(SnapshotRoot(root).version_dir(v)) == [], v
        for view in ("every", "events"):
            assert mismatches(every_type.expected[view], read_online(root, view, v)) == [], (v, view)
            assert mismatches(every_type.expected[view], read_offline(root, view, v)[1]) == [], (v, view)


def test_duplicate_key_across_files_names_both(small_view: Callable[..., Path], root: Path) -> None:
    features = small_view(source="parts/*.parquet")
    (features.parent / "parts").mkdir()
    for i, keys in enumerate([[1, 2, 3], [4, 2, 5]]):
        pq.write_table(pa.table({"user_id": pa.array(keys, pa.int64()), "x": pa.array([1.0] * 3)}),
                       features.parent / "parts" / f"p{i}.parquet")
    assert_rejected(features, root, 4, "view 'v'", "entity key 2", str(features.parent / "parts" / "p0.parquet"),
                    str(features.parent / "parts" / "p1.parquet"))


def test_latest_event_wins_across_files(small_view: Callable[..., Path], tmp_path: Path) -> None:
    features = small_view(source="parts/*.parquet", view_extra={"event_timestamp": "ts"})
    (features.parent / "parts").mkdir()
    for i, (keys, stamps, xs) in enumerate([([1, 2, 3], [10, 30, 10], [1.0, 2.0, 3.0]),
                                             ([2, 3, 3], [20, 5, 40], [20.0, 30.0, 300.0])]):
        pq.write_table(pa.table({"user_id": pa.array(keys, pa.int64()), "ts": pa.array(stamps, pa.timestamp("ms")),
                                 "x": pa.array(xs)}), features.parent / "parts" / f"p{i}.parquet")
    root = tmp_path / "root"
    r = load(features, root)
    assert r.returncode == 0, r.stderr
    assert "view 'v': dropped 3 older row(s)" in r.stderr
    table, _ = read_offline(root, "v")
    assert table.select(["user_id", "x"]).to_pylist() == [{"user_id": 1, "x": 1.0}, {"user_id": 2, "x": 2.0},
                                                          {"user_id": 3, "x": 300.0}]
    assert Manifest.load(SnapshotRoot(root).manifest_path(r.stdout.strip())).views["v"].dropped_duplicates == 3
