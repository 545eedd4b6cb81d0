#!/usr/bin/env bash
# Removes everything deploy.sh (or `helm install`) put into the current kube
# context: the webhook configuration, every PowerCappingPolicy and
# NodeFrequencies, the release, the climatik.io CRDs (Helm never deletes
# CRDs) and the namespace.
#
#   ./scripts/undeploy.sh
#
# Environment: RELEASE (climatik), NAMESPACE (climatik-project),
# TIMEOUT (how long to wait for each step, 2m), HELM, KUBECTL.
set -euo pipefail

RELEASE=${RELEASE:-climatik}
NAMESPACE=${NAMESPACE:-climatik-project}
TIMEOUT=${TIMEOUT:-2m}
HELM=${HELM:-helm}
KUBECTL=${KUBECTL:-kubectl}
CRDS=(powercappingpolicies.climatik.io nodefrequencies.climatik.io powerbudgets.climatik.io)

log() { printf '[undeploy] %s\n' "$*" >&2; }
k() { "$KUBECTL" "$@"; }

command -v "$HELM" >/dev/null || { log "error: helm not found (set HELM=)"; exit 1; }
command -v "$KUBECTL" >/dev/null || { log "error: kubectl not found (set KUBECTL=)"; exit 1; }
log "context: $(k config current-context 2>/dev/null || echo in-cluster)"

# 1. Stop admitting: no new generated policies while we clean up.
log "deleting the webhook configuration"
k delete mutatingwebhookconfiguration -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/part-of=climatik" \
  --ignore-not-found >/dev/null
k delete mutatingwebhookconfiguration "$RELEASE-webhook" --ignore-not-found >/dev/null

# 2. Delete the policies while the recommender still runs: it removes their
#    frequency entries at once (the agents restore default clocks; entries
#    would expire anyway). Policies carry no finalizer, but those written by
#    earlier versions may still hold the recommender's old one: whatever is
#    still there afterwards (no recommender running to lift it) loses its
#    finalizers, or the CRD could never be deleted.
for crd in "${CRDS[@]}"; do
  k get crd "$crd" >/dev/null 2>&1 || continue
  log "deleting every ${crd%%.*}"
  if ! k delete "$crd" --all --all-namespaces --wait --timeout="$TIMEOUT" >/dev/null 2>&1; then
    log "some ${crd%%.*} did not go away in $TIMEOUT: removing their finalizers"
    k get "$crd" --all-namespaces -o jsonpath='{range .items[*]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}' |
      while read -r ns name; do
        if [[ -n $name ]]; then
          k patch "$crd" "$name" ${ns:+-n "$ns"} --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null || true
        else # cluster-scoped: the one field is the name
          k patch "$crd" "$ns" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null || true
        fi
      done
  fi
done

# 3. The release: Deployments, DaemonSet (SIGTERM: agents restore defaults), RBAC.
if "$HELM" status "$RELEASE" -n "$NAMESPACE" >/dev/null 2>&1; then
  log "uninstalling release $RELEASE"
  "$HELM" uninstall "$RELEASE" -n "$NAMESPACE" --wait --timeout "$TIMEOUT" >/dev/null
else
  log "release $RELEASE not found in $NAMESPACE"
fi

# 4. CRDs: Helm leaves them behind on purpose.
log "deleting CRDs ${CRDS[*]}"
k delete crd "${CRDS[@]}" --ignore-not-found --wait --timeout="$TIMEOUT" >/dev/null

# 5. The namespace (certificates, secrets, leases go with it).
case $NAMESPACE in
  default | kube-system | kube-public | kube-node-lease | cert-manager)
    log "leaving namespace $NAMESPACE in place" ;;
  *)
    log "deleting namespace $NAMESPACE"
    k delete namespace "$NAMESPACE" --ignore-not-found --wait --timeout="$TIMEOUT" >/dev/null ;;
esac
log "done"
