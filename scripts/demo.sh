#!/usr/bin/env bash
set -euo pipefail
echo "make demo: not built yet (issue: make demo and make bench)" >&2
exit 1
