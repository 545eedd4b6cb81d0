#!/usr/bin/env bash
# Stops everything up.sh started (by pid file: SIGTERM, then SIGKILL after a
# timeout) and leaves nothing listening. Idempotent. Certificates and etcd
# data are kept for the next up.sh unless --purge is given.
#
# A real node's (CLIMATIK_REAL_NODE=1) too: the kubelet, the pods'
# containers, containerd, kube-proxy and its iptables chains, and after the
# control plane the mounts under the state directory, the bridge, and the
# kernel settings and paths outside it that up.sh changed (README.md, "Real
# node").
#
#   tests/cluster/down.sh            # stop
#   tests/cluster/down.sh --purge    # stop and delete the state directory
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh"
# shellcheck source-path=SCRIPTDIR
source "$here/node.sh"

exec 9>"$STATE/.lock"
flock 9

# $STATE/real-node: up.sh started a real node here (once is enough).
[[ ! -f $STATE/real-node ]] || node_stop

# Clients first, etcd last, so nothing logs a storm of connection errors.
for c in prometheus endpoints-sd nodekeeper kube-scheduler kube-controller-manager \
  cert-manager-cainjector cert-manager-controller kube-apiserver etcd; do
  stop "$c" 20
done
rm -f "$STATE/env"

[[ ! -f $STATE/real-node ]] || node_cleanup

if [[ ${1:-} == --purge ]]; then
  log "removing $STATE"
  # The lock file goes too; we still hold it open, which is harmless.
  rm -rf "${STATE:?}"
fi
log "cluster is down"
