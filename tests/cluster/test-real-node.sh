#!/usr/bin/env bash
# Brings up a separate cluster with a real node (own state directory, ports
# +700, no fake nodes), runs real pods on it and checks the node's network
# from every side, then takes it down twice (a restart in between) and
# checks each time that nothing of it is left on the machine. Needs root.
#
#   tests/cluster/test-real-node.sh
#   KEEP=1 tests/cluster/test-real-node.sh    # leave the cluster up at the end
#
# Checked with a pod serving HTTP (netprobe, cmd/netprobe, a static binary
# alone in an image built with buildah and imported with node-image.sh) and
# a Service in front of it labelled for Prometheus:
#   - the host reaches the pod by its IP and through the Service's ClusterIP;
#   - a second pod reaches the API server through the "kubernetes" Service
#     (service-account token, the cluster CA) and the first pod through its
#     Service (pod -> Service -> pod on the same bridge); the first pod
#     reaches itself through its Service (hairpin);
#   - kubectl logs and kubectl exec work (API server -> kubelet);
#   - Prometheus (on the bridge address) discovers and scrapes the pod;
#   - after down.sh: no process of the cluster, no bridge, no KUBE-* chain,
#     no mount under the state directory, nothing listening on its ports,
#     kernel settings and host paths as before;
#   - up.sh again restarts the pods (state kept); containerd is killed with
#     them running, and down.sh still leaves nothing; --purge removes all.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

export CLIMATIK_CLUSTER_DIR="$repo/target/cluster-real-test"
export CLIMATIK_PORT_OFFSET=700
export CLIMATIK_NODES=0
export CLIMATIK_REAL_NODE=1
export PROMETHEUS=1
[[ $(id -u) == 0 ]] || { echo "test-real-node: needs root" >&2; exit 1; }
mkdir -p "$CLIMATIK_CLUSTER_DIR"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh"
# shellcheck source-path=SCRIPTDIR
source "$here/node.sh"
ports=("${CLUSTER_PORTS[@]}" "${NODE_PORTS[@]}")
NS=real-node-test

log_file="$CLIMATIK_CLUSTER_DIR.log"
say() { echo "test-real-node: $*" >&2; }
fail() {
  say "FAIL: $*"
  say "last lines of $log_file:"
  tail -n 40 "$log_file" >&2 || true
  exit 1
}
cleanup() {
  local rc=$?
  if [[ -n ${KEEP:-} ]]; then
    say "KEEP is set: the cluster stays up (source $CLIMATIK_CLUSTER_DIR/env; CLIMATIK_CLUSTER_DIR=$CLIMATIK_CLUSTER_DIR tests/cluster/down.sh --purge)"
  elif ((rc != 0)); then
    "$here/down.sh" >>"$log_file" 2>&1 || true
    say "stopped; state and logs kept in $CLIMATIK_CLUSTER_DIR"
  fi
  return "$rc"
}
trap cleanup EXIT

