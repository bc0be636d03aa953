"""`quiver load --changes`, `quiver compact` and `quiver rollback` in process: bad input is refused with
its exit code and a message naming what and where, and nothing is published; good input reads back."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quiver.loader.delta import ChangeOptions, load_changes
from quiver.snapshot import Manifest, SnapshotRoot
from quiver.training import training_frame
from support.inprocess import run_in_process


@pytest.fixture
def root(published_root: Path, tmp_path: Path) -> Path:
    """A copy of a root serving one version of view `v` (float64 `x`) for users 1 and 2."""
    dest = tmp_path / "root"
    shutil.copytree(published_root, dest)
    return dest


def changes(tmp_path: Path, name: str = "c.parquet", **columns: pa.Array) -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return path


def rejected(root: Path, code: int, *needles: str, args: tuple[str, ...] = ()) -> str:
    snap = SnapshotRoot(root)
    versions, current = snap.versions(), snap.current()
    r = run_in_process("load", "--root", root, *args)
    assert r.returncode == code, r.stderr
    for n in needles:
        assert n in r.stderr, f"{n!r} not in: {r.stderr}"
    assert "Traceback" not in r.stderr
    assert snap.versions() == versions and snap.current() == current
    assert not list((root / "staging").glob("load-*")), "a refused delta left its staging folder"
    return str(r.stderr)


def ids(*v: int) -> pa.Array:
    return pa.array(list(v), pa.int64())


def test_changes_that_do_not_fit_the_view_are_refused_naming_file_view_feature_and_key(root: Path,
                                                                                      tmp_path: Path) -> None:
    unknown = changes(tmp_path, "unknown.parquet", user_id=ids(1), x=pa.array([1.0]), y=pa.array([2]))
    rejected(root, 4, str(unknown), "view 'v'", "unknown column(s) ['y']", args=("--changes", f"v={unknown}"))
    typed = changes(tmp_path, "typed.parquet", user_id=ids(1), x=pa.array(["a"]))
    rejected(root, 4, str(typed), "column 'x' (feature 'x') is string, declared float64",
             args=("--changes", f"v={typed}"))
    dup = changes(tmp_path, "dup.parquet", user_id=ids(3, 3), x=pa.array([1.0, 2.0]))
    rejected(root, 4, str(dup), "entity key 3 appears more than once", args=("--changes", f"v={dup}"))
    keyless = changes(tmp_path, "keyless.parquet", x=pa.array([1.0]))
    rejected(root, 4, str(keyless), "missing the entity key column 'user_id'", args=("--changes", f"v={keyless}"))
    partial = changes(tmp_path, "partial.parquet", user_id=ids(1))
    rejected(root, 4, str(partial), "missing column(s) ['x']", args=("--changes", f"v={partial}"))
    flag = changes(tmp_path, "flag.parquet", user_id=ids(1), x=pa.array([1.0]), _deleted=pa.array([1]))
    rejected(root, 4, "column '_deleted' is int64, expected bool", args=("--changes", f"v={flag}"))
    both = changes(tmp_path, "both.parquet", user_id=ids(1, 1), x=pa.array([1.0, None]),
                   _deleted=pa.array([False, True]))
    rejected(root, 4, "entity key 1 is both changed and removed", args=("--changes", f"v={both}"))
    nulls = changes(tmp_path, "nulls.parquet", user_id=pa.array([None, 1], pa.int64()), x=pa.array([1.0, 2.0]))
    rejected(root, 4, "entity key column 'user_id' has 1 null(s)", args=("--changes", f"v={nulls}"))


def test_changes_naming_what_is_not_there_are_refused(root: Path, tmp_path: Path) -> None:
    good = changes(tmp_path, user_id=ids(1), x=pa.array([1.0]))
    rejected(root, 2, "changes name view(s) 'w'", "(it has v)", args=("--changes", f"w={good}"))
    rejected(root, 3, "view 'v': changes", "match no file", args=("--changes", f"v={tmp_path / 'none.parquet'}"))
    rejected(root, 2, "expected VIEW=PATH", args=("--changes", "v"))
    rejected(root, 2, "names a view twice", args=("--changes", f"v={good}", "--changes", f"v={good}"))
    rejected(root, 2, "--rebase-fraction '0'", args=("--changes", f"v={good}", "--rebase-fraction", "0"))
    rejected(root, 2, "local engine only", args=("--changes", f"v={good}", "--engine", "spark"))
    yaml = tmp_path / "features.yaml"
    yaml.write_text("entity: {name: user_id, key_type: int64}\n"
                    "views: [{name: v, source: v.parquet, features: [{name: x, type: float32}]}]\n")
    rejected(root, 2, "view 'v' is declared differently from CURRENT", args=("--changes", f"v={good}",
                                                                          "--features", str(yaml)))
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_in_process("load", "--root", empty, "--changes", f"v={good}")
    assert r.returncode == 9 and "no CURRENT version to apply changes to" in r.stderr, r.stderr


def test_a_removal_needs_only_the_key_and_a_table_is_a_change_too(root: Path, tmp_path: Path) -> None:
    base = SnapshotRoot(root).current()
    removal = changes(tmp_path, user_id=ids(2), _deleted=pa.array([True]))
    args = ("--changes", f"v={removal}", "--as-of", "2026-11-02T00:00:00Z", "--rebase-fraction", "1")
    r = run_in_process("load", "--root", root, *args)
    assert r.returncode == 0, r.stderr
    first = r.stdout.strip()
    assert "0 changed, 1 removed" in r.stderr and "rebased" not in r.stderr
    assert training_frame(root).column("user_id").to_pylist() == [1]
    # the same changes on the same version at the same as-of time are the same version: CURRENT moves to it
    assert run_in_process("rollback", "--root", root).returncode == 0
    again = run_in_process("load", "--root", root, *args)
    assert again.returncode == 0 and again.stdout.strip() == first and "already published" in again.stderr
    assert SnapshotRoot(root).current() == first
    # an Arrow table in memory: a new entity
    t = pa.table({"user_id": ids(7), "x": pa.array([7.5])})
    second = load_changes(root, {"v": t}, ChangeOptions(rebase_fraction=1.0))
    frame = training_frame(root)
    assert frame.column("user_id").to_pylist() == [1, 7]
    assert frame.column("v__x").to_pylist() == [0.5, 7.5]
    m = second.manifest
    assert m.changes is not None and m.changes.previous == first and m.views["v"].rows == 2
    assert m.views["v"].delta is not None and (m.views["v"].delta.upserted, m.views["v"].delta.deleted) == (1, 1)
    assert training_frame(root, base).column("user_id").to_pylist() == [1, 2], "the base version changed"


def test_rollback_moves_current_back_and_refuses_what_it_cannot_serve(root: Path, tmp_path: Path) -> None:
    snap = SnapshotRoot(root)
    base = snap.current()
    r = load_changes(root, {"v": pa.table({"user_id": ids(1), "x": pa.array([9.0])})})
    assert snap.current() == r.version
    back = run_in_process("rollback", "--root", root)
    assert back.returncode == 0 and back.stdout.strip() == base, back.stderr
    assert f"CURRENT moved from {r.version} back to {base}" in back.stderr
    assert snap.current() == base
    forth = run_in_process("rollback", "--root", root, "--to", r.version)
    assert forth.returncode == 0 and snap.current() == r.version, forth.stderr
    absent = run_in_process("rollback", "--root", root, "--to", "20990101T000000Z-000000000000")
    assert absent.returncode == 9 and "no published version" in absent.stderr, absent.stderr
    # a version whose file no longer matches its checksum is not served again
    m = Manifest.load(snap.manifest_path(base or ""))
    part = next(f.path for f in m.files if f.path.endswith(".parquet"))
    target = snap.version_dir(base or "") / part
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.unlink()   # a new inode: the record of proven files does not vouch for it
    target.write_bytes(bytes(data))
    bad = run_in_process("rollback", "--root", root, "--to", base or "")
    assert bad.returncode == 8 and "checksum differs" in bad.stderr and f"CURRENT stays {r.version}" in bad.stderr
    assert snap.current() == r.version


def test_compact_writes_the_delta_in_full_with_the_same_rows(root: Path, tmp_path: Path) -> None:
    snap = SnapshotRoot(root)
    nothing = run_in_process("compact", "--root", root)
    assert nothing.returncode == 0 and "nothing to compact" in nothing.stderr, nothing.stderr
    d = load_changes(root, {"v": pa.table({"user_id": ids(5, 2), "x": pa.array([5.0, None]),
                                           "_deleted": pa.array([False, True])})}, ChangeOptions(rebase_fraction=1.0))
    assert d.manifest.groups["default"].delta is not None
    before = training_frame(root)
    r = run_in_process("compact", "--root", root)
    assert r.returncode == 0, r.stderr
    v = r.stdout.strip()
    assert snap.current() == v != d.version
    m = Manifest.load(snap.manifest_path(v))
    assert all(g.delta is None for g in m.groups.values())
    assert not [f.path for f in m.files if "/delta/" in f.path]
    assert m.as_of == d.manifest.as_of
    assert training_frame(root).equals(before)
    assert training_frame(root).column("user_id").to_pylist() == [1, 5]


def test_across_filesystems_the_base_is_copied_and_said_so(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    import errno
    import os

    from quiver.snapshot.integrity import check_version

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    r = load_changes(root, {"v": pa.table({"user_id": ids(1), "x": pa.array([4.0])})},
                     ChangeOptions(rebase_fraction=1.0))
    assert "cannot hard-link" in caplog.text and "copying it" in caplog.text
    snap = SnapshotRoot(root)
    assert r.manifest.groups["default"].delta is not None
    check_version(snap, r.version, "full")   # every copied file matches the manifest
    assert training_frame(root).column("v__x").to_pylist() == [4.0, 1.5]
