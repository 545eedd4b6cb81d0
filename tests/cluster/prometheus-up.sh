#!/usr/bin/env bash
# Starts the cluster's own Prometheus on 127.0.0.1 (port 29090 unless
# CLIMATIK_PROMETHEUS_PORT says otherwise), scraping every second the
# targets listed in $STATE/prometheus/targets/*.json (file service
# discovery; see prometheus-target.sh). Idempotent. up.sh runs it; tests run
# it (with prometheus-down.sh) to simulate a Prometheus outage. Its data is
# kept across restarts.
#
# With a real node (CLIMATIK_REAL_NODE=1) it listens on the bridge address
# instead, where pods reach it, and also scrapes the endpoints of Services
# labelled climatik.io/metrics=true, port "metrics": Debian's Prometheus has
# no Kubernetes service discovery, so endpoints-sd (cmd/endpoints-sd, started
# here) watches the EndpointSlices and writes them for file discovery.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh"

# up.sh already holds the lock and says so with --locked.
if [[ ${1:-} != --locked ]]; then
  exec 9>"$STATE/.lock"
  flock 9
fi

command -v prometheus >/dev/null 2>&1 ||
  die "prometheus is not on PATH: run tests/cluster/build.sh (it installs Debian's package)"

mkdir -p "$PROM_DIR/targets" "$PROM_DIR/data"
# honor_labels: a simulated freqtuner's metrics carry their own node/gpu
# labels, which must not be renamed to exported_*.
cat >"$PROM_DIR/prometheus.yml" <<CFG
# Written by tests/cluster/prometheus-up.sh.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: climatik
    honor_labels: true
    file_sd_configs:
      - files: ['$PROM_DIR/targets/*.json']
        refresh_interval: 1s
CFG
if [[ $REAL_NODE == 1 ]]; then
  # The endpoints of labelled Services, ports named "metrics", with
  # namespace, service, pod and node labels (a series' own labels win:
  # honor_labels), as endpoints-sd writes them.
  mkdir -p "$PROM_DIR/endpoints"
  cat >>"$PROM_DIR/prometheus.yml" <<CFG
  - job_name: climatik-endpoints
    honor_labels: true
    file_sd_configs:
      - files: ['$PROM_DIR/endpoints/*.json']
        refresh_interval: 1s
CFG
  if ! running endpoints-sd; then
    start endpoints-sd "$(bin_path endpoints-sd "$(endpoints_sd_version)")" \
      --kubeconfig "$KUBECONFIG_ADMIN" \
      --file "$PROM_DIR/endpoints/endpoints.json" \
      --selector climatik.io/metrics=true \
      --port-name metrics
  fi
fi

if ! running prometheus; then
  if ! port_free "$PROMETHEUS_PORT" "$LISTEN_HOST"; then
    die "port $PROMETHEUS_PORT (for prometheus) is in use by another program; set CLIMATIK_PROMETHEUS_PORT"
  fi
  start prometheus "$(command -v prometheus)" \
    --config.file "$PROM_DIR/prometheus.yml" \
    --storage.tsdb.path "$PROM_DIR/data" \
    --storage.tsdb.retention.time 2d \
    --web.listen-address "$LISTEN_HOST:$PROMETHEUS_PORT" \
    --web.enable-lifecycle \
    --log.level warn
fi
wait_for "prometheus /-/ready" 60 prometheus prometheus_ready
echo "prometheus is up: $PROMETHEUS_URL (targets in $PROM_DIR/targets)"
