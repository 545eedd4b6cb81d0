#!/usr/bin/env bash
# The chart installed the way README.md tells a user, on a real node: run by
# `make test` after the other chart tests.
#
# A cluster of its own (target/cluster-install, ports +400) with a real node
# (kubelet, containerd, kube-proxy; tests/cluster/README.md), a real
# cert-manager (tests/cluster/cert-manager.sh) and the project image from
# `make image` imported into the node's containerd. Then the README's
# install blocks (the fenced blocks after `<!-- install-test: NAME -->`)
# run as written, and the test checks what a user would:
#   1. every pod of the chart becomes Ready on the real node, and each
#      component logs its start-up line (kubectl logs, through the kubelet);
#   2. cert-manager issued the webhook certificate, cainjector put the CA into
#      the MutatingWebhookConfiguration, and the API server calls the webhook
#      through its Service (an annotated Deployment comes back labelled);
#      the README's `helm test` (climatik-check) passes;
#   3. that Deployment's pods (sim-workload from our image, holding simulated
#      GPUs through the agent's device plugin) really run, its generated
#      policy appears, its GPU power converges under the cap, a cap change is
#      followed, and deleting the Deployment restores default clocks;
#   4. a renewed webhook certificate is served without a pod restart;
#   5. the README's upgrade path applies a changed CRD;
#   6. helm uninstall leaves no policy, no NodeFrequencies, no stuck
#      namespace and no object of ours.
#
#   charts/climatik/tests/install.sh
#   KEEP=1 charts/climatik/tests/install.sh   # leave the cluster up afterwards
#
# The cluster is purged on success; on failure it is stopped and its state
# and logs are kept in target/cluster-install.
set -euo pipefail

tests_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
chart="$(cd "$tests_dir/.." && pwd)"
repo="$(cd "$chart/../.." && pwd)"
cd "$repo"

export CLIMATIK_CLUSTER_DIR="$repo/target/cluster-install"
export CLIMATIK_PORT_OFFSET=400
export CLIMATIK_NODES=0
export CLIMATIK_REAL_NODE=1
export PROMETHEUS=1

NS=climatik-project
RELEASE=climatik
APP_NS=install-test
CAP_WATTS=900
# Above what two fully loaded simulated GPUs draw at their lowest clock
# (2 x 371 W): a lower cap cannot be met by clocks alone.
NEW_CAP_WATTS=800
# The simulated H100-class GPU's default (maximum) SM clock.
DEFAULT_CLOCK_MHZ=1980
t_start=$SECONDS

