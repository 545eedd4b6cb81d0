#!/usr/bin/env bash
# A kind cluster on a GPU machine, with the NVIDIA GPU operator (device
# plugin, container toolkit, DCGM exporter, RuntimeClass "nvidia"),
# cert-manager, optionally Prometheus, and then Climatik itself.
#
#   ./scripts/start_kind.sh                 # everything
#   CONFIGURE_HOST=1 ./scripts/start_kind.sh   # also configure Docker's NVIDIA runtime (sudo)
#   DEPLOY=0 ./scripts/start_kind.sh        # cluster only; ./scripts/deploy.sh later
#
# Needs on the host: an NVIDIA driver (nvidia-smi works), Docker, the NVIDIA
# Container Toolkit (nvidia-ctk), kind, kubectl and helm. The GPUs reach the
# kind node the way the toolkit's "volume mounts" mode allows: Docker's
# default runtime is nvidia, accept-nvidia-visible-devices-as-volume-mounts
# is true, and the node mounts /dev/null at
# /var/run/nvidia-container-devices/all. The host driver is used (the GPU
# operator's driver container is off).
#
# Environment (defaults in brackets):
#   CLUSTER_NAME [climatik]        kind cluster name; context kind-$CLUSTER_NAME
#   KIND_NODE_IMAGE []             e.g. kindest/node:v1.34.0; empty: kind's default
#   GPU_OPERATOR_VERSION []        NVIDIA gpu-operator chart version; empty: latest
#   CERT_MANAGER_VERSION [v1.19.1] jetstack/cert-manager chart version
#   WITH_PROMETHEUS [1]            install kube-prometheus-stack and scrape DCGM
#   CONFIGURE_HOST [0]             1: run the (sudo) Docker/toolkit setup below
#   IMAGE []                       local image to `kind load` and deploy, e.g. climatik:dev
#   DEPLOY [1]                     run scripts/deploy.sh at the end
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_NAME=${CLUSTER_NAME:-climatik}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
GPU_OPERATOR_VERSION=${GPU_OPERATOR_VERSION:-}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.19.1}
WITH_PROMETHEUS=${WITH_PROMETHEUS:-1}
CONFIGURE_HOST=${CONFIGURE_HOST:-0}
IMAGE=${IMAGE:-}
DEPLOY=${DEPLOY:-1}
CONTEXT="kind-$CLUSTER_NAME"
NVIDIA_RUNTIME_CONFIG=/etc/nvidia-container-runtime/config.toml

