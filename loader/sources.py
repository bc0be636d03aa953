"""A view's source files: resolved, opened, checked before any data is read."""

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from quiver.loader.errors import SourceError
from quiver.loader.normalize import check_source_schema
from quiver.loader.transform import check_source
from quiver.snapshot.schema import EntityDef, ViewDef


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    rows: int
    row_groups: int


def matching(pattern: str) -> list[str]:
    """The files a source names: a file, a folder (its *.parquet, recursively) or a glob; sorted."""
    if any(ch in pattern for ch in "*?["):
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if os.path.isdir(pattern):
        return sorted(str(p) for p in Path(pattern).rglob("*.parquet"))
    return [pattern] if os.path.isfile(pattern) else []


def resolve(view: ViewDef, base_dir: Path) -> list[str]:
    pattern = view.source if os.path.isabs(view.source) else str(base_dir / view.source)
    found = matching(pattern)
    if not found:
        raise SourceError(f"view {view.name!r}: source {view.source!r} matches no file (looked for {pattern})")
    return found


def open_parquet(path: str, view: ViewDef) -> pq.ParquetFile:
    """No pre-buffering: it keeps every row group read so far in memory until the file is closed,
    so a task reading many row groups would grow by each one's compressed size."""
    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{path}: view {view.name!r}: not a readable Parquet file "
                          f"(truncated or corrupt?): {e}") from None


def inspect(entity: EntityDef, view: ViewDef, base_dir: Path) -> list[SourceFile]:
    out = []
    for path in resolve(view, base_dir):
        pf = open_parquet(path, view)
        if view.computed:
            check_source(entity, view, pf.schema_arrow, path)
        else:
            check_source_schema(entity, view, pf.schema_arrow, path)
        md = pf.metadata
        out.append(SourceFile(path, os.path.getsize(path), md.num_rows, md.num_row_groups))
    if sum(s.rows for s in out) == 0:
        raise SourceError(f"view {view.name!r}: source {view.source!r} has no rows "
                          f"({len(out)} file(s): {', '.join(s.path for s in out[:3])})")
    return out
