#!/usr/bin/env bash
# `make bench`: every benchmark, JSON (and Markdown tables) under target/bench/.
#   loop.json / loop.md   closed-loop scenarios x strategies x seeds on the simulated plant, against the clairvoyant bound
#   budget.json / budget.md  a rack budget shared by serving, training and batch: the arbitration against the alternatives, and GPUs hosted per budget
#   webhook.json          admission latency in-process and through the API server
#   freqtuner.json        node agent memory (RSS) in steady state
#   scale.json            controllers at 1000 policies over 500 nodes: reconcile latency, API writes/s, RSS
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/climatik/target}"
# shellcheck source=tests/cluster/session.sh
source tests/cluster/session.sh
mkdir -p target/bench

echo "bench: building (release)"
cargo build --release --bins -p climatik-controller -p climatik-webhook -p climatik-freqtuner -p climatik-bench

echo "bench: closed loop (scenarios x strategies)"
# BENCH_SEEDS (comma-separated) replaces the default seeds; the first is the detailed table.
"$CARGO_TARGET_DIR/release/loop-bench" ${BENCH_SEEDS:+--seeds "$BENCH_SEEDS"} --out target/bench

echo "bench: shared power budget (rack x situations x strategies; GPUs hosted per budget)"
"$CARGO_TARGET_DIR/release/budget-bench" ${BENCH_SEEDS:+--seeds "$BENCH_SEEDS"} --out target/bench

cluster_session_up
echo "bench: webhook latency"
"$CARGO_TARGET_DIR/release/webhook-bench"

echo "bench: freqtuner memory"
freqtuner/bench-rss.sh

# The controllers' default period (15 s) and entry TTL (120 s): since the
# monitor keeps up and entries are kept alive by the recommender's Lease,
# 2 cores hold 1000 policies at the default period.
echo "bench: control-plane scale (1000 policies, 500 nodes, 15 s period; separate cluster)"
SCALE_INTERVAL="${SCALE_INTERVAL:-15s}" SCALE_ENTRY_TTL="${SCALE_ENTRY_TTL:-120s}" \
  scripts/bench-scale.sh >/dev/null

echo "bench: results in target/bench/"
ls -1 target/bench
