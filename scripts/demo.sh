#!/usr/bin/env bash
# `make demo`: the whole loop on simulated GPU nodes. Builds the components
# (progress shown), brings up the local control plane and Prometheus, then
# runs the demo driver, which prints a live view and writes target/demo/.
#   DEMO_SECONDS=240 DEMO_NODES=3 DEMO_INTERVAL=5 KEEP=1 make demo
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/climatik/target}"

echo "demo: building the components (first build takes several minutes)"
cargo build --bins \
  -p climatik-webhook -p climatik-certs -p climatik-controller \
  -p climatik-freqtuner -p climatik-demo

tests/cluster/up.sh
keep_flag=()
[ -n "${KEEP:-}" ] && keep_flag=(--keep)
exec "$CARGO_TARGET_DIR/debug/climatik-demo" "${keep_flag[@]}" "$@"
