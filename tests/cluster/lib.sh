# Shared settings and helpers of the local control plane scripts (up.sh,
# down.sh, prometheus-*.sh). Sourced, not run.
# shellcheck shell=bash disable=SC2034  # the variables are for the sourcing scripts

_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$_lib_dir/versions.sh"

REPO_ROOT="$(cd "$_lib_dir/../.." && pwd)"
STATE="${CLIMATIK_CLUSTER_DIR:-$REPO_ROOT/target/cluster}"
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"

# Ports: all on 127.0.0.1 and away from the defaults, so a developer's own
# cluster or Prometheus does not collide. Overridable one by one
# (CLIMATIK_*_PORT) or all at once (CLIMATIK_PORT_OFFSET, added to every
# default), so a second cluster (test-updown.sh: +100, the scale bench: +200)
# can run beside the first. The ports a cluster was started with are saved
# in $STATE/ports and used when the environment does not say otherwise.
_saved_port() {
  [[ -f $STATE/ports ]] && sed -n "s/^$1=\([0-9]*\)$/\1/p" "$STATE/ports"
  return 0
}
[[ ${CLIMATIK_PORT_OFFSET:-0} =~ ^[0-9]+$ ]] || {
  echo "CLIMATIK_PORT_OFFSET must be a whole number, not '$CLIMATIK_PORT_OFFSET'" >&2
  exit 1
}
_port() { # VAR DEFAULT
  local env="CLIMATIK_$1" v
  v=${!env:-$(_saved_port "$1")}
  printf -v "$1" '%s' "${v:-$(($2 + ${CLIMATIK_PORT_OFFSET:-0}))}"
}
_port ETCD_PORT 22379
_port ETCD_PEER_PORT 22380
_port APISERVER_PORT 26443
_port KCM_PORT 26257
_port SCHEDULER_PORT 26259
_port PROMETHEUS_PORT 29090
CLUSTER_PORTS=("$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT" "$SCHEDULER_PORT" "$PROMETHEUS_PORT")
# The real node's (CLIMATIK_REAL_NODE=1): the kubelet's API on the bridge
# address, the others on 127.0.0.1.
_port KUBELET_PORT 20250
_port KUBELET_HEALTHZ_PORT 20248
_port PROXY_METRICS_PORT 20249
_port PROXY_HEALTHZ_PORT 20256
_port CONTAINERD_STREAM_PORT 20251
NODE_PORTS=("$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" "$PROXY_METRICS_PORT" "$PROXY_HEALTHZ_PORT" "$CONTAINERD_STREAM_PORT")

# The real node (README.md, "Real node"): opt-in with CLIMATIK_REAL_NODE=1,
# remembered with the node's name and bridge in $STATE/real-node, like the
# ports, so later calls need not repeat it. Its network is fixed: a bridge
# holding the node's address, pods on the bridge, Services in a range of
# their own, all in 198.18.0.0/15 (reserved for benchmarks, routed nowhere).
_saved_node() {
  [[ -f $STATE/real-node ]] && sed -n "s/^$1=\([-.a-z0-9]*\)$/\1/p" "$STATE/real-node"
  return 0
}
REAL_NODE=${CLIMATIK_REAL_NODE:-$(_saved_node REAL_NODE)}
[[ $REAL_NODE == 1 ]] || REAL_NODE=0
NODE_NAME=${CLIMATIK_REAL_NODE_NAME:-$(_saved_node NODE_NAME)}
NODE_NAME=${NODE_NAME:-climatik-node}
BRIDGE=${CLIMATIK_BRIDGE:-$(_saved_node BRIDGE)}
BRIDGE=${BRIDGE:-climatik0}
[[ $NODE_NAME =~ ^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$ ]] || {
  echo "CLIMATIK_REAL_NODE_NAME must be a DNS name, not '$NODE_NAME'" >&2
  exit 1
}
[[ $BRIDGE =~ ^[a-z][-a-z0-9]{0,14}$ ]] || {
  echo "CLIMATIK_BRIDGE must be an interface name (at most 15 characters), not '$BRIDGE'" >&2
  exit 1
}
NODE_IP=198.18.0.1
POD_CIDR=198.18.0.0/24
NODE_STATE="$STATE/node"
KUBELET_ROOT_DIR="$NODE_STATE/kubelet"
CONTAINERD_ADDRESS="$NODE_STATE/containerd/containerd.sock"
if [[ $REAL_NODE == 1 ]]; then
  # Pods reach the API server (also through the "kubernetes" Service) and
  # Prometheus at the bridge address, so both listen there.
  LISTEN_HOST=$NODE_IP
  SERVICE_CIDR=198.19.0.0/16
else
  LISTEN_HOST=127.0.0.1
  # Allocated, never routed.
  SERVICE_CIDR=10.96.0.0/16
fi

PKI="$STATE/pki"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
KUBECONFIG_ADMIN="$STATE/kubeconfig"
PROM_DIR="$STATE/prometheus"
APISERVER_URL="https://$LISTEN_HOST:$APISERVER_PORT"
PROMETHEUS_URL="http://$LISTEN_HOST:$PROMETHEUS_PORT"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

