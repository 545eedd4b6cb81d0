#!/usr/bin/env bash
# Stops the cluster's Prometheus, keeping its data and targets; idempotent.
# prometheus-up.sh starts it again on the same port.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh"

if [[ ${1:-} != --locked ]]; then
  exec 9>"$STATE/.lock"
  flock 9
fi
stop prometheus 15