# eventually (tests/cluster/lib.sh); the log it calls is this script's, below.
# shellcheck source=tests/cluster/lib.sh
source "$repo/tests/cluster/lib.sh"
log() { printf '[install-test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
step() { printf '\n== %s\n' "$*" >&2; }
fail() {
  log "FAIL: $*"
  exit 1
}

ok=0
cleanup() {
  local rc=$?
  if ((ok == 0)); then
    log "failed; cluster state and logs kept in $CLIMATIK_CLUSTER_DIR"
    if [[ -f $CLIMATIK_CLUSTER_DIR/env ]]; then
      # shellcheck source=/dev/null
      (source "$CLIMATIK_CLUSTER_DIR/env" && "$KUBECTL" get pods -A -o wide && "$KUBECTL" get events -A --sort-by=.lastTimestamp | tail -n 40) >&2 || true
    fi
  fi
  if [[ -n ${KEEP:-} ]]; then
    log "KEEP is set: the install cluster stays up (source $CLIMATIK_CLUSTER_DIR/env; CLIMATIK_CLUSTER_DIR=$CLIMATIK_CLUSTER_DIR tests/cluster/down.sh --purge removes it)"
  elif ((ok)); then
    tests/cluster/down.sh --purge >/dev/null 2>&1 || true
  else
    tests/cluster/down.sh >/dev/null 2>&1 || true
  fi
  return "$rc"
}
trap cleanup EXIT

# readme_block NAME -> the fenced block that follows `<!-- install-test: NAME -->`
# in README.md.
readme_block() {
  awk -v marker="<!-- install-test: $1 -->" '
    $0 == marker { found = 1; next }
    found && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
  ' README.md
}

# run_readme NAME [DIR] -> runs README block NAME in DIR (default: the repo)
# with kubectl and helm on PATH, as a user's shell would.
run_readme() {
  local block dir=${2:-$repo}
  block=$(readme_block "$1")
  [[ -n $block ]] || fail "README.md has no install-test block '$1'"
  log "README block '$1':"
  sed 's/^/    /' <<<"$block" >&2
  (cd "$dir" && PATH="$tool_bin:$PATH" bash -euo pipefail -c "$block")
}

# --- the cluster, cert-manager and the image ---------------------------------
step "real-node cluster, cert-manager, image"
# Start from nothing: a rerun must not find last run's objects.
tests/cluster/down.sh --purge >/dev/null 2>&1 || true
tests/cluster/up.sh >&2
tests/cluster/cert-manager.sh up >&2
# shellcheck source=/dev/null
source "$CLIMATIK_CLUSTER_DIR/env"
export KUBECONFIG
k() { "$KUBECTL" "$@"; }
tool_bin="$CLIMATIK_CLUSTER_DIR/tool-bin"
mkdir -p "$tool_bin"
ln -sf "$KUBECTL" "$tool_bin/kubectl"
ln -sf "$HELM" "$tool_bin/helm"
export HELM_CACHE_HOME="$CLIMATIK_CLUSTER_DIR/helm/cache" HELM_CONFIG_HOME="$CLIMATIK_CLUSTER_DIR/helm/config" HELM_DATA_HOME="$CLIMATIK_CLUSTER_DIR/helm/data"

scripts/image.sh >&2
image_archive=$(<target/image/archive)
image_ref=$(<target/image/ref)
tests/cluster/node-image.sh import "$image_archive" >&2
log "image $image_ref imported into $CLIMATIK_REAL_NODE_NAME's containerd"

# --- install as the README says ----------------------------------------------
step "helm install (README)"
t_install=$SECONDS
run_readme install
log "helm install --wait returned after $((SECONDS - t_install))s"

step "every pod Ready on the real node, start-up lines logged"
expected_pods=5 # 2 webhook replicas, controller, recommender, one agent
ready_pods() {
  k -n "$NS" get pods -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}'
}
all_ready() { [[ $(ready_pods | grep -c " $CLIMATIK_REAL_NODE_NAME True$") -eq $expected_pods ]]; }
# helm --wait has returned; allow for a slow kubelet status update.
eventually 60 "$expected_pods pods Ready on $CLIMATIK_REAL_NODE_NAME" all_ready
k get pods -A -o wide >&2
startup_line() { # COMPONENT LINE
  local pod
  for pod in $(k -n "$NS" get pods -l "app.kubernetes.io/component=$1" -o name); do
    # Not `logs | grep -q`: grep's early exit would fail the pipeline.
    [[ $(k -n "$NS" logs "$pod") == *"$2"* ]] || fail "$pod did not log '$2'"
  done
  log "ok: $1 logged '$2'"
}
startup_line webhook "webhook listening"
startup_line powercapping-controller "powercapping-controller starting"
startup_line freqtuning-recommender "freqtuning-recommender starting"
startup_line freqtuner "agent started"

