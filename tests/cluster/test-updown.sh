#!/usr/bin/env bash
# Brings a second, separate cluster (own state directory, own ports) up and
# down twice, checking each time that it works and that nothing is left
# listening afterwards. Leaves the main cluster (target/cluster) alone.
#
#   tests/cluster/test-updown.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

export CLIMATIK_CLUSTER_DIR="$repo/target/cluster-updown-test"
export CLIMATIK_PORT_OFFSET=100
export CLIMATIK_NODES=2
rm -rf "$CLIMATIK_CLUSTER_DIR"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh" # for CLUSTER_PORTS
ports=("${CLUSTER_PORTS[@]}")

log_file="$CLIMATIK_CLUSTER_DIR.log"
fail() {
  echo "test-updown: FAIL: $*" >&2
  echo "test-updown: last lines of $log_file:" >&2
  tail -n 40 "$log_file" >&2 || true
  exit 1
}
cleanup() { "$here/down.sh" --purge >/dev/null 2>&1 || true; }
trap cleanup EXIT

listening() { # prints the ports of ours that something listens on
  local p
  for p in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; fi
  done
}

mkdir -p "$(dirname "$log_file")"
: >"$log_file"
[[ -z $(listening) ]] || fail "ports already in use before starting: $(listening | tr '\n' ' ')"

for round in 1 2; do
  t0=$SECONDS
  if ((round == 1)); then
    # Two callers at once (parallel test binaries): flock serialises them
    # and the second finds the cluster up.
    "$here/up.sh" >>"$log_file" 2>&1 &
    first=$!
    "$here/up.sh" >>"$log_file" 2>&1 || fail "round $round: up.sh failed"
    wait "$first" || fail "round $round: the concurrent up.sh failed"
  else
    "$here/up.sh" >>"$log_file" 2>&1 || fail "round $round: up.sh failed"
  fi
  echo "test-updown: round $round: up in $((SECONDS - t0))s"
  # Idempotent: a second up.sh on a healthy cluster returns at once.
  t1=$SECONDS
  out=$("$here/up.sh" 2>>"$log_file")
  grep -q "cluster is up" <<<"$out" || fail "second up.sh did not report a running cluster"
  ((SECONDS - t1 <= 5)) || fail "up.sh on a running cluster took $((SECONDS - t1))s"

  # shellcheck source=/dev/null
  source "$CLIMATIK_CLUSTER_DIR/env"
  [[ $APISERVER_URL == "https://127.0.0.1:26543" ]] || fail "env has APISERVER_URL=$APISERVER_URL"
  ready=$("$KUBECTL" get nodes --no-headers | awk '$2 == "Ready"' | wc -l)
  [[ $ready == 2 ]] || fail "round $round: $ready Ready nodes, expected 2"
  "$KUBECTL" auth can-i '*' '*' --all-namespaces | grep -qx yes || fail "admin is not cluster-admin"
  curl -sf "$PROMETHEUS_URL/-/ready" >/dev/null || fail "prometheus is not ready"

  # Prometheus alone goes down and comes back (tests simulate outages).
  "$here/prometheus-down.sh" >>"$log_file" 2>&1 || fail "prometheus-down.sh failed"
  ! curl -sf --max-time 2 "$PROMETHEUS_URL/-/ready" >/dev/null 2>&1 || fail "prometheus still up after prometheus-down.sh"
  "$here/prometheus-up.sh" >>"$log_file" 2>&1 || fail "prometheus-up.sh failed"
  curl -sf "$PROMETHEUS_URL/-/ready" >/dev/null || fail "prometheus did not come back"

  "$here/down.sh" >>"$log_file" 2>&1 || fail "down.sh failed"
  left=$(listening)
  [[ -z $left ]] || fail "round $round: still listening after down.sh: $(tr '\n' ' ' <<<"$left")"
  "$here/down.sh" >>"$log_file" 2>&1 || fail "down.sh on a stopped cluster failed"
  echo "test-updown: round $round: down, nothing listening"
done
echo "test-updown: PASS"
