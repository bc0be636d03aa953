#!/usr/bin/env bash
# `make bench`: quiver against Redis on the same data, open loop at fixed rates (issues 3 and 4).
#
#   bash bench/run.sh                 # 10,000,000 users, 20 s runs, median of 3 (about 1.5 h)
#   QUICK=1 bash bench/run.sh         # 200,000 users, 5 s runs, 1 run each (about 10 min)
#
# Environment: USERS, QUICK, SECONDS_PER_RUN, WARMUP, RUNS, RATES (1 entity, comma-separated),
# BATCH_RATE (100 entities), WORK (data sets, default bench/work), NAME (results file bench/results/<date>-<NAME>.json), TITLE, README
# (the markdown file to render into; README=- prints it instead).
# Installs what it needs: the venv (make setup), redis-server (make system-deps), ghz (make tools),
# the Rust load generator (make loadgen; BENCH_LOADGEN=PATH runs that binary and builds none).
# Every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${QUICK:-}" ] && [ "${QUICK}" != 0 ]; then
  USERS=${USERS:-200000}; SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}; WARMUP=${WARMUP:-2}; RUNS=${RUNS:-1}
  KIND=quick
else
  USERS=${USERS:-10000000}; SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}; WARMUP=${WARMUP:-5}; RUNS=${RUNS:-3}
  KIND=full
fi
RATES=${RATES:-500,1000,2000,3000,5000}
BATCH_RATE=${BATCH_RATE:-200}
NAME=${NAME:-$KIND-$USERS}
RESULTS=${RESULTS:-bench/results/$(date -u +%F)-$NAME.json}
README=${README:-bench/README.md}
TITLE=${TITLE:-$(date -u +%F) $NAME}

bash bench/prepare.sh

flags=(serve --users "$USERS" --seconds "$SECONDS_PER_RUN" --warmup "$WARMUP" --runs "$RUNS"
       --rates "$RATES" --batch-rate "$BATCH_RATE" --name "$NAME" --json "$RESULTS" --work "${WORK:-bench/work}")
[ "$KIND" = quick ] && flags+=(--quick)
[ -n "${SMOKE:-}" ] && flags+=(--smoke)

# The harness stops what it started at exit (atexit, also on SIGTERM/SIGINT); the trap passes a
# SIGTERM sent to this script on to it.
.venv/bin/python bench/harness.py "${flags[@]}" &
harness=$!
trap 'kill -TERM "$harness" 2>/dev/null || true; wait "$harness" 2>/dev/null || true' EXIT
wait "$harness"
trap - EXIT

if [ "$README" = - ]; then
  .venv/bin/python bench/report.py "$RESULTS" --title "$TITLE"
else
  .venv/bin/python bench/report.py "$RESULTS" --readme "$README" --title "$TITLE"
  echo "results: $RESULTS; table rendered into $README"
fi
