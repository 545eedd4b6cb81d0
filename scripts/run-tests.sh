#!/usr/bin/env bash
# `make test`: unit tests, then everything that needs the local control plane
# and Prometheus, which this script starts and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

started_cluster=0
cleanup() {
  if [ "$started_cluster" = 1 ] && [ -z "${KEEP:-}" ]; then
    tests/cluster/down.sh || true
  fi
}
trap cleanup EXIT

echo "== cluster up/down twice"
tests/cluster/test-updown.sh

echo "== local control plane"
# Leave a cluster someone else started running; stop the one we start.
already_up=0
if [ -f target/cluster/env ]; then
  # shellcheck disable=SC1091
  if (source target/cluster/env && "$KUBECTL" --kubeconfig "$KUBECONFIG" get --raw /readyz) >/dev/null 2>&1; then
    already_up=1
  fi
fi
[ "$already_up" = 1 ] || started_cluster=1
tests/cluster/up.sh

echo "== cargo test (workspace)"
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"

# The chart tests install and remove the CRDs cluster-wide, so they run
# after every other test.
echo "== chart tests"
charts/climatik/tests/run.sh
