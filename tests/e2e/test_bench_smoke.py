"""The benchmark harness end to end at toy size (bench/smoke.sh): every row is produced with its JSON, its
requests are answered (a slow one may time out) and the report renders. No timing is asserted: benchmarks
live in bench/, never as timed tests.

pytest compiles no Rust: the harness runs the quiver-loadgen `make rust-test` built (it runs before pytest
in `make test`), passed as BENCH_LOADGEN so bench/prepare.sh builds nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# where `make rust-test` (cargo, in clients/rust) leaves it
LOADGEN = REPO / "clients" / "rust" / os.environ.get("CARGO_TARGET_DIR", "target") / "release" / "quiver-loadgen"
# error kinds as quiver-loadgen ("timeout after 2s") and ghz ("rpc error: code = DeadlineExceeded ...") name them
SLOW = ("timeout", "deadline")
SHED = ("resourceexhausted", "resource_exhausted")
# ghz cancels the calls in flight when its -z time is up: its own, counted apart (bench/generators.py)
CUT_AT_END = ("use of closed network connection", "context canceled", "the client connection is closing")


@pytest.mark.slow
def test_bench_smoke(tmp_path: Path) -> None:
    # CI has go and redis-server; a machine without them fails here on purpose, naming what is missing.
    missing = [tool for tool in ("go", "redis-server", "redis-cli", "taskset") if not shutil.which(tool)]
    assert not missing, f"bench smoke needs {', '.join(missing)} on PATH"
    # not skipped: a missing generator is a broken `make test` order, not an optional part
    assert os.access(LOADGEN, os.X_OK), f"{LOADGEN} is missing: run `make rust-test` first (it builds quiver-loadgen)"
    # Its own process group, so a timeout stops the whole harness (servers, generators), not only bash.
    proc = subprocess.Popen(["bash", "bench/smoke.sh"], cwd=REPO,
                            env={**os.environ, "OUT": str(tmp_path), "BENCH_LOADGEN": str(LOADGEN)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=1200)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    res = json.loads((tmp_path / "smoke.json").read_text())

    expected = set()
    for pinned, workers in ((False, 2), (True, 1)):
        uds = "unix socket (2 worker sockets)" if workers == 2 else "unix socket"
        for path, generator in (("tcp loopback", "rust"), (uds, "rust"), ("tcp loopback", "ghz")):
            for k, rate in ((1, 300), (100, 50)):
                expected.add(("quiver", path, generator, k, rate, pinned))
    for path in ("loopback", "hop +0.5 ms RTT"):
        for k, rate in ((1, 300), (100, 50)):
            expected.add(("redis", path, "rust", k, rate, False))
    expected.add(("quiver", "tcp loopback", "ghz", 1, None, False))  # peak throughput, unpaced
    got = {(r["system"], r["path"], r["generator"], r["entities"], r["rate"], r["pinned"]) for r in res["rows"]}
    assert got == expected

    for row in res["rows"]:
        # a generator that did not run or wrote no JSON is a broken pipeline
        assert row["failed_runs"] == 0, row
        assert row["count"] > 0 and row["p99_us"] is not None, row
        # a slow request on a busy 2-core CI machine is not: requests that timed out (or that the server shed
        # under the unpaced run) are allowed, any other error means the requests or their answers are wrong
        assert row["errors"] < row["count"], row
        allowed = SLOW + CUT_AT_END + (SHED if row["rate"] is None else ())
        for run in row["each_run"]:
            other = {kind: n for kind, n in run["error_kinds"].items() if not any(a in kind.lower() for a in allowed)}
            assert not other, (row["label"], other)
    assert res["load_quiver"]["users_per_s"] > 0 and res["load_quiver"]["online_mb"] > 0
    assert res["load_redis"]["keys"] == 5000 and res["load_redis"]["used_memory_mb"] > 0
    assert res["serve_quiver"]["under_load"]["peak_rss_mb"] > 0
    assert res["hop"]["method"] in ("netns+netem", "userspace delay proxy")
    assert {t["issue"] for t in res["targets"]} == {2, 3, 4}
    assert all(k in res["machine"] for k in ("nproc", "cpu_model", "kernel", "free_g"))
    assert all(res["versions"][k] for k in ("quiver", "redis", "ghz", "rustc"))
    readme = (tmp_path / "README.md").read_text()
    assert "**Targets**" in readme and "redis hop +0.5 ms RTT (rust)" in readme
