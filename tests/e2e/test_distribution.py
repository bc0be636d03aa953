"""publish and sync against a real S3-protocol server (moto, started here on loopback) and file://.

The CLI runs as a separate process; the interruption tests call the Python API in-process so they
can stop an upload or download at an exact file. Refusals found before anything moves (a flag, a
missing manifest, a version never published) run the CLI's main() in-process (support.inprocess); one
process run per exit code shows the code reaches the process's exit status.
"""

from __future__ import annotations

import errno
import filecmp
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
import yaml
from rocksdict import Cache

from quiver import distribution as dist
from quiver.distribution import transfer
from quiver.service.store import open_version
from quiver.snapshot import FileEntry, Manifest, SnapshotRoot, encode_int64_key, file_checksum, integrity
from quiver.snapshot.integrity import check_version
from quiver.snapshot.layout import write_atomic
from quiver.snapshot.manifest import data_files
from quiver.training import TrainingDataError, training_frame
from support.inprocess import run_in_process
from support.processes import QUIVER, free_port, run_quiver, wait_for

VENV_BIN = Path(QUIVER).parent
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# ---------------------------------------------------------------------------------------------
# Fixtures: an S3 server, buckets, snapshot roots
# ---------------------------------------------------------------------------------------------

def start_moto(env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **(env_extra or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    proc, endpoint = start_moto()
    yield endpoint
    stop(proc)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    # Nothing from the host's AWS setup, and no instance-metadata lookups.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for k in dist.ENDPOINT_ENV:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    name = "q-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint, **_boto_creds()).create_bucket(Bucket=name)
    return name


def _boto_creds() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def s3(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=endpoint, **_boto_creds())


def as_of(n: int) -> str:
    return (datetime(2026, 11, 27, 13, 0, tzinfo=UTC) + timedelta(hours=n)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="session")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Versions 1..3 built once by the real loader (as-of times an hour apart), to copy into roots."""
    work = tmp_path_factory.mktemp("loaded")
    run_quiver("generate", "--events-per-user", "0",
        "--users", "2000", "--out", work / "data", "--seed", "7", check=True)
    root = SnapshotRoot(work / "root")
    out = {}
    for n in range(1, 4):
        run_quiver("load", "--features", work / "data" / "features.yaml", "--root", root.path, "--as-of", as_of(n),
                   "--no-reuse", check=True)
        v = root.current()
        assert v is not None and v.startswith(as_of(n).replace("-", "").replace(":", ""))
        out[n] = root.version_dir(v)
    return out


@pytest.fixture
def make_version(loaded: dict[int, Path]):  # type: ignore[no-untyped-def]
    """Put loaded version n into a root and make it CURRENT there; returns its id."""
    def make(root: Path, n: int) -> str:
        src = loaded[n]
        snap = SnapshotRoot(root)
        snap.ensure()
        shutil.copytree(src, snap.version_dir(src.name))
        snap.set_current(src.name)
        return src.name
    return make


def n_files(root: Path, v: str) -> int:
    return len(Manifest.load(SnapshotRoot(root).manifest_path(v)).files)


def biggest_file(root: Path, v: str, but: set[str] | None = None) -> str:
    files = Manifest.load(SnapshotRoot(root).manifest_path(v)).files
    return max((f for f in files if f.path not in (but or set())), key=lambda f: f.size).path


def shared_files(root: Path, old: str, new: str) -> set[str]:
    """Files of `new` byte-identical to `old`'s (same path, size, checksum): publish copies them inside
    the store and sync links them, instead of moving their bytes. Versions 1-3 differ only in as-of
    time, so e.g. their offline Parquet files are identical."""
    before = {(f.path, f.size, f.checksum) for f in Manifest.load(SnapshotRoot(root).manifest_path(old)).files}
    return {f.path for f in Manifest.load(SnapshotRoot(root).manifest_path(new)).files
            if (f.path, f.size, f.checksum) in before}


def quiver(*args: str, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """The installed `quiver` entry point as a process: a broken CLI fails these tests, never falls back."""
    return run_quiver(*args, env=env, check=check, timeout=60)


def test_the_entry_point_and_its_help_work() -> None:
    """These tests run the installed `quiver`; a broken entry point or help text (argparse formats help
    only when asked, so a stray '%' breaks nothing else) must fail here, not be worked around. Each
    command's help is formatted by the same main() in-process."""
    top = quiver("--help")
    assert top.returncode == 0, top.stderr
    commands = re.findall(r"^    (\w+)\s", top.stdout, flags=re.M)
    assert {"publish", "sync", "load", "serve", "gc"} <= set(commands), top.stdout
    for command in commands:
        r = run_in_process(command, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"usage: quiver {command}"), (command, r.stderr)


def same_version(a: SnapshotRoot, b: SnapshotRoot, v: str) -> None:
    """Every file the manifest lists, and the manifest itself, byte for byte (RocksDB's LOCK, LOG and
    rocksdict's config are rewritten on open, so they are not part of a version); beside them, b's own
    record of the files its sync proved (inodes of b's disk, so never copied)."""
    files = [f.path for f in Manifest.load(a.manifest_path(v)).files] + ["manifest.json"]
    for rel in files:
        assert filecmp.cmp(a.version_dir(v) / rel, b.version_dir(v) / rel, shallow=False), rel
    extra = {p.relative_to(b.version_dir(v)).as_posix() for p in b.version_dir(v).rglob("*") if p.is_file()}
    assert extra == set(files) | {"verified.json"}


@pytest.fixture
def pub(tmp_path: Path) -> Path:
    return tmp_path / "publisher"


@pytest.fixture
def rep(tmp_path: Path) -> Path:
    return tmp_path / "replica"


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------

def test_round_trip_s3_cli(make_version, s3_endpoint: str, bucket: str, pub: Path, rep: Path) -> None:
    v = make_version(pub, 1)
    uri = f"s3://{bucket}/features/prod"
    env = {"QUIVER_S3_ENDPOINT": s3_endpoint}

    r = quiver("publish", "--root", str(pub), "--to", uri, env=env, check=True)
    n = n_files(pub, v)
    assert f"published {v}" in r.stdout and f"{n} files uploaded" in r.stdout
    keys = {o["Key"] for o in s3(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"features/prod/versions/{v}/manifest.json" in keys and "features/prod/LATEST" in keys

    r = quiver("sync", "--from", uri, "--root", str(rep), env=env, check=True)
    assert f"CURRENT {v} (was None): {n} files downloaded" in r.stdout
    assert SnapshotRoot(rep).current() == v
    same_version(SnapshotRoot(pub), SnapshotRoot(rep), v)
    assert not list((rep / "staging").glob("sync-*"))

    # Both sides are idempotent.
    r = quiver("publish", "--root", str(pub), "--to", uri, env=env, check=True)
    assert f"0 files uploaded, 0 referenced in the previous version, {n} already there; LATEST unchanged" in r.stdout
    r = quiver("sync", "--from", uri, "--root", str(rep), env=env, check=True)
    assert "0 files downloaded" in r.stdout


def test_round_trip_file_uri(make_version, tmp_path: Path, pub: Path, rep: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    v1 = make_version(pub, 1)
    dist.publish(pub, remote.as_uri())
    assert (remote / "LATEST").read_text().strip() == v1
    assert not list(remote.rglob("*.tmp"))
    r = dist.sync(remote.as_uri(), rep)
    assert r.version == v1 and SnapshotRoot(rep).current() == v1
    same_version(SnapshotRoot(pub), SnapshotRoot(rep), v1)


@pytest.mark.parametrize("store", ["s3", "file"])
def test_changing_one_view_moves_only_its_files(store: str, s3_endpoint: str, request: pytest.FixtureRequest,
                                                tmp_path: Path, pub: Path, rep: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A feature added to one view: publish copies the other views' files inside the store and sync
    hard-links them from the version the replica has; only the changed view's bytes travel."""
    if store == "s3":
        uri = f"s3://{request.getfixturevalue('bucket')}/snapshots"
    else:
        (tmp_path / "remote").mkdir()
        uri = (tmp_path / "remote").as_uri()
    data = tmp_path / "data"
    run_quiver("generate", "--events-per-user", "0", "--users", "1500", "--out", data, "--seed", "3", check=True)
    features = data / "features.yaml"
    spec = yaml.safe_load(features.read_text())
    ads = next(v for v in spec["views"] if v["name"] == "ads")
    ads["group"] = "ads"  # its own storage group: a change to it moves that group's files only
    last = ads["features"].pop()
    features.write_text(yaml.safe_dump(spec, sort_keys=False))
    run_quiver("load", "--features", features, "--root", pub, "--as-of", as_of(1), check=True)
    v1 = SnapshotRoot(pub).current()
    first = dist.publish(pub, uri, endpoint=s3_endpoint)
    assert first.referenced == [] and len(first.uploaded) == n_files(pub, v1)
    assert dist.sync(uri, rep, endpoint=s3_endpoint).linked == []

    ads["features"].append(last)
    features.write_text(yaml.safe_dump(spec, sort_keys=False))
    run_quiver("load", "--features", features, "--root", pub, "--as-of", as_of(2), check=True)
    v2 = SnapshotRoot(pub).current()
    assert v2 is not None and v2 != v1
    m2 = Manifest.load(SnapshotRoot(pub).manifest_path(v2))
    assert {n for n, v in m2.views.items() if v.reused_from == v1} == {"profile", "activity", "embedding"}
    m1 = Manifest.load(SnapshotRoot(pub).manifest_path(v1))
    before = {(f.path, f.size, f.checksum) for f in m1.files}
    shared = {f.path for f in m2.files if (f.path, f.size, f.checksum) in before}
    changed = {f.path for f in m2.files} - shared
    # the reused views are all shared; of ads, only RocksDB's byte-identical small files (CURRENT, OPTIONS);
    # statistics.json describes the whole version, so it changes with any view
    ads = ("online/ads/", "offline/ads/", "statistics.json")
    assert {f.path for f in m2.files if not f.path.startswith(ads)} <= shared
    assert changed and all(p.startswith(ads) for p in changed)
    assert any(p.endswith(".sst") for p in changed) and any(p.endswith(".parquet") for p in changed)
    # a file the replica lost is downloaded again rather than linked
    lost = next(p for p in sorted(shared) if p.endswith(".sst"))
    (SnapshotRoot(rep).version_dir(v1) / lost).unlink()

    r = dist.publish(pub, uri, endpoint=s3_endpoint)
    assert set(r.referenced) == shared and set(r.uploaded) == changed and r.latest_moved
    s = dist.sync(uri, rep, endpoint=s3_endpoint)
    assert s.version == v2 and SnapshotRoot(rep).current() == v2
    assert set(s.linked) == shared - {lost} and set(s.downloaded) == changed | {lost}
    same_version(SnapshotRoot(pub), SnapshotRoot(rep), v2)
    assert Manifest.load(SnapshotRoot(rep).manifest_path(v2)).verify_files(SnapshotRoot(rep).version_dir(v2)) == []
    # each linked file is one of v1's (files are found by size and checksum, under any name: equal empty
    # files of two groups are one)
    held = {(SnapshotRoot(rep).version_dir(v1) / f.path).stat().st_ino for f in m1.files if f.path != lost}
    for p in shared - {lost}:
        assert (SnapshotRoot(rep).version_dir(v2) / p).stat().st_ino in held, p
    # what the loader wrote or linked and what sync downloaded or linked is proven by their records:
    # a server's full check reads none of it again, on either root (this process hashed nothing)
    monkeypatch.setattr(integrity, "SEEN", integrity.Proven())
    read: list[tuple[int, int]] = []
    for root in (pub, rep):
        check_version(SnapshotRoot(root), v2, "full", on_hashed=lambda files, size: read.append((files, size)))
    assert read == [(0, 0), (0, 0)]


def test_online_only_sync_serves_and_training_reads_the_store(make_version, tmp_path: Path, pub: Path,
                                                              rep: Path) -> None:
    """A replica needs the online form only; the offline files stay in the store, where training reads
    the version LATEST names (the one every replica serves)."""
    remote = tmp_path / "remote"
    remote.mkdir()
    v1 = make_version(pub, 1)
    dist.publish(pub, remote.as_uri())
    r = quiver("sync", "--from", remote.as_uri(), "--root", str(rep), "--online-only", check=True)
    snap = SnapshotRoot(rep)
    m = Manifest.load(snap.manifest_path(v1))
    offline = [f.path for f in m.files if not f.path.startswith("online/")]  # offline Parquet, statistics.json
    assert offline and f"{len(offline)} offline left out" in r.stdout
    assert snap.current() == v1 and not (snap.version_dir(v1) / "offline").exists()
    assert snap.manifest_path(v1).read_bytes() == SnapshotRoot(pub).manifest_path(v1).read_bytes()
    assert m.verify_files(snap.version_dir(v1), prefix="online/") == []

    # what the server does with a new version: open it, check every online checksum, read a row
    uid = training_frame(pub).column("user_id")[0].as_py()
    loaded = open_version(snap, v1, Cache(8 << 20), "full")
    try:
        assert loaded.get(m.schema.view("profile").group, [encode_int64_key(uid)])[0]
    finally:
        loaded.retire()

    with pytest.raises(TrainingDataError, match="online-only"):
        training_frame(rep)
    r = quiver("verify", "--root", str(rep))
    assert r.returncode != 0 and "--online-only" in r.stderr
    from_store, from_root = training_frame(remote.as_uri()), training_frame(pub)   # LATEST; CURRENT
    assert from_store.schema == from_root.schema and from_store.num_rows == from_root.num_rows > 0
    for column in ("user_id", "profile__country", "activity__act_000", "ads__recent_ad_ids"):
        assert from_store.column(column).equals(from_root.column(column)), column

    # a sync without the flag completes the version in place: the offline files arrive, verified
    full = dist.sync(remote.as_uri(), rep)
    assert full.version == v1 and sorted(full.downloaded) == sorted(offline)
    for rel in offline:   # (same_version would also see the files opening it above wrote: LOG, config)
        assert filecmp.cmp(SnapshotRoot(pub).version_dir(v1) / rel, snap.version_dir(v1) / rel, shallow=False)
    assert quiver("verify", "--root", str(rep)).returncode == 0
    assert training_frame(rep).num_rows == from_root.num_rows


def test_endpoint_from_env_is_used_for_s3(make_version,
        monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, bucket: str,
                                         pub: Path, rep: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    v = make_version(pub, 1)
    dist.publish(pub, f"s3://{bucket}")
    assert dist.sync(f"s3://{bucket}", rep).version == v


# ---------------------------------------------------------------------------------------------
# Interruptions
# ---------------------------------------------------------------------------------------------

class Crash(Exception):
    """Stands in for a killed process at an exact point."""


def crash_after(monkeypatch: pytest.MonkeyPatch, name: str, n: int) -> list[str]:
    real = getattr(transfer, name)
    done: list[str] = []

    def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(done) >= n:
            raise Crash(f"killed after {n} files")
        real(*args, **kwargs)
        done.append(str(args[1]))

    monkeypatch.setattr(transfer, name, wrapped)
    return done


def test_interrupted_upload_is_invisible_and_finishes_on_rerun(make_version,
        monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, bucket: str, pub: Path, rep: Path) -> None:
    uri = f"s3://{bucket}"
    v1 = make_version(pub, 1)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    v2 = make_version(pub, 2)

    crash_after(monkeypatch, "upload_file", 3)
    with pytest.raises(Crash):
        dist.publish(pub, uri, endpoint=s3_endpoint, workers=1)
    monkeypatch.undo()
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    keys = {o["Key"] for o in s3(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
    there = {k.removeprefix(f"versions/{v2}/") for k in keys if k.startswith(f"versions/{v2}/")}
    assert len(there - shared_files(pub, v1, v2)) == 3   # uploaded before the kill; the rest were copies
    assert "manifest.json" not in there

    # A replica sees only the complete version.
    assert dist.sync(uri, rep, endpoint=s3_endpoint).version == v1

    r = dist.publish(pub, uri, endpoint=s3_endpoint)
    assert set(r.skipped) == there and r.latest_moved
    assert set(r.uploaded) | set(r.referenced) == {f.path for f in Manifest.load(
        SnapshotRoot(pub).manifest_path(v2)).files} - there
    assert dist.sync(uri, rep, endpoint=s3_endpoint).version == v2


def test_latest_without_manifest_is_refused(make_version, monkeypatch: pytest.MonkeyPatch,
        s3_endpoint: str, bucket: str, pub: Path, rep: Path) -> None:
    """A publish killed between LATEST and... cannot happen; a manifest deleted by hand is the same case."""
    uri = f"s3://{bucket}"
    v1 = make_version(pub, 1)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    dist.sync(uri, rep, endpoint=s3_endpoint)
    v2 = make_version(pub, 2)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    s3(s3_endpoint).delete_object(Bucket=bucket, Key=f"versions/{v2}/manifest.json")

    monkeypatch.setenv("QUIVER_S3_ENDPOINT", s3_endpoint)
    r = run_in_process("sync", "--from", uri, "--root", str(rep))
    assert r.returncode == dist.ObjectNotFound.exit_code, r.stderr
    assert f"s3://{bucket}/versions/{v2}/manifest.json: missing: {v2} was never published there" in r.stderr
    assert SnapshotRoot(rep).current() == v1
    assert SnapshotRoot(rep).versions() == [v1]


def test_nothing_published_yet(s3_endpoint: str, bucket: str, rep: Path) -> None:
    r = quiver("sync", "--from", f"s3://{bucket}/p", "--root", str(rep), env={"QUIVER_S3_ENDPOINT": s3_endpoint})
    assert r.returncode == dist.ObjectNotFound.exit_code
    assert f"s3://{bucket}/p/LATEST: missing: nothing has been published there yet" in r.stderr


def test_interrupted_download_resumes(make_version, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, bucket: str,
                                      pub: Path, rep: Path) -> None:
    uri = f"s3://{bucket}"
    v1 = make_version(pub, 1)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    dist.sync(uri, rep, endpoint=s3_endpoint)
    v2 = make_version(pub, 2)
    dist.publish(pub, uri, endpoint=s3_endpoint)

    linked = shared_files(pub, v1, v2)    # linked from v1 before any download
    fetched = n_files(pub, v2) - len(linked)
    assert fetched >= 2
    crash_after(monkeypatch, "download_file", fetched // 2)  # killed half way through the downloads
    with pytest.raises(Crash):
        dist.sync(uri, rep, endpoint=s3_endpoint, workers=1)
    monkeypatch.undo()
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    snap = SnapshotRoot(rep)
    assert snap.current() == v1 and snap.versions() == [v1]
    assert not snap.version_dir(v2).exists()
    staged = [p for p in (rep / "staging" / f"sync-{v2}").rglob("*") if p.is_file()]
    assert len(staged) == fetched // 2 + len(linked) and not [p for p in staged if p.name.endswith(".part")]

    # A half-written file from the kill is discarded, not trusted.
    half = rep / "staging" / f"sync-{v2}" / (biggest_file(pub, v2, but=linked) + ".part")
    half.parent.mkdir(parents=True, exist_ok=True)
    half.write_bytes(b"half")

    r = dist.sync(uri, rep, endpoint=s3_endpoint)
    assert len(r.resumed) == fetched // 2 + len(linked) and len(r.downloaded) == fetched - fetched // 2
    assert snap.current() == v2
    same_version(SnapshotRoot(pub), snap, v2)
    assert not (rep / "staging" / f"sync-{v2}").exists()


def test_corrupt_object_refused_and_current_untouched(make_version,
        s3_endpoint: str, bucket: str, pub: Path, rep: Path) -> None:
    uri = f"s3://{bucket}"
    env = {"QUIVER_S3_ENDPOINT": s3_endpoint}
    v1 = make_version(pub, 1)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    dist.sync(uri, rep, endpoint=s3_endpoint)
    v2 = make_version(pub, 2)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    rel = biggest_file(pub, v2, but=shared_files(pub, v1, v2))  # one the replica must download
    key = f"versions/{v2}/{rel}"
    body = bytearray(s3(s3_endpoint).get_object(Bucket=bucket, Key=key)["Body"].read())
    body[1000] ^= 0xFF  # same size, one bit pattern off: only the checksum can tell
    s3(s3_endpoint).put_object(Bucket=bucket, Key=key, Body=bytes(body))

    r = quiver("sync", "--from", uri, "--root", str(rep), env=env)
    assert r.returncode == dist.IntegrityError.exit_code, r.stderr
    assert f"s3://{bucket}/{key}:" in r.stderr and "republish the version" in r.stderr
    snap = SnapshotRoot(rep)
    assert snap.current() == v1 and snap.versions() == [v1]
    stage = rep / "staging" / f"sync-{v2}"
    assert not (stage / rel).exists() and not (stage / (rel + ".part")).exists()

    # Publishing again skips same-size objects, so repairing a corrupt object is a delete + publish.
    s3(s3_endpoint).delete_object(Bucket=bucket, Key=key)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    assert dist.sync(uri, rep, endpoint=s3_endpoint).version == v2


# ---------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------

def test_missing_bucket(make_version, s3_endpoint: str, pub: Path, rep: Path) -> None:
    make_version(pub, 1)
    env = {"QUIVER_S3_ENDPOINT": s3_endpoint}
    r = quiver("publish", "--root", str(pub), "--to", "s3://no-such-bucket/x", env=env)
    assert r.returncode == dist.BucketNotFound.exit_code
    assert "bucket 'no-such-bucket'" in r.stderr and "does not exist" in r.stderr
    r = quiver("sync", "--from", "s3://no-such-bucket/x", "--root", str(rep), env=env)
    assert r.returncode == dist.BucketNotFound.exit_code
    assert SnapshotRoot(rep).current() is None


def test_wrong_credentials(make_version, pub: Path, rep: Path) -> None:
    # A second server that checks credentials (moto only does when told to); none are valid on it.
    proc, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        make_version(pub, 1)
        env = {"QUIVER_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "AKIAWRONGKEY", "AWS_SECRET_ACCESS_KEY": "x"}
        r = quiver("publish", "--root", str(pub), "--to", "s3://some-bucket/x", env=env)
        assert r.returncode == dist.AccessDenied.exit_code, r.stderr
        assert "'some-bucket'" in r.stderr and "AWS_ACCESS_KEY_ID" in r.stderr
        r = quiver("sync", "--from", "s3://some-bucket/x", "--root", str(rep), env=env)
        assert r.returncode == dist.AccessDenied.exit_code, r.stderr
    finally:
        stop(proc)


def test_unreachable_endpoint(make_version, pub: Path, rep: Path) -> None:
    make_version(pub, 1)
    env = {"QUIVER_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    t0 = time.monotonic()
    r = quiver("sync", "--from", "s3://bkt/x", "--root", str(rep), env=env)
    assert r.returncode == dist.StorageUnreachable.exit_code, r.stderr
    assert "QUIVER_S3_ENDPOINT" in r.stderr and "bucket 'bkt'" in r.stderr
    assert time.monotonic() - t0 < 30


def test_disk_full_before_download(make_version, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, bucket: str,
                                   pub: Path, rep: Path) -> None:
    uri = f"s3://{bucket}"
    make_version(pub, 1)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(dist.DiskFull, match="needs .* more bytes, 1000 free"):
        dist.sync(uri, rep, endpoint=s3_endpoint)
    assert SnapshotRoot(rep).current() is None


def test_disk_full_while_writing(make_version, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, bucket: str,
                                 pub: Path, rep: Path) -> None:
    uri = f"s3://{bucket}"
    v1 = make_version(pub, 1)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    dist.sync(uri, rep, endpoint=s3_endpoint)
    make_version(pub, 2)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    real_fsync = os.fsync
    calls = []

    def full(fd: int) -> None:  # the device fills up while the third file is written
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(dist.DiskFull, match=r"\.part: no space left on device"):
        dist.sync(uri, rep, endpoint=s3_endpoint, workers=1)
    assert SnapshotRoot(rep).current() == v1
    assert not list((rep / "staging").rglob("*.part"))


def test_error_tree_is_mapped() -> None:
    """translate() maps each foreign error to the class of its meaning (base/errors.py draws the tree)."""
    classes = [dist.StorageError, *all_subclasses(dist.StorageError), dist.IntegrityError, dist.DiskFull,
               dist.LocalSnapshotError]
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes) and not {0, 2} & set(codes)
    for c in classes:
        assert c.__name__ in dist.__all__
    samples = {
        dist.BucketNotFound: OSError("AWS Error NO_SUCH_BUCKET during CreateMultipartUpload operation"),
        dist.AccessDenied: OSError("AWS Error ACCESS_DENIED during HeadBucket operation"),
        dist.StorageUnreachable: OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7"),
        dist.ObjectNotFound: FileNotFoundError(errno.ENOENT, "Path does not exist 'b/x'"),
        dist.DiskFull: OSError(errno.ENOSPC, "No space left on device"),
        dist.StorageError: OSError("AWS Error SLOW_DOWN during PutObject operation"),
    }
    for cls, exc in samples.items():
        got = dist.translate(exc, "thing")
        assert type(got) is cls and str(got).startswith("thing: ")


def all_subclasses(c: type) -> list[type]:
    return [s for d in c.__subclasses__() for s in (d, *all_subclasses(d))]


# ---------------------------------------------------------------------------------------------
# Retention, rollback, watch
# ---------------------------------------------------------------------------------------------

def test_keep_prunes_old_versions_but_never_current_or_previous(make_version, s3_endpoint: str, bucket: str,
                                                                 pub: Path, rep: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{bucket}"
    env = {"QUIVER_S3_ENDPOINT": s3_endpoint}
    vs = []
    for n in range(1, 4):
        vs.append(make_version(pub, n))
        dist.publish(pub, uri, endpoint=s3_endpoint)
        dist.sync(uri, rep, keep=2, endpoint=s3_endpoint)
    assert SnapshotRoot(rep).versions() == vs[-2:]
    assert SnapshotRoot(rep).current() == vs[-1]

    # Data rollback: point LATEST at an older version; the replica moves CURRENT without downloading.
    dist.publish(pub, uri, version=vs[1], endpoint=s3_endpoint)
    r = dist.sync(uri, rep, keep=2, endpoint=s3_endpoint)
    assert r.version == vs[1] and r.downloaded == [] and r.pruned == []
    assert SnapshotRoot(rep).versions() == vs[1:]

    # Rolling back to a pruned version downloads it again; the previous CURRENT stays. Moving LATEST
    # needs no local copy, only a complete published version.
    monkeypatch.setenv("QUIVER_S3_ENDPOINT", s3_endpoint)
    r = run_in_process("publish", "--to", uri, "--version", "20261127T000000Z-000000000000")
    assert r.returncode == dist.ObjectNotFound.exit_code and "was never published there" in r.stderr
    r = quiver("publish", "--to", uri, "--version", vs[0], env=env, check=True)
    assert f"LATEST at {uri} moved to {vs[0]}" in r.stdout
    r = dist.sync(uri, rep, keep=2, endpoint=s3_endpoint)
    assert r.version == vs[0] and r.downloaded and r.pruned == []
    assert SnapshotRoot(rep).versions() == vs
    assert not list((rep / "staging").glob("trash-*"))

    # A version a running server holds (its fresh lease) is never pruned, even past --keep.
    snap = SnapshotRoot(rep)
    snap.set_current(vs[1])
    snap.set_current(vs[2])   # ROOT/PREVIOUS names vs[1]: the one retention rule keeps it, as gc does
    leases = rep / "leases"
    leases.mkdir(exist_ok=True)
    (leases / "other-host-1.json").write_text(json.dumps(
        {"host": "other-host", "pid": 1, "versions": [vs[0]], "updated": time.time()}))
    assert dist.prune(snap, 2) == [] and snap.versions() == vs
    (leases / "other-host-1.json").write_text(json.dumps(
        {"host": "other-host", "pid": 1, "versions": [vs[0]], "updated": time.time() - 3600}))
    (leases / "broken-host-3.json").write_text("{not json")   # might hold anything: prune nothing
    assert dist.prune(snap, 2) == [] and snap.versions() == vs
    (leases / "broken-host-3.json").unlink()
    assert dist.prune(snap, 2) == [vs[0]] and snap.versions() == vs[1:]

    r = run_in_process("sync", "--from", uri, "--root", str(rep), "--keep", "1")
    assert r.returncode == 2 and "at least 2" in r.stderr


def test_watch_follows_latest_and_stops_on_sigterm(make_version,
        s3_endpoint: str, bucket: str, pub: Path, rep: Path) -> None:
    uri = f"s3://{bucket}"
    v1 = make_version(pub, 1)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    proc = subprocess.Popen([QUIVER, "sync", "--from", uri, "--root", str(rep), "--watch", "0.2"],
                            env={**os.environ, "QUIVER_S3_ENDPOINT": s3_endpoint},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: SnapshotRoot(rep).current() == v1, 15, "the first sync")
        v2 = make_version(pub, 2)
        dist.publish(pub, uri, endpoint=s3_endpoint)
        wait_for(lambda: SnapshotRoot(rep).current() == v2, 15, "the sync of the next version")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert f"serving {v2} (was {v1})" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_manifest_of_published_version_is_unchanged(make_version,
        s3_endpoint: str, bucket: str, pub: Path, rep: Path) -> None:
    v = make_version(pub, 1)
    dist.publish(pub, f"s3://{bucket}", endpoint=s3_endpoint)
    dist.sync(f"s3://{bucket}", rep, endpoint=s3_endpoint)
    got = Manifest.load(SnapshotRoot(rep).manifest_path(v))
    assert got.content_checksum == Manifest.load(SnapshotRoot(pub).manifest_path(v)).content_checksum
    assert got.verify_files(SnapshotRoot(rep).version_dir(v), full=True) == []
    assert json.loads(SnapshotRoot(rep).manifest_path(v).read_bytes())["version"] == v

    # The synced RocksDB opens read-only (without the publisher's LOCK, LOG, rocksdict config) and
    # holds the same rows.
    for group in got.groups:
        a, b = (open_view(SnapshotRoot(r).online_dir(v, group)) for r in (pub, rep))
        try:
            assert list(a.items()) == list(b.items()) and len(list(b.keys())) == got.groups[group].rows
        finally:
            a.close()
            b.close()


def open_view(path: Path):  # type: ignore[no-untyped-def]
    from rocksdict import AccessType, Cache, Rdict

    from quiver.snapshot.rocks import reader_options
    return Rdict(str(path), reader_options(Cache(8 << 20)), access_type=AccessType.read_only())


def test_sync_killed_midway_resumes(make_version, s3_endpoint: str, bucket: str, pub: Path, rep: Path) -> None:
    """SIGKILL during a real download: nothing becomes visible, and the rerun finishes the version."""
    uri = f"s3://{bucket}"
    env = {"QUIVER_S3_ENDPOINT": s3_endpoint}
    v1 = make_version(pub, 1)
    dist.publish(pub, uri, endpoint=s3_endpoint)
    dist.sync(uri, rep, endpoint=s3_endpoint)
    v2 = make_version(pub, 2)
    snap = SnapshotRoot(pub)
    blob = snap.version_dir(v2) / "offline" / "zz-blob" / "part-00000.parquet"   # big enough to be caught mid-way
    blob.parent.mkdir(parents=True)
    blob.write_bytes(os.urandom(16 << 20))
    m = Manifest.load(snap.manifest_path(v2))
    m.files = [FileEntry(rel, size, file_checksum(snap.version_dir(v2) / rel))
               for rel, size in data_files(snap.version_dir(v2))]
    write_atomic(snap.manifest_path(v2), m.dumps())
    dist.publish(pub, uri, endpoint=s3_endpoint)

    stage = rep / "staging" / f"sync-{v2}"
    proc = subprocess.Popen([QUIVER, "sync", "--from", uri, "--root", str(rep)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        part = stage / "offline" / "zz-blob" / "part-00000.parquet.part"
        wait_for(lambda: part.exists() or proc.poll() is not None, 15, "the download of the big file")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "sync finished before it could be killed"
    rsnap = SnapshotRoot(rep)
    assert rsnap.current() == v1 and rsnap.versions() == [v1]

    r = dist.sync(uri, rep, endpoint=s3_endpoint)
    assert r.version == v2 and r.resumed and "offline/zz-blob/part-00000.parquet" in r.downloaded
    same_version(snap, rsnap, v2)
