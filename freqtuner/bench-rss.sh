#!/usr/bin/env bash
# Memory of a steady-state freqtuner: runs a simulated agent against the
# local cluster for ~20 s (a dedicated Node, a busy pod on it, a GPU entry
# with a power budget so the fast loop works), samples VmRSS once a second
# and VmHWM at the end, and writes target/bench/freqtuner.json.
#
#   freqtuner/bench-rss.sh                 # release build (what ships)
#   PROFILE=debug freqtuner/bench-rss.sh   # quicker to build, larger
#   DURATION=60 freqtuner/bench-rss.sh
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
profile="${PROFILE:-release}"
duration="${DURATION:-20}"
limit_kib=$((30 * 1024))
node="freqtuner-bench-node"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

tests/cluster/up.sh >&2
# shellcheck disable=SC1091
source target/cluster/env

if [[ "$profile" == release ]]; then
  cargo build --release -p climatik-freqtuner --bin freqtuner >&2
  bin="$target_dir/release/freqtuner"
else
  cargo build -p climatik-freqtuner --bin freqtuner >&2
  bin="$target_dir/debug/freqtuner"
fi

work="$(mktemp -d)"
agent_pid=""
cleanup() {
  if [[ -n "$agent_pid" ]] && kill -0 "$agent_pid" 2>/dev/null; then
    kill -TERM "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  # No kubelet: a pod must be removed forcibly or its namespace never goes.
  "$KUBECTL" -n freqtuner-bench delete pod vllm --grace-period=0 --force --ignore-not-found >/dev/null 2>&1 || true
  "$KUBECTL" delete node "$node" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  "$KUBECTL" delete namespace freqtuner-bench --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$KUBECTL" apply --server-side --field-manager freqtuner-bench -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $node
  labels: {climatik.io/test: "true"}
---
apiVersion: v1
kind: Namespace
metadata:
  name: freqtuner-bench
  labels: {climatik.io/test: "true"}
---
apiVersion: v1
kind: Pod
metadata:
  name: vllm
  namespace: freqtuner-bench
  annotations: {climatik.io/sim-load: bursty}
spec:
  nodeName: $node
  containers:
  - name: vllm
    image: vllm/vllm-openai:latest
    resources:
      limits: {nvidia.com/gpu: "2"}
EOF

"$bin" --node-name "$node" --gpu-backend sim --cpu-backend sim --sim-gpus 4 \
  --state-dir "$work/state" --metrics-listen 127.0.0.1:0 \
  2>"$work/agent.log" &
agent_pid=$!

# Once the agent listed its GPUs, give the first one a target and a budget.
uuid=""
for _ in $(seq 1 60); do
  uuid="$("$KUBECTL" get nodefrequencies "$node" -o jsonpath='{.status.gpus[0].gpuId}' 2>/dev/null || true)"
  [[ -n "$uuid" ]] && break
  sleep 0.5
done
if [[ -z "$uuid" ]]; then
  echo "the agent did not report its GPUs; log:" >&2
  cat "$work/agent.log" >&2
  exit 1
fi
# Every entry carries an expiry; an hour outlasts the run (the agent caps
# it at its --max-entry-ttl, 10 minutes by default, which outlasts it too).
expires=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
"$KUBECTL" apply --server-side --field-manager freqtuner-bench -f - >/dev/null <<EOF
apiVersion: climatik.io/v1alpha1
kind: NodeFrequencies
metadata:
  name: $node
spec:
  nodeName: $node
  gpuFrequencies:
  - {gpuId: $uuid, targetFrequency: 1700, powerBudgetWatts: 400, policy: bench/budget, expiresAt: "$expires"}
EOF

samples=()
for _ in $(seq 1 "$duration"); do
  sleep 1
  kill -0 "$agent_pid" 2>/dev/null || { echo "agent died; log:" >&2; cat "$work/agent.log" >&2; exit 1; }
  samples+=("$(awk '/^VmRSS:/ {print $2}' "/proc/$agent_pid/status")")
done
hwm_kib="$(awk '/^VmHWM:/ {print $2}' "/proc/$agent_pid/status")"
# Steady state: the median of the second half of the run.
half=("${samples[@]:$((duration / 2))}")
steady_kib="$(printf '%s\n' "${half[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"

kill -TERM "$agent_pid"
wait "$agent_pid" || true
agent_pid=""

mkdir -p target/bench
cat >target/bench/freqtuner.json <<EOF
{
  "binary": "freqtuner",
  "profile": "$profile",
  "duration_seconds": $duration,
  "steady_rss_kib": $steady_kib,
  "peak_rss_kib": $hwm_kib,
  "limit_kib": $limit_kib,
  "rss_samples_kib": [$(IFS=,; echo "${samples[*]}")],
  "within_limit": $([[ "$hwm_kib" -le "$limit_kib" ]] && echo true || echo false)
}
EOF
cat target/bench/freqtuner.json
[[ "$hwm_kib" -le "$limit_kib" ]]
