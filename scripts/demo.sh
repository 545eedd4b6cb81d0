#!/usr/bin/env bash
# `make demo`: the whole loop on simulated GPU nodes. Builds the components
# (progress shown), brings up the local control plane and Prometheus, then
# runs the demo driver, which prints a live view and writes target/demo/.
# Stops the control plane at the end if it started it, unless KEEP=1.
#   DEMO_SECONDS=240 DEMO_NODES=3 DEMO_INTERVAL=5 KEEP=1 make demo
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/climatik/target}"
# shellcheck source=tests/cluster/session.sh
source tests/cluster/session.sh

echo "demo: building the components (first build takes several minutes)"
cargo build --workspace --bins

cluster_session_up
keep_flag=()
[ -n "${KEEP:-}" ] && keep_flag=(--keep)
"$CARGO_TARGET_DIR/debug/climatik-demo" "${keep_flag[@]}" "$@"
