#!/usr/bin/env bash
# Images for the local cluster's real node (up.sh with CLIMATIK_REAL_NODE=1):
# there is no registry, so an image a pod uses is imported into the node's
# containerd (namespace k8s.io, where the kubelet looks) and the pod says
# imagePullPolicy: Never (or IfNotPresent with a tag other than latest).
#
#   tests/cluster/node-image.sh import ARCHIVE   # an OCI or docker archive
#                                                # (buildah push/commit
#                                                # oci-archive:... or docker-archive:...)
#   tests/cluster/node-image.sh list             # the node's images
#
# The cluster is $CLIMATIK_CLUSTER_DIR (default target/cluster), as for
# up.sh. An image keeps the name it has in the archive: push it with a full
# name (buildah push IMAGE oci-archive:FILE:localhost/NAME:TAG) and use that
# name in the pod.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh"

ctr_() { ctr --address "$CONTAINERD_ADDRESS" --namespace k8s.io "$@"; }

usage() {
  sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

node_up() {
  if ! { [[ -S $CONTAINERD_ADDRESS ]] && ctr_ version >/dev/null 2>&1; }; then
    die "the real node's containerd ($CONTAINERD_ADDRESS) is not running: start the cluster with CLIMATIK_REAL_NODE=1 tests/cluster/up.sh"
  fi
}

case ${1:-} in
  import)
    archive=${2:-}
    [[ -n $archive && $# == 2 ]] || usage
    [[ -f $archive ]] || die "no such archive: $archive"
    node_up
    t0=$SECONDS
    # Unpacked at once for the CRI's snapshotter (overlayfs), so the first
    # pod does not wait for it. The names ctr prints are what pods use.
    out=$(ctr_ images import "$archive") || die "ctr could not import $archive"
    names=$(sed -n 's/^unpacking \([^ ]*\) .*/\1/p' <<<"$out")
    [[ -n $names ]] || die "$archive holds no named image (push it with a name: oci-archive:FILE:localhost/NAME:TAG)"
    while read -r name; do
      log "imported $name into the node of $STATE ($((SECONDS - t0))s)"
      echo "$name"
    done <<<"$names"
    ;;
  list)
    [[ $# == 1 ]] || usage
    node_up
    ctr_ images ls -q | grep -v '^sha256:'
    ;;
  *) usage ;;
esac