step "cert-manager issued the webhook certificate; the CA is injected"
webhook=$RELEASE-webhook
[[ $(k -n "$NS" get certificate "$webhook" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]] ||
  fail "Certificate $webhook is not Ready"
secret_ca=$(k -n "$NS" get secret "$webhook-tls" -o jsonpath='{.data.ca\.crt}')
injected_ca=$(k get mutatingwebhookconfiguration "$webhook" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
[[ -n $secret_ca && $secret_ca == "$injected_ca" ]] || fail "the webhook configuration's caBundle is not the issued CA"
[[ $(k get mutatingwebhookconfiguration "$webhook" -o jsonpath='{.webhooks[0].clientConfig.service.name}') == "$webhook" ]] ||
  fail "the API server does not reach the webhook through its Service"
log "ok: CA injected, webhook reached through Service $NS/$webhook"

step "helm test (README): CRDs served, webhook reachable, agents reporting"
run_readme check
[[ -z $(k -n "$NS" get pod "$RELEASE-test" --ignore-not-found -o name) ]] ||
  fail "the passing helm test left its pod behind"
log "ok: helm test passed and left nothing behind"

step "helm test fails, naming the check, while the webhook is down"
k -n "$NS" scale deployment "$webhook" --replicas=0 >/dev/null
k -n "$NS" wait --for=delete pod -l app.kubernetes.io/component=webhook --timeout=120s >/dev/null
if "$HELM" test "$RELEASE" -n "$NS" >/dev/null 2>&1; then
  fail "helm test passed with no webhook running"
fi
test_log=$(k -n "$NS" logs "$RELEASE-test")
sed 's/^/    /' <<<"$test_log" >&2
[[ $test_log == *"FAIL webhook reachable"* ]] || fail "the failed helm test does not name the webhook"
[[ $test_log == *"ok   node agents Ready"* && $test_log == *"ok   CRDs served"* ]] ||
  fail "one failed check hid the others"
k -n "$NS" delete pod "$RELEASE-test" --wait >/dev/null
k -n "$NS" scale deployment "$webhook" --replicas=2 >/dev/null
k -n "$NS" rollout status deployment "$webhook" --timeout=180s >&2
# Ready pods are not yet a Service that routes to them (endpoints, then
# kube-proxy's rules): the check itself says when the webhook is back.
helm_test_passes() { "$HELM" test "$RELEASE" -n "$NS" >/dev/null 2>&1; }
eventually 120 "helm test to pass again with the webhook back" helm_test_passes
log "ok: helm test failed on the webhook alone, and passed once it was back"

# --- a capped workload that really runs --------------------------------------
step "an annotated Deployment on the real node"
k create namespace "$APP_NS" >/dev/null
apply_workload() {
  k apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: serve
  namespace: $APP_NS
  annotations:
    climatik.io/power-cap: "${CAP_WATTS}W"
spec:
  replicas: 1
  selector:
    matchLabels: {app: serve}
  template:
    metadata:
      labels: {app: serve}
      annotations:
        climatik.io/sim-load: full
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: serve
          image: $image_ref
          imagePullPolicy: Never
          command: ["sim-workload"]
          resources:
            limits:
              nvidia.com/gpu: 2
EOF
}
apply_workload
# The webhook labels the pod template: proof that the API server called it.
policy_label=$(k -n "$APP_NS" get deployment serve -o jsonpath='{.spec.template.metadata.labels.climatik\.io/policy}')
[[ -n $policy_label ]] || fail "the Deployment was not mutated: the API server did not reach the webhook"
log "ok: the webhook labelled the pod template (climatik.io/policy=$policy_label)"
eventually 30 "generated policy $APP_NS/deployment-serve" k -n "$APP_NS" get pcp deployment-serve
pod_running() {
  [[ $(k -n "$APP_NS" get pods -l app=serve -o jsonpath='{.items[0].status.phase} {.items[0].spec.nodeName}') == "Running $CLIMATIK_REAL_NODE_NAME" ]]
}
eventually 90 "the workload's pod runs on $CLIMATIK_REAL_NODE_NAME" pod_running
pod=$(k -n "$APP_NS" get pods -l app=serve -o jsonpath='{.items[0].metadata.name}')
[[ $(k -n "$APP_NS" logs "$pod") == *GPU-* ]] || fail "$pod did not get simulated GPUs: $(k -n "$APP_NS" logs "$pod")"
log "ok: $pod runs with $(k -n "$APP_NS" logs "$pod" | head -n 1)"

# power_under WATTS SECONDS -> the policy's measured power stays at or under
# WATTS (and above zero) for SECONDS in a row, within 180 s.
power_under() {
  local cap=$1 hold=$2 t0=$SECONDS since="" peak=0 p
  while ((SECONDS - t0 < 180)); do
    p=$(k -n "$APP_NS" get pcp deployment-serve -o jsonpath='{.status.currentPower}')
    if [[ -n $p ]] && awk -v p="$p" 'BEGIN { exit !(p > 0) }'; then
      peak=$(awk -v p="$p" -v m="$peak" 'BEGIN { print (p > m) ? p : m }')
      if awk -v p="$p" -v c="$cap" 'BEGIN { exit !(p <= c) }'; then
        since=${since:-$SECONDS}
        if ((SECONDS - since >= hold)); then
          log "ok: power ${p} W under ${cap} W for ${hold}s (peak ${peak} W, $((since - t0))s to converge)"
          echo "$peak"
          return 0
        fi
      else
        since=""
      fi
    fi
    sleep 1
  done
  fail "power did not stay under ${cap} W for ${hold}s within 180s (last ${p:-none} W, peak $peak W)"
}
step "power converges under ${CAP_WATTS} W"
peak=$(power_under "$CAP_WATTS" 20)
awk -v p="$peak" -v c="$CAP_WATTS" 'BEGIN { exit !(p > c) }' ||
  fail "the workload never exceeded ${CAP_WATTS} W (peak $peak W), so capping was not exercised"

step "a cap change is followed (${NEW_CAP_WATTS} W)"
k -n "$APP_NS" annotate deployment serve --overwrite "climatik.io/power-cap=${NEW_CAP_WATTS}W" >/dev/null
cap_is_new() { [[ $(k -n "$APP_NS" get pcp deployment-serve -o jsonpath='{.spec.powerCapLimit}') == "$NEW_CAP_WATTS" ]]; }
eventually 30 "the policy's cap is ${NEW_CAP_WATTS} W" cap_is_new
power_under "$NEW_CAP_WATTS" 15 >/dev/null

step "deleting the Deployment restores default clocks"
# sm_clocks SELECTOR -> one line per simulated GPU matching SELECTOR: its SM
# clock, as Prometheus scraped it from the agent's DCGM series.
sm_clocks() {
  curl -sf --max-time 5 "$PROMETHEUS_URL/api/v1/query" \
    --data-urlencode "query=DCGM_FI_DEV_SM_CLOCK{Hostname=\"$CLIMATIK_REAL_NODE_NAME\",$1}" |
    python3 -c 'import json, sys; [print(int(float(r["value"][1]))) for r in json.load(sys.stdin)["data"]["result"]]'
}
# clocks_of SELECTOR COUNT OP -> COUNT GPUs match, and every clock OP the
# default (awk comparison).
clocks_of() {
  local clocks
  clocks=$(sm_clocks "$1")
  [[ $(grep -c . <<<"$clocks") -eq $2 ]] &&
    awk -v d="$DEFAULT_CLOCK_MHZ" "{ if (!(\$1 $3 d)) bad = 1 } END { exit bad }" <<<"$clocks"
}
eventually 60 "both GPUs of the capped pod run below ${DEFAULT_CLOCK_MHZ} MHz" \
  clocks_of "namespace=\"$APP_NS\",pod=\"$pod\"" 2 '<'
k -n "$APP_NS" delete deployment serve --wait=true >/dev/null
eventually 60 "the generated policy is gone" bash -c "! '$KUBECTL' -n '$APP_NS' get pcp deployment-serve"
eventually 60 "the capped pod is gone" bash -c "[[ -z \$('$KUBECTL' -n '$APP_NS' get pods -l app=serve -o name) ]]"
# Idle GPUs clock down by themselves, as real ones do: what shows that no
# lock is left is a fully loaded, uncapped pod on every GPU of the node
# running at the default clock.
gpus=$(k get node "$CLIMATIK_REAL_NODE_NAME" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')
[[ $gpus =~ ^[1-9][0-9]*$ ]] || fail "the node advertises no nvidia.com/gpu (device plugin): '$gpus'"
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: uncapped
  namespace: $APP_NS
  annotations:
    climatik.io/sim-load: full
spec:
  terminationGracePeriodSeconds: 5
  containers:
    - name: uncapped
      image: $image_ref
      imagePullPolicy: Never
      command: ["sim-workload"]
      resources:
        limits:
          nvidia.com/gpu: $gpus
EOF
eventually 90 "all $gpus GPUs, fully loaded and uncapped, run at ${DEFAULT_CLOCK_MHZ} MHz" \
  clocks_of "namespace=\"$APP_NS\",pod=\"uncapped\"" "$gpus" '=='
k -n "$APP_NS" delete pod uncapped --wait=true >/dev/null

# --- certificate renewal without a restart ------------------------------------
step "a renewed webhook certificate is served without a restart"
serial_served() { # the serial of the certificate the webhook Service serves
  local ip
  ip=$(k -n "$NS" get service "$webhook" -o jsonpath='{.spec.clusterIP}')
  openssl s_client -connect "$ip:443" -servername "$webhook.$NS.svc" </dev/null 2>/dev/null |
    openssl x509 -noout -serial 2>/dev/null | cut -d= -f2
}
restarts() { k -n "$NS" get pods -l app.kubernetes.io/component=webhook -o jsonpath='{range .items[*]}{.metadata.name}:{.status.containerStatuses[0].restartCount}{" "}{end}'; }
before_serial=$(serial_served)
before_restarts=$(restarts)
[[ -n $before_serial ]] || fail "cannot read the webhook's certificate through its Service"
# What `cmctl renew` does: an Issuing condition on the Certificate's status.
k -n "$NS" patch certificate "$webhook" --subresource=status --type=json -p "[{\"op\": \"add\", \"path\": \"/status/conditions/-\", \"value\": {\"type\": \"Issuing\", \"status\": \"True\", \"reason\": \"ManuallyTriggered\", \"message\": \"renewal requested by the install test\", \"lastTransitionTime\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}}]" >/dev/null
secret_serial() { k -n "$NS" get secret "$webhook-tls" -o jsonpath='{.data.tls\.crt}' | base64 -d | openssl x509 -noout -serial | cut -d= -f2; }
renewed() { [[ $(secret_serial) != "$before_serial" ]]; }
eventually 60 "cert-manager renewed the webhook certificate" renewed
new_serial=$(secret_serial)
serves_new() { [[ $(serial_served) == "$new_serial" ]]; }
# The kubelet refreshes Secret volumes within about a minute; the webhook
# watches its files.
eventually 150 "the webhook serves the renewed certificate (serial $new_serial)" serves_new
[[ $(restarts) == "$before_restarts" ]] || fail "webhook pods restarted: $before_restarts -> $(restarts)"
log "ok: same pods, no restarts ($before_restarts)"

# --- upgrade with a changed CRD -----------------------------------------------
step "helm upgrade with a changed CRD (README's upgrade path)"
upgrade_dir="$CLIMATIK_CLUSTER_DIR/upgrade"
rm -rf "$upgrade_dir"
mkdir -p "$upgrade_dir/charts"
cp -r "$chart" "$upgrade_dir/charts/climatik"
marker="install-test upgrade $$"
crd_file="$upgrade_dir/charts/climatik/crds/powercappingpolicies.yaml"
[[ -f $crd_file ]] || fail "no CRD file $crd_file"
# A new printer column: a change a chart release could make.
python3 - "$crd_file" "$marker" <<'PY'
import sys, yaml
path, marker = sys.argv[1], sys.argv[2]
with open(path) as f:
    crd = yaml.safe_load(f)
for version in crd["spec"]["versions"]:
    version.setdefault("additionalPrinterColumns", []).append(
        {"name": "Upgraded", "type": "string", "jsonPath": ".metadata.name", "description": marker})
with open(path, "w") as f:
    yaml.safe_dump(crd, f, sort_keys=False)
PY
run_readme upgrade "$upgrade_dir"
[[ $(k get crd powercappingpolicies.climatik.io -o yaml) == *"$marker"* ]] || fail "the changed CRD was not applied by the upgrade"
log "ok: the upgraded CRD is in the cluster"

# --- uninstall ------------------------------------------------------------------
step "helm uninstall, with a capped workload still running, leaves nothing of ours"
apply_workload
eventually 30 "generated policy $APP_NS/deployment-serve (upgraded release)" k -n "$APP_NS" get pcp deployment-serve
eventually 90 "the workload's pod runs again" pod_running
run_readme uninstall
eventually 120 "namespace $NS is gone" bash -c "! '$KUBECTL' get namespace '$NS'"
leftovers=$(k get crd -o name | grep climatik.io || true)
[[ -z $leftovers ]] || fail "CRDs left: $leftovers"
k delete namespace "$APP_NS" --wait=true --timeout=90s >/dev/null || fail "namespace $APP_NS is stuck"
leftovers=$(k get clusterroles,clusterrolebindings,mutatingwebhookconfigurations,validatingwebhookconfigurations -o name -l "app.kubernetes.io/instance=$RELEASE")
[[ -z $leftovers ]] || fail "cluster objects of the release left: $leftovers"
log "ok: no CRD, policy, NodeFrequencies, namespace or cluster object left"

ok=1
log "passed in $((SECONDS - t_start))s"
