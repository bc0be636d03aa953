"""Overload is shed at once, not queued: a burst of large calls to a worker that may queue 1 ms of work
gets RESOURCE_EXHAUSTED for the calls that would wait (for a reader thread, or behind the calls in flight),
answers the rest, and counts the refusals. A flood on one connection is answered or shed, never CANCELLED;
deadlines too short end DEADLINE_EXCEEDED; many, stalled and slow-reading connections hold up nobody and
leak nothing. README "Faults and overload" lists these cases."""

from __future__ import annotations

import asyncio
import os
import socket
import time
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


def test_deadlines_too_short_to_meet(users: UsersSnapshots, start_server: Any, tmp_path: Any) -> None:
    """Calls whose deadline is gone before or while they are read end DEADLINE_EXCEEDED (the client's own
    clock, or the server's when it sees the deadline passed before reading); the server serves on."""
    s: ServerProcess = start_server(users.root(tmp_path / "root"), "--max-entities", "2000", metrics=True)
    s.wait_health(SERVING)
    results = asyncio.run(flood(s.target, 500, 1000, deadline=0.002))
    codes = Counter(c for c, _ in results)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED,
                          grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert codes[grpc.StatusCode.DEADLINE_EXCEEDED] > 0, codes
    ok = s.stub().GetFeatures(pb.GetFeaturesRequest(int64_ids=[1, 2, 3]), timeout=10)
    assert len(ok.rows) == 3


def open_fds(pids: list[int]) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


def test_many_connections_and_stalled_ones(users: UsersSnapshots, start_server: Any, tmp_path: Any) -> None:
    """200 connections that connect and stall mid-handshake (a slow or stuck client) and 100 real ones at
    once: every real call is answered, and when they all go the worker's open files return to where they
    were (nothing leaks per connection)."""
    s: ServerProcess = start_server(users.root(tmp_path / "root"), metrics=True)
    s.wait_health(SERVING)
    workers = s.worker_pids()
    s.stub().GetFeatures(pb.GetFeaturesRequest(int64_ids=[1]), timeout=10)
    before = open_fds(workers)
    stalled = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.sendall(b"PRI * HTTP/2.0\r\n")  # half the HTTP/2 preface, then nothing
        stalled.append(sock)
    channels = [grpc.insecure_channel(s.target) for _ in range(100)]
    try:
        with ThreadPoolExecutor(20) as pool:
            rows = list(pool.map(lambda ch: len(pb_grpc.FeatureStoreStub(ch).GetFeatures(
                pb.GetFeaturesRequest(int64_ids=[5, 6]), timeout=30).rows), channels))
        assert rows == [2] * 100
    finally:
        for ch in channels:
            ch.close()
        for sock in stalled:
            sock.close()
    wait_for(lambda: open_fds(workers) <= before + 2, timeout=30,
             what=f"the workers' open files back to ~{before} (now {open_fds(workers)})")


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name (RFC 7541 6.2.2); short strings only."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def slow_reader(port: int, calls: int, ids: list[int]) -> socket.socket:
    """A connection that sends `calls` GetFeatures and never reads: its HTTP/2 SETTINGS give the server a
    window of 0 bytes per stream, so no response can be sent until the client goes away."""
    sock = socket.create_connection(("127.0.0.1", port))
    message = pb.GetFeaturesRequest(int64_ids=ids).SerializeToString()
    headers = b"".join(_literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"), (":path", "/quiver.v1.FeatureStore/GetFeatures"),
        (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")))
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, (4).to_bytes(2, "big") + (0).to_bytes(4, "big"))
    for i in range(calls):
        stream = 2 * i + 1
        out += _frame(1, 4, stream, headers)   # HEADERS, END_HEADERS
        out += _frame(0, 1, stream, b"\x00" + len(message).to_bytes(4, "big") + message)  # DATA, END_STREAM
    sock.sendall(out)
    return sock


def ok(stub: Any) -> bool:
    try:
        return len(stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[1]), timeout=5).rows) == 1
    except grpc.RpcError:
        return False


def test_slow_readers_do_not_hold_up_others(users: UsersSnapshots, start_server: Any, tmp_path: Any) -> None:
    """50 connections with 4 large calls each that never read their answers: every other client is still
    answered, and once the slow ones go, the worker's open files return to where they were."""
    s: ServerProcess = start_server(users.root(tmp_path / "root"), "--max-entities", "2000")
    s.wait_health(SERVING)
    workers = s.worker_pids()
    stub = s.stub()
    stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[1]), timeout=10)
    before = open_fds(workers)
    slow = [slow_reader(s.port, 4, list(range(2000))) for _ in range(50)]
    try:
        wait_for(lambda: open_fds(workers) >= before + 50, timeout=30, what="the slow connections accepted")
        # their 200 large calls arrive at once and may be shed while they are read; then they only wait
        wait_for(lambda: ok(stub), timeout=30, what="the slow readers' calls read")
        # every call is answered; while the last large calls are read, one may be shed with the documented
        # RESOURCE_EXHAUSTED, which asks the client to retry with backoff: it does, and gets its rows
        shed = 0
        for i in range(200):
            for attempt in range(20):
                try:
                    resp = stub.GetFeatures(pb.GetFeaturesRequest(int64_ids=[i, i + 1]), timeout=5)
                    break
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code(), e.details())
                    shed += 1
                    time.sleep(0.05 * (attempt + 1))
            else:
                raise AssertionError(f"call {i} shed 20 times in a row")
            assert len(resp.rows) == 2
        assert shed < 20, f"{shed} of 200 calls shed after the slow readers' calls were read"
    finally:
        for sock in slow:
            sock.close()
    wait_for(lambda: open_fds(workers) <= before + 2, timeout=30,
             what=f"the workers' open files back to ~{before} (now {open_fds(workers)})")
    assert s.health() == SERVING
