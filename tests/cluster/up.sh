#!/usr/bin/env bash
# Starts the local control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, the fake GPU nodes' nodekeeper)
# and Prometheus, all on 127.0.0.1. Idempotent: a healthy cluster is left
# as it is, a partly running one is completed. Concurrent callers (parallel
# test binaries) are serialised with flock.
#
#   tests/cluster/up.sh
#   PROMETHEUS=0 tests/cluster/up.sh        # without Prometheus
#   CLIMATIK_CLUSTER_DIR=... CLIMATIK_APISERVER_PORT=... up.sh   # a second cluster
#   CLIMATIK_CLUSTER_DIR=... CLIMATIK_PORT_OFFSET=400 CLIMATIK_NODES=0 \
#     CLIMATIK_REAL_NODE=1 up.sh           # with a real node (root; README.md)
#
# Afterwards: source "$CLIMATIK_CLUSTER_DIR/env" (default target/cluster/env).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh"
# shellcheck source-path=SCRIPTDIR
source "$here/node.sh"

NODES=${CLIMATIK_NODES:-3}
GPUS_PER_NODE=${CLIMATIK_GPUS_PER_NODE:-4}
PROMETHEUS=${PROMETHEUS:-1}

exec 9>"$STATE/.lock"
flock 9

t_start=$SECONDS

healthy() {
  local c
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    running "$c" || return 1
  done
  ((NODES == 0)) || running nodekeeper || return 1
  [[ $PROMETHEUS == 0 || $REAL_NODE == 0 ]] || running endpoints-sd || return 1
  if [[ $REAL_NODE == 1 ]]; then
    for c in containerd kubelet kube-proxy; do
      running "$c" || return 1
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 || return 1
    curl -sf --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" >/dev/null || return 1
  fi
  [[ $PROMETHEUS == 0 ]] || { running prometheus && prometheus_ready; } || return 1
  api_ready
}

print_usage() {
  echo "cluster is up: $APISERVER_URL (state in $STATE)"
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
  echo "# or: source $STATE/env"
}

if [[ -f $KUBECONFIG_ADMIN && -f $STATE/env ]] && healthy; then
  print_usage
  exit 0
fi

[[ $NODES =~ ^[0-9]+$ ]] || die "CLIMATIK_NODES must be a whole number, not '$NODES'"

# --- binaries -----------------------------------------------------------------
needed=("$(bin etcd)" "$(bin kube-apiserver)" "$(bin kube-controller-manager)" "$(bin kube-scheduler)"
  "$(bin kubectl)" "$(bin nodekeeper)")
if [[ $REAL_NODE == 1 ]]; then
  needed+=("$(bin kubelet)" "$(bin kube-proxy)" "$(bin_path pause "$(pause_version)")"
    "$(bin_path endpoints-sd "$(endpoints_sd_version)")")
fi
for b in "${needed[@]}"; do
  if [[ ! -x $b ]]; then
    log "$(basename "$b") is not built yet; running build.sh"
    "$here/build.sh" >&2
    break
  fi
done
if [[ $PROMETHEUS != 0 ]] && ! command -v prometheus >/dev/null 2>&1; then
  die "prometheus is not on PATH: run tests/cluster/build.sh (it installs Debian's package) or set PROMETHEUS=0"
fi

# --- the real node's network ------------------------------------------------------
# First: the API server and Prometheus listen on the bridge's address.
if [[ $REAL_NODE == 1 ]]; then
  node_preflight
  node_save_settings
  node_bridge_up
elif [[ -f $STATE/real-node ]]; then
  node_save_settings # CLIMATIK_REAL_NODE=0: no longer a real-node cluster
fi

# A port held by something that is not ours would make a component fail in
# a confusing way later; say so now.
check_port() { # NAME PORT [HOST]
  if ! running "$1" && ! port_free "$2" "${3:-127.0.0.1}"; then
    die "port $2 (for $1) is in use by another program; set CLIMATIK_*_PORT to move it (see tests/cluster/README.md)"
  fi
}
check_port etcd "$ETCD_PORT"
check_port etcd "$ETCD_PEER_PORT"
check_port kube-apiserver "$APISERVER_PORT" "$LISTEN_HOST"
check_port kube-controller-manager "$KCM_PORT"
check_port kube-scheduler "$SCHEDULER_PORT"
[[ $PROMETHEUS == 0 ]] || check_port prometheus "$PROMETHEUS_PORT" "$LISTEN_HOST"
if [[ $REAL_NODE == 1 ]]; then
  check_port kubelet "$KUBELET_PORT" "$NODE_IP"
  check_port kubelet "$KUBELET_HEALTHZ_PORT"
  check_port kube-proxy "$PROXY_METRICS_PORT"
  check_port kube-proxy "$PROXY_HEALTHZ_PORT"
  check_port containerd "$CONTAINERD_STREAM_PORT"
