#!/usr/bin/env bash
# Restarts one process of the local cluster, as a crash or an upgrade
# would: stops the one this cluster started (by its pid file: SIGTERM, then
# SIGKILL), optionally keeps it down a while, then runs up.sh, which starts
# only what is not running and waits until the cluster is usable again.
# The fault-injection suite (tests/chaos) restarts the API server and etcd
# with it.
#
#   tests/cluster/restart.sh kube-apiserver
#   tests/cluster/restart.sh etcd 10        # down for 10 s
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh"

name=${1:?usage: restart.sh NAME [DOWN_SECONDS]}
down=${2:-0}
[[ $down =~ ^[0-9]+$ ]] || die "DOWN_SECONDS must be a whole number, not '$down'"
[[ -f $PIDS/$name.pid ]] || die "this cluster did not start '$name' (no $PIDS/$name.pid)"

(
  flock 9
  stop "$name" 20
) 9>"$STATE/.lock"
sleep "$down"
"$here/up.sh" >&2
