#!/usr/bin/env bash
# Stops everything up.sh started (by pid file: SIGTERM, then SIGKILL after a
# timeout) and leaves nothing listening. Idempotent. Certificates and etcd
# data are kept for the next up.sh unless --purge is given.
#
#   tests/cluster/down.sh            # stop
#   tests/cluster/down.sh --purge    # stop and delete the state directory
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh"

exec 9>"$STATE/.lock"
flock 9

# Clients first, etcd last, so nothing logs a storm of connection errors.
for c in prometheus nodekeeper kube-scheduler kube-controller-manager kube-apiserver etcd; do
  stop "$c" 20
done
rm -f "$STATE/env"

if [[ ${1:-} == --purge ]]; then
  log "removing $STATE"
  # The lock file goes too; we still hold it open, which is harmless.
  rm -rf "${STATE:?}"
fi
log "cluster is down"