fi
save_ports

# --- certificates ---------------------------------------------------------------
if [[ $REAL_NODE == 1 ]]; then
  NODE_NAME=$NODE_NAME NODE_IP=$NODE_IP "$here/pki.sh" "$PKI"
else
  "$here/pki.sh" "$PKI"
fi

# kubeconfig FILE USER CERT_BASENAME -> a self-contained kubeconfig with the
# certificates inlined, so it can be copied anywhere.
write_kubeconfig() {
  local file=$1 user=$2 base=$3 umask_before
  # Private files, but only here: the processes started later (containerd
  # above all, whose container root directories would come out 0700 and
  # unreadable to non-root containers) must keep the usual umask.
  umask_before=$(umask)
  umask 077
  cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: climatik-local
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$base.crt")
    client-key-data: $(base64 -w0 <"$PKI/$base.key")
contexts:
- name: climatik-local
  context:
    cluster: climatik-local
    user: $user
    namespace: default
current-context: climatik-local
EOF
  mv "$file.tmp" "$file"
  umask "$umask_before"
}
write_kubeconfig "$KUBECONFIG_ADMIN" admin admin
write_kubeconfig "$STATE/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
write_kubeconfig "$STATE/scheduler.kubeconfig" system:kube-scheduler scheduler
if [[ $REAL_NODE == 1 ]]; then
  write_kubeconfig "$STATE/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet-client
  write_kubeconfig "$STATE/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
fi

# --- etcd -----------------------------------------------------------------------
if ! running etcd; then
  mkdir -p "$STATE/etcd"
  chmod 700 "$STATE/etcd"
  # Plain HTTP on loopback: only the API server talks to it. No fsync: the
  # data is throwaway and the disk is shared with builds.
  start etcd "$(bin etcd)" \
    --name climatik \
    --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "climatik=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync \
    --log-level warn
fi
wait_for "etcd" 60 etcd curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

# --- kube-apiserver -------------------------------------------------------------
if [[ $REAL_NODE == 1 ]]; then
  # On the bridge address, advertised there: the "kubernetes" Service's
  # endpoint (the lease reconciler's), which pods reach through kube-proxy.
  # It calls the kubelet (logs, exec) at the node's InternalIP and checks
  # the kubelet's serving certificate.
  apiserver_node_args=(
    --endpoint-reconciler-type lease
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt"
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key"
    --kubelet-certificate-authority "$PKI/ca.crt"
    --kubelet-preferred-address-types InternalIP
  )
else
  # The "kubernetes" Service's endpoint would be 127.0.0.1, which Endpoints
  # validation rejects (and logs) forever.
  apiserver_node_args=(--endpoint-reconciler-type none)
fi
# Auditing: what the chart's ServiceAccounts (namespace climatik-project) ask
# of the API server, one JSON line per request. Tests derive the verbs each
# component needs from it and compare them with the chart's RBAC.
AUDIT_LOG="$STATE/audit.log"
if ! running kube-apiserver; then
  mkdir -p "$STATE/apiserver"
  cat >"$STATE/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts:climatik-project"]
  - level: None
POLICY
  start kube-apiserver "$(bin kube-apiserver)" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$LISTEN_HOST" \
    --advertise-address "$LISTEN_HOST" \
    --secure-port "$APISERVER_PORT" \
    --cert-dir "$STATE/apiserver" \
    --tls-cert-file "$PKI/apiserver.crt" \
    --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,NodeRestriction,PodSecurity,Priority,TaintNodesByCondition,RuntimeClass,StorageObjectInUseProtection,PersistentVolumeClaimResize,CertificateApproval,CertificateSigning,CertificateSubjectRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --allow-privileged \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" \
    "${apiserver_node_args[@]}" \
    --audit-policy-file "$STATE/audit-policy.yaml" \
    --audit-log-path "$AUDIT_LOG" \
    --audit-log-maxsize 64 \
    --audit-log-maxbackup 1 \
    --profiling=false \
    --v 1
