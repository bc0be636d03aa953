"""Writes one view of a loaded quiver version as Redis commands (RESP), for `redis-cli --pipe`.

    python bench/redis_feed.py ROOT/versions/V VIEW | redis-cli -p PORT --pipe

The layout is the one a Redis feature store uses today: one hash per user, key `user:{id}`, one field
per view holding that view's serialized ViewRow, byte for byte the ViewRow quiver stores (inside its
storage group's EntityRow) and serves. Reading the RocksDB (not the Parquet) guarantees both systems
hold the same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rocksdict import AccessType, Options, Rdict

from quiver.snapshot.keys import decode_int64_key
from quiver.snapshot.manifest import Manifest
from quiver.snapshot.values import view_rows

BATCH = 4096


def feed(version_dir: str, view: str, out: object) -> int:
    manifest = Manifest.load(Path(version_dir) / "manifest.json")
    group = manifest.schema.view(view).group
    width, at = len(manifest.groups[group].views), manifest.groups[group].views.index(view)
    db_path = str(Path(version_dir) / "online" / group)
    write = out.write  # type: ignore[attr-defined]
    field = view.encode()
    head = b"*4\r\n$4\r\nHSET\r\n"
    field_part = b"$%d\r\n%s\r\n" % (len(field), field)
    db = Rdict(db_path, Options(raw_mode=True), access_type=AccessType.read_only())
    n, chunk = 0, []
    try:
        for key, stored in db.items():
            value = view_rows(stored, width)[at]  # type: ignore[arg-type]
            if value is None:
                continue
            user = b"user:%d" % decode_int64_key(key)  # type: ignore[arg-type]
            chunk.append(b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (head, len(user), user, field_part, len(value), value))
            n += 1
            if len(chunk) >= BATCH:
                write(b"".join(chunk))
                chunk.clear()
        write(b"".join(chunk))
    finally:
        db.close()
    return n


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    n = feed(sys.argv[1], sys.argv[2], sys.stdout.buffer)
    sys.stdout.buffer.flush()
    print(f"{sys.argv[2]}: {n} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
