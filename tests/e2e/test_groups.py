"""Storage groups end to end (snapshot/FORMAT.md): every grouping serves the source Parquet's values in
every view order and subset; a changed view is the only one re-read from Parquet while the group's other
views keep their stored bytes; a swap between groupings under load drops nothing; bad groupings and
broken group databases are refused with their names. A bad grouping in features.yaml is refused before the
load starts its workers: that runs the CLI's main() in-process (support.inprocess)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from rocksdict import AccessType, Options, Rdict

from quiver.loader.load import LoadOptions, load
from quiver.snapshot import Manifest, SnapshotRoot, encode_int64_key
from quiver.v1 import quiver_pb2 as pb
from support.inprocess import run_in_process
from support.oracle import decode_view_row, wire_fields
from support.processes import SERVING, ServerProcess, UsersSnapshots, run_quiver, wait_for

VIEWS = ["profile", "activity", "embedding", "ads"]
UNKNOWN = [-1, 10**12, -(2**63), 2**63 - 1]
GROUPINGS: dict[str, dict[str, str]] = {
    "one": {},                                                          # the default: one group, every view
    "per-view": {v: v for v in VIEWS},
    "mixed": {"profile": "hot", "embedding": "hot", "activity": "cold"},  # ads stays in the default group
}
ORDERS = [[], VIEWS[::-1], ["ads", "profile"], ["activity"], ["embedding", "ads", "activity", "profile"],
          ["ads", "embedding", "profile"]]


def write_features(src: Path, grouping: dict[str, str], name: str) -> Path:
    spec = yaml.safe_load((src / "features.yaml").read_text())
    for v in spec["views"]:
        if v["name"] in grouping:
            v["group"] = grouping[v["name"]]
    path = src / f"features-{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


LOAD_PROCESS = partial(run_quiver, timeout=180)


def load_cli(features: Path, root: Path, as_of: str, *flags: str, run: Callable[..., Any] = LOAD_PROCESS) -> Any:
    """`quiver load`, as a process unless `run` is run_in_process."""
    return run("load", "--features", features, "--root", root, "--as-of", as_of, "--workers", "1", *flags)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("groups") / "src"
    run_quiver("generate", "--events-per-user", "0",
        "--users", "1500", "--out", src, "--seed", "11", check=True, timeout=60)
    return src


def parquet_rows(src: Path, view: str) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in (src / view).glob("*.parquet"))


@pytest.fixture(scope="module", params=list(GROUPINGS))
def grouping(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def grouped(grouping: str, source: Path, tmp_path_factory: pytest.TempPathFactory) -> UsersSnapshots:
    root = tmp_path_factory.mktemp(f"root-{grouping}")
    r = load_cli(write_features(source, GROUPINGS[grouping], grouping), root, "2026-03-01T00:00:00Z")
    assert r.returncode == 0, r.stderr
    v = r.stdout.split()[-1]
    return UsersSnapshots(root, {v: source}, v, v, users=1500)


def test_manifest_records_the_groups(grouping: str, grouped: UsersSnapshots) -> None:
    m = Manifest.load(SnapshotRoot(grouped.template).manifest_path(grouped.v1))
    expected: dict[str, list[str]] = {}
    for v in VIEWS:
        expected.setdefault(GROUPINGS[grouping].get(v, "default"), []).append(v)
    assert {g: s.views for g, s in m.groups.items()} == expected
    assert sorted(p.name for p in (SnapshotRoot(grouped.template).version_dir(grouped.v1) / "online").iterdir()) == \
        sorted(expected)
    for s in m.groups.values():  # a group holds every entity any of its views holds, once
        assert s.rows == len(set().union(*(grouped.expected(grouped.v1, v) for v in s.views)))


def test_every_order_and_subset_serves_the_source_values(grouped: UsersSnapshots, start_server: Any) -> None:
    s: ServerProcess = start_server(grouped.template)
    s.wait_health(SERVING)
    schema = grouped.schema(grouped.v1)
    channel = s.channel()
    ids = list(range(grouped.users)) + UNKNOWN
    for views in ORDERS:
        answered = views or VIEWS
        for start in range(0, len(ids), 500):
            batch = ids[start:start + 500]
            raw = bytes(channel.unary_unary("/quiver.v1.FeatureStore/GetFeatures")(
                pb.GetFeaturesRequest(int64_ids=batch, views=views).SerializeToString(), timeout=20))
            resp = pb.GetFeaturesResponse.FromString(raw)
            assert resp.version == grouped.v1 and list(resp.views) == answered
            rows = [wire_fields(r).get(1, []) for r in wire_fields(raw).get(3, [])]
            assert len(rows) == len(batch)
            for uid, row, data in zip(batch, resp.rows, rows, strict=True):
                assert len(row.found) == len(answered) == len(data), (views, uid)
                for view, found, viewrow in zip(answered, row.found, data, strict=True):
                    expected = grouped.expected(grouped.v1, view).get(uid)
                    if expected is None:
                        assert not found and viewrow == b"", (views, uid, view)
                    else:
                        assert found, (views, uid, view)
                        assert decode_view_row(schema.view(view), viewrow) == expected, (views, uid, view)
    # ads lacks ~15% of the users: those come back not found in every order above
    assert 0 < len(grouped.expected(grouped.v1, "ads")) < grouped.users


def stored_view_bytes(root: Path, version: str, view: str) -> dict[bytes, bytes]:
    """key -> the view's ViewRow bytes, parsed out of its group's values with the generated EntityRow."""
    m = Manifest.load(SnapshotRoot(root).manifest_path(version))
    group = m.schema.view(view).group
    at = m.groups[group].views.index(view)
    db = Rdict(str(SnapshotRoot(root).online_dir(version, group)), Options(raw_mode=True),
               access_type=AccessType.read_only())
    try:
        rows = {bytes(k): pb.EntityRow.FromString(v) for k, v in db.items()}  # type: ignore[arg-type]
    finally:
        db.close()
    return {k: r.views[at].SerializeToString() for k, r in rows.items() if r.found[at]}


def changed_ads(src: Path, dest: Path) -> Path:
    """A copy of the generated data whose ads source differs: every ctr_7d doubled, some users dropped."""
    shutil.copytree(src, dest)
    (part, *rest) = sorted((dest / "ads").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in (part, *rest)])
    for p in rest:
        p.unlink()
    table = table.set_column(table.column_names.index("ctr_7d"), "ctr_7d",
                             pc.multiply(table.column("ctr_7d"), pa.scalar(2.0, table.schema.field("ctr_7d").type)))
    pq.write_table(table.slice(0, len(table) - 100), part)
    return dest


def test_a_damaged_current_version_is_rebuilt_not_linked(source: Path, tmp_path: Path) -> None:
    """Reuse hard-links the current version's files; one truncated in place must not pass into the next
    version under its old checksum. The next load of the same data re-reads everything instead."""
    root, features = tmp_path / "root", write_features(source, {}, "damaged")
    first = load(features, root, LoadOptions(workers=1, as_of=datetime(2026, 3, 1, tzinfo=UTC)))
    (sst, *_) = sorted(SnapshotRoot(root).online_dir(first.version, "default").glob("*.sst"))
    with open(sst, "r+b") as f:
        f.truncate(sst.stat().st_size // 2)
    second = load(features, root, LoadOptions(workers=1, as_of=datetime(2026, 3, 2, tzinfo=UTC)))
    assert second.rows_read == {v: parquet_rows(source, v) for v in VIEWS}
    assert all(g.reused_from == "" for g in second.manifest.groups.values())
    assert all(v.reused_from == "" for v in second.manifest.views.values())
    r = run_quiver("verify", "--root", root)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("grouping", ["one", "mixed"])
def test_a_changed_view_is_the_only_one_read_from_parquet(source: Path, tmp_path: Path,
                                                           grouping: str) -> None:
    root = tmp_path / "root"
    first = load(write_features(source, GROUPINGS[grouping], grouping), root,
                 LoadOptions(workers=2, as_of=datetime(2026, 3, 1, tzinfo=UTC)))
    assert first.rows_read == {v: parquet_rows(source, v) for v in VIEWS}
    src2 = changed_ads(source, tmp_path / "src2")
    second = load(write_features(src2, GROUPINGS[grouping], grouping), root,
                  LoadOptions(workers=2, as_of=datetime(2026, 3, 2, tzinfo=UTC)))
    assert second.rows_read == {"ads": parquet_rows(src2, "ads")}, "only the changed view is read from its sources"
    m1, m2 = first.manifest, second.manifest
    ads_group = m2.schema.view("ads").group
    for view in VIEWS:
        if view == "ads":
            continue
        assert m2.views[view].reused_from == first.version
        assert stored_view_bytes(root, second.version, view) == stored_view_bytes(root, first.version, view), view
        if m2.schema.view(view).group != ads_group:  # a group without the changed view is linked whole
            assert m2.groups[m2.schema.view(view).group].reused_from == first.version
    assert m2.groups[ads_group].reused_from == ""
    expected = UsersSnapshots(root, {second.version: src2}, "", "").expected(second.version, "ads")
    got = stored_view_bytes(root, second.version, "ads")
    assert len(got) == len(expected) == m2.views["ads"].rows == m1.views["ads"].rows - 100
    schema = m2.schema.view("ads")
    for uid, row in expected.items():
        assert decode_view_row(schema, got[encode_int64_key(uid)]) == row, uid
    r = run_quiver("verify", "--root", root)
    assert r.returncode == 0, r.stdout + r.stderr


def test_swap_between_groupings_under_load_drops_nothing(source: Path, tmp_path: Path,
                                                         start_server: Any) -> None:
    root = tmp_path / "root"
    r = load_cli(write_features(source, GROUPINGS["one"], "one"), root, "2026-03-01T00:00:00Z")
    assert r.returncode == 0, r.stderr
    v1 = r.stdout.split()[-1]
    src2 = changed_ads(source, tmp_path / "src2")
    expected = {v1: UsersSnapshots(root, {v1: source}, v1, v1)}
    s: ServerProcess = start_server(root, "--poll-seconds", "0.1")
    s.wait_health(SERVING)
    stop = threading.Event()
    failures: list[str] = []
    answered: dict[str, int] = {}
    responses: list[tuple[str, list[int], Any]] = []

    def hammer() -> None:
        stub = s.stub()
        i = 0
        while not stop.is_set():
            ids = [(i * 37 + k) % 1500 for k in range(20)]
            i += 1
            try:
                resp = stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=ids, views=["ads", "profile"]), timeout=10)
            except grpc.RpcError as e:
                failures.append(f"{e.code()}: {e.details()}")
                continue
            answered[resp.version] = answered.get(resp.version, 0) + 1
            if i % 10 == 0:
                responses.append((resp.version, ids, resp))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: sum(answered.values()) > 30, what="traffic on v1")
        r = load_cli(write_features(src2, GROUPINGS["per-view"], "per-view"), root, "2026-03-02T00:00:00Z",
                     "--allow-regroup")
        assert r.returncode == 0, r.stderr
        v2 = r.stdout.split()[-1]
        expected[v2] = UsersSnapshots(root, {v2: src2}, v2, v2)
        wait_for(lambda: answered.get(v2, 0) > 30, what="traffic on v2", timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert set(answered) == {v1, v2}
    for version, ids, resp in responses:  # each answer holds the values of the version it names
        schema = expected[version].schema(version)
        for uid, row in zip(ids, resp.rows, strict=True):
            for view, found, vr in zip(["ads", "profile"], row.found, row.views, strict=True):
                exp = expected[version].expected(version, view).get(uid)
                assert found == (exp is not None), (version, uid, view)
                if exp is not None:
                    assert decode_view_row(schema.view(view), vr.SerializeToString()) == exp


@pytest.mark.parametrize(("group", "message"), [
    ("", "'group' names nothing"),
    (None, "'group' names nothing"),
    (["a", "b"], "belongs to exactly one storage group"),
    ("no spaces", "group: name 'no spaces' must match"),
])
def test_bad_groups_name_file_view_and_group(source: Path, tmp_path: Path, group: Any, message: str) -> None:
    spec = yaml.safe_load((source / "features.yaml").read_text())
    spec["views"][1]["group"] = group
    path = source / "features-bad.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = load_cli(path, tmp_path / "root", "2026-03-01T00:00:00Z", run=run_in_process)
    assert r.returncode == 2, r.stderr
    assert str(path) in r.stderr and "view 'activity'" in r.stderr and message in r.stderr, r.stderr
    assert not (tmp_path / "root" / "CURRENT").exists()


def test_regrouping_is_refused_unless_asked_for(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert load_cli(write_features(source, GROUPINGS["one"], "one"), root, "2026-03-01T00:00:00Z").returncode == 0
    before = SnapshotRoot(root).current()
    mixed = write_features(source, GROUPINGS["mixed"], "mixed")
    r = load_cli(mixed, root, "2026-03-02T00:00:00Z")
    assert r.returncode == 2
    assert f"{mixed}: view 'profile': group changes from 'default' (version {before}) to 'hot'" in r.stderr
    assert "--allow-regroup" in r.stderr and SnapshotRoot(root).current() == before
    r = load_cli(mixed, root, "2026-03-02T00:00:00Z", "--allow-regroup")
    assert r.returncode == 0, r.stderr
    assert set(Manifest.load(SnapshotRoot(root).manifest_path(r.stdout.split()[-1])).groups) == \
        {"hot", "cold", "default"}


@pytest.fixture
def two_versions(source: Path, tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    root = tmp_path / "root"
    r1 = load_cli(write_features(source, GROUPINGS["mixed"], "mixed"), root, "2026-03-01T00:00:00Z")
    r2 = load_cli(write_features(changed_ads(source, tmp_path / "src2"), GROUPINGS["mixed"], "mixed"), root,
                  "2026-03-02T00:00:00Z")
    assert r1.returncode == r2.returncode == 0, r1.stderr + r2.stderr
    v1, v2 = r1.stdout.split()[-1], r2.stdout.split()[-1]
    SnapshotRoot(root).set_current(v1)
    yield root, v1, v2


def test_a_missing_group_database_is_refused_and_the_old_version_serves(two_versions: tuple[Path, str, str],
                                                                         start_server: Any) -> None:
    root, v1, v2 = two_versions
    s: ServerProcess = start_server(root, "--poll-seconds", "0.1", metrics=True)
    s.wait_health(SERVING)
    shutil.rmtree(SnapshotRoot(root).online_dir(v2, "cold"))
    SnapshotRoot(root).set_current(v2)
    wait_for(lambda: s.metric("quiver_snapshot_refused_total") == 1, what="the refusal")
    assert "online/cold/" in s.logs() and f"refused version {v2}" in s.logs()
    resp = s.stub().GetFeatures(pb.GetFeaturesRequest(int64_ids=[1, 2]), timeout=10)
    assert resp.version == v1 and all(r.found[1] for r in resp.rows)


def test_a_format_1_root_is_refused_with_how_to_rebuild(two_versions: tuple[Path, str, str], source: Path,
                                                         start_server: Any) -> None:
    root, v1, v2 = two_versions
    SnapshotRoot(root).set_current(v2)
    path = SnapshotRoot(root).manifest_path(v2)
    path.write_text(path.read_text().replace('"format_version": 2', '"format_version": 1'))
    s: ServerProcess = start_server(root, "--poll-seconds", "0.1")
    wait_for(lambda: "format_version 1" in s.logs(), what="the refusal of the format-1 version")
    assert "rebuild it with `quiver load`" in s.logs()
    # the loader does not reuse across formats: it rebuilds every view from its sources
    r = load_cli(write_features(source, GROUPINGS["mixed"], "mixed"), root, "2026-03-03T00:00:00Z")
    assert r.returncode == 0, r.stderr
    m = Manifest.load(SnapshotRoot(root).manifest_path(r.stdout.split()[-1]))
    assert all(v.reused_from == "" for v in m.views.values())
