#!/usr/bin/env bash
# Chart tests, run by `make test` once the local control plane is up:
#   1. helm lint --strict, default values and every values file in values/
#   2. values.schema.json rejects bad values with a message naming the value
#   3. golden render of the default values (UPDATE_GOLDEN=1 rewrites it),
#      and promtool unit tests of the PrometheusRule's alerts (alerts.sh)
#   4. every rendered object (CRDs, cert-manager objects, ServiceMonitor,
#      PrometheusRule and the sample manifests included) passes a server-side
#      dry-run apply
#   5. webhook.tls.mode=generated keeps its certificate across upgrades and
#      puts its CA into the webhook configuration
#   6. helm install, then every `kubectl auth can-i` line of
#      docs/troubleshooting.md gives the answer the doc states
#   7. scripts/deploy.sh then scripts/undeploy.sh leave no CRD, webhook
#      configuration or namespace behind
#
# Steps 6 and 7 install into namespace climatik-project and step 7 deletes
# the climatik.io CRDs cluster-wide: do not run this beside other tests on the
# same cluster. A separate cluster works:
#   CLIMATIK_CLUSTER_DIR=$PWD/target/cluster-chart CLIMATIK_PORT_OFFSET=300 \
#   PROMETHEUS=0 charts/climatik/tests/run.sh
set -euo pipefail

tests_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
chart="$(cd "$tests_dir/.." && pwd)"
repo="$(cd "$chart/../.." && pwd)"

CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.19.1}
PROMETHEUS_OPERATOR_VERSION=${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}
KUBE_VERSION=v1.34.0 # what `helm template` assumes; the chart needs >= 1.27
NS=climatik-project
RELEASE=climatik

# The cluster is normally up already; up.sh is a no-op then.
"$repo/tests/cluster/up.sh" >/dev/null
# shellcheck source=/dev/null
source "${CLIMATIK_CLUSTER_DIR:-$repo/target/cluster}/env"

work="$(mktemp -d)"
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" HELM_DATA_HOME="$work/helm/data"
failures=0
dryrun_ns="climatik-chart-dryrun-$RANDOM$RANDOM"
# Its own release name too: cluster-scoped objects (ClusterRoles, the webhook
# configuration) must not merge with those of an installed release.
dryrun_release="climatik-dry$RANDOM"
gen_ns="climatik-chart-gen-$RANDOM$RANDOM"

k() { "$KUBECTL" "$@"; }
h() { "$HELM" "$@"; }
step() { printf '\n== %s\n' "$*"; }
ok() { printf '  ok   %s\n' "$*"; }
fail() {
  printf '  FAIL %s\n' "$*" >&2
  failures=$((failures + 1))
}
check() { # DESCRIPTION COMMAND...: ok when COMMAND succeeds
  local what=$1
  shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}
same() { [[ -n $1 && $1 == "$2" ]]; }
quiet() { "$@" >/dev/null 2>&1; }

