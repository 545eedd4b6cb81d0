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
if ! tests/cluster/up.sh --check >/dev/null 2>&1; then
  started_cluster=1
fi
tests/cluster/up.sh

echo "== cargo test (workspace)"
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"

for extra in charts/climatik/tests/run.sh; do
  if [ -x "$extra" ]; then
    echo "== $extra"
    "$extra"
  fi
done
