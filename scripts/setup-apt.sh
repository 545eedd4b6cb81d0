#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, once per machine.
set -euo pipefail

# prometheus: the local cluster's Prometheus, and promtool for the chart's alert
# tests (charts/climatik/tests/alerts.sh).
# buildah builds the image (make image); containerd, runc, the CNI plugins and
# iptables run the local cluster's real node (kubelet, kube-proxy).
packages=(prometheus openssl iproute2 curl fonts-dejavu-core buildah containerd runc containernetworking-plugins iptables)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
# The package's own service would listen on :9090; we run our own instance.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: Debian packages installed"