created_runtimeclass=0
cleanup() {
  h uninstall chart-gen -n "$gen_ns" >/dev/null 2>&1 || true
  k delete namespace "$dryrun_ns" "$gen_ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [[ $created_runtimeclass == 1 ]]; then
    k delete runtimeclass nvidia --ignore-not-found >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

values_files=("$tests_dir"/values/*.yaml)

# --- 1. lint -------------------------------------------------------------------
step "helm lint --strict"
if out=$(h lint --strict "$chart" --kube-version "$KUBE_VERSION" 2>&1); then ok "default values"; else fail "default values: $out"; fi
for f in "${values_files[@]}"; do
  if out=$(h lint --strict "$chart" --kube-version "$KUBE_VERSION" -f "$f" 2>&1); then
    ok "$(basename "$f")"
  else
    fail "$(basename "$f"): $out"
  fi
done

# --- 2. schema -------------------------------------------------------------------
step "values.schema.json rejects bad values"
reject() { # EXPECTED-MESSAGE HELM-ARGS...
  local want=$1 out
  shift
  if out=$(h template x "$chart" --kube-version "$KUBE_VERSION" "$@" 2>&1); then
    fail "accepted: $*"
  elif [[ $out == *"$want"* ]]; then
    ok "$* -> $want"
  else
    fail "$*: expected \"$want\" in: $out"
  fi
}
reject "value must be one of 'Ignore', 'Fail'" --set webhook.failurePolicy=Sometimes
reject "value must be one of 'certManager', 'provided', 'generated'" --set webhook.tls.mode=selfsigned
reject "/webhook/tls/provided/secretName" --set webhook.tls.mode=provided
reject "value must be one of 'nvml', 'sim', 'none'" --set freqtuner.gpuBackend=cuda
reject "value must be one of 'cpufreq', 'sim', 'none'" --set freqtuner.cpuBackend=rapl
reject "additional properties 'replica' not allowed" --set webhook.replica=3
reject "/controller/interval" --set controller.interval=often
reject "/freqtuner/maxEntryTtl" --set freqtuner.maxEntryTtl=0s
reject "/freqtuner/entryLease/grace" --set freqtuner.entryLease.grace=0s
reject "/controller/prometheus/url" --set controller.prometheus.url=prometheus:9090
# A job name with a comma would split into two in --dcgm-jobs.
reject "/controller/prometheus/dcgmJobs/0" --set-json 'controller.prometheus.dcgmJobs=["a,b"]'
reject "/webhook/timeoutSeconds" --set webhook.timeoutSeconds=60
reject "/webhook/tls/certManager/issuerRef" --set webhook.tls.certManager.issuerRef.kind=ClusterIssuer

# --- 3. golden -------------------------------------------------------------------
step "golden render (default values)"
golden="$tests_dir/golden/default.yaml"
h template "$RELEASE" "$chart" -n "$NS" --kube-version "$KUBE_VERSION" >"$work/default.yaml"
if [[ -n ${UPDATE_GOLDEN:-} ]]; then
  mkdir -p "$(dirname "$golden")"
  cp "$work/default.yaml" "$golden"
  ok "rewrote ${golden#"$repo"/}"
elif diff -u "$golden" "$work/default.yaml" >"$work/golden.diff"; then
  ok "matches ${golden#"$repo"/}"
else
  fail "default render differs from ${golden#"$repo"/} (UPDATE_GOLDEN=1 to accept):"
  cat "$work/golden.diff" >&2
fi

step "alerts: promtool test rules"
if out=$(HELM=$HELM "$tests_dir/alerts.sh" 2>&1); then
  ok "every alert in charts/climatik/tests/alerts"
else
  fail "alerts.sh: $out"
fi

# --- 4. server-side dry-run ----------------------------------------------------------
step "third-party CRDs (cert-manager $CERT_MANAGER_VERSION, prometheus-operator $PROMETHEUS_OPERATOR_VERSION)"
# Their CRD YAML ships in the Go module zips; go mod download puts them into
# the module cache (no go.mod needed, so run it from an empty directory).
module_dir() { # MODULE@VERSION
  (cd "$work" && GOFLAGS=-mod=mod go mod download -json "$1") |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}
cm_dir=$(module_dir "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION") ||
  { echo "go mod download of cert-manager failed" >&2; exit 1; }
po_dir=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION") ||
  { echo "go mod download of prometheus-operator failed" >&2; exit 1; }
po_crds="$po_dir/example/prometheus-operator-crd"
third_party=("$cm_dir"/deploy/crds/*.yaml "$po_crds/monitoring.coreos.com_servicemonitors.yaml" "$po_crds/monitoring.coreos.com_prometheusrules.yaml")
for f in "${third_party[@]}"; do
  # Server-side: the CRDs are too large for client-side apply's annotation.
  k apply --server-side --force-conflicts --field-manager=climatik-chart-test -f "$f" >/dev/null
done
k wait --for condition=Established --timeout=60s \
  crd/certificates.cert-manager.io crd/issuers.cert-manager.io crd/servicemonitors.monitoring.coreos.com \
  crd/prometheusrules.monitoring.coreos.com >/dev/null
ok "installed ${#third_party[@]} CRDs"
# Our own CRDs for real too: the sample PowerCappingPolicy needs them.
k apply --server-side --force-conflicts --field-manager=climatik-chart-test -f "$chart/crds/" >/dev/null
k wait --for condition=Established --timeout=60s crd/powercappingpolicies.climatik.io crd/nodefrequencies.climatik.io crd/powerbudgets.climatik.io >/dev/null

step "server-side dry-run of every render"
k create namespace "$dryrun_ns" >/dev/null
# A Pod (the `helm test` hook's) is admitted only once its ServiceAccount
# exists, and a dry run creates none: the hook's account, for real.
k create serviceaccount "$dryrun_release-test" -n "$dryrun_ns" >/dev/null
dry_run() { # NAME FILE [KUBECTL-ARGS...]
  local out
  if out=$(k apply --dry-run=server -f "$2" "${@:3}" 2>&1); then
    ok "$1 ($(grep -c '^kind:' "$2") objects)"
  else
    fail "$1: $out"
  fi
}
h template "$dryrun_release" "$chart" -n "$dryrun_ns" --kube-version "$KUBE_VERSION" --include-crds >"$work/r-default.yaml"
dry_run "default values, CRDs included" "$work/r-default.yaml"
for f in "${values_files[@]}"; do
  name=$(basename "$f" .yaml)
  h template "$dryrun_release" "$chart" -n "$dryrun_ns" --kube-version "$KUBE_VERSION" -f "$f" >"$work/r-$name.yaml"
  dry_run "$name" "$work/r-$name.yaml"
done
# The samples name no namespace; they go where the user's context points.
for f in "$repo"/manifests/*.yaml; do
  dry_run "${f#"$repo"/}" "$f" -n "$dryrun_ns"
done

step "kubectl get pcp: printer columns"
k apply -n "$dryrun_ns" -f - >/dev/null <<'EOF'
apiVersion: climatik.io/v1alpha1
kind: PowerCappingPolicy
metadata:
  name: columns
spec:
  powerCapLimit: 300
  selector: { matchLabels: { app: columns } }
  customAlgorithms: [{ name: feedback-budget }]
EOF
# The status as the monitor writes it (no monitor runs here).
k patch pcp columns -n "$dryrun_ns" --subresource=status --type=merge -p '{"status": {
  "effectiveCapWatts": 300, "currentPower": 123.5, "cappingActionRequired": false,
  "conditions": [{"type": "Ready", "status": "True", "reason": "Observed", "message": "",
                  "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}' >/dev/null
pcp_table=$(k get pcp columns -n "$dryrun_ns")
check "columns: name, Ready, algorithm, cap, effective cap, power, capping" same \
  "$(awk 'NR == 1 { print $1, $2, $3, $4, $5, $6, $7 }' <<<"$pcp_table")" \
  "NAME READY ALGORITHM CAP EFFECTIVE POWER CAPPING"
check "the row shows the status" same \
  "$(awk 'NR == 2 { print $1, $2, $3, $4, $5, $6, $7 }' <<<"$pcp_table")" \
  "columns True feedback-budget 300 300 123.5 false"

# --- 5. generated certificates -----------------------------------------------------
step "webhook.tls.mode=generated: certificate kept across upgrades"
gen_args=(chart-gen "$chart" -n "$gen_ns" --create-namespace -f "$tests_dir/values/generated.yaml"
  --set webhook.url=https://127.0.0.1:1/mutate --set webhook.replicas=0
  --set controller.enabled=false --set recommender.enabled=false --set freqtuner.enabled=false)
secret_ca() { k -n "$gen_ns" get secret chart-gen-climatik-webhook-tls -o jsonpath='{.data.ca\.crt}'; }
webhook_ca() { k get mutatingwebhookconfiguration chart-gen-climatik-webhook -o jsonpath='{.webhooks[0].clientConfig.caBundle}'; }
if h install "${gen_args[@]}" >/dev/null; then
  ca1=$(secret_ca)
  check "install: caBundle is the generated CA" same "$(webhook_ca)" "$ca1"
  k -n "$gen_ns" get secret chart-gen-climatik-webhook-tls -o jsonpath='{.data.tls\.crt}' | base64 -d >"$work/gen-tls.crt"
  base64 -d <<<"$ca1" >"$work/gen-ca.crt"
  check "ca.crt is a PEM certificate" quiet openssl x509 -in "$work/gen-ca.crt" -noout
  if openssl verify -CAfile "$work/gen-ca.crt" "$work/gen-tls.crt" >/dev/null 2>&1 &&
    openssl x509 -in "$work/gen-tls.crt" -noout -ext subjectAltName | grep -q "chart-gen-climatik-webhook.$gen_ns.svc"; then
    ok "serving certificate is signed by the CA and names the Service"
  else
    fail "serving certificate does not verify against the CA or lacks the Service DNS name"
  fi
  h upgrade "${gen_args[@]}" >/dev/null
  check "upgrade: same CA in the Secret" same "$(secret_ca)" "$ca1"
  check "upgrade: same CA in the webhook configuration" same "$(webhook_ca)" "$ca1"
  h uninstall chart-gen -n "$gen_ns" --wait >/dev/null
  check "uninstall removed the webhook configuration" \
    same "$(k get mutatingwebhookconfiguration -o name | grep -c '/chart-gen-climatik-webhook$' || true)" 0
else
  fail "helm install (generated TLS) failed"
fi

# --- 6. RBAC against the documented answers ------------------------------------------
step "helm install + kubectl auth can-i lines of docs/troubleshooting.md"
if quiet h status "$RELEASE" -n "$NS" || quiet k get namespace "$NS"; then
  echo "  (removing what an earlier, interrupted run left in $NS)"
  HELM=$HELM KUBECTL=$KUBECTL "$repo/scripts/undeploy.sh" >/dev/null 2>&1
fi
# The GPU operator provides this RuntimeClass; without it the agent's pods
# are rejected and --wait never ends.
quiet k get runtimeclass nvidia || created_runtimeclass=1
k apply -f - >/dev/null <<'EOF'
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: nvidia
handler: nvidia
EOF
# The webhook is pointed at a closed local port: nothing can serve it here,
# and failurePolicy Ignore then admits everything at once.
# Pods become Ready only on the nodekeeper's nodes (it plays their kubelet);
# other tests may register nodes of their own, so pin every component there.
mapfile -t fake_nodes < <(k get nodes -l climatik.io/fake-node=true -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | grep -E '^gpu-node-[0-9]+$')
((${#fake_nodes[@]} > 0)) || { echo "no gpu-node-N nodes in the cluster" >&2; exit 1; }
affinity=$(printf '"%s",' "${fake_nodes[@]}")
affinity="{\"nodeAffinity\":{\"requiredDuringSchedulingIgnoredDuringExecution\":{\"nodeSelectorTerms\":[{\"matchExpressions\":[{\"key\":\"kubernetes.io/hostname\",\"operator\":\"In\",\"values\":[${affinity%,}]}]}]}}}"
pin=()
for component in webhook controller recommender freqtuner; do
  pin+=(--set-json "$component.affinity=$affinity")
done
h install "$RELEASE" "$chart" -n "$NS" --create-namespace --wait --timeout 3m "${pin[@]}" \
  --set webhook.failurePolicy=Ignore --set webhook.url=https://127.0.0.1:1/mutate >/dev/null
checked=0
while IFS= read -r line; do
  cmd=${line%%#*}
  cmd=${cmd%"${cmd##*[![:space:]]}"} # trailing blanks
  want=$(sed -n 's/.*# *\(yes\|no\)[[:space:]]*$/\1/p' <<<"$line")
  read -ra argv <<<"$cmd"
  got=$(k "${argv[@]:1}" 2>/dev/null || true)
  checked=$((checked + 1))
  if [[ $got == "$want" ]]; then ok "$want: $cmd"; else fail "$cmd: doc says $want, cluster says ${got:-error}"; fi
done < <(grep -E '^kubectl auth can-i .*# *(yes|no) *$' "$repo/docs/troubleshooting.md")
((checked >= 20)) || fail "only $checked can-i lines found in docs/troubleshooting.md"
h uninstall "$RELEASE" -n "$NS" --wait >/dev/null
k delete namespace "$NS" --wait --timeout=2m >/dev/null

# --- 7. deploy.sh / undeploy.sh ------------------------------------------------------
step "scripts/deploy.sh then scripts/undeploy.sh"
export HELM KUBECTL
if "$repo/scripts/deploy.sh" "${pin[@]}" --set webhook.url=https://127.0.0.1:1/mutate >"$work/deploy.log" 2>&1; then
  ok "deploy.sh"
  check "release $RELEASE deployed" quiet h status "$RELEASE" -n "$NS"
  check "webhook configuration present" quiet k get mutatingwebhookconfiguration "$RELEASE-webhook"
  check "namespace allows the privileged node agent" same \
    "$(k get namespace "$NS" -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')" privileged
  check "CRDs present" quiet k get crd powercappingpolicies.climatik.io nodefrequencies.climatik.io powerbudgets.climatik.io
  check "freqtuner ready on every GPU node" same \
    "$(k -n "$NS" get daemonset "$RELEASE-freqtuner" -o jsonpath='{.status.numberReady}')" "${#fake_nodes[@]}"
else
  fail "deploy.sh: $(cat "$work/deploy.log")"
fi
if "$repo/scripts/undeploy.sh" >"$work/undeploy.log" 2>&1; then ok "undeploy.sh"; else fail "undeploy.sh: $(cat "$work/undeploy.log")"; fi
left=$(
  k get crd -o name | grep '\.climatik\.io$' || true
  k get mutatingwebhookconfiguration -o name | grep "/$RELEASE-webhook$" || true
  k get namespace "$NS" -o name 2>/dev/null || true
  h list -A -q | grep -x "$RELEASE" || true
)
if [[ -z $left ]]; then ok "nothing left behind"; else fail "left behind: $left"; fi

printf '\n'
if ((failures > 0)); then
  echo "chart tests: $failures failure(s)" >&2
  exit 1
fi
echo "chart tests: all passed"
