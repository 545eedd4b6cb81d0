#!/usr/bin/env bash
# `make chaos`: fault injection on the whole loop (tests/chaos). Builds the
# components, brings up the local control plane and Prometheus, then runs
# every fault CHAOS_ROUNDS times with the real durations (Prometheus down
# for two minutes, 10,000 forged reviews); writes target/chaos/report.json
# and summary.md and fails when any check failed. Stops the control plane
# at the end if it started it, unless KEEP=1.
#   CHAOS_ROUNDS=3 CHAOS_FAULTS=etcd,webhook make chaos
#   scripts/chaos.sh --short      # the short version make test runs
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/climatik/target}"
# shellcheck source=tests/cluster/session.sh
source tests/cluster/session.sh

if [[ ${1:-} == --short ]]; then
  shift
  # One round, a short Prometheus outage and fewer forged reviews: a few
  # minutes, for make test.
  export CHAOS_ROUNDS=1 CHAOS_PROMETHEUS_OUTAGE=10 CHAOS_FORGED=2000 CHAOS_OUTAGE=3 CHAOS_PARTITION=15
fi

echo "chaos: building the components (first build takes several minutes)"
cargo build --workspace --bins

cluster_session_up
"$CARGO_TARGET_DIR/debug/climatik-chaos" "$@"
