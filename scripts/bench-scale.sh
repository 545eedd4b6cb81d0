#!/usr/bin/env bash
# `make bench` (control-plane scale part): 1000 PowerCappingPolicies over 500
# nodes against the powercapping-controller and freqtuning-recommender
# (release builds), on a separate local cluster (own state directory
# target/cluster-scale, own ports: the defaults +200) with its own
# Prometheus, so it never disturbs target/cluster. Writes
# target/bench/scale.json (method note inside) and prints it; the
# controllers' logs go to target/bench/scale-logs/.
#
#   scripts/bench-scale.sh
#   SCALE_POLICIES=200 SCALE_NODES=100 SCALE_WINDOW=30s scripts/bench-scale.sh
#   SCALE_INTERVAL=15s SCALE_NAMESPACES=1 scripts/bench-scale.sh
#   SCALE_INTERVAL=60s SCALE_ENTRY_TTL=360s scripts/bench-scale.sh
#   BENCH_NICE=0 scripts/bench-scale.sh     # on a machine of its own
#   SCALE_PORT_OFFSET=1000 SCALE_CLUSTER_DIR=target/cluster-scale-b scripts/bench-scale.sh
#
# Everything the bench starts (cluster, Prometheus, controllers) runs under
# nice 10 by default, so a build sharing the machine keeps its CPU; the
# rates measured are then lower bounds.
# The cluster is always brought down at the end; it is purged on success
# and kept (logs in target/cluster-scale/logs) when the bench failed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/climatik/target}"

# SCALE_CLUSTER_DIR / SCALE_PORT_OFFSET move it, beside other clusters.
export CLIMATIK_CLUSTER_DIR="${SCALE_CLUSTER_DIR:-$repo/target/cluster-scale}"
export CLIMATIK_PORT_OFFSET="${SCALE_PORT_OFFSET:-200}"
# The bench creates its own 500 Node objects; nodekeeper keeps one.
export CLIMATIK_NODES=1
export PROMETHEUS=1

echo "bench-scale: building (release)" >&2
cargo build --release -p climatik-controller -p climatik-bench --bins >&2

ok=0
cleanup() {
  if ((ok)); then
    tests/cluster/down.sh --purge >/dev/null 2>&1 || true
  else
    tests/cluster/down.sh >/dev/null 2>&1 || true
    echo "bench-scale: failed; cluster state and logs kept in $CLIMATIK_CLUSTER_DIR (CLIMATIK_CLUSTER_DIR=$CLIMATIK_CLUSTER_DIR tests/cluster/down.sh --purge removes it)" >&2
  fi
}
trap cleanup EXIT

# Start from an empty cluster: a rerun must not find last run's objects.
tests/cluster/down.sh --purge >/dev/null 2>&1 || true
echo "bench-scale: starting the cluster in $CLIMATIK_CLUSTER_DIR" >&2
nice=(nice -n "${BENCH_NICE:-10}")
"${nice[@]}" tests/cluster/up.sh >&2
# shellcheck source=/dev/null
source "$CLIMATIK_CLUSTER_DIR/env"

watch=()
for c in kube-apiserver etcd prometheus; do
  pid_file="$CLIMATIK_CLUSTER_DIR/pids/$c.pid"
  if [[ -f $pid_file ]]; then watch+=(--watch-pid "$c=$(<"$pid_file")"); fi
done

mkdir -p target/bench
echo "bench-scale: running (about 8 minutes)" >&2
RUST_LOG="${RUST_LOG:-info}" "${nice[@]}" "$CARGO_TARGET_DIR/release/scale-bench" \
  --out target/bench/scale.json --log-dir target/bench/scale-logs "${watch[@]}" >&2
ok=1
cat target/bench/scale.json
