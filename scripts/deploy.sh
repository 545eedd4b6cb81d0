#!/usr/bin/env bash
# Installs (or upgrades) Climatik with Helm into the current kube context.
#
#   ./scripts/deploy.sh                                   # defaults
#   ./scripts/deploy.sh --set controller.prometheus.url=http://prometheus.monitoring:9090
#   ./scripts/deploy.sh -f my-values.yaml
#
# Extra arguments go to `helm upgrade --install` unchanged.
#
# Environment:
#   RELEASE     release name (climatik)
#   NAMESPACE   namespace, created if missing (climatik-project)
#   TLS_MODE    webhook certificate: certManager | provided | generated | auto
#               (auto, the default: certManager when cert-manager's CRDs are
#               installed, generated otherwise)
#   WAIT        1 (default): wait until every workload is ready; 0: do not
#   TIMEOUT     how long to wait (5m)
#   HELM, KUBECTL  the binaries to use (helm, kubectl from PATH)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RELEASE=${RELEASE:-climatik}
NAMESPACE=${NAMESPACE:-climatik-project}
TLS_MODE=${TLS_MODE:-auto}
WAIT=${WAIT:-1}
TIMEOUT=${TIMEOUT:-5m}
HELM=${HELM:-helm}
KUBECTL=${KUBECTL:-kubectl}

log() { printf '[deploy] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

command -v "$HELM" >/dev/null || die "helm not found (set HELM=/path/to/helm)"
command -v "$KUBECTL" >/dev/null || die "kubectl not found (set KUBECTL=/path/to/kubectl)"
"$KUBECTL" version >/dev/null 2>&1 || die "cannot reach the cluster of context '$("$KUBECTL" config current-context 2>/dev/null || echo none)'"
log "context: $("$KUBECTL" config current-context 2>/dev/null || echo in-cluster)"

if [[ $TLS_MODE == auto ]]; then
  if "$KUBECTL" get crd certificates.cert-manager.io issuers.cert-manager.io >/dev/null 2>&1; then
    TLS_MODE=certManager
  else
    TLS_MODE=generated
    log "cert-manager is not installed: Helm generates the webhook certificate (no automatic rotation)."
    log "Install cert-manager and deploy again to switch, or set TLS_MODE explicitly."
  fi
elif [[ $TLS_MODE == certManager ]] && ! "$KUBECTL" get crd certificates.cert-manager.io >/dev/null 2>&1; then
  die "TLS_MODE=certManager but cert-manager is not installed (https://cert-manager.io/docs/installation/), or use TLS_MODE=generated"
fi
log "webhook TLS: $TLS_MODE"

# The node agent runs as root with the host's /sys/devices/system/cpu
# mounted: clusters that enforce Pod Security would reject it in a
# baseline/restricted namespace.
"$KUBECTL" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
"$KUBECTL" label namespace "$NAMESPACE" --overwrite \
  pod-security.kubernetes.io/enforce=privileged pod-security.kubernetes.io/warn=privileged >/dev/null

args=(upgrade --install "$RELEASE" "$repo/charts/climatik"
  --namespace "$NAMESPACE" --create-namespace
  --set "webhook.tls.mode=$TLS_MODE")
if [[ $WAIT == 1 ]]; then
  args+=(--wait --timeout "$TIMEOUT")
fi

log "helm ${args[*]} $*"
"$HELM" "${args[@]}" "$@"

# Helm installs CRDs only on first install and never upgrades them; apply the
# chart's copy so an upgrade brings new fields along.
"$KUBECTL" apply --server-side --force-conflicts --field-manager=climatik-deploy \
  -f "$repo/charts/climatik/crds/" >/dev/null
log "done: $RELEASE in namespace $NAMESPACE"
log "check: $KUBECTL -n $NAMESPACE get pods; $KUBECTL get pcp -A"
