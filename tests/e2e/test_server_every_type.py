"""The every-type data set (support.datasets) through a real server, keyed by int64 and by string:
every feature type with its edge values (signalling NaN, NaN payloads, -0.0, subnormals, extremes,
non-ASCII and empty strings and keys) must come back bit for bit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from quiver.v1 import quiver_pb2 as pb
from support.datasets import write_every_type
from support.oracle import decode_view_row, wire_fields
from support.processes import SERVICE, SERVING, ServerProcess, quiver_load
from support.stored import mismatches

UNKNOWN = {"int64": [7, 8, 9], "string": ["no such key", "日本語x", "a\x00\x00"]}


@pytest.fixture(scope="module", params=["int64", "string"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ServerProcess, str]]:
    key_type = request.param
    d = tmp_path_factory.mktemp(f"every-{key_type}")
    data = write_every_type(d / "src", key_type)
    version = quiver_load(data.dir, d / "root", "2026-01-01T00:00:00Z")
    s = ServerProcess(d / "root", d / "serve.log", "--max-entities", "5000")
    try:
        s.wait_health(SERVING)
        yield data, s, version
    finally:
        s.stop()


def test_every_type_bit_exact(served: tuple[Any, ServerProcess, str]) -> None:
    data, s, version = served
    key_type = data.features.entity.key_type
    keys = list(data.expected["every"]) + [k for k in UNKNOWN[key_type] if k not in data.expected["every"]]
    keys = keys + keys[:50]  # duplicates too
    req = (pb.GetFeaturesRequest(int64_ids=keys) if key_type == "int64" else pb.GetFeaturesRequest(string_ids=keys))
    raw = bytes(s.channel().unary_unary(f"/{SERVICE}/GetFeatures")(req.SerializeToString(), timeout=30))
    resp = pb.GetFeaturesResponse.FromString(raw)
    assert resp.version == version and list(resp.views) == ["every", "events"]
    for key, row, raw_row in zip(keys, resp.rows, wire_fields(raw)[3], strict=True):
        for view, found, stored in zip(resp.views, row.found, wire_fields(raw_row).get(1, []), strict=True):
            expected = data.expected[view].get(key)
            assert found == (expected is not None), f"key {key!r} in {view}"
            if found:
                got = decode_view_row(data.features.view(view), stored)
                assert got == expected, f"key {key!r} in {view}: {mismatches({key: expected}, [(key, got)])}"
    if key_type == "string":
        assert "" in data.expected["every"] and resp.rows[keys.index("")].found[0]  # the empty key is a key


def test_ids_of_the_other_type(served: tuple[Any, ServerProcess, str]) -> None:
    data, s, _ = served
    key_type = data.features.entity.key_type
    wrong = pb.GetFeaturesRequest(string_ids=["1"]) if key_type == "int64" else pb.GetFeaturesRequest(int64_ids=[1])
    with pytest.raises(grpc.RpcError) as e:
        s.stub().GetFeatures(wrong, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"keyed by {key_type}" in e.value.details() and "entity_id" in e.value.details()
