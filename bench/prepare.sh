#!/usr/bin/env bash
# What every benchmark needs on a fresh machine: the venv and redis-server (make setup), ghz (make
# tools, a pinned Go module), the Rust load generator (release build). Quiet when already there.
#
# BENCH_LOADGEN=PATH: run that quiver-loadgen and build no Rust (the bench smoke test sets it to the
# binary `make rust-test` built before pytest); a missing binary is an error, never a build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BENCH_LOADGEN:-}" ]; then
  [ -x "$BENCH_LOADGEN" ] || { echo "bench: BENCH_LOADGEN=$BENCH_LOADGEN is not an executable quiver-loadgen (make rust-test builds it)" >&2; exit 1; }
  tools=(go)
else
  tools=(go cargo)
fi
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required (Go for ghz and bench/delayproxy, Rust for quiver-loadgen)" >&2; exit 1; }
done
make -s setup tools
# every target (gRPC, embedded, Redis), linked as `make rust-test` links it
[ -n "${BENCH_LOADGEN:-}" ] || make -s loadgen
