"""What bounds a load worker's memory: measured with Arrow's own allocation counter, not timed."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from quiver.loader.plan import sample_keys
from quiver.loader.sources import open_parquet
from quiver.snapshot.schema import EntityDef, FeatureDef, ViewDef

ROW_GROUP_ROWS = 8192
WIDTH = 64


def _wide_file(path: Path, row_groups: int) -> int:
    """Random float32 columns (incompressible); returns one row group's decoded size."""
    rng = np.random.default_rng(7)
    rows = ROW_GROUP_ROWS * row_groups
    cols: dict[str, np.ndarray] = {"user_id": np.arange(rows, dtype=np.int64)}
    cols |= {f"f{i:02d}": rng.random(rows, dtype=np.float32) for i in range(WIDTH)}
    pq.write_table(pa.table(cols), path, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    return ROW_GROUP_ROWS * (8 + 4 * WIDTH)


def _view() -> ViewDef:
    return ViewDef("wide", "wide.parquet", tuple(FeatureDef(f"f{i:02d}", "float32") for i in range(WIDTH)))


def test_reading_many_row_groups_holds_about_one(tmp_path: Path) -> None:
    """An encode task reads many row groups of one file; Arrow's default pre-buffering would keep
    each one read so far until the file is closed, so memory would grow with the data set."""
    groups = 24
    one = _wide_file(tmp_path / "wide.parquet", groups)
    pf = open_parquet(str(tmp_path / "wide.parquet"), _view())
    base = pa.total_allocated_bytes()
    peak = 0
    seen = 0
    for batch in pf.iter_batches(batch_size=4096, row_groups=list(range(groups))):
        seen += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - base)
        del batch
    assert seen == groups * ROW_GROUP_ROWS
    assert peak < 6 * one, f"peak {peak >> 20} MB while reading {groups} row groups of {one >> 20} MB"


def test_sample_measures_spilled_bytes_per_row(tmp_path: Path) -> None:
    """Key ranges are sized by what a worker holds: a dictionary-encoded string column is a few
    bytes per row in Parquet but its full width once decoded and encoded."""
    rows = 20_000
    text = pa.array(["x" * 200] * rows).dictionary_encode()
    pq.write_table(pa.table({"user_id": np.arange(rows, dtype=np.int64), "s": text}), tmp_path / "d.parquet")
    parquet_bytes = pq.ParquetFile(tmp_path / "d.parquet").metadata.row_group(0).total_byte_size
    view = ViewDef("d", "d.parquet", (FeatureDef("s", "string"),))
    sample = sample_keys(EntityDef("user_id", "int64"), view, str(tmp_path / "d.parquet"), stride=100)
    assert len(sample.keys) == rows // 100
    per_row = sample.spill_bytes / sample.spill_rows
    assert per_row > 200, per_row                      # the string, its key and its value's framing
    assert per_row > 10 * parquet_bytes / rows          # what the old estimate would have used
