"""A root with one published version, and the checks that a refused `quiver load` changed nothing there:
shared by the in-process bad-input tests (tests/unit/test_cli_bad_input.py) and the process ones that
need the loader's worker processes (tests/e2e/test_loader.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from quiver.snapshot import SnapshotRoot
from support.processes import run_quiver

AS_OF = "2026-11-01T00:00:00Z"


def publish_small_root(d: Path) -> Path:
    """d/root: one version of one view `v` (float64 `x` over int64 `user_id`), loaded by `quiver load`."""
    pq.write_table(pa.table({"user_id": pa.array([1, 2], pa.int64()), "x": pa.array([0.5, 1.5])}), d / "v.parquet")
    (d / "features.yaml").write_text(
        "entity: {name: user_id, key_type: int64}\n"
        "views: [{name: v, source: v.parquet, features: [{name: x, type: float64}]}]\n")
    r = run_quiver("load", "--features", d / "features.yaml", "--root", d / "root", "--workers", "2",
                   "--as-of", AS_OF)
    assert r.returncode == 0, r.stderr
    return d / "root"


def assert_load_rejected(run: Callable[..., Any], features: Path, root: Path, exit_code: int, *needles: str) -> str:
    """Loads with `run` (run_quiver or run_in_process), expects failure; returns stderr. Nothing may be
    published and CURRENT must not change."""
    versions, current = SnapshotRoot(root).versions(), (root / "CURRENT").read_bytes()
    # the root already serves a version whose 'x' may have another type: this checks the data, not that
    r = run("load", "--features", features, "--root", root, "--workers", "2", "--allow-type-change")
    assert r.returncode == exit_code, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, f"{n!r} not in: {r.stderr}"
    assert "nothing was published" in r.stderr
    assert SnapshotRoot(root).versions() == versions
    assert (root / "CURRENT").read_bytes() == current
    assert sorted(p.name for p in (root / "versions").iterdir()) == versions, "a partial version is visible"
    assert not list((root / "staging").glob("load-*")), "a failed load left its staging folder"
    return str(r.stderr)
