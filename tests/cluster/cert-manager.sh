#!/usr/bin/env bash
# cert-manager (controller and cainjector, built from the Go module proxy by
# build.sh) for the local control plane, run as local processes with the
# admin kubeconfig. No cert-manager webhook: nothing here needs it (the
# controller defaults what the webhook would have; see
# cert-manager/README.md for what that leaves out).
#
#   tests/cluster/cert-manager.sh up     # CRDs, namespace, both processes; waits until they work
#   tests/cluster/cert-manager.sh down   # stops both; the CRDs stay (they go with the cluster)
#   tests/cluster/cert-manager.sh crds   # only renders and applies the CRDs
#
# The cluster must be up (tests/cluster/up.sh, same CLIMATIK_* environment).
# Idempotent: `up` on a healthy cert-manager returns at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh"

CM_STATE="$STATE/cert-manager"
CM_NAMESPACE=cert-manager
CM_MODULE=github.com/cert-manager/cert-manager
mkdir -p "$CM_STATE"

# Port (127.0.0.1): the controller's Prometheus metrics. CLIMATIK_CERT_MANAGER_METRICS_PORT,
# else the one this cluster's cert-manager was started with, else the
# default plus CLIMATIK_PORT_OFFSET. v1.11 has no health endpoint, and its
# cainjector serves nothing at all (metrics are hard-wired off).
_cm_saved_port() {
  [[ -f $CM_STATE/ports ]] && sed -n "s/^$1=\([0-9]*\)$/\1/p" "$CM_STATE/ports"
  return 0
}
CERT_MANAGER_METRICS_PORT=${CLIMATIK_CERT_MANAGER_METRICS_PORT:-$(_cm_saved_port CERT_MANAGER_METRICS_PORT)}
CERT_MANAGER_METRICS_PORT=${CERT_MANAGER_METRICS_PORT:-$((29402 + ${CLIMATIK_PORT_OFFSET:-0}))}
METRICS_URL="http://127.0.0.1:$CERT_MANAGER_METRICS_PORT/metrics"

