#!/usr/bin/env bash
# Writes charts/climatik/README.md from Chart.yaml and values.yaml, so that
# the values table cannot drift from the values:
#   scripts/chart-readme.sh            rewrite the README
#   scripts/chart-readme.sh --check    exit 1 with a diff if the committed
#                                      README differs (make lint runs this)
#
# A value's description is the `# --` comment block right above its key
# (the `# --` line and the comment lines directly below it). Every leaf
# value is listed, including undocumented ones, which get an empty
# description. Nested keys are shown as dotted paths, as `--set` takes them.
# Only python3's standard library is used: values.yaml is read by a small
# parser for the YAML this chart writes (block mappings, block sequences,
# flow collections on one line, scalars, block scalars), not by PyYAML.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$repo/charts/climatik"
readme="$chart/README.md"

mode="write"
case "${1:-}" in
  "") ;;
  --check) mode="check" ;;
  -h | --help)
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac

render() {
  python3 - "$chart/Chart.yaml" "$chart/values.yaml" <<'PY'
import re
import sys

chart_path, values_path = sys.argv[1], sys.argv[2]

# Keys that are plain identifiers form dotted paths; a map with any other
# key (a label such as nvidia.com/gpu.present) is one value, shown whole.
PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
KEY_LINE = re.compile(r"""^(?P<key>"[^"]*"|'[^']*'|[^\s#'"\-][^:#]*?|-[^\s:#][^:#]*?):(?:\s+(?P<value>.*))?$""")


def strip_comment(text):
    """The value without a trailing ` # comment` (quotes respected)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def unquote(key):
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        return key[1:-1]
    return key


def read_chart(path):
    """Top-level scalars of Chart.yaml (name, description, versions)."""
    fields = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^([A-Za-z]+):\s+(.+)$", line.rstrip("\n"))
            if m:
                fields[m.group(1)] = unquote(strip_comment(m.group(2)))
    return fields


class Line:
    def __init__(self, number, indent, text):
        self.number, self.indent, self.text = number, indent, text


def read_values(path):
    """(lines, docs): the content lines, and the `# --` text of each line
    number that a documentation block sits right above."""
    lines, docs = [], {}
    block = None  # the `# --` block being read, as a list of lines
    with open(path, encoding="utf-8") as f:
        raw = f.read().splitlines()
    for number, line in enumerate(raw):
        stripped = line.strip()
        if not stripped:
            block = None
            continue
        if stripped.startswith("#"):
            body = stripped[1:]
            if body.startswith(" --") or body == " --" or body.startswith("--"):
                block = [body.lstrip()[2:].strip()]
            elif block is not None:
                block.append(body.strip())
            continue
        if block is not None:
            docs[number] = " ".join(part for part in block if part)
            block = None
        lines.append(Line(number, len(line) - len(line.lstrip(" ")), line.strip()))
    return lines, docs


def fail(line, message):
    sys.exit(f"values.yaml:{line.number + 1}: {message}: {line.text}")


def flow(node):
    """A parsed block value in YAML flow style, on one line."""
    if isinstance(node, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(flow(v) for v in node) + "]"
    return node


def parse_block(lines, i, indent):
    """Parses the block value whose lines start at lines[i], all at
    `indent`; returns (value, next index). Scalars stay as written."""
    if lines[i].text.startswith("- ") or lines[i].text == "-":
        items = []
        while i < len(lines) and lines[i].indent == indent and (
            lines[i].text.startswith("- ") or lines[i].text == "-"
        ):
            rest = lines[i].text[1:].lstrip()
            item_indent = indent + (len(lines[i].text) - len(rest))
            if not rest:
                i += 1
                if i < len(lines) and lines[i].indent > indent:
                    value, i = parse_block(lines, i, lines[i].indent)
                else:
                    value = "null"
                items.append(value)
                continue
            # "- key: value" opens a map whose other keys sit below it,
            # aligned with the first one.
            lines[i] = Line(lines[i].number, item_indent, rest)
            if KEY_LINE.match(rest):
                value, i = parse_block(lines, i, item_indent)
            else:
                value, i = strip_comment(rest), i + 1
            items.append(value)
        return items, i
    mapping = {}
    while i < len(lines) and lines[i].indent == indent:
        line = lines[i]
        key, m = key_line(line)
        value, i = parse_value(lines, i, indent, m.group("value"))
        mapping[key] = value
    return mapping, i


def key_line(line):
    """The key of a `key: value` line, and its match (for the value)."""
    m = KEY_LINE.match(line.text)
    if not m:
        fail(line, "expected `key: value`")
    return unquote(m.group("key").strip()), m


def parse_value(lines, i, indent, text):
    """The value of the key at lines[i]; returns (value, next index)."""
    text = strip_comment(text or "")
    if text and text[0] in "|>":
        # A block scalar, shown as the one-line string it stands for:
        # `|` keeps line breaks, `>` folds them; `-` drops the last one.
        style, chomp = text[0], "" if "-" in text else "\\n"
        i += 1
        body = []
        while i < len(lines) and lines[i].indent > indent:
            body.append(lines[i].text.replace("\\", "\\\\").replace('"', '\\"'))
            i += 1
        joined = ("\\n" if style == "|" else " ").join(body)
        return f'"{joined}{chomp}"', i
    if text:
        return text, i + 1
    i += 1
    if i < len(lines) and (
        lines[i].indent > indent
        or (lines[i].indent == indent and lines[i].text.startswith("-"))
    ):
        return parse_block(lines, i, lines[i].indent)
    return "null", i


def rows(lines, docs):
    """(dotted key, default, description) of every value, in file order."""
    out = []

    def walk(i, indent, prefix):
        while i < len(lines) and lines[i].indent == indent:
            line = lines[i]
            key, m = key_line(line)
            path = f"{prefix}{key}"
            doc = docs.get(line.number, "")
            value_text = strip_comment(m.group("value") or "")
            child = i + 1
            nested = (
                not value_text
                and child < len(lines)
                and lines[child].indent > indent
                and not lines[child].text.startswith("-")
            )
            if nested:
                # A map of plain keys is a level of the dotted path, unless
                # one of its keys is not plain (then it is one value).
                child_indent = lines[child].indent
                keys = []
                j = child
                while j < len(lines) and lines[j].indent >= child_indent:
                    # Items of a block sequence may sit at the keys' indent.
                    if lines[j].indent == child_indent and not lines[j].text.startswith("-"):
                        km = KEY_LINE.match(lines[j].text)
                        keys.append(unquote(km.group("key").strip()) if km else "")
                    j += 1
                if all(PLAIN_KEY.match(k) for k in keys):
                    if doc:
                        out.append((path, None, doc))
                    i = walk(child, child_indent, path + ".")
                    continue
            value, i = parse_value(lines, i, indent, m.group("value"))
            out.append((path, flow(value), doc))
        return i

    if lines:
        end = walk(0, lines[0].indent, "")
        if end != len(lines):
            fail(lines[end], "unexpected indentation")
    return out


def cell(text):
    return text.replace("|", "\\|")


def code(text):
    # A backtick inside the default needs a longer fence.
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{cell(text)}{pad}{fence}"


chart = read_chart(chart_path)
lines, docs = read_values(values_path)
name = chart.get("name", "climatik")
out = [
    f"# {name}",
    "",
    "<!-- Generated by scripts/chart-readme.sh from Chart.yaml and values.yaml:",
    "     edit those and run the script; make lint fails when this file differs. -->",
    "",
    chart.get("description", ""),
    "",
    f"Chart version {chart.get('version', '?')}, app version "
    f"{chart.get('appVersion', '?')}, Kubernetes {chart.get('kubeVersion', 'any')}.",
    "",
    "## Install",
    "",
    "From a checkout of the repository, with cert-manager installed (or",
    "`--set webhook.tls.mode=generated`) and `PROMETHEUS_URL` set to the",
    "Prometheus that scrapes the DCGM exporter:",
    "",
    "```sh",
    f"kubectl create namespace {name}-project",
    f"kubectl label namespace {name}-project pod-security.kubernetes.io/enforce=privileged",
    f"helm install {name} charts/{name} --namespace {name}-project \\",
    '  --set controller.prometheus.url="$PROMETHEUS_URL" \\',
    "  --wait --timeout 5m",
    "```",
    "",
    "The repository's README (Install) covers upgrades, uninstalling and",
    "simulated GPUs; docs/troubleshooting.md says what to check when",
    "something does not work.",
    "",
    "## Values",
    "",
    "Every value is checked by `values.schema.json`. Set nested values with",
    "dotted keys (`--set freqtuner.gpuBackend=sim`); a map whose keys are",
    "labels (such as `freqtuner.nodeSelector`) is one value (`--set-json`).",
    "",
    "| key | default | description |",
    "|---|---|---|",
]
for path, default, doc in rows(lines, docs):
    shown = "" if default is None else code(default)
    out.append(f"| {code(path)} | {shown} | {cell(doc)} |")
print("\n".join(out))
PY
}

new="$(mktemp)"
trap 'rm -f "$new"' EXIT
render >"$new"

if [[ $mode == check ]]; then
  if ! diff -u --label "charts/climatik/README.md (committed)" --label "charts/climatik/README.md (from values.yaml)" \
    "$readme" "$new"; then
    echo "charts/climatik/README.md is out of date: run scripts/chart-readme.sh and commit the result" >&2
    exit 1
  fi
  exit 0
fi
cp "$new" "$readme"
echo "wrote charts/climatik/README.md"
