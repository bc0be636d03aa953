"""A stored group value (FORMAT.md: one serialized EntityRow per entity and storage group): its field
tags, protobuf varints (written once here for the loader and the server), and, read one entity at a
time, where each view's framed entry sits and each view's ViewRow bytes."""

__all__ = ["FOUND_TAG", "VIEWS_TAG", "entry_spans", "varint", "varint_at", "view_rows"]

VIEWS_TAG = 0x0A   # EntityRow.views (field 1), length-delimited: one framed ViewRow per view
FOUND_TAG = 0x12   # EntityRow.found (field 2), packed bools: one byte per view

# Lengths below 16384 (one- and two-byte varints) come from a table: the server frames every row it
# answers with one, and a lookup is several times cheaper than the loop.
_TABLE = [bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(16384)]


def varint(n: int) -> bytes:
    """The protobuf varint of `n` (>= 0)."""
    if n < 16384:
        return _TABLE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def varint_at(buf: bytes, pos: int) -> tuple[int, int]:
    """The protobuf varint at `pos`, and the position after it."""
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def entry_spans(value: bytes, views: int) -> list[tuple[int, int]]:
    """(start, end) of each framed `EntityRow.views` entry (VIEWS_TAG varint(len) ViewRow), in order."""
    spans = []
    pos = 0
    for _ in range(views):
        n = value[pos + 1]
        p = pos + 2
        if n & 0x80:  # a ViewRow of 128 bytes or more: a longer varint
            n, p = varint_at(value, pos + 1)
        spans.append((pos, p + n))
        pos = p + n
    return spans


def view_rows(value: bytes, views: int) -> list[bytes | None]:
    """Each view's ViewRow bytes, None where the view lacks the entity (its found flag, the value's
    last `views` bytes, is 0)."""
    found = value[len(value) - views:]
    out: list[bytes | None] = []
    for j, (start, end) in enumerate(entry_spans(value, views)):
        if not found[j]:
            out.append(None)
            continue
        p = start + 1
        while value[p] & 0x80:
            p += 1
        out.append(value[p + 1:end])
    return out