kubectl_() { "$(bin kubectl)" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

cluster_up() {
  if [[ ! -f $KUBECONFIG_ADMIN ]] || ! api_ready; then
    die "the cluster ($APISERVER_URL, state $STATE) is not up: run tests/cluster/up.sh first, with the same CLIMATIK_* environment"
  fi
}

# --- CRDs ------------------------------------------------------------------------
# deploy/crds in the module are the Helm chart's templates; only their labels
# are templated. Render them as the chart would for a release named
# cert-manager, and refuse anything else that is still a template.
render_crds() {
  local src out="$CM_STATE/crds.yaml" f
  src="$(go env GOMODCACHE)/$CM_MODULE@$CERT_MANAGER_VERSION/deploy/crds"
  if [[ ! -d $src ]]; then
    log "downloading $CM_MODULE@$CERT_MANAGER_VERSION for its CRDs"
    (cd "$here/cert-manager" && go mod download "$CM_MODULE") >&2
  fi
  [[ -d $src ]] || die "no CRDs at $src"
  : >"$out.tmp"
  for f in "$src"/crd-*.yaml; do
    {
      echo "---"
      sed -e "s/'{{ template \"cert-manager.name\" \. }}'/cert-manager/" \
        -e "s/'{{ \.Release\.Name }}'/cert-manager/" \
        -e "s/^\( *\)# Generated labels {{- include \"labels\" \. | nindent 4 }}$/\1app.kubernetes.io\/version: \"$CERT_MANAGER_VERSION\"/" \
        "$f"
    } >>"$out.tmp"
  done
  if grep -n '{{' "$out.tmp" >&2; then
    die "unrendered template expressions left in the CRDs of $CM_MODULE@$CERT_MANAGER_VERSION (above)"
  fi
  mv "$out.tmp" "$out"
  echo "$out"
}

apply_crds() {
  local file
  file=$(render_crds)
  log "applying cert-manager $CERT_MANAGER_VERSION CRDs"
  kubectl_ apply --server-side --force-conflicts --field-manager climatik-cert-manager -f "$file" >/dev/null
  kubectl_ wait --for condition=Established --timeout 60s -f "$file" >/dev/null
}

crds_present() {
  kubectl_ get crd certificates.cert-manager.io issuers.cert-manager.io clusterissuers.cert-manager.io \
    certificaterequests.cert-manager.io orders.acme.cert-manager.io challenges.acme.cert-manager.io >/dev/null 2>&1
}

metrics_ready() { curl -sf --max-time 2 "$METRICS_URL" >/dev/null; }

# --- functional probe ------------------------------------------------------------------
# The controller is working when a Certificate of a selfSigned Issuer becomes
# Ready; the cainjector when it copies that Certificate's CA into a webhook
# configuration annotated with cert-manager.io/inject-ca-from. The webhook
# configuration can never be called: it matches no namespace, no real
# resource, and is failurePolicy Ignore.
probe_cert_ready() { # NAMESPACE
  [[ $(kubectl_ -n "$1" get certificate probe -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
probe_ca_injected() { # NAME
  [[ -n $(kubectl_ get mutatingwebhookconfiguration "$1" -o jsonpath='{.webhooks[0].clientConfig.caBundle}') ]]
}
probe() {
  local ns rc=0
  ns="cert-manager-probe-$(date +%s)-$$"
  log "probing cert-manager in namespace $ns"
  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: selfsigned
  namespace: $ns
spec:
  selfSigned: {}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: probe
  namespace: $ns
spec:
  secretName: probe-tls
  commonName: probe.$ns.svc
  dnsNames: [probe.$ns.svc]
  issuerRef: {name: selfsigned, kind: Issuer}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: $ns
  annotations:
    cert-manager.io/inject-ca-from: $ns/probe
webhooks:
- name: probe.cert-manager.climatik.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Ignore
  timeoutSeconds: 1
  clientConfig:
    url: https://127.0.0.1:9/never-called
  namespaceSelector:
    matchLabels: {climatik.io/cert-manager-probe: never}
  rules:
  - apiGroups: [probe.cert-manager.climatik.io]
    apiVersions: [v1]
    operations: [CREATE]
    resources: [probes]
EOF
  wait_for "a selfSigned Certificate to be Ready" 120 cert-manager-controller probe_cert_ready "$ns" || rc=1
  ((rc)) || wait_for "cainjector to inject the CA into a webhook configuration" 120 cert-manager-cainjector \
    probe_ca_injected "$ns" || rc=1
  kubectl_ delete mutatingwebhookconfiguration "$ns" --ignore-not-found >/dev/null || true
  kubectl_ delete namespace "$ns" --wait=false --ignore-not-found >/dev/null || true
  return "$rc"
}

# --- commands ---------------------------------------------------------------------
cmd_crds() {
  cluster_up
  apply_crds
}

cmd_up() {
  local t0=$SECONDS started=0 b
  cluster_up
  if running cert-manager-controller && running cert-manager-cainjector && metrics_ready && crds_present; then
    log "cert-manager is up (metrics $METRICS_URL)"
    return 0
  fi
  for b in cert-manager-controller cert-manager-cainjector; do
    if [[ ! -x $(bin "$b") ]]; then
      log "$b is not built yet; running build.sh"
      "$here/build.sh" >&2
      break
    fi
  done
  if ! running cert-manager-controller && ! port_free "$CERT_MANAGER_METRICS_PORT"; then
    die "port $CERT_MANAGER_METRICS_PORT (cert-manager-controller metrics) is in use by another program; set CLIMATIK_CERT_MANAGER_METRICS_PORT to move it"
  fi
  echo "CERT_MANAGER_METRICS_PORT=$CERT_MANAGER_METRICS_PORT" >"$CM_STATE/ports"

  apply_crds
  kubectl_ apply --server-side --field-manager climatik-cert-manager -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $CM_NAMESPACE
EOF

  if ! running cert-manager-controller; then
    # Leader election off: one instance, and a restart need not wait for
    # the old lease to expire. Cluster-scoped issuers keep their secrets in
    # the cert-manager namespace.
    start cert-manager-controller "$(bin cert-manager-controller)" \
      --kubeconfig "$KUBECONFIG_ADMIN" \
      --leader-elect=false \
      --cluster-resource-namespace "$CM_NAMESPACE" \
      --metrics-listen-address "127.0.0.1:$CERT_MANAGER_METRICS_PORT" \
      --v 2
    started=1
  fi
  if ! running cert-manager-cainjector; then
    start cert-manager-cainjector "$(bin cert-manager-cainjector)" \
      --kubeconfig "$KUBECONFIG_ADMIN" \
      --leader-elect=false \
      --v 2
    started=1
  fi

  wait_for "cert-manager-controller metrics" 60 cert-manager-controller metrics_ready
  if ((started)); then
    probe || die "cert-manager does not work; logs: $LOGS/cert-manager-controller.log, $LOGS/cert-manager-cainjector.log"
  fi
  log "cert-manager $CERT_MANAGER_VERSION up in $((SECONDS - t0))s (metrics $METRICS_URL, logs in $LOGS)"
}

cmd_down() {
  stop cert-manager-cainjector 20
  stop cert-manager-controller 20
  log "cert-manager is down (its CRDs stay in the cluster)"
}

case ${1:-} in
  up | down | crds) ;;
  *)
    echo "usage: $0 up|down|crds" >&2
    exit 2
    ;;
esac

exec 9>"$STATE/.lock"
flock 9
"cmd_$1"
