"""`quiver serve` end to end: a real server process over a real loaded root, on TCP and on a Unix socket.

One server is shared by the module: it starts on v1 and then follows CURRENT to v2, so it holds a
current and a previous version. Tests that need their own flags start their own server.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver.client import FeatureClient
from quiver.snapshot import Manifest, SnapshotRoot
from quiver.v1 import quiver_pb2 as pb
from quiver.v1 import quiver_pb2_grpc
from support.oracle import decode_view_row, response_views
from support.processes import (
    NOT_SERVING,
    SERVICE,
    SERVING,
    ServerProcess,
    UsersSnapshots,
    quiver_load,
    run_quiver,
    short_tmpdir,
    wait_for,
)
from support.stored import mismatches

VIEWS = ["profile", "activity", "embedding", "ads"]
MAX_ENTITIES = 1000
UNKNOWN_IDS = [-1, 2000, 2001, 10**12, -(2**63), 2**63 - 1]
GET_FEATURES = f"/{SERVICE}/GetFeatures"


@pytest.fixture(scope="module")
def server(users: UsersSnapshots, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("server")
    root = users.root(d / "root", current=users.v1)
    sock = short_tmpdir() / "quiver.sock"
    s = ServerProcess(root, d / "serve.log", "--uds", str(sock), "--max-entities", str(MAX_ENTITIES), metrics=True)
    s.uds = f"unix:{sock}"  # type: ignore[attr-defined]
    try:
        s.wait_health(SERVING)
        SnapshotRoot(root).set_current(users.v2)  # a second version: v2 current, v1 kept as previous
        stub = s.stub()
        wait_for(lambda: stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest()).current_version == users.v2,
                 what="the swap to v2")
        yield s
    finally:
        s.stop()


@pytest.fixture(params=["tcp", "uds"])
def target(request: pytest.FixtureRequest, server: ServerProcess) -> str:
    return server.target if request.param == "tcp" else str(server.uds)  # type: ignore[attr-defined]


def raw_get(channel: grpc.Channel, request: bytes, timeout: float = 10) -> bytes:
    """GetFeatures with no (de)serializer: bytes in, bytes out."""
    return bytes(channel.unary_unary(GET_FEATURES)(request, timeout=timeout))


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------

def test_values_equal_source_parquet_bit_exactly(server: ServerProcess, target: str, users: UsersSnapshots) -> None:
    """Every user of every view, plus unknown ids, compared with the source Parquet read by pyarrow;
    floats as bits (NaN included), read from the response bytes, not through a Python float."""
    schema = users.schema(users.v2)
    ids = list(range(users.users)) + UNKNOWN_IDS
    channel = server.channel(target)
    missing_ads = 0
    for start in range(0, len(ids), MAX_ENTITIES):
        batch = ids[start:start + MAX_ENTITIES]
        raw = raw_get(channel, pb.GetFeaturesRequest(int64_ids=batch).SerializeToString())
        resp = pb.GetFeaturesResponse.FromString(raw)
        assert resp.version == users.v2
        assert list(resp.views) == VIEWS
        assert len(resp.rows) == len(batch)
        for uid, row, raw_views in zip(batch, resp.rows, response_views(raw), strict=True):
            assert len(row.found) == len(VIEWS) == len(raw_views)
            for view, found, data in zip(VIEWS, row.found, raw_views, strict=True):
                expected = users.expected(users.v2, view).get(uid)
                if expected is None:
                    assert not found and data == b"", f"user {uid} in {view}: found={found}, {len(data)} bytes"
                    missing_ads += view == "ads" and 0 <= uid < users.users
                    continue
                assert found, f"user {uid} not found in {view}"
                got = decode_view_row(schema.view(view), data)
                assert got == expected, f"user {uid} in {view}: {mismatches({uid: expected}, [(uid, got)])}"
    # ads covers ~85% of users: the rest must have come back not found
    assert missing_ads == users.users - len(users.expected(users.v2, "ads")) > 0


def canonical(feature: pb.Feature, value: Any) -> Any:
    """A FeatureClient value in the canonical form of support.canon (floats as bits)."""
    if value is None:
        return None
    if feature.type == pb.FLOAT32:
        return ("f32", struct.unpack("<I", struct.pack("<f", value))[0])
    if feature.type == pb.FLOAT64:
        return ("f64", struct.unpack("<Q", struct.pack("<d", value))[0])
    if feature.type == pb.FLOAT32_LIST:
        return tuple(("f32", struct.unpack("<I", struct.pack("<f", x))[0]) for x in value)
    if feature.type == pb.INT64_LIST:
        return tuple(value)
    return value


def test_feature_client_decodes_by_name(server: ServerProcess, target: str, users: UsersSnapshots) -> None:
    ids = list(range(0, users.users, 7)) + UNKNOWN_IDS
    with FeatureClient(target) as c:
        result = c.get_features(ids)
        schema = {v.name: v for v in c.schema(result.version).views}
    assert result.version == users.v2 and result.views == VIEWS
    nan_seen = False
    for uid, row in zip(ids, result.rows, strict=True):
        for view in VIEWS:
            expected = users.expected(users.v2, view).get(uid)
            if expected is None:
                assert row[view] is None, f"user {uid} in {view}: expected not found"
                continue
            got = row[view]
            assert got is not None and list(got) == [f.name for f in schema[view].features]
            decoded = {f.name: canonical(f, got[f.name]) for f in schema[view].features}
            assert decoded == expected, f"user {uid} in {view}"
            nan_seen |= view == "profile" and got["churn_score"] is not None and math.isnan(got["churn_score"])
    assert nan_seen, "the sample should include a NaN churn_score"


def test_feature_client_takes_numpy_ids(server: ServerProcess, users: UsersSnapshots) -> None:
    """Training code holds ids as numpy arrays (a Parquet column's to_numpy())."""
    ids = np.array([3, 1, 2000], dtype=np.int64)
    with FeatureClient(server.target) as c:
        result = c.get_features(ids, ["profile"])
        assert [r["profile"] is not None for r in result.rows] == [True, True, False]
        assert result.rows[0] == c.get_features([3], ["profile"]).rows[0]
        with pytest.raises(grpc.RpcError) as e:
            c.get_features(np.array(["3"]), ["profile"])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_order_duplicates_and_view_subset(server: ServerProcess, target: str, users: UsersSnapshots) -> None:
    ids = [5, 3, 5, 2000, 3, 0, 5]
    views = ["ads", "profile"]
    with FeatureClient(target) as c:
        result = c.get_features(ids, views)
        everything = c.get_features(ids)
        schema = {v.name: v for v in c.schema(users.v2).views}
    assert result.views == views
    assert everything.views == VIEWS  # empty: all views in schema order
    assert len(result.rows) == len(ids)
    for uid, row, full in zip(ids, result.rows, everything.rows, strict=True):
        assert list(row) == views
        for view in views:
            exp = users.expected(users.v2, view).get(uid)   # the source Parquet, not another answer
            for answer in (row[view], full[view]):
                got = None if answer is None else {f.name: canonical(f, answer[f.name]) for f in schema[view].features}
                assert got == exp, f"user {uid} in {view}"
    assert result.rows[0] == result.rows[2] == result.rows[6]
    assert result.rows[1] == result.rows[4]
    assert result.rows[3] == {"ads": None, "profile": None}
    assert result.rows[0] != result.rows[1]


def test_a_view_named_twice_is_invalid_argument(server: ServerProcess, target: str) -> None:
    with FeatureClient(target) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.get_features([3], ["ads", "profile", "ads"])
        assert c.get_features([3], ["ads", "profile"]).views == ["ads", "profile"]  # the server is fine
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "['ads'] named more than once" in e.value.details(), e.value.details()


def test_pin_current_and_previous_version(server: ServerProcess, users: UsersSnapshots) -> None:
    ids = list(range(50))
    with FeatureClient(server.target) as c:
        for version in (users.v2, users.v1, ""):
            result = c.get_features(ids, ["embedding", "activity"], version)
            answered = version or users.v2
            assert result.version == answered
            schema = {v.name: v for v in c.schema(answered).views}
            for uid, row in zip(ids, result.rows, strict=True):
                for view in ("embedding", "activity"):
                    exp = users.expected(answered, view)[uid]
                    assert {f.name: canonical(f, row[view][f.name]) for f in schema[view].features} == exp  # type: ignore[index]
        assert c.schema(users.v1).version == users.v1
        info = c.snapshot_info()
    assert info.current_version == users.v2
    assert [v.version for v in info.loaded] == [users.v2, users.v1]
    manifest = Manifest.load(SnapshotRoot(users.template).manifest_path(users.v2))
    assert dict(info.loaded[0].rows) == manifest.rows()
    assert info.loaded[0].as_of == "2026-01-02T00:00:00Z" and info.loaded[1].as_of == "2026-01-01T00:00:00Z"
    assert info.current_age_seconds > 0


# ---------------------------------------------------------------------------------------------
# Bad input: the fitting status code and a message naming the problem
# ---------------------------------------------------------------------------------------------

BAD_REQUESTS = {
    "empty": (pb.GetFeaturesRequest(), grpc.StatusCode.INVALID_ARGUMENT, ["no entity ids"]),
    "too many": (pb.GetFeaturesRequest(int64_ids=range(MAX_ENTITIES + 1)), grpc.StatusCode.INVALID_ARGUMENT,
                 [str(MAX_ENTITIES + 1), f"limit is {MAX_ENTITIES}"]),
    "unknown view": (pb.GetFeaturesRequest(int64_ids=[1], views=["profile", "nope"]), grpc.StatusCode.NOT_FOUND,
                     ["'nope'"]),
    "string ids": (pb.GetFeaturesRequest(string_ids=["1"]), grpc.StatusCode.INVALID_ARGUMENT,
                   ["int64", "string_ids"]),
    "both id lists": (pb.GetFeaturesRequest(int64_ids=[1], string_ids=["1"]), grpc.StatusCode.INVALID_ARGUMENT,
                      ["string_ids"]),
    "unknown version": (pb.GetFeaturesRequest(int64_ids=[1], version="20990101T000000Z-000000000000"),
                        grpc.StatusCode.FAILED_PRECONDITION, ["20990101T000000Z-000000000000", "not loaded"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request(server: ServerProcess, case: str) -> None:
    request, code, words = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as e:
        server.stub().GetFeatures(request, timeout=10)
    assert e.value.code() == code, e.value.details()
    for word in words:
        assert word in e.value.details(), e.value.details()


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff\xff", b"\x0a\x7f", b"\x08\x80"])
def test_malformed_request_bytes(server: ServerProcess, target: str, garbage: bytes) -> None:
    with pytest.raises(grpc.RpcError) as e:
        raw_get(server.channel(target), garbage)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed GetFeaturesRequest" in e.value.details()


def test_schema_pin_to_unknown_version(server: ServerProcess) -> None:
    with pytest.raises(grpc.RpcError) as e:
        server.stub().GetSchema(pb.GetSchemaRequest(version="nope"), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "'nope'" in e.value.details()


def test_tiny_deadline_is_exceeded_not_hung(server: ServerProcess) -> None:
    stub = server.stub()
    request = pb.GetFeaturesRequest(int64_ids=range(MAX_ENTITIES))
    with pytest.raises(grpc.RpcError) as e:
        stub.GetFeatures(request, timeout=0.0001)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(stub.GetFeatures(request, timeout=10).rows) == MAX_ENTITIES  # and it still answers


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def test_metrics_endpoint(users: UsersSnapshots, tmp_path: Path, start_server: Callable[..., ServerProcess]) -> None:
    # its own server: no other test's requests can still be waiting for their flush into these counts
    root = users.root(tmp_path / "root", current=users.v1)
    server = start_server(root, metrics=True)
    server.wait_health(SERVING)
    SnapshotRoot(root).set_current(users.v2)
    stub = server.stub()
    wait_for(lambda: stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest()).current_version == users.v2,
             what="the swap to v2")
    before = {v: (server.metric("quiver_entities_requested_total", view=v),
                  server.metric("quiver_entities_found_total", view=v),
                  server.metric("quiver_entities_missing_total", view=v)) for v in VIEWS}
    assert set(before.values()) == {(0, 0, 0)}
    errors_before = server.metric("quiver_rpc_errors_total", method="GetFeatures", code="NOT_FOUND")
    count_before = server.metric("quiver_rpc_latency_seconds_count", method="GetFeatures")
    ids = list(range(users.users - 100, users.users)) + UNKNOWN_IDS
    stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=ids), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[1], views=["nope"]), timeout=10)

    def counted() -> bool:  # per-request counts are flushed once per poll interval
        return server.metric("quiver_entities_requested_total", view="ads") >= before["ads"][0] + len(ids)
    wait_for(counted, what="entity counts to be flushed")
    for view in VIEWS:
        found = sum(1 for i in ids if i in users.expected(users.v2, view))
        r0, f0, m0 = before[view]
        assert server.metric("quiver_entities_requested_total", view=view) - r0 == len(ids)
        assert server.metric("quiver_entities_found_total", view=view) - f0 == found
        assert server.metric("quiver_entities_missing_total", view=view) - m0 == len(ids) - found
    assert server.metric("quiver_rpc_errors_total", method="GetFeatures", code="NOT_FOUND") == errors_before + 1
    assert server.metric("quiver_rpc_latency_seconds_count", method="GetFeatures") > count_before
    buckets = [labels for labels, _ in server.samples("quiver_rpc_latency_seconds_bucket")
               if labels.get("method") == "GetFeatures"]
    assert {"0.001", "+Inf"} <= {b["le"] for b in buckets}
    current = {labels["version"]: value for labels, value in server.samples("quiver_snapshot_current")}
    assert current.get(users.v2) == 1 and current.get(users.v1, 0) == 0
    assert server.metric("quiver_snapshot_swaps_total") == 2  # first open, then v1 -> v2
    assert server.metric("quiver_snapshot_refused_total") == 0
    assert server.metric("quiver_snapshot_age_seconds") > 0


# ---------------------------------------------------------------------------------------------
# Limits and lifecycle: servers of their own
# ---------------------------------------------------------------------------------------------

def test_beyond_max_concurrent_is_resource_exhausted(start_server: Any, users: UsersSnapshots,
                                                     tmp_path: Path) -> None:
    s = start_server(users.root(tmp_path / "root"), "--max-concurrent", "1", metrics=True)
    s.wait_health(SERVING)
    request = pb.GetFeaturesRequest(int64_ids=range(MAX_ENTITIES)).SerializeToString()

    async def burst() -> list[grpc.StatusCode]:
        codes = []
        async with grpc.aio.insecure_channel(s.target) as ch:
            call = ch.unary_unary(GET_FEATURES)
            results = await asyncio.gather(*(call(request, timeout=30) for _ in range(40)), return_exceptions=True)
        for r in results:
            codes.append(r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK)
        return codes

    codes = asyncio.run(burst())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    assert grpc.StatusCode.OK in codes, codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert len(s.stub().GetFeatures(pb.GetFeaturesRequest(int64_ids=[1, 2]), timeout=10).rows) == 2
    # load shedding shows in the errors metric, and health checks are not shed
    assert s.metric("quiver_rpc_errors_total", method="GetFeatures", code="RESOURCE_EXHAUSTED") == codes.count(
        grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_not_serving_until_the_first_snapshot_then_serving(start_server: Any, users: UsersSnapshots,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    s = start_server(root)
    s.wait_health(NOT_SERVING)
    assert s.health(service="") == NOT_SERVING
    stub = s.stub()
    with pytest.raises(grpc.RpcError) as e:
        stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[1]), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "no snapshot" in e.value.details()
    assert stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=10).current_version == ""
    version = quiver_load(users.sources[users.v1], root, "2026-01-01T00:00:00Z")
    s.wait_health(SERVING)
    assert s.health(service="") == SERVING
    assert stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[1]), timeout=10).version == version


