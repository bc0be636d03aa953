#!/usr/bin/env bash
# Series "embedded" (issue 11): the embedded Rust reader against gRPC over TCP and over a Unix
# socket, on one format-2 root, in one sitting, open loop (quiver-loadgen). Then the read options
# that might matter, and the embedded reader with 25% of the online form cacheable (cgroup v1).
#
#   ROOT=/work/bench-data/root-10M bash bench/embedded.sh
#
# Pinning: the generator (and its pacing thread) on CPU 0; the embedded reader's thread on CPU 1
# (quiver-loadgen --pin-cpus 1); the server on CPU 1 (`taskset -c 1 quiver serve --workers 1`).
# Page cache warm: every online file is read once first. Needs root for the capped run (cgroup
# v1 memory controller at /sys/fs/cgroup/memory, drop_caches); CAP=0 skips it.
#
# Environment: ROOT, USERS (ids drawn from [0, USERS)), SECONDS_PER_RUN, WARMUP, RATE1 (requests/s,
# 1 entity), RATE100 (requests/s, 100 entities), CAPPED_RATE1, CAPPED_RATE100, SATURATE (requests/s of 100 entities offered to
# find the throughput), CACHE_MB, CAP (1/0), OUT (results JSON), REALTIME (1: generator and server
# under SCHED_FIFO via `chrt -f 10`, as bench/readpath.py --realtime, so that on a machine shared with
# other work the measured processes get their cores; medians are then usable, tails still are not).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${ROOT:-/work/bench-data/root-10M}
USERS=${USERS:-10000000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
WARMUP=${WARMUP:-5}
RATE1=${RATE1:-2000}
RATE100=${RATE100:-200}
SATURATE=${SATURATE:-3000}
# Capped: 1 entity at the read-path series' capped rate; 100 entities at a rate one reader thread
# can keep up with when three lookups in four go to the disk (~0.3-0.5 ms each, synchronous).
CAPPED_RATE1=${CAPPED_RATE1:-1000}
CAPPED_RATE100=${CAPPED_RATE100:-10}
CACHE_MB=${CACHE_MB:-256}
CAP=${CAP:-1}
OUT=${OUT:-bench/results/$(date -u +%F)-embedded-10M.json}
RT=()
[ "${REALTIME:-0}" = 1 ] && RT=(chrt -f 10)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/clients/rust/target}

