#!/usr/bin/env bash
# Rows are matched literally: the backticks in single quotes are meant.
# shellcheck disable=SC2016
# Tests scripts/chart-readme.sh on a values.yaml that holds every construct
# the generator must read: `# --` blocks, plain comments, nested keys,
# undocumented keys, a map of label keys, block sequences at both indents,
# a block scalar, quoted values with `#`, and trailing comments. It also
# checks that `--check` fails on a stale README and passes on a fresh one.
# `make test` runs it (scripts/run-tests.sh). It needs no cluster.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The generator finds the chart next to itself: give it a tree of its own.
mkdir -p "$work/scripts" "$work/charts/climatik"
cp "$repo/scripts/chart-readme.sh" "$work/scripts/"
cat >"$work/charts/climatik/Chart.yaml" <<'EOF'
apiVersion: v2
name: climatik
description: A test chart.
version: 9.8.7
appVersion: "1.2.3"
EOF
cat >"$work/charts/climatik/values.yaml" <<'EOF'
# File header: not a description.

# -- Top-level, documented
# over two lines.
top: ""
undocumented: 3
# A plain section comment: not a description.
group:
  # -- Nested and documented.
  inner:
    deep: true
  list: [a, b]
  labels:
    nvidia.com/gpu.present: "true"
  tolerations:
    - key: nvidia.com/gpu
      operator: Exists
  sameIndent:
  - one
  - two
  # -- A block scalar.
  script: |
    echo a
    echo "b"
  url: "https://example.org/a#b" # a trailing comment
  pipe: a|b
# -- A documented map: a row of its own, then its keys.
rule:
  enabled: false
EOF

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

"$work/scripts/chart-readme.sh" >/dev/null
readme="$work/charts/climatik/README.md"

expect_row() {
  grep -qxF -- "$1" "$readme" || fail "no row: $1"
}
expect_row '| `top` | `""` | Top-level, documented over two lines. |'
expect_row '| `undocumented` | `3` |  |'
expect_row '| `group.inner` |  | Nested and documented. |'
expect_row '| `group.inner.deep` | `true` |  |'
expect_row '| `group.list` | `[a, b]` |  |'
expect_row '| `group.labels` | `{nvidia.com/gpu.present: "true"}` |  |'
expect_row '| `group.tolerations` | `[{key: nvidia.com/gpu, operator: Exists}]` |  |'
expect_row '| `group.sameIndent` | `[one, two]` |  |'
expect_row '| `group.script` | `"echo a\necho \"b\"\n"` | A block scalar. |'
expect_row '| `group.url` | `"https://example.org/a#b"` |  |'
expect_row '| `group.pipe` | `a\|b` |  |'
expect_row '| `rule` |  | A documented map: a row of its own, then its keys. |'
expect_row '| `rule.enabled` | `false` |  |'
grep -q 'section comment\|File header' "$readme" && fail "a plain comment became a description"
rows=$(grep -c '^| `' "$readme")
[[ $rows == 13 ]] || fail "expected 13 rows, got $rows"
grep -qF 'Chart version 9.8.7, app version 1.2.3' "$readme" || fail "versions from Chart.yaml missing"
grep -qxF 'A test chart.' "$readme" || fail "description from Chart.yaml missing"

"$work/scripts/chart-readme.sh" --check >/dev/null || fail "--check fails on a fresh README"
sed -i 's/^undocumented: 3$/undocumented: 4/' "$work/charts/climatik/values.yaml"
if out=$("$work/scripts/chart-readme.sh" --check 2>&1); then
  fail "--check passes on a stale README"
else
  grep -qF -- '+| `undocumented` | `4` |  |' <<<"$out" || fail "--check shows no diff: $out"
fi

if ((failures > 0)); then
  echo "chart-readme: $failures failure(s); README was:" >&2
  cat "$readme" >&2
  exit 1
fi
echo "chart-readme: ok"
