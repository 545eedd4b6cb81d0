# The local cluster for the length of one command (make test, make demo,
# make bench). Sourced, not run:
#
#   source tests/cluster/session.sh
#   cluster_session_up          # up.sh; down.sh at exit if we started it
#
# A cluster that was already up when the command began is left running (a
# developer's own, or a parallel command's); one this command started is
# stopped when it exits, however it exits, unless KEEP is set (KEEP=1 make
# demo leaves it up for kubectl). Installs an EXIT trap: call it before any
# trap of your own, and chain to cluster_session_down from yours.
# shellcheck shell=bash

_session_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_session_started=0

# cluster_is_up -> true when the cluster of $CLIMATIK_CLUSTER_DIR answers.
cluster_is_up() {
  local env_file="${CLIMATIK_CLUSTER_DIR:-$_session_dir/../../target/cluster}/env"
  [[ -f $env_file ]] || return 1
  # shellcheck source=/dev/null
  (source "$env_file" && "$KUBECTL" --kubeconfig "$KUBECONFIG" get --raw /readyz) >/dev/null 2>&1
}

cluster_session_up() {
  if ! cluster_is_up; then
    _session_started=1
    trap cluster_session_down EXIT
  fi
  "$_session_dir/up.sh"
}

cluster_session_down() {
  if [[ $_session_started == 1 && -z ${KEEP:-} ]]; then
    _session_started=0
    "$_session_dir/down.sh" || true
  elif [[ $_session_started == 1 ]]; then
    echo "KEEP is set: the local cluster stays up (make cluster-down stops it)" >&2
  fi
}
