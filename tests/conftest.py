"""Shared fixtures: a small data set with every feature type and its edge cases (real features.yaml and
Parquet in tmp_path), and a small published root for the bad-input tests. The helpers they use live in
tests/support/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from support.datasets import DataSet, write_every_type
from support.loads import publish_small_root


@pytest.fixture
def every_type(tmp_path: Path) -> DataSet:
    """The every-type data set keyed by int64 (negative and extreme keys included)."""
    return write_every_type(tmp_path / "src", "int64")


@pytest.fixture
def every_type_string_keys(tmp_path: Path) -> DataSet:
    """The every-type data set keyed by non-ASCII, empty and prefix-sharing strings."""
    return write_every_type(tmp_path / "src", "string")


@pytest.fixture
def small_view(tmp_path: Path) -> Callable[..., Path]:
    """Writes features.yaml with one view `v` over int64 `user_id` and the given source table; returns its path.
    For the bad-input tests: pass `features` and `table` to break one thing at a time."""

    def write(table: pa.Table | None = None, features: list[dict[str, Any]] | None = None,
              view_extra: dict[str, Any] | None = None, source: str = "v.parquet") -> Path:
        d = tmp_path / "small"
        d.mkdir(exist_ok=True)
        if table is None:
            table = pa.table({"user_id": pa.array([3, 1, 2], pa.int64()), "x": pa.array([1.0, 2.0, None])})
        if source == "v.parquet":
            pq.write_table(table, d / source)
        doc = {"entity": {"name": "user_id", "key_type": "int64"},
               "views": [{"name": "v", "source": source, **(view_extra or {}),
                          "features": features or [{"name": "x", "type": "float64"}]}]}
        (d / "features.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return d / "features.yaml"

    return write


@pytest.fixture(scope="session")
def published_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with one published version (support.loads), built once per session (per xdist worker);
    tests that change a root work on a copy."""
    return publish_small_root(tmp_path_factory.mktemp("published"))
