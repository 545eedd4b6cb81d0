#!/usr/bin/env bash
# The NVML check on a GPU machine (see freqtuner/README.md): the probe's
# read, lock, clock sweep (compute- and memory-bound load), power-budget loop
# (clock loop under both loads, then power-limit mode), crash/restore and an
# unprivileged lock attempt, through the agent's own Actuator. Puts the
# clocks and power limit back on exit whatever happens.
# Usage: scripts/gpu-check/run.sh PROBE OUTDIR
set -u
probe=$1 out=$2
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
load_pid=""
initial_pl=$(nvidia-smi --query-gpu=power.limit --format=csv,noheader,nounits | head -1)
stop_load() { [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null; load_pid=""; }
cleanup() {
  stop_load
  nvidia-smi -rgc >/dev/null 2>&1
  [ -n "$initial_pl" ] && nvidia-smi -pl "${initial_pl%.*}" >/dev/null 2>&1
  nvidia-smi --query-gpu=clocks.sm,power.draw,power.limit --format=csv >>"$out/smi.txt" 2>&1
}
trap cleanup EXIT
start_load() { # mode seconds
  python3 "$here/load.py" "$1" "$2" >>"$out/load.csv" &
  load_pid=$!
  sleep 8 # CUDA start-up and warm-up
}
smi() { echo "-- $*" >>"$out/smi.txt"; nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv >>"$out/smi.txt" 2>&1; nvidia-smi --query-gpu=clocks_event_reasons.active --format=csv >>"$out/smi.txt" 2>&1; }
step() { echo; echo "== $*"; }

smi start; nvidia-smi -q -d CLOCK,POWER,PERFORMANCE >>"$out/smi.txt" 2>&1
step info; "$probe" info; echo "rc=$?"
if command -v setpriv >/dev/null; then
  step "lock as an unprivileged user (expect a permission error)"
  setpriv --reuid=65534 --regid=65534 --clear-groups "$probe" lock; echo "rc=$?"
fi
step lock; "$probe" lock; echo "rc=$?"

step "sweep under compute load"
start_load compute 75
"$probe" sweep --steps 10 --hold 4 --out "$out/sweep-compute.jsonl"; echo "rc=$?"
stop_load

step "sweep under memory load"
start_load memory 75
"$probe" sweep --steps 10 --hold 4 --out "$out/sweep-memory.jsonl"; echo "rc=$?"
stop_load

step "budget loop under memory load"
start_load memory 40
"$probe" budget --watts 400 --phase 20 --out "$out/budget-memory.jsonl"; echo "rc=$?"
stop_load

step "budget loop under compute load"
start_load compute 130
"$probe" budget --watts 450,300,550 --phase 20 --out "$out/budget.jsonl"; echo "rc=$?"
step "power-limit mode"
"$probe" budget --power-limit-mode --watts 350 --phase 12 --out "$out/budget-pl.jsonl"; echo "rc=$?"

step "crash, then restore at start-up"
crash=$(mktemp -d)
"$probe" --state-dir "$crash" crash; echo "rc=$? (an abort is expected)"
cat "$crash/nvml.json"; echo
sleep 2; smi "after crash (clock should stay locked)"
"$probe" --state-dir "$crash" restore; echo "rc=$?"
cat "$crash/nvml.json"; echo
sleep 2; smi "after restore (clock should be back up)"
stop_load
smi end
