#!/usr/bin/env bash
set -euo pipefail
export BENCH_LOADGEN=/work/main/clients/rust/target/release/quiver-loadgen
ROOT=/work/bench-data/root10m
run() { # tree series tag
  local T=$1; uptime
  (cd $T && .venv/bin/python bench/readpath.py --root $ROOT --json /work/bench-data/rp-$3.json --series $2 \
     --rates 1000 --batch-rates 200 --runs 3 --seconds 20 --warmup 5 > /work/bench-data/rp-$3.log 2>&1)
  echo "$3 done"; uptime
}
run /work/main floor,pinned new1
run /work/wt-old pinned old1
run /work/main pinned new2
run /work/wt-old pinned old2
