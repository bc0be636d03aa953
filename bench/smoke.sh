#!/usr/bin/env bash
# A seconds-long pass through the whole harness for CI (tests/e2e/test_bench_smoke.py): 5,000 users,
# one rate, 1 s runs, every row; checks the pipeline end to end and asserts no timing.
#
#   OUT=/tmp/smoke bash bench/smoke.sh   # writes $OUT/smoke.json, and $OUT/README.md rendered from it
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${OUT:-$(mktemp -d)}" && cd "${OUT:-.}" && pwd)
printf '<!-- results:start -->\n<!-- results:end -->\n' > "$OUT/README.md"
SMOKE=1 USERS=${USERS:-5000} SECONDS_PER_RUN=1 WARMUP=0.3 RUNS=1 RATES=300 BATCH_RATE=50 NAME=smoke \
  RESULTS="$OUT/smoke.json" README="$OUT/README.md" WORK="$OUT/work" bash bench/run.sh
