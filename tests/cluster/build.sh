#!/usr/bin/env bash
# Builds the local control plane's binaries from the Go module proxy into a
# cache keyed by version, so a second run only checks that they exist.
#
#   tests/cluster/build.sh            # build whatever is missing
#   PROMETHEUS_INSTALL=0 build.sh     # do not apt-get install prometheus
#
# Cache: ${CLIMATIK_CACHE_DIR:-$HOME/.cache/climatik}/bin/<name>-<version>/<name>
# Needs only Go (and, for Prometheus, Debian's apt).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$here/versions.sh"

start_all=$SECONDS
# Keep other engineers' builds responsive: the Kubernetes build is long.
nice_cmd=(nice -n 10)

# Version stamping, as Kubernetes' own hack/lib/version.sh does, so that the
# API server reports v1.34.x (kubectl's skew check and the emulation version
# both read it).
k8s_ldflags() {
  local v=$K8S_VERSION major minor
  major=${v#v}; major=${major%%.*}
  minor=${v#v"$major".}; minor=${minor%%.*}
  local x
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$x"
}

# name  version  module-dir  package  ldflags
targets=(
  "etcd|$ETCD_VERSION|$here|go.etcd.io/etcd/server/v3|-s -w"
  "kube-apiserver|$K8S_VERSION|$here|k8s.io/kubernetes/cmd/kube-apiserver|K8S"
  "kube-controller-manager|$K8S_VERSION|$here|k8s.io/kubernetes/cmd/kube-controller-manager|K8S"
  "kube-scheduler|$K8S_VERSION|$here|k8s.io/kubernetes/cmd/kube-scheduler|K8S"
  "kubectl|$K8S_VERSION|$here|k8s.io/kubernetes/cmd/kubectl|K8S"
  "nodekeeper|$(nodekeeper_version)|$here|./cmd/nodekeeper|-s -w"
  "helm|$HELM_VERSION|$here/helm|helm.sh/helm/v3/cmd/helm|-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  # The real node (up.sh with CLIMATIK_REAL_NODE=1).
  "kubelet|$K8S_VERSION|$here|k8s.io/kubernetes/cmd/kubelet|K8S"
  "kube-proxy|$K8S_VERSION|$here|k8s.io/kubernetes/cmd/kube-proxy|K8S"
  # The real node's sandbox image (ours; versioned by a hash of its source,
  # as lib.sh's pause_version computes it).
  "pause|$(sha256sum <"$here/cmd/pause/main.go" | cut -c1-12)|$here|./cmd/pause|-s -w"
  # Prometheus' Kubernetes service discovery for it (Debian's Prometheus has
  # none); versioned like nodekeeper, as lib.sh's endpoints_sd_version says.
  "endpoints-sd|$(cat "$here"/cmd/endpoints-sd/*.go "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)|$here|./cmd/endpoints-sd|-s -w"
  # cert-manager, in a module of its own (cert-manager/go.mod).
  "cert-manager-controller|$CERT_MANAGER_VERSION|$here/cert-manager|github.com/cert-manager/cert-manager/cmd/controller|-s -w"
  "cert-manager-cainjector|$CERT_MANAGER_VERSION|$here/cert-manager|github.com/cert-manager/cert-manager/cmd/cainjector|-s -w"
)

total=${#targets[@]}
i=0
for t in "${targets[@]}"; do
  i=$((i + 1))
  IFS='|' read -r name version dir pkg ldflags <<<"$t"
  [[ $ldflags == K8S ]] && ldflags=$(k8s_ldflags)
  out="$(bin_path "$name" "$version")"
  if [[ -x $out ]]; then
    echo "ok       $name $version ($i/$total) — cached"
    continue
  fi
  echo "building $name $version ($i/$total)…"
  t0=$SECONDS
  mkdir -p "$(dirname "$out")"
  # Build into a temporary name and rename, so an interrupted build never
  # leaves a half-written binary that a later run would take as cached.
  (cd "$dir" && CGO_ENABLED=0 "${nice_cmd[@]}" go build -trimpath -buildvcs=false -ldflags="$ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  echo "built    $name in $((SECONDS - t0))s (total $((SECONDS - start_all))s)"
done

# Prometheus comes from Debian, not from the Go proxy (its web UI assets are
# not in the Go module).
if ! command -v prometheus >/dev/null 2>&1 && [[ ${PROMETHEUS_INSTALL:-1} != 0 ]]; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    echo "installing prometheus (apt-get)…"
    # The package starts a system service on :9090 where systemd runs; ours
    # uses its own port, so either way is fine.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 ||
      { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null; }
  else
    echo "warning: prometheus not on PATH; install Debian's 'prometheus' package (or run up.sh with PROMETHEUS=0)" >&2
  fi
fi

echo "all binaries ready in $(bin_root) ($((SECONDS - start_all))s)"
