#!/usr/bin/env bash
# What every benchmark needs on a fresh machine: the venv and redis-server (make setup), ghz (make
# tools, a pinned Go module), the Rust load generator (release build). Quiet when already there.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in go cargo; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required (Go for ghz and bench/delayproxy, Rust for quiver-loadgen)" >&2; exit 1; }
done
make -s setup tools
(cd clients/rust && cargo build --release --quiet --bin quiver-loadgen)
