#!/usr/bin/env bash
# The loader benchmark (issue 2): `quiver load --workers 2` into an empty root at each size, with
# users/s, MB/s of source Parquet, peak RSS of the loader's process tree and the size of each form.
#
#   bash bench/load.sh                       # 1,000,000 and 10,000,000 users
#   LOAD_USERS=200000,1000000 bash bench/load.sh
#
# Data sets are generated once under bench/work/ and reused. Writes bench/results/<date>-load.json
# and renders it into bench/README.md between <!-- load:start --> and <!-- load:end -->.
set -euo pipefail
cd "$(dirname "$0")/.."
LOAD_USERS=${LOAD_USERS:-1000000,10000000}
NAME=${NAME:-load}
RESULTS=${RESULTS:-bench/results/$(date -u +%F)-$NAME.json}
README=${README:-bench/README.md}
make -s setup
.venv/bin/python bench/harness.py load --users "$LOAD_USERS" --workers "${WORKERS:-2}" --name "$NAME" --json "$RESULTS" &
harness=$!
trap 'kill -TERM "$harness" 2>/dev/null || true; wait "$harness" 2>/dev/null || true' EXIT
wait "$harness"
trap - EXIT
if [ "$README" = - ]; then
  .venv/bin/python bench/report.py "$RESULTS" --title "${TITLE:-$(date -u +%F) $NAME}"
else
  .venv/bin/python bench/report.py "$RESULTS" --readme "$README" --title "${TITLE:-$(date -u +%F) $NAME}"
fi
