"""The exit status of a `quiver` process is the code main() returns for its failure: the bad-input cases
themselves run in-process (tests/unit/test_cli_bad_input.py, support.inprocess); here, one process run per
exit code they use that no other process test shows. The others are shown by process tests that need a
process anyway: 1 (test_faults_startup.py, a worker that keeps dying at start), 3 and 4 (test_loader.py,
bad data found in the loader's worker processes), 13 (test_load_checks.py), 5 to 8 and 12
(test_distribution.py), 10 (test_faults_disk.py), 14 (test_faults_startup.py)."""

from __future__ import annotations

from pathlib import Path

from quiver.base.errors import EXIT_CODES
from support.processes import run_quiver

USAGE, ROOT = 2, 9


def test_the_codes_used_here_mean_what_this_test_assumes() -> None:
    assert EXIT_CODES[USAGE].startswith("usage") and EXIT_CODES[ROOT].startswith("snapshot root")


def test_a_usage_error_exits_2(tmp_path: Path) -> None:
    """A UsageError a command raises (features.yaml is a folder), through main's return value."""
    features = tmp_path / "features.yaml"
    features.mkdir()
    r = run_quiver("load", "--features", features, "--root", tmp_path / "root", timeout=60)
    assert r.returncode == USAGE and str(features) in r.stderr, r.stderr
    assert "quiver load: error:" in r.stderr


def test_a_missing_root_exits_9(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    r = run_quiver("verify", "--root", missing, timeout=60)
    assert r.returncode == ROOT, r.stderr
    assert str(missing) in r.stderr and "quiver verify: error:" in r.stderr
