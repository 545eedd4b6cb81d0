# The local cluster's real node (up.sh and down.sh with CLIMATIK_REAL_NODE=1;
# README.md, "Real node"): a Linux bridge holding the node's address, our own
# containerd (runc, the Debian CNI plugins), a kubelet and kube-proxy, all
# with their state under $STATE/node. Sourced by up.sh and down.sh after
# lib.sh, not run; needs root.
# shellcheck shell=bash

# containerd's shims, runc and the CNI plugins are found on PATH.
PATH="$PATH:/usr/sbin:/sbin"

CNI_BIN_DIR=/usr/lib/cni
CNI_NETWORK=climatik
PAUSE_IMAGE="localhost/climatik/pause:$(pause_version)"
NODE_LABELS="nvidia.com/gpu.present=true,climatik.io/real-node=true"
# A fixed address, so the bridge keeps it when pods' veths join (a bridge
# otherwise takes the lowest of its ports').
BRIDGE_MAC=02:c6:12:00:00:01
# What the kubelet changes (its container manager, at start) and down.sh
# puts back.
NODE_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
# Paths outside $STATE the node uses; down.sh removes the ones that did not
# exist before up.sh (recorded in $NODE_STATE/host-dirs) when they are empty.
# The kubelet serves device plugins from a fixed directory,
# /var/lib/kubelet/device-plugins, whatever its --root-dir: it is made a
# link to $KUBELET_ROOT_DIR/device-plugins.
DEVICE_PLUGIN_LINK=/var/lib/kubelet/device-plugins
# /run/containerd/s: the shims' sockets (containerd 1.6 puts them there
# whatever its state directory).
HOST_DIRS=(/var/lib/kubelet /var/log/containers /var/lib/cni /var/lib/cni/results
  /run/containerd /run/containerd/s)

# The bridge's alias names the cluster it belongs to: one real-node cluster
# at a time, and down.sh of another state directory leaves it alone.
BRIDGE_OWNER="climatik-cluster:$STATE"

# The CRI's containerd namespace; runc puts the containers' cgroups under
# /sys/fs/cgroup/<controller>/k8s.io/<container id>.
CONTAINERD_NAMESPACE=k8s.io