def test_sigterm_drains_in_flight_requests(start_server: Any, users: UsersSnapshots, tmp_path: Path) -> None:
    # --max-queue-ms 0: the 16 big calls below must all be in flight when SIGTERM lands, not shed
    s = start_server(users.root(tmp_path / "root"), "--drain-seconds", "5", "--max-queue-ms", "0")
    s.wait_health(SERVING)
    channel = s.channel()
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=30)
    statuses: list[int] = []

    def follow() -> None:
        for r in _until_error(watch):
            statuses.append(r.status)
            if r.status == NOT_SERVING:
                watch.cancel()  # an open stream would hold the drain for all of its time
    watcher = threading.Thread(target=follow)
    watcher.start()
    wait_for(lambda: statuses == [SERVING], what="the health watch to report SERVING")

    stub = quiver_pb2_grpc.FeatureStoreStub(channel)
    request = pb.GetFeaturesRequest(int64_ids=range(MAX_ENTITIES))
    with ThreadPoolExecutor(8) as pool:
        calls = [stub.GetFeatures.future(request, timeout=30) for _ in range(16)]
        # the first answer means the server is working through the batch: the rest are in flight
        wait_for(calls[0].done, what="the first answer")
        s.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        results = list(pool.map(lambda f: f.exception() or f.result(), calls))
    failed = [r for r in results if isinstance(r, grpc.RpcError)]
    assert not failed, [(r.code(), r.details()) for r in failed]
    assert all(len(r.rows) == MAX_ENTITIES for r in results)
    assert s.proc.wait(timeout=5 + 5) == 0, s.logs()
    assert time.monotonic() - started < 5 + 5
    watcher.join(10)
    assert NOT_SERVING in statuses, statuses
    assert "draining" in s.logs()


def _until_error(stream: Any) -> Iterator[Any]:
    try:
        yield from stream
    except grpc.RpcError:
        return


def test_quiver_get_cli(server: ServerProcess, users: UsersSnapshots) -> None:
    r = run_quiver("get", "--target", server.target, "--entity", "3", "--views", "embedding", timeout=30)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["version"] == users.v2 and len(doc["rows"][0]["embedding"]["user_embedding"]) == 64
    r = run_quiver("get", "--target", server.target, "--entity", "x", timeout=30)
    assert r.returncode == 2 and "not an int64" in r.stderr


def test_unix_socket_only(start_server: Any, users: UsersSnapshots, tmp_path: Path) -> None:
    """The sidecar layout: no TCP listener at all."""
    sock = short_tmpdir() / "only.sock"
    s = start_server(users.root(tmp_path / "root"), "--listen", "", "--uds", str(sock))
    s.wait_health(SERVING, target=f"unix:{sock}")
    with FeatureClient(f"unix:{sock}") as c:
        assert c.get_features([1], ["profile"]).version == users.v1
    assert s.health() is None  # nothing on the TCP port
    assert s.stop() == 0