make -s setup
nice -n 10 make -s loadgen
LOADGEN=$CARGO_TARGET_DIR/release/quiver-loadgen
CURRENT=$(cat "$ROOT/CURRENT")
ONLINE_BYTES=$(.venv/bin/python -c "
import json, sys
m = json.load(open(sys.argv[1]))
print(sum(f['size'] for f in m['files'] if f['path'].startswith('online/')))" "$ROOT/versions/$CURRENT/manifest.json")
WORK=$(mktemp -d)
CGROUP=/sys/fs/cgroup/memory/quiver-embedded-bench
server_pgid=""
cleanup() {
  if [ -n "$server_pgid" ]; then kill -TERM -- "-$server_pgid" 2>/dev/null || true; fi
  if [ -d "$CGROUP" ]; then rmdir "$CGROUP" 2>/dev/null || true; fi
}
trap cleanup EXIT
echo "root $ROOT ($CURRENT), online form $((ONLINE_BYTES >> 20)) MiB; results in $WORK, then $OUT"
uptime | tee "$WORK/load-before.txt"

warm() {
  echo "== warming the page cache"
  find "$ROOT/versions/$CURRENT/online" -type f -exec cat {} + > /dev/null
}

# run NAME [loadgen flags...]: one open-loop run, generator on CPU 0.
run() {
  local name=$1; shift
  echo "== $name"
  "${RT[@]}" taskset -c 0 "$LOADGEN" --users "$USERS" --duration "$SECONDS_PER_RUN" --warmup "$WARMUP" \
    --json-out "$WORK/$name.json" "$@" | tee "$WORK/$name.txt"
}

embedded() {
  local name=$1; shift
  run "$name" --target embedded --root "$ROOT" --pin-cpus 1 --cache-mb "$CACHE_MB" "$@"
}

start_server() {
  local port sock
  port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  sock=$WORK/quiver.sock
  setsid "${RT[@]}" taskset -c 1 .venv/bin/quiver serve --root "$ROOT" --workers 1 --listen "127.0.0.1:$port" --uds "$sock" \
    --metrics-port 0 --verify size --cache-mb "$CACHE_MB" > "$WORK/serve.log" 2>&1 &
  server_pgid=$!
  TCP=http://127.0.0.1:$port
  UDS=unix://$sock
  for _ in $(seq 600); do
    if "$LOADGEN" --addr "$TCP" --rate 10 --duration 0.2 --warmup 0 --users "$USERS" --json-out "$WORK/ready.json" \
         > /dev/null 2>&1 && grep -q '"errors": 0,' "$WORK/ready.json"; then
      return
    fi
    sleep 1
  done
  echo "quiver serve did not come up; see $WORK/serve.log" >&2
  exit 1
}

server_rss_kb() {
  ps -o rss= -g "$server_pgid" | awk '{s += $1} END {print s}'
}

warm
# --- side by side: embedded, gRPC over TCP, gRPC over a Unix socket --------------------------
embedded embedded-k1 --rate "$RATE1" --entities-per-request 1
embedded embedded-k100 --rate "$RATE100" --entities-per-request 100
embedded embedded-k1-decode --rate "$RATE1" --entities-per-request 1 --decode
embedded embedded-k100-decode --rate "$RATE100" --entities-per-request 100 --decode
# Saturated: the reader thread makes calls back to back; the achieved rate is its throughput (calls
# queue behind it, so their latencies are not the point and the timeout is lifted).
embedded embedded-saturate-k100 --rate "$SATURATE" --entities-per-request 100 --duration 5 --warmup 1 --timeout-ms 600000
embedded embedded-saturate-k1 --rate 200000 --entities-per-request 1 --duration 5 --warmup 1 --timeout-ms 600000
embedded embedded-saturate-k1-no-verify --rate 200000 --entities-per-request 1 --duration 5 --warmup 1 \
  --timeout-ms 600000 --read-option no-verify-checksums

start_server
run grpc-tcp-k1 --target quiver --addr "$TCP" --rate "$RATE1" --entities-per-request 1
run grpc-tcp-k100 --target quiver --addr "$TCP" --rate "$RATE100" --entities-per-request 100
run grpc-uds-k1 --target quiver --addr "$UDS" --rate "$RATE1" --entities-per-request 1
run grpc-uds-k100 --target quiver --addr "$UDS" --rate "$RATE100" --entities-per-request 100
run grpc-uds-saturate-k100 --target quiver --addr "$UDS" --rate 400 --entities-per-request 100 --duration 5 --warmup 1
echo "$(server_rss_kb)" > "$WORK/server-rss-kb.txt"
kill -TERM -- "-$server_pgid"; wait "$server_pgid" 2>/dev/null || true; server_pgid=""

# --- read options and cache size (embedded) ---------------------------------------------------
for opt in no-verify-checksums no-fill-cache no-mmap; do
  embedded "opt-$opt-k1" --rate "$RATE1" --entities-per-request 1 --read-option "$opt"
  embedded "opt-$opt-k100" --rate "$RATE100" --entities-per-request 100 --read-option "$opt"
done
for mb in 64 1024 4096; do
  CACHE_MB=$mb embedded "cache-$mb-k1" --rate "$RATE1" --entities-per-request 1
  CACHE_MB=$mb embedded "cache-$mb-k100" --rate "$RATE100" --entities-per-request 100
done

# --- 25% of the online form cacheable (page cache charged to the group) ------------------------
if [ "$CAP" = 1 ]; then
  limit=$((ONLINE_BYTES / 4))
  mkdir -p "$CGROUP"
  echo "$limit" > "$CGROUP/memory.limit_in_bytes"
  sync; echo 3 > /proc/sys/vm/drop_caches
  for k in 1 100; do
    rate=$CAPPED_RATE1; [ "$k" = 100 ] && rate=$CAPPED_RATE100
    echo "== capped-k$k (limit $((limit >> 20)) MiB)"
    bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' _ "$CGROUP" \
      "${RT[@]}" taskset -c 0 "$LOADGEN" --target embedded --root "$ROOT" --pin-cpus 1 --cache-mb "$CACHE_MB" \
      --users "$USERS" --duration 20 --warmup 10 --rate "$rate" --entities-per-request "$k" \
      --json-out "$WORK/capped-k$k.json" | tee "$WORK/capped-k$k.txt"
  done
  cat "$CGROUP/memory.max_usage_in_bytes" > "$WORK/capped-max-usage.txt"
  rmdir "$CGROUP"
fi
uptime | tee "$WORK/load-after.txt"

.venv/bin/python - "$WORK" "$OUT" "$ROOT" "$CURRENT" "$ONLINE_BYTES" <<'EOF'
import glob, json, os, sys, time
work, out, root, current, online = sys.argv[1:]
runs = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(f"{work}/*.json")) if "ready" not in p}
def text(name):
    p = f"{work}/{name}"
    return open(p).read().strip() if os.path.exists(p) else None
result = {
    "series": "embedded", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "root": root, "version": current,
    "online_bytes": int(online), "cpus": os.cpu_count(), "load_before": text("load-before.txt"),
    "load_after": text("load-after.txt"), "server_rss_kb": text("server-rss-kb.txt"),
    "capped_max_usage_bytes": text("capped-max-usage.txt"), "runs": runs,
}
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(result, open(out, "w"), indent=1)
print(f"{'run':32} {'rate':>7} {'k':>4} {'achieved':>9} {'p50':>7} {'p99':>7} {'p99.9':>7} {'errors':>6} {'rss MiB':>8} {'anon MiB':>8}")
for name, r in runs.items():
    print(f"{name:32} {r['rate']:>7.0f} {r['entities_per_request']:>4} {r['achieved_rate']:>9.0f} {r['p50_us']:>7} "
          f"{r['p99_us']:>7} {r['p99_9_us']:>7} {r['errors']:>6} {r['rss_peak_kb'] >> 10:>8} {r.get('rss_anon_kb', 0) >> 10:>8}")
EOF
