"""`quiver verify` compares column-wise over worker processes: one changed value of any type, in one
stored EntityRow or in the offline Parquet, is found and named (view, key, feature), and nothing else
is reported; a key no view holds and a found flag set online only are found by the group scan."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rocksdict import Options, Rdict

from quiver.snapshot import Manifest, SnapshotRoot, encode_int64_key
from quiver.v1 import quiver_pb2 as pb
from support.processes import UsersSnapshots, run_quiver

LINE = re.compile(r"^MISMATCH (view|group) '([^']+)'(?: key (\S+))?(?: feature '([^']+)')?: (.*)$")


def verify(root: Path, *flags: str) -> tuple[int, list[tuple[str, str, str, str, str]]]:
    r = run_quiver("verify", "--root", root, "--workers", "2", *flags, timeout=300)
    found = []
    for line in r.stdout.splitlines():
        m = LINE.match(line)
        assert m or line.startswith("ok: "), line
        if m:
            found.append(tuple(x or "" for x in m.groups()))
    return r.returncode, found  # type: ignore[return-value]


class Online:
    """The stored EntityRows of one version's groups, rewritten in place (a writable open of the copy)."""

    def __init__(self, root: Path, version: str) -> None:
        self.snap, self.version = SnapshotRoot(root), version
        self.manifest = Manifest.load(self.snap.manifest_path(version))
        self.dbs: dict[str, Rdict] = {}

    def db(self, view: str) -> tuple[Rdict, int]:
        group = self.manifest.schema.view(view).group
        if group not in self.dbs:
            self.dbs[group] = Rdict(str(self.snap.online_dir(self.version, group)), Options(raw_mode=True))
        return self.dbs[group], self.manifest.groups[group].views.index(view)

    def edit(self, view: str, uid: int, change: Any) -> None:
        db, at = self.db(view)
        row = pb.EntityRow.FromString(db[encode_int64_key(uid)])
        change(row, at)
        db[encode_int64_key(uid)] = row.SerializeToString()

    def index(self, view: str, feature: str) -> int:
        return next(i for f, g, i in self.manifest.schema.view(view).layout() if f.name == feature)

    def close(self) -> None:
        for db in self.dbs.values():
            db.flush()
            db.close()


def test_one_changed_value_of_each_type_is_named(users: UsersSnapshots, tmp_path: Path) -> None:
    root = users.root(tmp_path / "root", versions=(users.v1,))
    online = Online(root, users.v1)
    i = online.index

    def flip_a_byte(row: pb.EntityRow, at: int) -> None:
        # one byte inside the packed floats of the embedding list, changed in the serialized bytes
        raw = bytearray(row.views[at].SerializeToString())
        floats = np.array(row.views[at].float32_lists[i("embedding", "user_embedding")].values, "<f4").tobytes()
        raw[raw.index(floats) + 41] ^= 0x01
        row.views[at].CopyFrom(pb.ViewRow.FromString(bytes(raw)))

    def null(pos: int) -> Any:
        def change(row: pb.EntityRow, at: int) -> None:
            nulls = bytearray(row.views[at].nulls.ljust(pos // 8 + 1, b"\0"))
            nulls[pos // 8] |= 1 << (pos % 8)
            row.views[at].nulls = bytes(nulls)
        return change

    def set_item(field: str, index: int, value: Any) -> Any:
        def change(row: pb.EntityRow, at: int) -> None:
            getattr(row.views[at], field)[index] = value
        return change

    profile_pos = {f.name: p for p, f in enumerate(online.manifest.schema.view("profile").features)}

    def held(view: str, at_least: int) -> int:  # a user the view holds (ads covers ~85% of them)
        return min(u for u in users.expected(users.v1, view) if u >= at_least)

    country = users.expected(users.v1, "profile")[11]["country"]
    changes = {
        ("profile", 11, "country"): set_item("strings", i("profile", "country"), country + "x"),
        ("profile", 12, "avatar"): set_item("bytes_values", i("profile", "avatar"), b"\x00changed"),
        ("profile", 13, "is_premium"): lambda row, at: row.views[at].bools.__setitem__(
            i("profile", "is_premium"), not row.views[at].bools[i("profile", "is_premium")]),
        ("profile", 14, "sessions_total"): set_item("int64s", i("profile", "sessions_total"), -1),
        ("profile", 15, "language"): null(profile_pos["language"]),
        ("embedding", held("embedding", 16), "user_embedding"): flip_a_byte,
        ("activity", held("activity", 17), "act_119"): set_item("float32s", i("activity", "act_119"), 1234.5),
        ("ads", held("ads", 18), "recent_ad_ids"): lambda row, at: row.views[at].int64_lists[
            i("ads", "recent_ad_ids")].values.append(7),
    }
    for (view, uid, _), change in changes.items():
        online.edit(view, uid, change)
    online.close()
    # and one offline value: the Parquet of the ads view
    (part,) = sorted(SnapshotRoot(root).offline_dir(users.v1, "ads").glob("*.parquet"))
    table = pq.read_table(part)
    uid = next(u for u in table.column("user_id").to_pylist() if u > 100)
    col = table.column("ad_01")
    table = table.set_column(table.column_names.index("ad_01"), "ad_01",
                             pc.if_else(pc.equal(table.column("user_id"), uid), pa.scalar(-5, pa.int32()), col))
    pq.write_table(table, part)

    code, found = verify(root)
    assert code == 1
    named = {(view, int(key), feature) for _, view, key, feature, _ in found}
    assert named == {*changes, ("ads", uid, "ad_01")}, found
    lines = {(view, int(key), feature): text for _, view, key, feature, text in found}
    assert lines["profile", 11, "country"] == f"online {country + 'x'!r}, offline {country!r}"
    assert lines["profile", 15, "language"].startswith("online None, offline '")
    assert lines["ads", uid, "ad_01"].endswith("offline -5")


def test_a_key_in_no_view_and_a_flag_set_online_only_are_counted(users: UsersSnapshots, tmp_path: Path) -> None:
    root = users.root(tmp_path / "root", versions=(users.v1,))
    online = Online(root, users.v1)
    ads = users.expected(users.v1, "ads")
    absent = next(u for u in range(users.users) if u not in ads)
    db, at = online.db("ads")
    row = pb.EntityRow.FromString(db[encode_int64_key(absent)])
    row.found[at] = True  # the ads flag set for a user the ads Parquet lacks
    db[encode_int64_key(absent)] = row.SerializeToString()
    empty = pb.EntityRow.FromString(db[encode_int64_key(absent)])
    for j in range(len(empty.found)):
        empty.found[j] = False
    stray = users.users + 1000
    db[encode_int64_key(stray)] = empty.SerializeToString()  # a key no view holds
    online.close()
    code, found = verify(root)
    assert code == 1
    group = online.manifest.schema.view("ads").group
    rows = online.manifest.groups[group].rows
    assert ("group", group, str(stray), "", "online 'present, in none of its views', offline 'absent'") in found
    assert any(kind == "view" and view == "ads" and not key and text.startswith(f"online '{len(ads) + 1} rows'")
               for kind, view, key, _, text in found), found
    assert ("group", group, "", "", f"online '{rows + 1} keys', offline 'manifest: {rows} keys'") in found
