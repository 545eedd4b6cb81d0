"""Turns the files scripts/gpu-check/run.sh wrote into the Markdown tables
of docs/hardware/: the clock sweeps (power and work per locked clock) and
the budget loop (time to get under, samples over, mean power).

    python3 scripts/gpu-check/summarize.py docs/hardware/h200-2026-11-28
"""
import csv
import itertools
import json
import sys
from pathlib import Path

SKIP_S = 1.0  # settling time dropped at the start of each sweep step


def rows(path):
    return [json.loads(line) for line in path.open()]


def sweep_table(run, name, load, unit):
    print(f"\n| locked SM clock (MHz) | SM clock read (MHz) | power (W) | {name} ({unit}) | work per W |")
    print("| --- | --- | --- | --- | --- |")
    for locked, group in itertools.groupby(rows(run / f"sweep-{name}.jsonl"), key=lambda r: r["phase"]["locked_mhz"]):
        group = list(group)
        group = [r for r in group if r["t"] - group[0]["t"] >= SKIP_S]
        t0, t1 = group[0]["unix"], group[-1]["unix"]
        power = sum(r["power_w"] for r in group) / len(group)
        clocks = sorted({r["sm_mhz"] for r in group})
        work = [w for t, mode, w in load if mode == name and t0 <= t <= t1]
        mean_work = sum(work) / len(work) if work else float("nan")
        label = "none (default)" if locked is None else str(locked)
        read = f"{clocks[0]}" if len(clocks) == 1 else f"{clocks[0]}–{clocks[-1]}"
        print(f"| {label} | {read} | {power:.0f} | {mean_work:.0f} | {mean_work / power:.2f} |")


def budget_table(run, name):
    print("\n| budget (W) | first sample under (s) | samples over | over after 3 s | max (W) | mean after 3 s (W) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for budget, group in itertools.groupby(rows(run / f"{name}.jsonl"), key=lambda r: r["phase"]["budget_w"]):
        group = list(group)
        if budget is None:
            continue
        t0 = group[0]["t"]
        settled = [r for r in group if r["t"] - t0 > 3]
        under = next((r["t"] - t0 for r in group if r["power_w"] <= budget), None)
        over = sum(r["power_w"] > budget for r in group)
        over_late = sum(r["power_w"] > budget for r in settled)
        mean = sum(r["power_w"] for r in settled) / len(settled)
        print(f"| {budget:.0f} | {under:.1f} | {over}/{len(group)} | {over_late}/{len(settled)} | "
              f"{max(r['power_w'] for r in group):.0f} | {mean:.0f} |")


def main():
    run = Path(sys.argv[1])
    load = [(float(t), mode, float(w)) for t, mode, w in csv.reader((run / "load.csv").open())]
    print("### Clock sweep, compute-bound load (bf16 8192² matrix products)")
    sweep_table(run, "compute", load, "TFLOP/s")
    print("\n### Clock sweep, memory-bound load (2 GiB device-to-device copies)")
    sweep_table(run, "memory", load, "GB/s")
    if (run / "budget-memory.jsonl").exists():
        print("\n### Budget loop (clock steps at 1 Hz), memory-bound load")
        budget_table(run, "budget-memory")
    print("\n### Budget loop (clock steps at 1 Hz), compute-bound load")
    budget_table(run, "budget")
    print("\n### Power-limit mode (the GPU's own limit set to the budget)")
    budget_table(run, "budget-pl")


main()
