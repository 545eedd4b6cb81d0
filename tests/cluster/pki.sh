#!/usr/bin/env bash
# Generates the local control plane's certificates into DIR, once: a CA, the
# API server's serving certificate, client certificates for admin,
# controller-manager and scheduler, the service-account signing key pair, and
# a front-proxy CA with the API server's front-proxy client certificate.
# Existing files are kept, so tokens and kubeconfigs stay valid across
# restarts.
#
#   tests/cluster/pki.sh DIR
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
  rm -f apiserver.crt admin.crt controller-manager.crt scheduler.crt
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
  rm -f front-proxy-client.crt
fi

# leaf NAME SUBJECT EXTENSIONS [CA] -> NAME.key and NAME.crt signed by CA
# (default: the cluster CA).
leaf() {
  local name=$1 subj=$2 ext=$3 ca=${4:-ca}
  [[ -f $name.crt && -f $name.key ]] && return 0
  openssl req -new -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
  printf '%s\n' "$ext" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial \
    -out "$name.crt" -days "$days" -sha256 -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

client_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

leaf apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"

# O=system:masters is bound to cluster-admin by the default RBAC policy.
leaf admin "/O=system:masters/CN=admin" "$client_ext"
leaf controller-manager "/CN=system:kube-controller-manager" "$client_ext"
leaf scheduler "/CN=system:kube-scheduler" "$client_ext"
leaf front-proxy-client "/CN=front-proxy-client" "$client_ext" front-proxy-ca

if [[ ! -f sa.key || ! -f sa.pub ]]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
  openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
fi

# Public material may be read by anyone (tests pass ca.crt around).
chmod 644 ca.crt apiserver.crt admin.crt controller-manager.crt scheduler.crt sa.pub \
  front-proxy-ca.crt front-proxy-client.crt