sysctls() {
  local k
  for k in "${NODE_SYSCTLS[@]}" net/ipv4/ip_forward net/ipv4/conf/all/route_localnet \
    net/bridge/bridge-nf-call-iptables; do
    echo "$k=$(<"/proc/sys/$k")"
  done
}
host_paths() {
  local d
  for d in "${HOST_DIRS[@]}" "$DEVICE_PLUGIN_LINK" /sys/fs/cgroup/*/"$CONTAINERD_NAMESPACE"; do
    [[ -e $d || -L $d ]] && echo "$d"
  done
  return 0
}

# leftovers -> what of the cluster is still on the machine, one line each.
leftovers() {
  local p cmd port
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    # Ours name the state directory; the containers' run /pause or /netprobe.
    if [[ $cmd == *"$CLIMATIK_CLUSTER_DIR/"* || $(readlink "$p/exe" 2>/dev/null) == /@(pause|netprobe) ]]; then
      echo "process ${p#/proc/}: $cmd"
    fi
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && echo "bridge $BRIDGE"
  { iptables-save; ip6tables-save; } 2>/dev/null | grep '^:KUBE-' | sed 's/^/iptables chain /'
  awk -v p="$CLIMATIK_CLUSTER_DIR/" 'index($5, p) == 1 { print "mount " $5 }' /proc/self/mountinfo
  for port in "${ports[@]}"; do
    [[ -z $(ss -Hltn "sport = :$port") ]] || echo "listening on port $port"
  done
  [[ $(sysctls) == "$sysctls_before" ]] || echo "sysctls changed: $(diff <(echo "$sysctls_before") <(sysctls) | tr '\n' ' ')"
  [[ $(host_paths) == "$host_paths_before" ]] || echo "host paths changed: $(host_paths | tr '\n' ' ')"
  local id
  for id in "${container_ids[@]}"; do
    find /sys/fs/cgroup -maxdepth 4 -type d -name "$id" 2>/dev/null | sed 's/^/cgroup /'
  done
  return 0
}

mkdir -p "$(dirname "$log_file")"
: >"$log_file"
"$here/down.sh" --purge >>"$log_file" 2>&1 || fail "down.sh --purge before starting failed"
sysctls_before=$(sysctls)
host_paths_before=$(host_paths)
container_ids=()
[[ -z $(leftovers) ]] || fail "leftovers before starting: $(leftovers)"

# --- up -----------------------------------------------------------------------
t0=$SECONDS
"$here/up.sh" >>"$log_file" 2>&1 || fail "up.sh failed"
say "up in $((SECONDS - t0))s"
t1=$SECONDS
out=$("$here/up.sh" 2>>"$log_file") || fail "second up.sh failed"
grep -q "cluster is up" <<<"$out" || fail "second up.sh did not report a running cluster"
((SECONDS - t1 <= 5)) || fail "up.sh on a running cluster took $((SECONDS - t1))s"

# shellcheck source=/dev/null
source "$CLIMATIK_CLUSTER_DIR/env"
[[ $APISERVER_URL == "https://$NODE_IP:$APISERVER_PORT" ]] || fail "env has APISERVER_URL=$APISERVER_URL"
[[ $PROMETHEUS_URL == "http://$NODE_IP:$PROMETHEUS_PORT" ]] || fail "env has PROMETHEUS_URL=$PROMETHEUS_URL"
[[ -n $CLIMATIK_REAL_NODE_NAME && -d $KUBELET_ROOT_DIR && -S $CONTAINERD_ADDRESS ]] ||
  fail "env lacks the real node's variables"
[[ -S $KUBELET_ROOT_DIR/pod-resources/kubelet.sock ]] || fail "no pod-resources socket in $KUBELET_ROOT_DIR"
[[ -S $KUBELET_ROOT_DIR/device-plugins/kubelet.sock ]] || fail "no device-plugin socket in $KUBELET_ROOT_DIR"
k() { "$KUBECTL" "$@"; }
grep -q '"climatik.io/real-node":"true"' <<<"$(k get node "$CLIMATIK_REAL_NODE_NAME" -o jsonpath='{.metadata.labels}')" ||
  fail "the node lacks its labels"

# --- the image --------------------------------------------------------------------
work="$CLIMATIK_CLUSTER_DIR/netprobe"
rm -rf "$work"
mkdir -p "$work"
(cd "$here" && CGO_ENABLED=0 nice -n 10 go build -trimpath -buildvcs=false -ldflags='-s -w' -o "$work/netprobe" ./cmd/netprobe) ||
  fail "building netprobe failed"
image=localhost/climatik/netprobe:test
b=(buildah --root "$work/store" --runroot "$work/run" --storage-driver vfs)
c=$("${b[@]}" from scratch)
"${b[@]}" copy --quiet "$c" "$work/netprobe" /netprobe >/dev/null
"${b[@]}" config --entrypoint '["/netprobe"]' "$c"
"${b[@]}" commit --quiet --rm "$c" "$image" >/dev/null
"${b[@]}" push --quiet "$image" "oci-archive:$work/netprobe.oci.tar:$image"
rm -rf "$work/store" "$work/run"
[[ $("$here/node-image.sh" import "$work/netprobe.oci.tar" 2>>"$log_file") == "$image" ]] ||
  fail "node-image.sh import did not import $image"
grep -qxF "$image" <<<"$("$here/node-image.sh" list)" || fail "node-image.sh list lacks $image"

# --- pods and a Service -------------------------------------------------------------
k create namespace "$NS" >/dev/null
k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: server
  labels: {app: netprobe}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: netprobe
      image: $image
      imagePullPolicy: Never
      args: [serve, ":8080"]
      ports: [{name: metrics, containerPort: 8080}]
      readinessProbe:
        httpGet: {path: /, port: 8080}
        periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: netprobe
  labels: {climatik.io/metrics: "true"}
spec:
  selector: {app: netprobe}
  ports: [{name: metrics, port: 80, targetPort: 8080}]
EOF
pod_ready() {
  [[ $(k -n "$NS" get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
eventually 90 "the server pod is Ready (kubelet probes it at its IP)" pod_ready server
pod_ip=$(k -n "$NS" get pod server -o jsonpath='{.status.podIP}')
cluster_ip=$(k -n "$NS" get service netprobe -o jsonpath='{.spec.clusterIP}')
[[ $pod_ip == 198.18.0.* && $cluster_ip == 198.19.* ]] || fail "pod IP $pod_ip, ClusterIP $cluster_ip"
[[ $(curl -sf --max-time 5 "http://$pod_ip:8080/") == "netprobe server" ]] || fail "the host does not reach the pod at $pod_ip"
service_ok() { [[ $(curl -sf --max-time 3 "http://$cluster_ip/") == "netprobe server" ]]; }
eventually 30 "the host reaches the pod through the Service ($cluster_ip)" service_ok

k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  restartPolicy: Never
  containers:
    - name: netprobe
      image: $image
      imagePullPolicy: Never
      args: [check, "http://$cluster_ip/"]
EOF
client_phase() { k -n "$NS" get pod client -o jsonpath='{.status.phase}'; }
client_done() { [[ $(client_phase) == @(Succeeded|Failed) ]]; }
eventually 90 "the client pod ran" client_done
[[ $(client_phase) == Succeeded ]] || fail "the client pod failed: $(k -n "$NS" logs client 2>&1)"
client_log=$(k -n "$NS" logs client) || fail "kubectl logs client failed"
grep -q "^apiserver 198.19.0.1: .*\"gitVersion\": *\"$K8S_VERSION\"" <<<"$client_log" ||
  fail "the client pod did not reach the API server through the kubernetes Service: $client_log"
grep -qx "http://$cluster_ip/: netprobe server" <<<"$client_log" ||
  fail "the client pod did not reach the server through its Service: $client_log"
say "ok: a pod reaches the API server and another pod through Services"
grep -q "netprobe serving on :8080" <<<"$(k -n "$NS" logs server)" || fail "kubectl logs server lacks its start-up line"
[[ $(k -n "$NS" exec server -- /netprobe version) == netprobe ]] || fail "kubectl exec failed"
say "ok: kubectl logs and exec"
# A pod reaching itself through its Service (hairpin).
self=$(k -n "$NS" exec server -- /netprobe check "http://$cluster_ip/" 2>&1) || fail "the server pod does not reach itself through its Service: $self"
grep -qx "http://$cluster_ip/: netprobe server" <<<"$self" || fail "unexpected answer: $self"
say "ok: a pod reaches itself through its Service"
scraped() {
  local out
  out=$(curl -sf --max-time 3 "$PROMETHEUS_URL/api/v1/query" \
    --data-urlencode "query=netprobe_up{job=\"climatik-endpoints\",namespace=\"$NS\",service=\"netprobe\",pod=\"server\",node=\"$CLIMATIK_REAL_NODE_NAME\"}") || return 1
  grep -q '"value":\[[0-9.]*,"1"\]' <<<"$out"
}
eventually 60 "Prometheus discovers and scrapes the pod (Service labelled climatik.io/metrics=true)" scraped
k get pods -A -o wide >&2

mapfile -t container_ids < <(ctr --address "$CONTAINERD_ADDRESS" -n k8s.io containers ls -q)
server_container() { k -n "$NS" get pod server -o jsonpath='{.status.containerStatuses[0].containerID}'; }
old_container=$(server_container)

# --- down, up again, down -------------------------------------------------------
for round in 1 2; do
  t0=$SECONDS
  "$here/down.sh" >>"$log_file" 2>&1 || fail "round $round: down.sh failed"
  say "round $round: down in $((SECONDS - t0))s"
  left=$(leftovers)
  [[ -z $left ]] || fail "round $round: left after down.sh:"$'\n'"$left"
  "$here/down.sh" >>"$log_file" 2>&1 || fail "round $round: down.sh on a stopped cluster failed"
  say "round $round: nothing left"
  ((round == 1)) || break

  t0=$SECONDS
  "$here/up.sh" >>"$log_file" 2>&1 || fail "up.sh (restart) failed"
  say "restart: up in $((SECONDS - t0))s"
  # The kubelet starts the pod's container again (a new one: the old one was
  # killed with the node).
  restarted() {
    [[ $(server_container) != "$old_container" ]] && pod_ready server
  }
  eventually 120 "the server pod runs again after the restart" restarted
  new_ip=$(k -n "$NS" get pod server -o jsonpath='{.status.podIP}')
  eventually 30 "the host reaches it through the Service again" service_ok
  say "server pod: $pod_ip before, $new_ip after the restart"
  mapfile -t container_ids < <(ctr --address "$CONTAINERD_ADDRESS" -n k8s.io containers ls -q)
  # A crash: containerd dies with the pods running (their shims stay);
  # down.sh must still leave nothing.
  kill -KILL "$(<"$CLIMATIK_CLUSTER_DIR/pids/containerd.pid")"
  say "containerd killed with the pods running"
done

if [[ -z ${KEEP:-} ]]; then
  "$here/down.sh" --purge >>"$log_file" 2>&1 || fail "down.sh --purge failed"
  [[ ! -e $CLIMATIK_CLUSTER_DIR ]] || fail "$CLIMATIK_CLUSTER_DIR still exists after --purge"
else
  "$here/up.sh" >>"$log_file" 2>&1 || fail "up.sh failed"
fi
say "PASS"