ctr_() { ctr --address "$CONTAINERD_ADDRESS" --namespace "$CONTAINERD_NAMESPACE" "$@"; }
kubectl_node() { "$(bin kubectl)" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# write_file PATH -> stdin into PATH, through a temporary file.
write_file() {
  cat >"$1.tmp"
  mv "$1.tmp" "$1"
}

node_preflight() {
  [[ $(id -u) == 0 ]] || die "the real node (CLIMATIK_REAL_NODE=1) needs root"
  local c
  for c in ip iptables containerd containerd-shim-runc-v2 runc ctr buildah; do
    command -v "$c" >/dev/null 2>&1 ||
      die "$c not found: the real node needs Debian's containerd, runc, containernetworking-plugins, iptables and buildah (scripts/setup-apt.sh)"
  done
  for c in bridge host-local loopback; do
    [[ -x $CNI_BIN_DIR/$c ]] || die "$CNI_BIN_DIR/$c not found (Debian's containernetworking-plugins)"
  done
  [[ $STATE != *[[:space:]]* ]] || die "the state directory must not contain spaces: $STATE"
  # Another cluster's real node would hold the same addresses.
  local owner
  owner=$(_bridge_owner)
  if [[ -n $owner && $owner != "$BRIDGE_OWNER" && -d ${owner#climatik-cluster:}/node ]]; then
    die "bridge $BRIDGE belongs to the cluster in ${owner#climatik-cluster:} (one real node at a time): stop it with CLIMATIK_CLUSTER_DIR=${owner#climatik-cluster:} tests/cluster/down.sh"
  fi
  local holder
  holder=$(ip -o -4 addr show to "$NODE_IP/32" 2>/dev/null | awk '{print $2}')
  if [[ -n $holder && $holder != "$BRIDGE" ]]; then
    die "$NODE_IP is on $holder: another real-node cluster is up (only one at a time); stop it with its down.sh"
  fi
  local other
  other=$(readlink "$DEVICE_PLUGIN_LINK" 2>/dev/null || true)
  if [[ -n $other && $other != "$KUBELET_ROOT_DIR/device-plugins" && -e $other ]]; then
    die "$DEVICE_PLUGIN_LINK points to $other: another real-node cluster is up"
  fi
  if [[ -e $DEVICE_PLUGIN_LINK && ! -L $DEVICE_PLUGIN_LINK ]]; then
    die "$DEVICE_PLUGIN_LINK exists: another kubelet uses this machine"
  fi
}

# _bridge_owner -> the alias of our bridge (empty when there is no bridge).
_bridge_owner() {
  cat "/sys/class/net/$BRIDGE/ifalias" 2>/dev/null || true
}

# node_owns_host -> true unless the bridge is another cluster's: then the
# iptables rules, kernel settings and host paths are that cluster's too.
node_owns_host() {
  local owner
  owner=$(_bridge_owner)
  [[ -z $owner || $owner == "$BRIDGE_OWNER" ]] || ! ip link show "$BRIDGE" >/dev/null 2>&1
}

# node_save_settings -> $STATE/real-node, read back by lib.sh.
node_save_settings() {
  write_file "$STATE/real-node" <<EOF
REAL_NODE=$REAL_NODE
NODE_NAME=$NODE_NAME
BRIDGE=$BRIDGE
EOF
}

# --- network ----------------------------------------------------------------
# The bridge: the node's address (the gateway of the pods' /24), forwarding
# only for packets that come in on it (a pod reaching another pod through a
# Service goes out the way it came, after kube-proxy's DNAT), and a route
# that keeps Service addresses on it (never out of the machine's uplink).
node_bridge_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($NODE_IP/24)"
    ip link add "$BRIDGE" address "$BRIDGE_MAC" type bridge
  fi
  ip link set dev "$BRIDGE" alias "$BRIDGE_OWNER"
  echo 1 >"/proc/sys/net/ipv6/conf/$BRIDGE/disable_ipv6"
  echo 1 >"/proc/sys/net/ipv4/conf/$BRIDGE/forwarding"
  echo 0 >"/proc/sys/net/ipv4/conf/$BRIDGE/send_redirects"
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
}

# --- host paths and kernel settings --------------------------------------------
node_host_paths_up() {
  local d m cgroups=()
  mkdir -p "$NODE_STATE" "$KUBELET_ROOT_DIR/device-plugins"
  touch "$NODE_STATE/host-dirs"
  # The parents of the containers' cgroups, too (cgroup v1: one per
  # hierarchy).
  for m in /sys/fs/cgroup/*/; do
    cgroups+=("${m%/}/$CONTAINERD_NAMESPACE")
  done
  for d in "${HOST_DIRS[@]}" "${cgroups[@]}"; do
    if [[ ! -e $d ]] && ! grep -qxF "$d" "$NODE_STATE/host-dirs"; then
      echo "$d" >>"$NODE_STATE/host-dirs"
    fi
  done
  mkdir -p "$(dirname "$DEVICE_PLUGIN_LINK")"
  ln -sfn "$KUBELET_ROOT_DIR/device-plugins" "$DEVICE_PLUGIN_LINK"
  # The values from before the first kubelet start, kept until down.sh.
  if [[ ! -f $NODE_STATE/sysctl.saved ]]; then
    local k
    for k in "${NODE_SYSCTLS[@]}"; do
      echo "$k=$(<"/proc/sys/$k")"
    done | write_file "$NODE_STATE/sysctl.saved"
  fi
}

# --- containerd -----------------------------------------------------------------
node_containerd_up() {
  local c=$NODE_STATE/containerd
  mkdir -p "$c" "$NODE_STATE/cni/net.d" "$NODE_STATE/cni/ipam"
  # Everything under $c: no /var/lib/containerd, /run/containerd or
  # /opt/containerd. restrict_oom_score_adj: without CAP_SYS_RESOURCE runc
  # cannot lower a container's oom_score_adj below its own, and every
  # sandbox would fail ("can't get final child's PID from pipe: EOF").
  write_file "$c/config.toml" <<EOF
# Written by tests/cluster/up.sh (real node).
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_ADDRESS"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$c/opt"
  [plugins."io.containerd.runtime.v1.linux"]
    runtime_root = "$c/runc-v1"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    disable_apparmor = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "$CONTAINERD_STREAM_PORT"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          Root = "$c/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$CNI_BIN_DIR"
      conf_dir = "$NODE_STATE/cni/net.d"
      max_conf_num = 1
EOF
  # The pods' network: veths on our bridge, addresses from the /24 (host-local
  # IPAM, its leases under $STATE), a route to the node and the Services
  # only (no default route, so nothing leaves the machine). No ipMasq and no
  # isGateway: the bridge plugin would add iptables rules and turn on
  # forwarding for the whole machine; node_bridge_up did what is needed.
  # hairpinMode: a pod reaching itself through a Service (DNAT on the
  # bridge, br_netfilter) gets the packet back out of the port it came in.
  write_file "$NODE_STATE/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "198.18.0.2", "rangeEnd": "198.18.0.254", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "198.18.0.0/15", "gw": "$NODE_IP"}]
      }
    }
  ]
}
EOF
  if ! running containerd; then
    # containerd makes the containers' root directories with its umask: a
    # caller's 077 would leave them unreadable to non-root containers.
    (umask 022 && start containerd "$(command -v containerd)" --config "$c/config.toml" --log-level warn)
  fi
  wait_for "containerd" 60 containerd ctr_ version
  if ! grep -qxF "$PAUSE_IMAGE" <<<"$(ctr_ images ls -q)"; then
    node_pause_image
  fi
}

# node_pause_image -> builds the sandbox image (our static pause binary, alone,
# from scratch) with buildah in a scratch store and imports it.
node_pause_image() {
  local tmp=$NODE_STATE/tmp/buildah archive c
  archive="$NODE_STATE/pause-$(pause_version).tar"
  if [[ ! -f $archive ]]; then
    log "building the pause image $PAUSE_IMAGE"
    rm -rf "$tmp"
    local b=(buildah --root "$tmp/root" --runroot "$tmp/run" --storage-driver vfs)
    c=$("${b[@]}" from scratch)
    "${b[@]}" copy --quiet "$c" "$(bin_path pause "$(pause_version)")" /pause >/dev/null
    "${b[@]}" config --entrypoint '["/pause"]' "$c"
    rm -f "$archive.tmp"
    "${b[@]}" commit --quiet --rm "$c" "docker-archive:$archive.tmp:$PAUSE_IMAGE" >/dev/null
    mv "$archive.tmp" "$archive"
    rm -rf "$tmp"
  fi
  log "importing $PAUSE_IMAGE into the node's containerd"
  ctr_ images import "$archive" >/dev/null
}

# --- kubelet and kube-proxy ------------------------------------------------------
node_kubelet_up() {
  printf '# No cluster DNS: pods get no nameserver.\n' | write_file "$NODE_STATE/resolv.conf"
  # cgroupfs, no QoS cgroups and no node-allocatable enforcement: cgroup v1
  # without systemd, inside a VM that does not let us manage the root
  # cgroup. makeIPTablesUtilChains false: kube-proxy alone adds iptables
  # rules. Image GC never runs (100%): images are imported, not pulled.
  # Eviction only when really full: the disk is shared with builds.
  write_file "$NODE_STATE/kubelet.yaml" <<EOF
# Written by tests/cluster/up.sh (real node).
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
    cacheTTL: 10s
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 10s
    cacheUnauthorizedTTL: 5s
containerRuntimeEndpoint: unix://$CONTAINERD_ADDRESS
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
makeIPTablesUtilChains: false
oomScoreAdj: 0
resolvConf: $NODE_STATE/resolv.conf
podLogsDir: $NODE_STATE/pod-logs
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
evictionPressureTransitionPeriod: 10s
serializeImagePulls: false
maxPods: 110
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
nodeStatusReportFrequency: 1m
shutdownGracePeriod: 0s
EOF
  if ! running kubelet; then
    start kubelet "$(bin kubelet)" \
      --config "$NODE_STATE/kubelet.yaml" \
      --kubeconfig "$STATE/kubelet.kubeconfig" \
      --root-dir "$KUBELET_ROOT_DIR" \
      --cert-dir "$NODE_STATE/kubelet-pki" \
      --hostname-override "$NODE_NAME" \
      --node-ip "$NODE_IP" \
      --node-labels "$NODE_LABELS" \
      --v 1
  fi
}

node_kube_proxy_up() {
  # masqueradeAll: a pod reaching a Service whose endpoint is on the same
  # bridge gets the node's address as source, so the reply comes back
  # through the node (no hairpin, no bridge-nf settings needed). No
  # localhost NodePorts (they need route_localnet) and no conntrack tuning:
  # kube-proxy changes no sysctl.
  write_file "$NODE_STATE/kube-proxy.yaml" <<EOF
# Written by tests/cluster/up.sh (real node).
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
mode: iptables
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
nodePortAddresses: ["$NODE_IP/32"]
oomScoreAdj: 0
iptables:
  masqueradeAll: true
  localhostNodePorts: false
  syncPeriod: 30s
  minSyncPeriod: 1s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
EOF
  if ! running kube-proxy; then
    start kube-proxy "$(bin kube-proxy)" --config "$NODE_STATE/kube-proxy.yaml" --v 1
  fi
}

# --- waiting ------------------------------------------------------------------
node_ready() {
  local out
  out=$(kubectl_node get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.spec.taints}') || return 1
  # Ready and untainted (the node lifecycle controller lifts the not-ready
  # taint a few seconds after Ready).
  [[ $out == "True " ]]
}

check_pod_running() {
  [[ $(kubectl_node -n default get pod climatik-node-check -o jsonpath='{.status.phase}') == Running ]]
}

# node_wait -> the node is Ready, kube-proxy has synced, and a pod (the pause
# image alone) is scheduled there, runs, and its logs can be read through
# the kubelet; the pod is deleted again.
node_wait() {
  wait_for "kubelet /healthz" 60 kubelet \
    curl -sf --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
  wait_for "node $NODE_NAME Ready" 120 kubelet node_ready
  wait_for "kube-proxy /healthz" 60 kube-proxy \
    curl -sf --max-time 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
  kubectl_node -n default delete pod climatik-node-check --ignore-not-found --wait=true >/dev/null
  kubectl_node apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: climatik-node-check
  namespace: default
spec:
  nodeSelector:
    kubernetes.io/hostname: $NODE_NAME
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
    - name: pause
      image: $PAUSE_IMAGE
      imagePullPolicy: Never
EOF
  wait_for "a pod running on $NODE_NAME" 120 kubelet check_pod_running
  wait_for "kubectl logs (API server -> kubelet)" 30 kubelet \
    kubectl_node -n default logs climatik-node-check
  kubectl_node -n default delete pod climatik-node-check --wait=true --timeout=60s >/dev/null
}

# --- teardown -------------------------------------------------------------------
# Everything of the node that is not a process of the control plane, in
# order: the kubelet (so nothing restarts what follows), the pods'
# containers, containerd, kube-proxy and its iptables chains. Idempotent.
node_stop() {
  [[ $(id -u) == 0 ]] || die "stopping the real node of $STATE needs root"
  stop kubelet 20
  if running containerd; then
    local ids id
    # For node_cleanup: the CNI plugins' result cache (/var/lib/cni) names
    # the sandboxes.
    ctr_ containers ls -q 2>/dev/null >>"$NODE_STATE/container-ids" || true
    mapfile -t ids < <(ctr_ tasks ls -q 2>/dev/null)
    if ((${#ids[@]})); then
      log "killing the node's ${#ids[@]} containers"
      for id in "${ids[@]}"; do
        # Kills the task (SIGKILL) and deletes it: the shim unmounts its
        # rootfs, removes its cgroup and exits.
        ctr_ tasks delete --force "$id" >/dev/null 2>&1 || true
      done
    fi
  fi
  stop containerd 20
  node_kill_shims
  stop kube-proxy 20
  if ! node_owns_host; then
    log "bridge $BRIDGE belongs to the cluster in $(_bridge_owner | sed 's/^climatik-cluster://'): leaving iptables alone"
    return 0
  fi
  if [[ -x $(bin kube-proxy) ]] &&
    grep -q '^:KUBE-' <<<"$({ iptables-save; ip6tables-save; } 2>/dev/null)"; then
    log "removing kube-proxy's iptables rules"
    "$(bin kube-proxy)" --cleanup --v 0 >>"$LOGS/kube-proxy-cleanup.log" 2>&1 || true
  fi
  node_remove_kube_chains
}

# Shims of our containerd left running (containerd was killed with tasks
# running): they and the containers under them are killed, their sockets
# removed, and the containers' cgroups noted for node_cleanup (runc did not
# remove them).
node_kill_shims() {
  local p cmd pids=() pid victims=() i sockets=() alive
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    if [[ $cmd == *containerd-shim* && $cmd == *"-address $CONTAINERD_ADDRESS "* ]]; then
      pids+=("${p#/proc/}")
      # containerd 1.6 names a shim's socket by a hash of its address,
      # namespace and id.
      if [[ $cmd =~ \ -id\ ([0-9a-f]+)\  ]]; then
        sockets+=("/run/containerd/s/$(printf '%s' "$CONTAINERD_ADDRESS/$CONTAINERD_NAMESPACE/${BASH_REMATCH[1]}" |
          sha256sum | cut -c1-64)")
      fi
    fi
  done
  for pid in "${pids[@]}"; do
    log "killing containerd shim $pid and its containers"
    mapfile -t -O "${#victims[@]}" victims < <(echo "$pid"; _descendants "$pid")
  done
  ((${#victims[@]})) || return 0
  for pid in "${victims[@]}"; do
    sed -n "s#^[0-9]*:[^:]*:/$CONTAINERD_NAMESPACE/\([0-9a-f]*\)\$#\1#p" "/proc/$pid/cgroup" 2>/dev/null
  done | sort -u >>"$NODE_STATE/container-ids"
  kill -KILL "${victims[@]}" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive=0
    for pid in "${victims[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    sleep 0.1
  done
  rm -f "${sockets[@]}"
}

_descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$child"
    _descendants "$child"
  done
}

# KUBE-* chains that kube-proxy --cleanup left (in iptables and ip6tables):
# flushed, unreferenced and deleted. Only kube-proxy adds such chains here.
node_remove_kube_chains() {
  local cmd table chain
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null 2>&1 || continue
    for table in filter nat mangle raw; do
      grep -q '^:KUBE-' <<<"$("$cmd-save" -t "$table" 2>/dev/null)" || continue
      log "removing leftover KUBE-* chains from $cmd $table"
      # Rules that jump to a KUBE-* chain, from any chain. iptables-save
      # quotes as the shell does (comments), hence eval.
      "$cmd-save" -t "$table" | sed -n 's/^-A \(.*-j KUBE-.*\)$/\1/p' |
        while read -r rule; do
          eval "\"\$cmd\" -t \"\$table\" -D $rule" 2>/dev/null || true
        done
      for chain in $("$cmd-save" -t "$table" | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
        "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd-save" -t "$table" | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
        "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# After the control plane has stopped (it listens on the bridge address):
# mounts under $STATE, the bridge, the kernel settings, the paths outside
# $STATE.
node_cleanup() {
  [[ $(id -u) == 0 ]] || die "stopping the real node of $STATE needs root"
  node_unmount_all
  local f
  for f in /var/log/containers/*.log; do
    [[ -L $f && $(readlink "$f") == "$NODE_STATE/"* ]] && rm -f "$f"
  done
  # The pods are gone, and so are their addresses.
  rm -rf "$NODE_STATE/cni/ipam"
  if ! node_owns_host; then
    log "bridge $BRIDGE belongs to the cluster in $(_bridge_owner | sed 's/^climatik-cluster://'): leaving it alone"
    rm -f "$NODE_STATE/sysctl.saved" "$NODE_STATE/host-dirs"
    return 0
  fi
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "removing bridge $BRIDGE"
    ip link del "$BRIDGE"
  fi
  if [[ -f $NODE_STATE/sysctl.saved ]]; then
    local k v
    while IFS='=' read -r k v; do
      if [[ -n $k && -e /proc/sys/$k ]]; then
        echo "$v" >"/proc/sys/$k" 2>/dev/null || log "warning: could not restore $k=$v"
      fi
    done <"$NODE_STATE/sysctl.saved"
    rm -f "$NODE_STATE/sysctl.saved"
  fi
  if [[ $(readlink "$DEVICE_PLUGIN_LINK" 2>/dev/null) == "$KUBELET_ROOT_DIR/device-plugins" ]]; then
    rm -f "$DEVICE_PLUGIN_LINK"
  fi
  if [[ -f $NODE_STATE/container-ids ]]; then
    local id d
    while read -r id; do
      [[ $id =~ ^[0-9a-f]+$ ]] || continue
      rm -f "/var/lib/cni/results/"*"-$id-"*
      # Left by killed shims only; empty by now.
      for d in /sys/fs/cgroup/*/"$CONTAINERD_NAMESPACE/$id"; do
        [[ ! -d $d ]] || rmdir "$d" 2>/dev/null || log "warning: could not remove cgroup $d"
      done
    done <"$NODE_STATE/container-ids"
    rm -f "$NODE_STATE/container-ids"
  fi
  if [[ -f $NODE_STATE/host-dirs ]]; then
    # Deepest first.
    sort -r "$NODE_STATE/host-dirs" | while read -r d; do
      rmdir "$d" 2>/dev/null || true
    done
    rm -f "$NODE_STATE/host-dirs"
  fi
}

# node_unmount_all -> unmounts everything mounted under $STATE (the kubelet's
# root, pod volumes, containers' rootfs and shm, network namespaces),
# deepest first.
node_unmount_all() {
  local mounts m i
  for ((i = 0; i < 5; i++)); do
    mapfile -t mounts < <(awk -v p="$STATE/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    ((${#mounts[@]})) || return 0
    log "unmounting ${#mounts[@]} mounts under $STATE"
    for m in "${mounts[@]}"; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  done
  log "warning: still mounted under $STATE: $(awk -v p="$STATE/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | tr '\n' ' ')"
}
