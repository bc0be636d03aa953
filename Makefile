# One command per job. Every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
USERS ?= 1000000
DEMO := demo-data

.PHONY: setup proto test check lint typecheck pytest rust-test loadgen deploy-check demo bench bench-load \
	bench-readpath clean system-deps tools

# Debian packages, installed when missing (as root; otherwise the message names them):
# redis-server for the tests that compare against Redis; iproute2 for the netem hop in bench/;
# a Java 17 runtime for the Spark engine (pyspark 4 runs on Java 17 or 21); chromium for the report page's
# browser test; clang and libclang-dev for bindgen, and librocksdb-dev (RocksDB 7.8.3, Debian 12) that the
# Rust crate's feature `embedded` links instead of compiling RocksDB's C++.
# ROCKSDB=bundled builds RocksDB 7.8.3 from the crate's C++ source instead (~15 min on 2 cores), for
# platforms without Debian 12's librocksdb-dev; everything else is the same.
ROCKSDB ?= system
DEBIAN_PACKAGES := redis-server iproute2 protobuf-compiler chromium openjdk-17-jre-headless clang libclang-dev \
	$(if $(filter system,$(ROCKSDB)),librocksdb-dev)
system-deps:
	@missing=$$(dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' $(DEBIAN_PACKAGES) 2>/dev/null \
	  | awk '$$1 == "ii" {print $$2}' | sort | comm -13 - <(tr ' ' '\n' <<< "$(DEBIAN_PACKAGES)" | sort)); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "== apt-get install $$missing"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages: $$missing (apt-get install them as root)" >&2; exit 1; fi; fi
	@# the crate's rocksdb =0.20.1 is RocksDB 7.8's C API: another librocksdb would not link
	@[ "$(ROCKSDB)" = bundled ] || dpkg-query -W -f='$${Version}' librocksdb-dev | grep -q '^7\.8\.' || \
	  { echo "librocksdb-dev $$(dpkg-query -W -f='$${Version}' librocksdb-dev) is not 7.8.x: use make ROCKSDB=bundled" >&2; \
	    exit 1; }

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
	$(VENV)/bin/mypy quiver base snapshot loader service distribution quality

# The inner loop (<= 5 min with a warm .venv): lint, then every test that needs no Spark, no browser and
# is not marked slow (pyproject.toml lists the markers); tools for the reflection tests (ghz, grpcurl). No Rust,
# no deploy checks.
check: lint tools
	$(VENV)/bin/pytest -q -n 2 --dist loadscope -m "not slow and not spark and not browser"

# Everything, two tests at a time (each test takes its ports from the OS and its folders from tmp_path).
# tools: the reflection tests call the server with ghz and grpcurl, as an operator would; the bench smoke
# test runs the quiver-loadgen that rust-test built.
pytest: setup tools
	$(VENV)/bin/pytest -q -n 2 --dist loadscope

# The Rust crate. RocksDB comes from Debian's librocksdb-dev (dynamic link; bindgen reads its headers),
# or with ROCKSDB=bundled from the crate's C++ source.
ifeq ($(ROCKSDB),system)
RUST_ENV := ROCKSDB_LIB_DIR=/usr/lib/$(shell gcc -dumpmachine) ROCKSDB_INCLUDE_DIR=/usr/include
RUST_FEATURES := embedded,loadgen
else
RUST_ENV := -u ROCKSDB_LIB_DIR -u ROCKSDB_INCLUDE_DIR
RUST_FEATURES := embedded,loadgen,bundled-compression
endif
CARGO := cd clients/rust && env $(RUST_ENV) QUIVER_BIN=$(CURDIR)/$(VENV)/bin/quiver cargo

# The library is built once as a gRPC-only user gets it (no feature: no RocksDB, no load generator), then
# tested with the embedded reader and quiver-loadgen, against real `quiver` processes.
rust-test: setup
	$(CARGO) build --release --lib
	$(CARGO) test --release --features $(RUST_FEATURES)

# quiver-loadgen with every target (gRPC, embedded, Redis), where bench/ and the bench smoke test run it.
loadgen: system-deps
	$(CARGO) build --release --features $(RUST_FEATURES) --bin quiver-loadgen

# Renders and strictly validates every deploy/k8s overlay, lints the Dockerfile, replays its install steps.
deploy-check: setup tools
	bash deploy/check.sh

# Rust first: the bench smoke test in pytest runs the quiver-loadgen it builds.
test: lint rust-test pytest deploy-check

# Tools as an operator runs them, in a project-local folder: from Debian where Debian 12 has them (promtool,
# extracted from the pinned package, so no Prometheus service is installed), else pinned Go modules built
# once (the Go build cache keeps later builds short).
GHZ_VERSION := v0.121.0
GRPCURL_VERSION := v1.9.4
# kustomize v5.8.2+ needs Go >= 1.27
KUSTOMIZE_VERSION := v5.8.1
PROMETHEUS_DEB := 2.42.0+ds-5+deb12u1
TOOLS := $(CURDIR)/.tools/bin

$(TOOLS)/ghz:
	GOBIN=$(TOOLS) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

$(TOOLS)/grpcurl:
	GOBIN=$(TOOLS) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

$(TOOLS)/kustomize:
	GOBIN=$(TOOLS) GOTOOLCHAIN=local go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(TOOLS)/promtool:
	rm -rf .tools/deb && mkdir -p .tools/deb $(TOOLS)
	cd .tools/deb && apt-get download -q prometheus=$(PROMETHEUS_DEB) 2>/dev/null || \
	  { apt-get update -qq && apt-get download -q prometheus=$(PROMETHEUS_DEB); }
	dpkg-deb -x .tools/deb/prometheus_*.deb .tools/deb/x
	install -m 755 .tools/deb/x/usr/bin/promtool $@
	rm -rf .tools/deb

tools: $(TOOLS)/ghz $(TOOLS)/grpcurl $(TOOLS)/kustomize $(TOOLS)/promtool

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
