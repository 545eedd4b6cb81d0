# Climatik — every command a developer or CI needs.
#
#   make demo    the whole loop on simulated GPU nodes (runs setup first)
#   make test    every test in the repo (runs setup first)
#
# Build outputs live in a cache outside the checkout so repeated runs on one
# machine are fast; a fresh machine builds everything from nothing.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CACHE_DIR ?= $(HOME)/.cache/climatik
export CLIMATIK_CACHE_DIR := $(CACHE_DIR)
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
export CARGO_TERM_COLOR ?= never

CARGO ?= cargo
STAMPS := $(CACHE_DIR)/stamps

.PHONY: help setup setup-apt setup-rust setup-go setup-deny build crds test test-rust test-cluster \
	lint fmt demo chaos bench cluster-up cluster-down prometheus-up prometheus-down clean image

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: setup-apt setup-rust setup-go setup-deny ## install and build everything the project needs (idempotent, cached)
	@echo "setup: done"

setup-apt: ## Debian packages: prometheus, openssl, iproute2
	@scripts/setup-apt.sh

setup-rust: ## Rust components the lint step needs
	@command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

setup-deny: ## cargo-deny, for the dependency checks of the lint step (cached)
	@scripts/setup-cargo-deny.sh >/dev/null

setup-go: ## etcd, kube-apiserver, controller-manager, scheduler, kubectl, helm (built once, cached)
	@tests/cluster/build.sh

build: ## build every crate and binary
	$(CARGO) build --workspace --all-targets

crds: ## regenerate the chart's CRDs from the Rust types
	$(CARGO) run -q -p climatik-api --bin crdgen -- --out-dir charts/climatik/crds

test: setup ## run every test (unit, integration against the local control plane, chart, e2e)
	@scripts/run-tests.sh

# cargo deny's checks (deny.toml); advisories need the RustSec database
# from GitHub, so they are left out unless asked for: CARGO_DENY_CHECKS="advisories licenses bans sources".
CARGO_DENY_CHECKS ?= licenses bans sources

lint: setup-deny ## rustfmt check, clippy with warnings denied, cargo deny (licences, bans, sources), chart README up to date
	scripts/chart-readme.sh --check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	"$$(scripts/setup-cargo-deny.sh)" --locked check --hide-inclusion-graph $(CARGO_DENY_CHECKS)

fmt: ## format the code
	$(CARGO) fmt --all

cluster-up: setup ## start the local control plane, fake GPU nodes and Prometheus
	@tests/cluster/up.sh

cluster-down: ## stop the local control plane and Prometheus
	@tests/cluster/down.sh

demo: setup ## run the whole loop on simulated GPU nodes
	@scripts/demo.sh

chaos: setup ## inject faults into the running loop; report in target/chaos/
	@scripts/chaos.sh

bench: setup ## benchmarks; JSON under target/bench/
	@scripts/bench.sh

image: ## container image with buildah (no daemon, no registry): target/image/climatik-<appVersion>.oci.tar
	@scripts/image.sh

clean: cluster-down ## remove build outputs of this checkout (keeps the binary cache)
	rm -rf target
