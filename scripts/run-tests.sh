#!/usr/bin/env bash
# `make test`: unit tests, then everything that needs the local control plane
# and Prometheus, which this script starts and stops (KEEP=1 leaves a cluster
# it started running), then the real-node tier on clusters of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/cluster/session.sh
source tests/cluster/session.sh

echo "== chart README generator"
scripts/test-chart-readme.sh

echo "== cluster up/down twice"
tests/cluster/test-updown.sh

echo "== local control plane"
cluster_session_up

echo "== cargo test (workspace)"
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"

# Faults injected into the whole loop, one round (make chaos runs more).
echo "== fault injection (short)"
scripts/chaos.sh --short

# The chart tests install and remove the CRDs cluster-wide, so they run
# after every other test.
echo "== chart tests"
charts/climatik/tests/run.sh

# The real node: separate clusters (own state directories and ports), one at
# a time, since a machine holds one real node's bridge.
echo "== real node: network, restart and clean-up"
tests/cluster/test-real-node.sh
echo "== real node: the chart installed as README.md says (make image, cert-manager, helm)"
charts/climatik/tests/install.sh
