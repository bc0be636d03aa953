#!/usr/bin/env bash
# The read path's named series (issue 10), the same way every run: floor (do-nothing gRPC server),
# pinned (one-worker server on core 1, generator on core 0, page cache warm) and capped (the same in a
# memory cgroup of 25% of the online form, caches dropped first: 90M users on one node).
#
#   bash bench/readpath.sh                    # 10,000,000 generated users (data set reused from bench/work)
#   ROOT=/path/to/root bash bench/readpath.sh # an existing root
#   SERIES=pinned RUNS=1 bash bench/readpath.sh
#   REALTIME=1 bash bench/readpath.sh         # server and generator under SCHED_FIFO on a shared machine
#
# Needs root for the capped series (cgroup v1 at /sys/fs/cgroup/memory, drop_caches). Writes
# bench/results/<date>-readpath-<users>.json and renders it into bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-10000000}
WORK=${WORK:-bench/work}
bash bench/prepare.sh
ROOT=${ROOT:-$WORK/users-$USERS/root}
if [ ! -f "$ROOT/CURRENT" ]; then
  .venv/bin/python - "$WORK" "$USERS" "$ROOT" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
import systems
work, users, root = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
source, _ = systems.dataset(work, users)
(work / "logs").mkdir(parents=True, exist_ok=True)
print(systems.load_quiver(source, root, users, 2, work / "logs" / "load.log")["wall_s"], "s to load")
PY
fi
RESULTS=${RESULTS:-bench/results/$(date -u +%F)-readpath-$USERS.json}
.venv/bin/python bench/readpath.py ${REALTIME:+--realtime} --root "$ROOT" --json "$RESULTS" --readme "${README:-bench/README.md}" \
  --series "${SERIES:-floor,pinned,capped}" --runs "${RUNS:-3}" --seconds "${SECONDS_PER_RUN:-20}" \
  --warmup "${WARMUP:-5}"
