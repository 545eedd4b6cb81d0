#!/usr/bin/env bash
# Adds or removes a scrape target of the cluster's Prometheus (file service
# discovery: one JSON file per target; Prometheus scrapes a new target
# 5–7 s later, as its discovery manager batches changes for 5 s).
#
#   tests/cluster/prometheus-target.sh add NAME HOST:PORT [LABEL=VALUE...]
#   tests/cluster/prometheus-target.sh remove NAME
#   tests/cluster/prometheus-target.sh list
#
# The file written, $STATE/prometheus/targets/NAME.json, is:
#   [{"targets": ["127.0.0.1:9400"], "labels": {"node": "gpu-node-0"}}]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$here/lib.sh"

dir="$PROM_DIR/targets"
mkdir -p "$dir"

json_string() { # escapes backslash and double quote; labels are plain text
  local s=${1//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}

valid_name() { [[ $1 =~ ^[A-Za-z0-9_.-]+$ ]] || die "target name '$1' must match [A-Za-z0-9_.-]+"; }

case ${1:-} in
  add)
    [[ $# -ge 3 ]] || die "usage: prometheus-target.sh add NAME HOST:PORT [LABEL=VALUE...]"
    name=$2 addr=$3
    valid_name "$name"
    shift 3
    labels=""
    for kv in "$@"; do
      [[ $kv == *=* ]] || die "label '$kv' is not LABEL=VALUE"
      [[ ${kv%%=*} =~ ^[a-zA-Z_][a-zA-Z0-9_]*$ ]] || die "'${kv%%=*}' is not a Prometheus label name"
      labels+="${labels:+, }$(json_string "${kv%%=*}"): $(json_string "${kv#*=}")"
    done
    # Write then rename: Prometheus must never read half a file.
    printf '[{"targets": [%s], "labels": {%s}}]\n' "$(json_string "$addr")" "$labels" >"$dir/.$name.json.tmp"
    mv "$dir/.$name.json.tmp" "$dir/$name.json"
    ;;
  remove)
    [[ $# -eq 2 ]] || die "usage: prometheus-target.sh remove NAME"
    valid_name "$2"
    rm -f "$dir/$2.json"
    ;;
  list)
    cat "$dir"/*.json 2>/dev/null || true
    ;;
  *)
    die "usage: prometheus-target.sh add NAME HOST:PORT [LABEL=VALUE...] | remove NAME | list"
    ;;
esac
