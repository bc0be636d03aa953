#!/usr/bin/env bash
set -euo pipefail
export BENCH_LOADGEN=/work/main/clients/rust/target/release/quiver-loadgen
V1=20261206T020352Z-e3c3a06cdfda; V2=20261206T023454Z-a0d275eeca0b
for tree in old new; do
  if [ $tree = old ]; then PY=/work/wt-old/.venv/bin/python; else PY=/work/main/.venv/bin/python; fi
  sync; echo 3 > /proc/sys/vm/drop_caches; uptime
  (cd /work/main && $PY bench/swap.py --root /work/bench-data/root10m --from $V1 --to $V2 --after 120 \
     --json /work/bench-data/swap-$tree.json > /work/bench-data/swap-$tree.log 2>&1) || echo "$tree failed"
  echo "$tree done"; uptime
done
