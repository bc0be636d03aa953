"""Python client: features by name, decoded with the schema of the version that answered.

    with FeatureClient("127.0.0.1:50051") as c:
        result = c.get_features([42, 7], views=["profile"])
        result.version                     # the snapshot version that answered
        result.rows[0]["profile"]["country"]  # None when null; rows[i][view] is None when not found
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc

from quiver.v1 import quiver_pb2 as pb
from quiver.v1 import quiver_pb2_grpc as pb_grpc

_GROUPS = {2: "bools", 3: "int32s", 4: "int64s", 5: "float32s", 6: "float64s", 7: "strings", 8: "bytes_values",
           9: "float32_lists", 10: "int64_lists"}


def decode_view_row(view: pb.View, row: pb.ViewRow) -> dict[str, Any]:
    """{feature name: value or None (null)} for one stored ViewRow."""
    nulls = row.nulls
    out: dict[str, Any] = {}
    for f in view.features:
        p = f.position
        if p // 8 < len(nulls) and nulls[p // 8] >> (p % 8) & 1:
            out[f.name] = None
            continue
        value = getattr(row, _GROUPS[f.group_field])[f.group_index]
        if f.group_field in (9, 10):
            value = list(value.values)
        out[f.name] = value
    return out


@dataclass
class Features:
    version: str
    views: list[str]
    rows: list[dict[str, dict[str, Any] | None]]   # per entity: view -> features, None when not found


class FeatureClient:
    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        opts = [("grpc.max_receive_message_length", 64 << 20), *options]
        self.channel = (grpc.secure_channel(target, credentials, options=opts) if credentials
                        else grpc.insecure_channel(target, options=opts))
        self.stub = pb_grpc.FeatureStoreStub(self.channel)
        self._schemas: dict[str, pb.GetSchemaResponse] = {}

    def schema(self, version: str = "", timeout: float | None = 10) -> pb.GetSchemaResponse:
        """The schema of `version` (default: current), cached per version: versions are immutable."""
        if version and version in self._schemas:
            return self._schemas[version]
        s = self.stub.GetSchema(pb.GetSchemaRequest(version=version), timeout=timeout)
        self._schemas[s.version] = s
        return s

    def get_raw(self, ids: Sequence[int] | Sequence[str], views: Sequence[str] = (), version: str = "",
                timeout: float | None = 10) -> pb.GetFeaturesResponse:
        if len(ids) and isinstance(ids[0], str):  # len(): a numpy array of ids has no truth value
            req = pb.GetFeaturesRequest(string_ids=cast(Sequence[str], ids), views=views, version=version)
        else:
            req = pb.GetFeaturesRequest(int64_ids=cast(Sequence[int], ids), views=views, version=version)
        resp: pb.GetFeaturesResponse = self.stub.GetFeatures(req, timeout=timeout)
        return resp

    def get_features(self, ids: Sequence[int] | Sequence[str], views: Sequence[str] = (), version: str = "",
                     timeout: float | None = 10) -> Features:
        resp = self.get_raw(ids, views, version, timeout)
        by_name = {v.name: v for v in self.schema(resp.version, timeout).views}
        rows = []
        for entity in resp.rows:
            rows.append({name: decode_view_row(by_name[name], vr) if found else None
                         for name, vr, found in zip(resp.views, entity.views, entity.found, strict=True)})
        return Features(resp.version, list(resp.views), rows)

    def snapshot_info(self, timeout: float | None = 10) -> pb.GetSnapshotInfoResponse:
        info: pb.GetSnapshotInfoResponse = self.stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest(), timeout=timeout)
        return info

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "FeatureClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_json(value: Any) -> Any:
    """JSON-friendly values for operators: bytes as hex, NaN and infinities as strings."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    return value


def dumps(features: Features) -> str:
    return json.dumps({"version": features.version, "rows": to_json(features.rows)}, indent=1, ensure_ascii=False)