log() { printf '[start_kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
kc() { kubectl --context "$CONTEXT" "$@"; }
hc() { helm --kube-context "$CONTEXT" "$@"; }

# --- 1. host prerequisites --------------------------------------------------------
for tool in docker kind kubectl helm nvidia-smi nvidia-ctk; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH"
done
nvidia-smi -L >/dev/null || die "nvidia-smi cannot talk to the driver"
log "GPUs: $(nvidia-smi -L | wc -l)"

if [[ $CONFIGURE_HOST == 1 ]]; then
  log "configuring Docker's default runtime and the toolkit's volume-mount mode (sudo)"
  sudo nvidia-ctk runtime configure --runtime=docker --set-as-default
  sudo nvidia-ctk config --in-place --set accept-nvidia-visible-devices-as-volume-mounts=true
  sudo systemctl restart docker
fi
[[ $(docker info --format '{{.DefaultRuntime}}') == nvidia ]] ||
  die "Docker's default runtime is not nvidia; rerun with CONFIGURE_HOST=1 or: sudo nvidia-ctk runtime configure --runtime=docker --set-as-default && sudo systemctl restart docker"
grep -Eq '^[[:space:]]*accept-nvidia-visible-devices-as-volume-mounts[[:space:]]*=[[:space:]]*true' "$NVIDIA_RUNTIME_CONFIG" ||
  die "$NVIDIA_RUNTIME_CONFIG: accept-nvidia-visible-devices-as-volume-mounts is not true; rerun with CONFIGURE_HOST=1"

# --- 2. kind cluster --------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  log "kind cluster $CLUSTER_NAME exists; reusing it"
else
  log "creating kind cluster $CLUSTER_NAME"
  kind_args=(create cluster --name "$CLUSTER_NAME" --wait 120s --config -)
  [[ -z $KIND_NODE_IMAGE ]] || kind_args+=(--image "$KIND_NODE_IMAGE")
  kind "${kind_args[@]}" <<'EOF'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraMounts:
      # Asks the NVIDIA runtime to hand every GPU to this node container.
      - hostPath: /dev/null
        containerPath: /var/run/nvidia-container-devices/all
EOF
fi
node="$CLUSTER_NAME-control-plane"
# The toolkit the operator installs calls ldconfig.real (Debian/Ubuntu name).
docker exec "$node" sh -c '[ -e /sbin/ldconfig.real ] || ln -s /sbin/ldconfig /sbin/ldconfig.real'

helm repo add nvidia https://helm.ngc.nvidia.com/nvidia --force-update >/dev/null
helm repo add jetstack https://charts.jetstack.io --force-update >/dev/null
[[ $WITH_PROMETHEUS != 1 ]] ||
  helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
helm repo update >/dev/null

# --- 3. Prometheus (first, so the operator's DCGM ServiceMonitor has its CRD) -------
prometheus_url=""
if [[ $WITH_PROMETHEUS == 1 ]]; then
  log "installing kube-prometheus-stack (Prometheus only)"
  hc upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
    --namespace monitoring --create-namespace --wait --timeout 10m \
    --set grafana.enabled=false --set alertmanager.enabled=false \
    --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
    --set prometheus.prometheusSpec.scrapeInterval=5s
  prometheus_url=http://kube-prometheus-stack-prometheus.monitoring.svc:9090
fi

# --- 4. NVIDIA GPU operator (host driver; toolkit, device plugin, DCGM exporter) -----
log "installing the NVIDIA GPU operator"
op_args=(upgrade --install gpu-operator nvidia/gpu-operator
  --namespace gpu-operator --create-namespace --wait --timeout 15m
  --set driver.enabled=false)
[[ -z $GPU_OPERATOR_VERSION ]] || op_args+=(--version "$GPU_OPERATOR_VERSION")
if [[ $WITH_PROMETHEUS == 1 ]]; then
  # honorLabels keeps DCGM's pod/namespace labels as they are.
  op_args+=(--set dcgmExporter.serviceMonitor.enabled=true --set dcgmExporter.serviceMonitor.honorLabels=true)
fi
hc "${op_args[@]}"
log "waiting for the node to advertise nvidia.com/gpu"
for _ in $(seq 120); do
  gpus=$(kc get node "$node" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')
  [[ -z $gpus || $gpus == 0 ]] || break
  sleep 5
done
[[ -n $gpus && $gpus != 0 ]] || die "no nvidia.com/gpu on $node after 10 minutes: kubectl --context $CONTEXT -n gpu-operator get pods"
log "$node has $gpus GPU(s)"

# --- 5. cert-manager ----------------------------------------------------------------
log "installing cert-manager $CERT_MANAGER_VERSION"
hc upgrade --install cert-manager jetstack/cert-manager \
  --namespace cert-manager --create-namespace --version "$CERT_MANAGER_VERSION" \
  --set crds.enabled=true --wait --timeout 5m

# --- 6. Climatik --------------------------------------------------------------------
if [[ $DEPLOY == 1 ]]; then
  deploy_args=()
  if [[ -n $IMAGE ]]; then
    log "loading image $IMAGE into the cluster"
    kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"
    deploy_args+=(--set "image.repository=${IMAGE%:*}" --set "image.tag=${IMAGE##*:}" --set image.pullPolicy=Never)
  fi
  if [[ -n $prometheus_url ]]; then
    deploy_args+=(--set "controller.prometheus.url=$prometheus_url" --set serviceMonitor.enabled=true)
  fi
  kubectl config use-context "$CONTEXT" >/dev/null
  TLS_MODE=certManager "$repo/scripts/deploy.sh" "${deploy_args[@]}"
fi

log "ready: kubectl --context $CONTEXT get nodes; try: kubectl --context $CONTEXT apply -f manifests/vllm-deployment.yaml"
