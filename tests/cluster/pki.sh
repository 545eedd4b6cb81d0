#!/usr/bin/env bash
# Generates the local control plane's certificates into DIR, once: a CA, the
# API server's serving certificate, client certificates for admin,
# controller-manager and scheduler, the service-account signing key pair, and
# a front-proxy CA with the API server's front-proxy client certificate.
# Existing files are kept, so tokens and kubeconfigs stay valid across
# restarts; a certificate whose subject or extensions changed here is made
# again (each has a NAME.stamp of what it was made from).
#
# With NODE_NAME and NODE_IP (up.sh with CLIMATIK_REAL_NODE=1) also the real
# node's: the kubelet's client (system:node:NODE_NAME) and serving
# certificates, kube-proxy's client certificate, and the API server's client
# certificate for the kubelet API.
#
#   tests/cluster/pki.sh DIR
#   NODE_NAME=climatik-node NODE_IP=198.18.0.1 tests/cluster/pki.sh DIR
set -euo pipefail

dir=${1:?usage: pki.sh DIR}
mkdir -p "$dir"
cd "$dir"
umask 077

days=3650

if [[ ! -f ca.crt || ! -f ca.key ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days "$days" \
    -subj "/CN=climatik-local-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  # A new CA invalidates every certificate signed by the old one.
  rm -f ./*.stamp
fi

# The front-proxy CA signs only the API server's client certificate for
# aggregated API servers; a separate CA keeps other client certificates from
# passing as the front proxy. Configuring it also stops controller-manager
# and scheduler logging about a missing requestheader CA.
if [[ ! -f front-proxy-ca.crt || ! -f front-proxy-ca.key ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt \
    -days "$days" -subj "/CN=climatik-local-front-proxy-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  rm -f front-proxy-client.stamp
fi

# leaf NAME SUBJECT EXTENSIONS [CA] -> NAME.key and NAME.crt signed by CA
# (default: the cluster CA), unless NAME.stamp says they were made from the
# same subject, extensions and CA.
leaf() {
  local name=$1 subj=$2 ext=$3 ca=${4:-ca} stamp
  stamp=$(printf '%s\n' "$subj" "$ext" "$ca")
  if [[ -f $name.crt && -f $name.key && -f $name.stamp && $(<"$name.stamp") == "$stamp" ]]; then
    return 0
  fi
  openssl req -new -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
  printf '%s\n' "$ext" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial \
    -out "$name.crt" -days "$days" -sha256 -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
  printf '%s\n' "$stamp" >"$name.stamp"
  chmod 644 "$name.crt"
}

client_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

# Loopback, the real node's bridge address (198.18.0.1), and the first
# Service IP of both Service ranges (the "kubernetes" Service: 10.96.0.1 by
# default, 198.19.0.1 with a real node), so one certificate serves either.
leaf apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:198.18.0.1,IP:10.96.0.1,IP:198.19.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"

# O=system:masters is bound to cluster-admin by the default RBAC policy.
leaf admin "/O=system:masters/CN=admin" "$client_ext"
leaf controller-manager "/CN=system:kube-controller-manager" "$client_ext"
leaf scheduler "/CN=system:kube-scheduler" "$client_ext"
leaf front-proxy-client "/CN=front-proxy-client" "$client_ext" front-proxy-ca

if [[ -n ${NODE_NAME:-} ]]; then
  node_ip=${NODE_IP:?NODE_IP is needed with NODE_NAME}
  # The Node authorizer and NodeRestriction know a kubelet by this identity.
  leaf kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$client_ext"
  # The API server checks it (--kubelet-certificate-authority) when it calls
  # the kubelet at the node's InternalIP for logs, exec and port-forward.
  leaf kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$node_ip,DNS:$NODE_NAME"
  # Bound to the system:node-proxier ClusterRole by the default RBAC policy.
  leaf kube-proxy "/CN=system:kube-proxy" "$client_ext"
  # What the API server presents to the kubelet; the kubelet asks the API
  # server (webhook authorization) and system:masters may do anything.
  leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client_ext"
fi

if [[ ! -f sa.key || ! -f sa.pub ]]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
  openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
fi

# Public material may be read by anyone (tests pass ca.crt around).
chmod 644 ca.crt apiserver.crt admin.crt controller-manager.crt scheduler.crt sa.pub \
  front-proxy-ca.crt front-proxy-client.crt
