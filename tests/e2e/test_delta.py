"""Delta versions (loader/delta.py): changes to some entities of some views, published on top of CURRENT as
base files plus one cumulative delta, must equal a full load of the merged data, online and offline.

The oracle: the source Parquet merged with the changes by this test (a changed key's rows replaced, a removed
key's rows dropped), loaded in full into another root at the same as-of time. Every stored key and value of
every group, and every offline row read for training, must be equal."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from rocksdict import AccessType, Options, Rdict

from quiver.loader.delta import ChangeOptions, load_changes
from quiver.loader.generate import generate
from quiver.loader.load import LoadOptions, load
from quiver.loader.pause import PAUSE_AT, PAUSE_FILE
from quiver.snapshot import Manifest, SnapshotRoot, file_checksum
from quiver.training import as_of_join, training_frame
from quiver.v1 import quiver_pb2 as pb
from support.processes import QUIVER, ServerProcess, run_quiver, wait_for

USERS = 3000
AS_OF = "2026-11-01T00:00:00Z"


def _as_of(i: int) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=i)


def stored_pairs(root: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every (key, value) each group of CURRENT holds, read through RocksDB (delta above base)."""
    snap = SnapshotRoot(root)
    m = Manifest.load(snap.manifest_path(snap.current() or ""))
    out = {}
    for g in m.groups:
        db = Rdict(str(snap.online_dir(m.version, g)), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            out[g] = list(db.items())
        finally:
            db.close()
    return out


def same_values(x: pa.ChunkedArray, y: pa.ChunkedArray) -> bool:
    """Equal values and nulls; floats compared by bits (NaN equals the same NaN)."""
    x, y = x.combine_chunks(), y.combine_chunks()
    if not pa.types.is_floating(x.type):
        return bool(x.equals(y))
    valid = x.is_valid().to_numpy(zero_copy_only=False)
    if not (valid == y.is_valid().to_numpy(zero_copy_only=False)).all():
        return False
    bits = np.uint32 if x.type == pa.float32() else np.uint64
    xs = x.fill_null(0).to_numpy(zero_copy_only=False).view(bits)
    ys = y.fill_null(0).to_numpy(zero_copy_only=False).view(bits)
    return bool((xs[valid] == ys[valid]).all())


def frame(root: Path, version: str | None = None) -> pa.Table:
    return training_frame(root, version)


class Sources:
    """The generated sources, and the same merged with the changes applied so far (the oracle's input)."""

    def __init__(self, d: Path, seed: int = 1) -> None:
        self.src = d / "src"
        generate(USERS, self.src, seed)
        self.features = self.src / "features.yaml"
        # two storage groups: a change to one view leaves the other group's files linked whole
        text = self.features.read_text()
        assert "- name: profile\n" in text
        self.features.write_text(text.replace("- name: profile\n", "- name: profile\n  group: p\n", 1))
        self.tables = {v.name: pq.read_table(list((self.src / v.name).glob("*.parquet")))
                       for v in _views(self.features)}
        self.rng = np.random.default_rng(seed)

    def change(self, view: str, fraction: float, deleted: float = 0.0, new: int = 0) -> pa.Table:
        """Random rows of `view` for `fraction` of its keys and `new` keys it lacks, new values drawn from
        other rows of the view; `deleted` of them marked removed. Applied to the merged tables."""
        t = self.tables[view]
        key = t.column_names[0] if "user_id" not in t.column_names else "user_id"
        keys = pc.unique(t.column(key)).to_numpy()
        chosen = self.rng.choice(keys, max(1, int(len(keys) * fraction)), replace=False)
        chosen = np.concatenate([chosen, np.arange(new) + int(keys.max()) + 1])
        donors = t.take(pa.array(self.rng.integers(0, t.num_rows, len(chosen))))
        rows = donors.set_column(donors.column_names.index(key), key, pa.array(chosen, t.schema.field(key).type))
        gone = self.rng.random(len(chosen)) < deleted
        gone[len(chosen) - new:] = False
        rest = t.filter(pc.invert(pc.is_in(t.column(key), value_set=pa.array(chosen))))
        self.tables[view] = pa.concat_tables([rest, rows.filter(pa.array(~gone))])
        return rows.append_column("_deleted", pa.array(gone))

    def merged(self, d: Path) -> Path:
        """A folder like the source one, holding the merged tables."""
        out = d
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        shutil.copy(self.features, out / "features.yaml")
        for name, t in self.tables.items():
            (out / name).mkdir()
            pq.write_table(t, out / name / "part-0.parquet")
        return out / "features.yaml"


def _views(features: Path) -> list[Any]:
    from quiver.loader.definitions import load_definitions

    return list(load_definitions(features).views)


def assert_equal_to_full_load(tmp: Path, root: Path, sources: Sources, as_of: Any) -> None:
    oracle = tmp / "oracle-root"
    shutil.rmtree(oracle, ignore_errors=True)
    load(sources.merged(tmp / "merged"), oracle, LoadOptions(workers=2, as_of=as_of))
    got, want = stored_pairs(root), stored_pairs(oracle)
    assert got.keys() == want.keys()
    for g in want:
        assert len(got[g]) == len(want[g]), g
        assert got[g] == want[g], f"group {g}: stored pairs differ from a full load of the merged data"
    a, b = frame(root), frame(oracle)
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in b.column_names:
        assert same_values(a.column(name), b.column(name)), f"offline column {name} differs from a full load"


def test_a_delta_equals_a_full_load_of_the_merged_data(tmp_path: Path) -> None:
    s = Sources(tmp_path)
    root = tmp_path / "root"
    load(s.features, root, LoadOptions(workers=2, as_of=_as_of(0)))
    base = SnapshotRoot(root).current()
    r = load_changes(root, {"activity": s.change("activity", 0.02, deleted=0.2)}, ChangeOptions(as_of=_as_of(1)))
    assert r.published and SnapshotRoot(root).current() == r.version != base
    m = r.manifest
    assert m.changes is not None and m.changes.previous == base
    assert_equal_to_full_load(tmp_path, root, s, _as_of(1))


class _LateFuture(Future[Any]):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            try:
                self.set_result(self.fn())
            except Exception as e:   # noqa: BLE001 - the future carries it, as a thread's would
                self.set_exception(e)
        return super().result(timeout)


class _LateHashing(ThreadPoolExecutor):
    """A hashing pool whose work starts only when its result is asked for: a thread that starts late."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        return _LateFuture(lambda: fn(*args, **kwargs))


def test_a_delta_whose_hashing_starts_late_still_hashes_the_delta_sst(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The delta SST is hashed on a thread while the ingestion moves it out of staging; a thread that
    starts after the move must still hash it (CI once failed here with a FileNotFoundError)."""
    import quiver.loader.delta as delta

    real = delta.ThreadPoolExecutor
    monkeypatch.setattr(delta, "ThreadPoolExecutor", lambda n, thread_name_prefix="": (
        _LateHashing(n) if thread_name_prefix == "quiver-hash" else real(n, thread_name_prefix=thread_name_prefix)))
    s = Sources(tmp_path)
    root = tmp_path / "root"
    load(s.features, root, LoadOptions(workers=2, as_of=_as_of(0)))
    r = load_changes(root, {"activity": s.change("activity", 0.02)}, ChangeOptions(as_of=_as_of(1)))
    assert r.published and r.manifest.groups
    delta_files = [f for g in r.manifest.groups.values() if g.delta for f in g.delta.files]
    assert delta_files
    recorded = {f.path: f.checksum for f in r.manifest.files}
    vdir = SnapshotRoot(root).version_dir(r.version)
    for f in delta_files:   # recorded, and the checksum of the file as it stands in the version
        assert recorded[f] == file_checksum(vdir / f), f
    assert_equal_to_full_load(tmp_path, root, s, _as_of(1))


def test_24_deltas_with_a_rebase_and_a_full_load_equal_a_full_load_of_the_merged_data(tmp_path: Path) -> None:
    s = Sources(tmp_path, seed=7)
    root = tmp_path / "root"
    load(s.features, root, LoadOptions(workers=2, as_of=_as_of(0)))
    views = sorted(s.tables)
    rebased = []
    for i in range(1, 26):
        if i == 6:   # a full load of unchanged sources keeps the changes: its views and groups are reused
            full = load(s.features, root, LoadOptions(workers=2, as_of=_as_of(i)))
            assert full.published and full.linked_groups and SnapshotRoot(root).current() == full.version
            assert any(g.delta for g in full.manifest.groups.values())
            continue
        view = views[int(s.rng.integers(0, len(views)))]
        # step 12 rebases whatever group it touches (a threshold below its delta); the others stay deltas
        opts = ChangeOptions(as_of=_as_of(i), rebase_fraction=0.001 if i == 12 else 0.9)
        r = load_changes(root, {view: s.change(view, 0.01, deleted=0.1)}, opts)
        rebased += r.rebased
        if i == 12:
            assert r.rebased, "the forced rebase did not happen"
            assert all(r.manifest.groups[g].delta is None for g in r.rebased)
            assert_equal_to_full_load(tmp_path, root, s, _as_of(i))
    m = Manifest.load(SnapshotRoot(root).manifest_path(SnapshotRoot(root).current() or ""))
    assert any(g.delta is not None for g in m.groups.values()), "no group carries a delta at the end"
    assert len(rebased) == 1
    assert_equal_to_full_load(tmp_path, root, s, _as_of(25))


def _rows(server: ServerProcess, ids: list[int], version: str = "") -> tuple[str, list[Any]]:
    r = server.stub().GetFeatures(pb.GetFeaturesRequest(int64_ids=ids, version=version), timeout=10)
    return r.version, list(r.rows)


def test_a_server_swaps_to_a_delta_checks_only_the_delta_and_still_serves_the_pinned_base(tmp_path: Path) -> None:
    """The delta version is read as any version: the server swaps to it, answers what a full load of the
    merged data answers (served by another server), hashes none of the base files it already proved, and
    still answers the base version when a call pins it."""
    s = Sources(tmp_path, seed=3)
    root, oracle = tmp_path / "root", tmp_path / "oracle"
    load(s.features, root, LoadOptions(workers=2, as_of=_as_of(0)))
    base = SnapshotRoot(root).current() or ""
    change = s.change("activity", 0.02, deleted=0.2, new=5)
    pq.write_table(change, tmp_path / "changes.parquet")
    load(s.merged(tmp_path / "merged"), oracle, LoadOptions(workers=2, as_of=_as_of(0)))
    ids = sorted({*change.column("user_id").to_pylist(), *range(1, 60)})
    server = ServerProcess(root, tmp_path / "server.log", "--verify", "full")
    want = ServerProcess(oracle, tmp_path / "oracle.log")
    try:
        server.wait_health()
        want.wait_health()
        before = _rows(server, ids)
        assert before[0] == base
        r = run_quiver("load", "--root", root, "--changes", f"activity={tmp_path / 'changes.parquet'}")
        assert r.returncode == 0, r.stderr
        delta = r.stdout.split()[-1]
        assert f"published delta {delta} on {base}" in r.stderr, r.stderr
        wait_for(lambda: _rows(server, [1])[0] == delta, timeout=60, what="the server to swap to the delta")
        got = _rows(server, ids)
        assert got[1] == _rows(want, ids)[1], "the delta version answers otherwise than a full load of the merged data"
        assert got[1] != before[1]
        assert _rows(server, ids, base) == before, "the pinned base version answers otherwise"
        wait_for(lambda: f"version {delta}: hashed" in server.logs(), timeout=30, what="the check's log line")
        line = next(x for x in server.logs().splitlines() if f"version {delta}: hashed" in x)
        assert "hashed 0 online files" in line, line
    finally:
        server.stop()
        want.stop()


def test_a_replica_syncs_a_delta_by_downloading_only_what_changed(tmp_path: Path) -> None:
    from quiver import distribution as dist

    s = Sources(tmp_path, seed=4)
    root, rep, store = tmp_path / "root", tmp_path / "replica", tmp_path / "store"
    store.mkdir()
    load(s.features, root, LoadOptions(workers=2, as_of=_as_of(0)))
    dist.publish(root, store.as_uri())
    dist.sync(store.as_uri(), rep)
    r = load_changes(root, {"profile": s.change("profile", 0.01, deleted=0.1)}, ChangeOptions(as_of=_as_of(1)))
    dist.publish(root, store.as_uri())
    synced = dist.sync(store.as_uri(), rep)
    assert SnapshotRoot(rep).current() == r.version
    m = r.manifest
    delta_files = {p for g in m.groups.values() if g.delta for p in g.delta.files}
    big = {f.path for f in m.files if f.path.endswith((".sst", ".parquet"))}
    downloaded = set(synced.downloaded)
    # of the data files, only the delta's: the base's SSTs and Parquet are hard-linked from the version held
    assert downloaded & big == delta_files | {f.path for f in m.files if "/delta/" in f.path}, downloaded & big
    moved = sum(f.size for f in m.files if f.path in downloaded)
    assert moved < 0.2 * m.size_bytes, (moved, m.size_bytes)
    assert stored_pairs(rep) == stored_pairs(root)
    # the store holds the delta's files once: the base's are referenced, not copied
    stored = sum(p.stat().st_size for p in (store / "versions" / r.version).rglob("*") if p.is_file())
    assert stored < 0.2 * m.size_bytes, (stored, m.size_bytes)
    # a replica that never had the base reads the references; training reads the store's delta version
    fresh = tmp_path / "fresh"
    dist.sync(store.as_uri(), fresh)
    assert SnapshotRoot(fresh).current() == r.version and stored_pairs(fresh) == stored_pairs(root)
    a, b = training_frame(store.as_uri()), frame(root)
    assert a.num_rows == b.num_rows and all(same_values(a.column(c), b.column(c)) for c in b.column_names)


@pytest.mark.parametrize("stage", ["read", "offline", "online", "checks"])
def test_a_delta_killed_at_any_stage_publishes_nothing_and_the_next_one_cleans_up(tmp_path: Path, stage: str) -> None:
    s = Sources(tmp_path, seed=5)
    root = tmp_path / "root"
    load(s.features, root, LoadOptions(workers=2, as_of=_as_of(0)))
    snap = SnapshotRoot(root)
    base, versions = snap.current(), snap.versions()
    pq.write_table(s.change("profile", 0.05, deleted=0.1), tmp_path / "c.parquet")
    paused = tmp_path / "paused"
    env = {**os.environ, PAUSE_AT: stage, PAUSE_FILE: str(paused)}
    with open(tmp_path / "delta.log", "wb") as log:
        proc = subprocess.Popen([QUIVER, "load", "--root", str(root), "--changes", f"profile={tmp_path / 'c.parquet'}"],
                                env=env, stdout=log, stderr=log)
        try:
            wait_for(lambda: paused.exists() or proc.poll() is not None, timeout=60, what=f"a pause at {stage}")
            assert proc.poll() is None, (tmp_path / "delta.log").read_text()
            assert list((root / "staging").glob("load-*")), "not mid-build: no staging folder"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert snap.current() == base and snap.versions() == versions
    assert sorted(p.name for p in (root / "versions").iterdir()) == versions, "a partial version is visible"
    r = load_changes(root, {"profile": tmp_path / "c.parquet"})
    assert snap.current() == r.version and not list((root / "staging").glob("load-*"))
    assert_equal_to_full_load(tmp_path, root, s, _as_of(0))


def test_a_delta_failing_its_checks_is_refused_and_row_checks_count_the_whole_version(tmp_path: Path) -> None:
    src = tmp_path / "src"
    generate(2000, src, 2, True)   # with checks: age in [0, 120]; min_rows 1000 per view
    root = tmp_path / "root"
    load(src / "features.yaml", root, LoadOptions(workers=2, as_of=_as_of(0)))
    snap = SnapshotRoot(root)
    base = snap.current()
    profile = pq.read_table(list((src / "profile").glob("*.parquet"))).slice(0, 20)
    bad = profile.set_column(profile.column_names.index("age"), "age", pa.array([130] * 20, pa.int32()))
    pq.write_table(bad, tmp_path / "bad.parquet")
    r = run_quiver("load", "--root", root, "--changes", f"profile={tmp_path / 'bad.parquet'}")
    assert r.returncode == 13, r.stderr
    assert "view 'profile', feature 'age': max failed" in r.stderr and "nothing was published" in r.stderr, r.stderr
    assert snap.current() == base and len(snap.versions()) == 1
    # 20 changed rows pass min_rows (1,000): the view's row count is the version's, not the delta's
    pq.write_table(profile, tmp_path / "good.parquet")
    ok = run_quiver("load", "--root", root, "--changes", f"profile={tmp_path / 'good.parquet'}")
    assert ok.returncode == 0, ok.stderr
    # removing 60% of a view's users trips max_row_change (0.5) against the version before
    users = pq.read_table(list((src / "activity").glob("*.parquet")), columns=["user_id"]).column(0)
    gone = pa.table({"user_id": users.slice(0, 1200), "_deleted": pa.array([True] * 1200)})
    pq.write_table(gone, tmp_path / "gone.parquet")
    r = run_quiver("load", "--root", root, "--changes", f"activity={tmp_path / 'gone.parquet'}")
    assert r.returncode == 13 and "view 'activity': max_row_change failed" in r.stderr, r.stderr


def test_string_keys_and_a_view_in_its_own_group(tmp_path: Path) -> None:
    """String entity keys sort bytewise in RocksDB; a change to one group leaves the other linked whole."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(11)
    ids = [f"user-{i:05d}" for i in rng.permutation(500)] + ["é", "", "zz\x00"]
    pq.write_table(pa.table({"uid": ids, "score": rng.random(len(ids)), "tag": [f"t{i % 7}" for i in range(len(ids))]}),
                   src / "a.parquet")
    pq.write_table(pa.table({"uid": ids[::2], "n": pa.array(range(len(ids[::2])), pa.int64())}), src / "b.parquet")
    (src / "features.yaml").write_text(
        "entity: {name: uid, key_type: string}\n"
        "views:\n"
        "  - {name: a, source: a.parquet, features: [{name: score, type: float64}, {name: tag, type: string}]}\n"
        "  - {name: b, source: b.parquet, group: other, features: [{name: n, type: int64}]}\n")
    root = tmp_path / "root"
    load(src / "features.yaml", root, LoadOptions(workers=2, as_of=_as_of(0)))
    base = Manifest.load(SnapshotRoot(root).manifest_path(SnapshotRoot(root).current() or ""))
    change = pa.table({"uid": ["user-00003", "", "new-one", "user-00004"], "score": [1.0, 2.0, 3.0, None],
                       "tag": ["x", "y", "z", None], "_deleted": [False, False, False, True]})
    r = load_changes(root, {"a": change}, ChangeOptions(as_of=_as_of(1)))
    assert r.manifest.groups["other"].delta is None and r.manifest.groups["default"].delta is not None
    other = [f for f in r.manifest.files if f.path.startswith("online/other/") and f.path.endswith(".sst")]
    assert other and all(
        os.stat(SnapshotRoot(root).version_dir(r.version) / f.path).st_ino
        == os.stat(SnapshotRoot(root).version_dir(base.version) / f.path).st_ino for f in other)
    merged = pq.read_table(src / "a.parquet")
    merged = merged.filter(pc.invert(pc.is_in(merged.column("uid"), value_set=change.column("uid"))))
    merged = pa.concat_tables([merged, change.slice(0, 3).drop_columns(["_deleted"])])
    oracle_src = tmp_path / "oracle-src"
    shutil.copytree(src, oracle_src)
    pq.write_table(merged, oracle_src / "a.parquet")
    oracle = tmp_path / "oracle"
    load(oracle_src / "features.yaml", oracle, LoadOptions(workers=2, as_of=_as_of(1)))
    assert stored_pairs(root) == stored_pairs(oracle)
    a, b = frame(root), frame(oracle)
    assert a.num_rows == b.num_rows and all(same_values(a.column(c), b.column(c)) for c in b.column_names)


def test_as_of_join_reads_each_label_from_the_delta_version_of_its_time(tmp_path: Path) -> None:
    """A label at or after a delta's as-of time gets the delta's row (a removed entity: nulls); one before
    gets the base's."""
    s = Sources(tmp_path, seed=9)
    root = tmp_path / "root"
    load(s.features, root, LoadOptions(workers=2, as_of=_as_of(0)))
    base = frame(root)
    change = s.change("activity", 0.01, deleted=0.5)
    r = load_changes(root, {"activity": change}, ChangeOptions(as_of=_as_of(2)))
    after = frame(root, r.version)
    ids = change.column("user_id").to_pylist()
    gone = set(change.filter(change.column("_deleted")).column("user_id").to_pylist())
    assert gone and len(gone) < len(ids)
    labels = pa.table({"user_id": ids * 2, "ts": pa.array([_as_of(1)] * len(ids) + [_as_of(3)] * len(ids),
                                                          pa.timestamp("us", tz="UTC"))})
    joined = as_of_join(labels, root, "user_id", "ts", views=["activity"])
    col = next(c for c in joined.column_names if c.startswith("activity__"))

    def value(t: pa.Table, uid: int) -> Any:
        i = t.column("user_id").to_pylist().index(uid) if uid in t.column("user_id").to_pylist() else None
        return None if i is None else t.column(col)[i].as_py()

    got = joined.column(col).to_pylist()
    for k, uid in enumerate(ids):
        assert got[k] == value(base, uid), f"user {uid} before the delta"
        want = None if uid in gone else value(after, uid)
        assert got[len(ids) + k] == want, f"user {uid} after the delta"
        if uid not in gone:
            assert want == change.filter(pc.equal(change.column("user_id"), uid)).column(
                col.split("__", 1)[1])[0].as_py()


def test_a_full_load_that_rebuilds_a_group_keeps_the_changes_of_its_other_views(tmp_path: Path) -> None:
    """A delta to `activity`; then new sources for `ads` (same group) rebuild the group in full, `activity`'s
    bytes cut from the delta version; then another delta to `activity`. Equal to a full load of it all."""
    s = Sources(tmp_path, seed=13)
    root = tmp_path / "root"
    load(s.features, root, LoadOptions(workers=2, as_of=_as_of(0)))
    load_changes(root, {"activity": s.change("activity", 0.03, deleted=0.2)}, ChangeOptions(as_of=_as_of(1)))
    ads = s.tables["ads"]
    s.tables["ads"] = ads.slice(0, ads.num_rows // 2)   # the extraction job rewrote ads
    for old in (s.src / "ads").glob("*.parquet"):
        old.unlink()
    pq.write_table(s.tables["ads"], s.src / "ads" / "part-0.parquet")
    full = load(s.features, root, LoadOptions(workers=2, as_of=_as_of(2)))
    assert "activity" in full.reused_views and "default" not in full.linked_groups
    assert full.manifest.views["activity"].delta is not None
    assert all(g.delta is None for g in full.manifest.groups.values() if "activity" in g.views)
    load_changes(root, {"activity": s.change("activity", 0.03, deleted=0.2)}, ChangeOptions(as_of=_as_of(3)))
    assert_equal_to_full_load(tmp_path, root, s, _as_of(3))
