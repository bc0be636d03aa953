"""Server reflection as real tools use it, with no proto file: grpcurl lists, describes and calls
GetFeatures, ghz load-tests it; and both reflection protocols (v1, v1alpha) resolve a method symbol.
The tools are the pinned Go modules `make tools` builds into .tools/bin."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from support.processes import SERVING, UsersSnapshots

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"
METHOD = "quiver.v1.FeatureStore.GetFeatures"


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.is_file(), f"{path} missing: run `make tools`"
    return str(path)


@pytest.fixture
def server(start_server: Any, users: UsersSnapshots, tmp_path: Path) -> Any:
    s = start_server(users.root(tmp_path / "root"))
    s.wait_health(SERVING)
    return s


@pytest.mark.parametrize("protocol", ["v1", "v1alpha"])
def test_both_reflection_protocols_resolve_a_method_symbol(server: Any, protocol: str) -> None:
    call = server.channel().stream_stream(f"/grpc.reflection.{protocol}.ServerReflection/ServerReflectionInfo",
                                          request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                          response_deserializer=rpb.ServerReflectionResponse.FromString)
    requests = [rpb.ServerReflectionRequest(list_services=""),
                rpb.ServerReflectionRequest(file_containing_symbol=METHOD),
                rpb.ServerReflectionRequest(file_containing_symbol="quiver.v1.FeatureStore.NoSuchMethod"),
                rpb.ServerReflectionRequest(file_containing_symbol=f"grpc.reflection.{protocol}.ServerReflection")]
    listed, method, unknown, itself = list(call(iter(requests), timeout=10))
    assert {s.name for s in listed.list_services_response.service} == {
        "quiver.v1.FeatureStore", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection"}
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in method.file_descriptor_response.file_descriptor_proto]
    services = {f"{f.package}.{s.name}": [m.name for m in s.method] for f in files for s in f.service}
    assert "GetFeatures" in services["quiver.v1.FeatureStore"]
    assert unknown.error_response.error_code == 5  # NOT_FOUND
    reflected = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in itself.file_descriptor_response.file_descriptor_proto]
    assert [f.package for f in reflected] == [f"grpc.reflection.{protocol}"]


def test_grpcurl_by_reflection(server: Any) -> None:
    grpcurl = tool("grpcurl")
    listed = subprocess.run([grpcurl, "-plaintext", server.target, "list"], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "quiver.v1.FeatureStore" in listed.stdout.split()
    described = subprocess.run([grpcurl, "-plaintext", server.target, "describe", METHOD], capture_output=True,
                               text=True, timeout=60)
    assert described.returncode == 0 and "GetFeaturesRequest" in described.stdout, described.stderr
    r = subprocess.run([grpcurl, "-plaintext", "-d", '{"int64_ids": ["1", "2"], "views": ["profile"]}',
                        server.target, METHOD.replace(".GetFeatures", "/GetFeatures")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    resp = json.loads(r.stdout)
    assert resp["views"] == ["profile"] and len(resp["rows"]) == 2
    assert all(row["found"] == [True] for row in resp["rows"])


def test_ghz_by_reflection(server: Any) -> None:
    r = subprocess.run([tool("ghz"), "--insecure", "--call", METHOD, "-d", '{"int64_ids": ["1", "2"]}',
                        "-n", "50", "-c", "2", "-O", "json", server.target],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["count"] == 50 and report["statusCodeDistribution"] == {"OK": 50}, report.get("errorDistribution")