save_ports() {
  cat >"$STATE/ports" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
PROMETHEUS_PORT=$PROMETHEUS_PORT
KUBELET_PORT=$KUBELET_PORT
KUBELET_HEALTHZ_PORT=$KUBELET_HEALTHZ_PORT
PROXY_METRICS_PORT=$PROXY_METRICS_PORT
PROXY_HEALTHZ_PORT=$PROXY_HEALTHZ_PORT
CONTAINERD_STREAM_PORT=$CONTAINERD_STREAM_PORT
EOF
}

# pause_version -> the version of our pause binary (the real node's sandbox
# image): a hash of its source, as build.sh computes it.
pause_version() {
  sha256sum <"$_lib_dir/cmd/pause/main.go" | cut -c1-12
}

# endpoints_sd_version -> the version of endpoints-sd (Prometheus' Kubernetes
# service discovery for a real node): a hash of its source and the module's
# pins, as build.sh computes it.
endpoints_sd_version() {
  cat "$_lib_dir"/cmd/endpoints-sd/*.go "$_lib_dir/go.mod" "$_lib_dir/go.sum" | sha256sum | cut -c1-12
}

# pid_of NAME -> the pid of our running NAME, or nothing. A pid file whose
# process is gone, or was reused by another program, counts as not running.
pid_of() {
  local f="$PIDS/$1.pid" pid exe
  [[ -f $f ]] || return 0
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 0
  # A binary replaced on disk while running reads "<path> (deleted)".
  exe=${exe% (deleted)}
  [[ $exe == *"/$1" ]] || return 0
  # A zombie has exited: it is not running.
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 0
  echo "$pid"
}

running() { [[ -n $(pid_of "$1") ]]; }

# start NAME BINARY ARGS... -> starts BINARY detached, logging to
# $LOGS/NAME.log. setsid takes it out of the caller's process group (a test
# harness's Ctrl-C must not take the cluster down) and fd 9, the flock, is
# closed so a daemon never holds the lock.
start() {
  local name=$1
  shift
  mkdir -p "$LOGS" "$PIDS"
  log "starting $name"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  local pid=$! i
  echo "$pid" >"$PIDS/$name.pid"
  # Until the child has exec'd, /proc/PID/exe names bash or setsid and
  # `running` would take a slow start (a busy machine) for an exit.
  for ((i = 0; i < 200; i++)); do
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == *"/$name"* ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
}

# stop NAME [TIMEOUT] -> SIGTERM, then SIGKILL after TIMEOUT seconds.
stop() {
  local name=$1 timeout=${2:-15} pid i
  pid=$(pid_of "$name")
  if [[ -n $pid ]]; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
      running "$name" || break
      sleep 0.1
    done
    if running "$name"; then
      log "$name did not stop in ${timeout}s; killing"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        running "$name" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$PIDS/$name.pid"
}

# port_free PORT [HOST] -> true when nothing listens on HOST:PORT (default
# 127.0.0.1).
port_free() {
  # shellcheck disable=SC2016  # expanded by the inner bash
  ! timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "${2:-127.0.0.1}" "$1" 2>/dev/null
}

# wait_for DESCRIPTION TIMEOUT LOGNAME COMMAND... -> retries COMMAND until it
# succeeds; on timeout prints the tail of LOGNAME's log and fails.
wait_for() {
  local what=$1 timeout=$2 logname=$3 t0=$SECONDS
  shift 3
  log "waiting for $what"
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - t0 >= timeout)); then
      log "timed out after ${timeout}s waiting for $what"
      if [[ -n $logname && -f $LOGS/$logname.log ]]; then
        log "last lines of $LOGS/$logname.log:"
        tail -n 30 "$LOGS/$logname.log" >&2
      fi
      return 1
    fi
    if [[ -n $logname ]] && ! running "$logname"; then
      log "$logname exited while waiting for $what; last lines of its log:"
      tail -n 30 "$LOGS/$logname.log" >&2
      return 1
    fi
    sleep 0.5
  done
  log "$what: ok ($((SECONDS - t0))s)"
}

# Checks with the admin client certificate, so they need no kubectl.
api_get() {
  curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$APISERVER_URL$1"
}
api_ready() { [[ $(api_get /readyz) == ok ]]; }
prometheus_ready() { curl -sf --max-time 2 "$PROMETHEUS_URL/-/ready" >/dev/null; }

# eventually TIMEOUT DESCRIPTION COMMAND... -> for the test scripts: retries
# COMMAND once a second; on timeout calls the caller's `fail` (else `die`).
eventually() {
  local timeout=$1 what=$2 t0=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - t0 >= timeout)); then
      if declare -F fail >/dev/null; then fail "$what: not within ${timeout}s"; fi
      die "$what: not within ${timeout}s"
    fi
    sleep 1
  done
  log "ok: $what ($((SECONDS - t0))s)"
}
