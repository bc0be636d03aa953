"""A stored group value (FORMAT.md: one serialized EntityRow per entity and storage group), read one
entity at a time: where each view's framed entry sits, and each view's ViewRow bytes."""

__all__ = ["entry_spans", "varint_at", "view_rows"]


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
    """(start, end) of each framed `EntityRow.views` entry (`0x0A varint(len) ViewRow`), in order."""
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
