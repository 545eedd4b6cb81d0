# Versions of the local control plane and where their binaries are cached.
# Sourced by build.sh, up.sh and the other scripts; keep in step with go.mod
# and helm/go.mod.
# shellcheck shell=bash

K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.4
HELM_VERSION=v3.19.5
# The newest release whose controller and cainjector are packages of the main
# module (later ones moved them to nested modules the proxy does not serve).
CERT_MANAGER_VERSION=v1.11.5

_cluster_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Root of the binary cache; outside the repository so every checkout shares it.
bin_root() {
  echo "${CLIMATIK_CACHE_DIR:-$HOME/.cache/climatik}/bin"
}

# bin_path NAME VERSION -> path of the cached binary.
bin_path() {
  echo "$(bin_root)/$1-$2/$1"
}

# The nodekeeper is ours, so its "version" is a hash of its source and the
# module's pins: editing it rebuilds it.
nodekeeper_version() {
  cat "$_cluster_dir"/cmd/nodekeeper/*.go "$_cluster_dir/go.mod" "$_cluster_dir/go.sum" |
    sha256sum | cut -c1-12
}

# bin NAME -> path of the cached binary for the pinned version.
bin() {
  case $1 in
    etcd) bin_path etcd "$ETCD_VERSION" ;;
    helm) bin_path helm "$HELM_VERSION" ;;
    cert-manager-*) bin_path "$1" "$CERT_MANAGER_VERSION" ;;
    nodekeeper) bin_path nodekeeper "$(nodekeeper_version)" ;;
    *) bin_path "$1" "$K8S_VERSION" ;;
  esac
}
