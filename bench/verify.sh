#!/usr/bin/env bash
# `quiver verify` against `quiver load` on the same data (issue 14): see bench/verify_bench.py.
#
#   bash bench/verify.sh                                   # 1,000,000 and 10,000,000 users
#   VERIFY_USERS=200000 bash bench/verify.sh
#   SOURCES="10000000=/work/bench-data/users-10M" WORK=/work/bench-data/operator-bench bash bench/verify.sh
#
# Writes bench/results/<date>-verify.json and renders it into bench/README.md between
# <!-- verify:start --> and <!-- verify:end -->.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${NAME:-verify}
RESULTS=${RESULTS:-bench/results/$(date -u +%F)-$NAME.json}
README=${README:-bench/README.md}
make -s setup
sources=()
for s in ${SOURCES:-}; do sources+=(--source "$s"); done
.venv/bin/python bench/verify_bench.py --users "${VERIFY_USERS:-1000000,10000000}" "${sources[@]}" \
  --workers "${WORKERS:-2}" --work "${WORK:-bench/work}" --name "$NAME" --json "$RESULTS"
if [ "$README" = - ]; then
  .venv/bin/python bench/report.py "$RESULTS" --title "${TITLE:-$(date -u +%F) $NAME}"
else
  .venv/bin/python bench/report.py "$RESULTS" --readme "$README" --title "${TITLE:-$(date -u +%F) $NAME}"
fi
