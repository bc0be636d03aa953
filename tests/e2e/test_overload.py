"""Overload is shed at once, not queued: a burst of large calls to a worker that may queue 1 ms of work
gets RESOURCE_EXHAUSTED for the calls that would wait (for a reader thread, or behind the calls in flight),
answers the rest, and counts the refusals; a call whose deadline passed while it queued is not read."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from quiver.v1 import quiver_pb2 as pb
from quiver.v1 import quiver_pb2_grpc as pb_grpc
from support.processes import SERVING, ServerProcess, UsersSnapshots, wait_for


def burst(s: ServerProcess, calls: int, ids: list[int]) -> list[tuple[grpc.StatusCode, str]]:
    stub = s.stub()

    def one(_: int) -> tuple[grpc.StatusCode, str]:
        try:
            stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=ids), timeout=60)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details() or ""

    with ThreadPoolExecutor(calls) as pool:
        return list(pool.map(one, range(calls)))


def test_a_burst_is_shed_at_once_and_counted(users: UsersSnapshots, start_server: Any, tmp_path: Any) -> None:
    root = users.root(tmp_path / "root")
    s: ServerProcess = start_server(root, "--max-queue-ms", "1", "--max-entities", "2000", metrics=True)
    s.wait_health(SERVING)
    ids = list(range(2000))
    first = burst(s, 48, ids)
    codes = [c for c, _ in first]
    assert grpc.StatusCode.OK in codes
    shed = [d for c, d in first if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert shed and set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    assert all("limit 1 ms" in d for d in shed), shed[:3]
    # the worker now knows what a call costs: a second burst is refused on admission, before any read
    second = burst(s, 48, ids)
    ahead = [d for c, d in second if c == grpc.StatusCode.RESOURCE_EXHAUSTED and "queued ahead" in d]
    assert ahead, second[:3]
    refused = len(shed) + sum(c == grpc.StatusCode.RESOURCE_EXHAUSTED for c, _ in second)
    wait_for(lambda: s.metric("quiver_rpc_errors_total", method="GetFeatures", code="RESOURCE_EXHAUSTED") == refused,
             what=f"{refused} refusals counted")


async def flood(target: str, calls: int, entities: int, deadline: float) -> list[tuple[grpc.StatusCode, str]]:
    """`calls` GetFeatures at once on one grpc.aio channel (one connection), as an async client sends them."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.FeatureStoreStub(channel)

        async def one(i: int) -> tuple[grpc.StatusCode, str]:
            ids = [(i * 7919 + j) % 2000 for j in range(entities)]
            try:
                await stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=ids), timeout=deadline)
                return grpc.StatusCode.OK, ""
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details() or ""

        return await asyncio.gather(*(one(i) for i in range(calls)))


def test_a_flood_on_one_connection_is_answered_or_shed_never_cancelled(users: UsersSnapshots, start_server: Any,
                                                                         tmp_path: Any) -> None:
    """3,000 calls at once on one connection: past grpc core's default backlog (1,000 calls waiting for the
    event loop, 3,000 hard) core cancelled ~650 of them with a bare CANCELLED, which a client takes for its own
    cancellation and does not retry. Every call must now be answered, or shed with RESOURCE_EXHAUSTED and why."""
    s: ServerProcess = start_server(users.root(tmp_path / "root"), "--max-entities", "2000", metrics=True)
    s.wait_health(SERVING)
    for calls, entities in ((3000, 1), (3000, 100)):
        results = asyncio.run(flood(s.target, calls, entities, deadline=30))
        codes = Counter(c for c, _ in results)
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, (calls, entities, codes)
        assert codes[grpc.StatusCode.OK] > 0
        assert all("retry with backoff" in d for c, d in results if c == grpc.StatusCode.RESOURCE_EXHAUSTED)
    s.wait_health(SERVING)
