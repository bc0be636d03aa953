#!/usr/bin/env bash
# Load time, old tree (dee4a6d) vs new (HEAD), alternating, RUNS each, into fresh roots, 2 workers.
# usage: bash loadbench.sh SOURCE RUNS OUT.tsv
set -euo pipefail
SRC=$1; RUNS=${2:-3}; OUT=${3:-/tmp/loadbench.tsv}
echo -e "run\ttree\twall_s\tload1" > "$OUT"
for i in $(seq 1 "$RUNS"); do
  for tree in old new; do
    if [ $tree = old ]; then Q=/work/wt-old/.venv/bin/quiver; else Q=/work/main/.venv/bin/quiver; fi
    R=/tmp/lb-root-$tree; rm -rf "$R"; sync
    t0=$(date +%s.%N)
    "$Q" load --features "$SRC/features.yaml" --root "$R" --workers 2 --no-reuse >/tmp/lb-$tree-$i.out 2>/tmp/lb-$tree-$i.log
    t1=$(date +%s.%N)
    echo -e "$i\t$tree\t$(echo "$t1 - $t0" | bc)\t$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT"
  done
done
rm -rf /tmp/lb-root-old /tmp/lb-root-new
