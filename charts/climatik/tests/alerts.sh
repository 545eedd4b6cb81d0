#!/usr/bin/env bash
# Unit tests of the chart's alerts: renders the PrometheusRule (release
# climatik in namespace climatik-project, prometheusRule.enabled=true),
# takes its spec.groups as a rules file, and runs `promtool test rules` on
# every alerts/*.test.yaml beside it. run.sh calls it. No cluster needed; promtool comes with
# Debian's prometheus package (make setup).
set -euo pipefail

tests_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
chart="$(cd "$tests_dir/.." && pwd)"
if [[ -z ${HELM:-} ]]; then
  # shellcheck source=tests/cluster/versions.sh
  source "$chart/../../tests/cluster/versions.sh"
  HELM=$(bin helm) # the pinned helm make setup built
fi
PROMTOOL=${PROMTOOL:-promtool}
command -v "$PROMTOOL" >/dev/null || { echo "promtool not found: make setup installs it (Debian's prometheus)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" HELM_DATA_HOME="$work/helm/data"

"$HELM" template climatik "$chart" -n climatik-project --kube-version v1.34.0 \
  --set prometheusRule.enabled=true --show-only templates/prometheusrule.yaml >"$work/rendered.yaml"
# The rules file is the object's spec: `groups:` and below, one level out.
sed -n '/^spec:$/,$p' "$work/rendered.yaml" | tail -n +2 | sed 's/^  //' >"$work/rules.yaml"
"$PROMTOOL" check rules "$work/rules.yaml"
# The tests name rules.yaml beside them.
cp "$tests_dir"/alerts/*.test.yaml "$work/"
"$PROMTOOL" test rules "$work"/*.test.yaml
