"""Schema evolution against one `quiver serve` that is never restarted: each test edits features.yaml and the
Parquet sources, runs `quiver load`, and checks what clients asking by name see, on the new version and pinned
to the one before; views the change did not touch are reused (hard links), never re-encoded.

The tests share one root and one server (module scope) and run in file order, each starting from whatever
the previous one published; each reads the current definitions rather than assuming them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from rocksdict import AccessType, Options, Rdict

from quiver.client import FeatureClient
from quiver.snapshot import Manifest, SnapshotRoot
from quiver.v1 import quiver_pb2
from support.processes import QUIVER, ServerProcess, free_port, run_quiver, wait_for

VIEWS = ["profile", "activity", "embedding", "ads"]


@dataclass
class Store:
    src: Path
    root: Path
    server: ServerProcess
    client: FeatureClient
    loads: int = 0
    published: list[str] = field(default_factory=list)

    @property
    def features_path(self) -> Path:
        return self.src / "features.yaml"

    def definitions(self) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load(self.features_path.read_text())
        return doc

    def write_definitions(self, doc: dict[str, Any]) -> None:
        self.features_path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def view(self, doc: dict[str, Any], name: str) -> dict[str, Any]:
        v: dict[str, Any] = next(v for v in doc["views"] if v["name"] == name)
        return v

    def load(self, *flags: str) -> subprocess.CompletedProcess[str]:
        self.loads += 1
        return run_quiver("load", "--features", self.features_path, "--root", self.root, "--workers", "1",
                          "--as-of", f"2026-03-{self.loads:02d}T00:00:00Z", *flags)

    def publish(self, *flags: str) -> tuple[str, str, str]:
        """Loads; waits until the server answers from the new version; returns (old, new, load's stderr)."""
        old = self.published[-1] if self.published else ""
        r = self.load(*flags)
        assert r.returncode == 0, r.stderr
        new = r.stdout.split()[-1]
        wait_for(lambda: self.serving() == new, what=f"the server to serve {new}")
        self.published.append(new)
        return old, new, r.stderr

    def serving(self) -> str:
        try:
            return self.client.snapshot_info(timeout=2).current_version
        except grpc.RpcError:  # not listening yet
            return ""

    def manifest(self, version: str) -> Manifest:
        return Manifest.load(SnapshotRoot(self.root).manifest_path(version))

    def assert_reused(self, old: str, new: str, views: list[str]) -> None:
        """Each view's manifest entry says where it came from, its offline files are the old version's inodes,
        and its stored ViewRows are the old version's bytes (cut out of the old group values, not re-encoded)."""
        snap = SnapshotRoot(self.root)
        before, after = self.manifest(old), self.manifest(new)
        for view in views:
            assert after.views[view].reused_from == (before.views[view].reused_from or old), view
            data = [f.path for f in after.files
                    if f.path.startswith(f"offline/{view}/") and f.path.endswith(".parquet")]
            assert data
            for p in data:
                assert (snap.version_dir(new) / p).stat().st_ino == (snap.version_dir(old) / p).stat().st_ino, p
            assert self.stored_bytes(view, new) == self.stored_bytes(view, old), view

    def stored_bytes(self, view: str, version: str) -> dict[bytes, bytes]:
        """key -> the view's ViewRow bytes, parsed out of its group's values with the generated EntityRow."""
        m = self.manifest(version)
        group = m.schema.view(view).group
        at = m.groups[group].views.index(view)
        db = Rdict(str(SnapshotRoot(self.root).online_dir(version, group)), Options(raw_mode=True),
                   access_type=AccessType.read_only())
        try:
            rows = {k: quiver_pb2.EntityRow.FromString(v) for k, v in db.items()}
        finally:
            db.close()
        return {k: r.views[at].SerializeToString() for k, r in rows.items() if r.found[at]}  # type: ignore[misc]

    def source(self, view: str) -> tuple[Path, pa.Table]:
        (path,) = sorted((self.src / view).glob("*.parquet"))
        return path, pq.read_table(path)

    def features(self, ids: list[int], views: list[str], version: str = "") -> list[dict[str, Any] | None]:
        rows = self.client.get_features(ids, views, version).rows
        return [r[views[0]] for r in rows]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    base = tmp_path_factory.mktemp("evolution")
    src, root = base / "src", base / "root"
    run_quiver("generate", "--events-per-user", "0",
        "--users", "2000", "--out", src, "--seed", "7", check=True, timeout=60)
    server = ServerProcess(root, base / "serve.log")
    s = Store(src, root, server, FeatureClient(server.target))
    try:
        s.publish()  # the server starts on an empty root and picks the first version up like any later one
        server.wait_health()
        yield s
    finally:
        s.client.close()
        server.stop()
        print(server.logs())


def test_adding_a_feature_to_a_view(store: Store) -> None:
    path, table = store.source("profile")
    logins = pa.array((np.arange(table.num_rows) % 50).astype(np.int32))
    pq.write_table(table.append_column("logins_7d", logins), path)
    doc = store.definitions()
    store.view(doc, "profile")["features"].append({"name": "logins_7d", "type": "int32"})
    store.write_definitions(doc)

    old, new, log = store.publish()
    assert "reused unchanged view(s) without re-encoding: activity, embedding, ads" in log
    store.assert_reused(old, new, ["activity", "embedding", "ads"])
    assert store.manifest(new).views["profile"].reused_from == ""
    ids = table.column("user_id").to_pylist()[:20]
    got = store.features(ids, ["profile"])
    assert [r["logins_7d"] for r in got if r] == logins.to_pylist()[:20]
    # a client pinned to the version before keeps reading it, without the new feature
    pinned = store.features(ids, ["profile"], version=old)
    assert all(r is not None and "logins_7d" not in r for r in pinned)
    ages = table.column("age").to_pylist()[:20]   # the source, not the new version's answer
    assert [r["age"] if r else None for r in pinned] == [r["age"] if r else None for r in got] == ages
    old_schema = {v.name: v for v in store.client.schema(old).views}["profile"]
    assert "logins_7d" not in [f.name for f in old_schema.features]


def test_adding_a_view(store: Store) -> None:
    ids = np.arange(0, 2000, 2, dtype=np.int64)  # every other user
    (store.src / "risk").mkdir()
    pq.write_table(pa.table({"user_id": ids, "risk": ids.astype(np.float64) / 1000}),
                   store.src / "risk" / "part-0.parquet")
    doc = store.definitions()
    doc["views"].append({"name": "risk", "source": "risk/*.parquet", "features": [{"name": "risk",
                                                                                     "type": "float64"}]})
    store.write_definitions(doc)

    old, new, _ = store.publish()
    store.assert_reused(old, new, VIEWS)
    assert store.features([10, 11], ["risk"]) == [{"risk": 0.01}, None]   # 11 is not in the view: not found
    with pytest.raises(grpc.RpcError) as e:
        store.features([10], ["risk"], version=old)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert store.client.get_features([10], version=old).views == VIEWS


def test_removing_a_view(store: Store) -> None:
    doc = store.definitions()
    doc["views"] = [v for v in doc["views"] if v["name"] != "embedding"]
    store.write_definitions(doc)

    old, new, _ = store.publish()
    assert "embedding" not in store.manifest(new).views
    assert not (SnapshotRoot(store.root).version_dir(new) / "online" / "embedding").exists()
    store.assert_reused(old, new, [v for v in store.manifest(new).views])
    with pytest.raises(grpc.RpcError) as e:
        store.features([1], ["embedding"])
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "embedding" in (e.value.details() or "")
    pinned = store.features([1], ["embedding"], version=old)
    assert pinned[0] is not None and len(pinned[0]["user_embedding"]) == 64


def test_changing_a_default(store: Store) -> None:
    _, ads = store.source("ads")
    null_ids = pc.filter(ads.column("user_id"), ads.column("opted_out").is_null()).to_pylist()[:5]
    assert null_ids
    doc = store.definitions()
    feature = next(f for f in store.view(doc, "ads")["features"] if f["name"] == "opted_out")
    assert feature["default"] is False
    feature["default"] = True
    store.write_definitions(doc)

    old, new, _ = store.publish()
    assert store.manifest(new).views["ads"].reused_from == ""  # the encoding changed: re-encoded
    store.assert_reused(old, new, [v for v in store.manifest(new).views if v != "ads"])
    assert [r["opted_out"] for r in store.features(null_ids, ["ads"]) if r] == [True] * len(null_ids)
    assert [r["opted_out"] for r in store.features(null_ids, ["ads"], old) if r] == [False] * len(null_ids)


def test_changing_a_type_needs_allow_type_change(store: Store) -> None:
    path, ads = store.source("ads")
    i = ads.column_names.index("ctr_7d")
    pq.write_table(ads.set_column(i, "ctr_7d", ads.column(i).cast(pa.float32())), path)
    doc = store.definitions()
    feature = next(f for f in store.view(doc, "ads")["features"] if f["name"] == "ctr_7d")
    feature["type"] = "float32"
    store.write_definitions(doc)
    before = SnapshotRoot(store.root).current()

    refused = store.load()
    assert refused.returncode == 2, refused.stderr
    assert "'ads'" in refused.stderr and "'ctr_7d'" in refused.stderr and "--allow-type-change" in refused.stderr
    assert SnapshotRoot(store.root).current() == before
    assert store.client.snapshot_info().current_version == before

    first = store.published[0]
    old, new, _ = store.publish("--allow-type-change")
    assert old == before
    ctr = {v.name: v for v in store.client.schema(new).views}["ads"]
    assert next(f for f in ctr.features if f.name == "ctr_7d").type == quiver_pb2.FLOAT32
    uid = ads.column("user_id")[0].as_py()
    want = float(np.float32(ads.column("ctr_7d")[0].as_py()))
    assert store.features([uid], ["ads"])[0]["ctr_7d"] == want                      # type by schema
    assert store.features([uid], ["ads"], old)[0]["ctr_7d"] == ads.column("ctr_7d")[0].as_py()
    # only the current and previous versions stay loaded: a pin further back is refused, not misread
    with pytest.raises(grpc.RpcError) as e:
        store.features([uid], ["ads"], version=first)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert store.server.proc.poll() is None  # the same server process throughout


# ---------------------------------------------------------------------------------------------
# The README walkthrough, run as written
# ---------------------------------------------------------------------------------------------

README = Path(__file__).parents[2] / "README.md"
WALKTHROUGH = "## Walkthrough: add a feature"
README_TARGET = "127.0.0.1:50051"


def walkthrough_blocks() -> list[str]:
    text = README.read_text()
    assert WALKTHROUGH in text, f"README.md has no section {WALKTHROUGH!r}"
    section = text.split(WALKTHROUGH, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```$", section, flags=re.S | re.M)
    assert len(blocks) >= 5
    return blocks


@pytest.mark.slow  # ~15 s: the walkthrough's loads, server and queries, as written
def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """The section's bash blocks in one shell, in a scratch folder (so data/ and snapshots/ land there), with
    the venv first on PATH and a free port in place of the README's."""
    port = free_port()
    script = "\n".join(walkthrough_blocks()).replace(README_TARGET, f"127.0.0.1:{port}")
    env = {**os.environ, "PATH": f"{Path(QUIVER).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        try:  # the walkthrough's background server, if a step failed before `kill $SERVER`
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, out + (tmp_path / "serve.log").read_text(errors="replace")
    assert "reused unchanged view(s) without re-encoding: activity, embedding, ads" in out
    assert re.search(r"^\S+ \[10, 7\]$", out, flags=re.M), out
    assert "ok: " in out and "online and offline agree" in out