fi
wait_for "kube-apiserver /readyz" 120 kube-apiserver api_ready

# --- controller-manager and scheduler ----------------------------------------------
if ! running kube-controller-manager; then
  mkdir -p "$STATE/controller-manager"
  # Leader election off: one instance, and a restart need not wait for the
  # old lease to expire.
  start kube-controller-manager "$(bin kube-controller-manager)" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port "$KCM_PORT" \
    --cert-dir "$STATE/controller-manager" \
    --controllers '*' \
    --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" \
    --cluster-signing-key-file "$PKI/ca.key" \
    --cluster-name climatik \
    --leader-elect=false \
    --profiling=false \
    --v 1
fi
if ! running kube-scheduler; then
  mkdir -p "$STATE/scheduler"
  start kube-scheduler "$(bin kube-scheduler)" \
    --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port "$SCHEDULER_PORT" \
    --cert-dir "$STATE/scheduler" \
    --leader-elect=false \
    --profiling=false \
    --v 1
fi
if ((NODES > 0)) && ! running nodekeeper; then
  start nodekeeper "$(bin nodekeeper)" \
    --kubeconfig "$KUBECONFIG_ADMIN" \
    --nodes "$NODES" \
    --gpus-per-node "$GPUS_PER_NODE" \
    --prefix gpu-node-
fi

# --- Prometheus ---------------------------------------------------------------------
if [[ $PROMETHEUS != 0 ]]; then
  CLIMATIK_CLUSTER_DIR=$STATE "$here/prometheus-up.sh" --locked >&2
fi

# --- the real node ------------------------------------------------------------------
if [[ $REAL_NODE == 1 ]]; then
  node_host_paths_up
  node_containerd_up
  node_kubelet_up
  node_kube_proxy_up
fi

# --- environment file -------------------------------------------------------------
cat >"$STATE/env.tmp" <<EOF
# Written by tests/cluster/up.sh; source it to use the local cluster.
export CLIMATIK_CLUSTER_DIR='$STATE'
export KUBECONFIG='$KUBECONFIG_ADMIN'
export APISERVER_URL='$APISERVER_URL'
export CLUSTER_CA_FILE='$PKI/ca.crt'
export PROMETHEUS_URL='$PROMETHEUS_URL'
export PROMETHEUS_SD_DIR='$PROM_DIR/targets'
export KUBECTL='$(bin kubectl)'
export HELM='$(bin helm)'
EOF
if [[ $REAL_NODE == 1 ]]; then
  # CONTAINERD_ADDRESS is also what ctr reads: `ctr -n k8s.io images ls`
  # after sourcing the file talks to the node's containerd.
  cat >>"$STATE/env.tmp" <<EOF
export CLIMATIK_REAL_NODE_NAME='$NODE_NAME'
export CLIMATIK_NODE_IP='$NODE_IP'
export KUBELET_ROOT_DIR='$KUBELET_ROOT_DIR'
export CONTAINERD_ADDRESS='$CONTAINERD_ADDRESS'
export NODE_IMAGE='$here/node-image.sh'
EOF
fi
mv "$STATE/env.tmp" "$STATE/env"

# --- wait until usable ------------------------------------------------------------
kubectl_() { "$(bin kubectl)" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
wait_for "controller-manager /healthz" 60 kube-controller-manager \
  curl -skf --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
wait_for "scheduler /healthz" 60 kube-scheduler \
  curl -skf --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz"
wait_for "default ServiceAccount" 90 kube-controller-manager \
  api_get /api/v1/namespaces/default/serviceaccounts/default
nodes_ready() {
  local out
  # One line per fake node: its Ready status and its taints (the
  # not-ready taint TaintNodesByCondition puts on a new node is lifted by
  # the node lifecycle controller once the node is Ready).
  out=$(kubectl_ get nodes -l climatik.io/fake-node=true \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.spec.taints}{"\n"}{end}') || return 1
  [[ $(grep -c ' True $' <<<"$out") -ge $NODES ]]
}
if ((NODES > 0)); then
  wait_for "$NODES Ready, untainted GPU nodes" 120 nodekeeper nodes_ready
fi
if [[ $REAL_NODE == 1 ]]; then
  node_wait
fi

log "up in $((SECONDS - t_start))s"
print_usage
