# One command per job. Every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
USERS ?= 1000000
DEMO := demo-data

.PHONY: setup proto test lint typecheck pytest rust-test deploy-check demo bench bench-load bench-readpath clean system-deps tools

# redis-server for the tests that compare against Redis; iproute2 for the netem hop in bench/;
# a Java 17 runtime for the Spark engine (pyspark 4 runs on Java 17 or 21); chromium for the report page's
# browser test; clang and libclang-dev for the Rust crate's feature `embedded` (librocksdb-sys runs bindgen).
system-deps:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server iproute2 protobuf-compiler >/dev/null; \
	  else echo "redis-server missing: install the Debian package redis-server" >&2; exit 1; fi; }
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing (the report page's browser test): install the Debian package chromium" >&2; exit 1; fi; }
	@command -v java >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	  else echo "java missing: install the Debian package openjdk-17-jre-headless" >&2; exit 1; fi; }
	@{ command -v clang >/dev/null && ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq clang libclang-dev >/dev/null; \
	  else echo "clang/libclang missing (Rust feature embedded): install the Debian packages clang libclang-dev" >&2; exit 1; fi; }

$(STAMP): pyproject.toml setup.py $(wildcard proto/quiver/v1/*.proto)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=68" wheel "grpcio-tools==1.85.1"
	$(PY) -m pip install -q --no-build-isolation -e ".[dev,spark]"
	touch $(STAMP)

setup: $(STAMP) system-deps

proto: $(STAMP)
	$(PY) setup.py -q egg_info >/dev/null

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy quiver snapshot loader service distribution

# tools: the reflection tests call the server with ghz and grpcurl, as an operator would
pytest: setup tools
	$(VENV)/bin/pytest -q

# The gRPC client, the load generator and the embedded reader. The crate is built once as a gRPC-only
# user gets it (no feature: no RocksDB), then tested with feature `embedded`, which builds RocksDB from
# C++ source (~17 min of the first clean build on 2 cores; target/ keeps it for later runs).
rust-test: setup
	cd clients/rust && cargo build --release --all-targets
	cd clients/rust && QUIVER_BIN=$(CURDIR)/$(VENV)/bin/quiver cargo test --release --features embedded

# Renders and strictly validates every deploy/k8s overlay, lints the Dockerfile, replays its install steps.
deploy-check: setup
	bash deploy/check.sh

test: lint pytest rust-test deploy-check

GHZ_VERSION := v0.121.0
GRPCURL_VERSION := v1.9.4
TOOLS := $(CURDIR)/.tools/bin

# Load generators and manifest tools, as pinned Go modules in a project-local folder.
$(TOOLS)/ghz:
	GOBIN=$(TOOLS) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

$(TOOLS)/grpcurl:
	GOBIN=$(TOOLS) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

tools: $(TOOLS)/ghz $(TOOLS)/grpcurl

demo: setup tools
	$(PY) -m quiver.demo --users $(USERS) --dir $(DEMO)

# quiver against Redis on the same data (QUICK=1: 200k users); results in bench/results/ and bench/README.md.
bench: setup tools
	bash bench/run.sh

# The loader alone at 1M and 10M users (issue 2).
bench-load: setup
	bash bench/load.sh

# The read path's named series at 10M users (issue 10): floor, pinned, capped (run as root).
bench-readpath: setup tools
	bash bench/readpath.sh

clean:
	rm -rf $(VENV) quiver/v1 *.egg-info $(DEMO) bench/work
