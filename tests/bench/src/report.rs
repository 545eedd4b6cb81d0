//! The loop bench's report: the Markdown tables of one seed's results, and
//! the summary over seeds (per scenario and strategy, the worst and the
//! mean), shared by the scenario run and a replayed trace.

use std::fmt::Write as _;

use climatik_sim_gpu::plant::MeasuredCurve;
use serde::Serialize;

use crate::closed_loop::RunResult;

/// Every result of one seed.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRun {
    pub seed: u64,
    pub results: Vec<RunResult>,
}

/// Lowest, mean and highest of one figure over seeds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: impl Iterator<Item = f64>) -> Option<Self> {
        let (mut min, mut max, mut sum, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize);
        for v in values {
            min = min.min(v);
            max = max.max(v);
            sum += v;
            n += 1;
        }
        (n > 0).then(|| Spread {
            min,
            mean: sum / n as f64,
            max,
        })
    }
}

/// One scenario and strategy over every seed.
#[derive(Debug, Clone, Serialize)]
pub struct SeedSummary {
    pub gpu: MeasuredCurve,
    pub scenario: String,
    pub strategy: String,
    pub seeds: usize,
    pub throughput_percent_of_bound: Option<Spread>,
    pub throughput_percent_of_uncapped: Spread,
    pub samples_over_cap_percent: Spread,
    pub max_overshoot_percent: Spread,
}

/// Per model, scenario and strategy (in the order of the first seed's
/// results), the spread of the figures over `runs`.
pub fn summarise_seeds(runs: &[SeedRun]) -> Vec<SeedSummary> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .results
        .iter()
        .filter_map(|key| {
            let same: Vec<&RunResult> = runs
                .iter()
                .flat_map(|run| &run.results)
                .filter(|r| {
                    r.gpu == key.gpu && r.scenario == key.scenario && r.strategy == key.strategy
                })
                .collect();
            let spread = |f: fn(&RunResult) -> f64| Spread::of(same.iter().map(|r| f(r)));
            Some(SeedSummary {
                gpu: key.gpu,
                scenario: key.scenario.clone(),
                strategy: key.strategy.clone(),
                seeds: same.len(),
                throughput_percent_of_bound: Spread::of(
                    same.iter().filter_map(|r| r.throughput_percent_of_bound),
                ),
                throughput_percent_of_uncapped: spread(|r| r.throughput_percent_of_uncapped)?,
                samples_over_cap_percent: spread(|r| r.samples_over_cap_percent)?,
                max_overshoot_percent: spread(|r| r.max_overshoot_percent)?,
            })
        })
        .collect()
}

/// A percentage to one decimal, or a dash when it was not measured.
pub(crate) fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}%"))
}

/// One table per GPU model: every result of one seed.
pub fn markdown(results: &[RunResult]) -> String {
    let mut out = String::new();
    let mut gpu = None;
    for r in results {
        if gpu != Some(r.gpu) {
            gpu = Some(r.gpu);
            let _ = write!(
                out,
                "{}#### {}\n\n| scenario | strategy | time to cap (periods) | max overshoot | samples over cap | mean power / cap | throughput vs uncapped | energy (kJ) | throughput vs bound |\n|---|---|---|---|---|---|---|---|---|\n",
                if out.is_empty() { "" } else { "\n" },
                r.gpu.label()
            );
        }
        let settle = format!("{:.1}", r.time_to_cap_periods);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1}% | {:.1}% | {:.0}% | {:.1}% | {:.0} | {} |",
            r.scenario,
            r.strategy,
            settle,
            r.max_overshoot_percent,
            r.samples_over_cap_percent,
            r.mean_power_percent_of_cap,
            r.throughput_percent_of_uncapped,
            r.energy_kj,
            percent(r.throughput_percent_of_bound)
        );
    }
    out
}

/// The strategies the README's compact tables follow over seeds.
pub const HEADLINE_STRATEGIES: [&str; 2] = [
    "climatik feedback-budget + power limit",
    "climatik feedback-budget + node re-split",
];

/// The summary over `seeds`: per model, every scenario and strategy's
/// worst and mean share of the bound and worst cap figures; then, for each
/// of [`HEADLINE_STRATEGIES`], the worst share of the bound per scenario on
/// both models side by side.
pub fn seeds_markdown(seeds: &[u64], summary: &[SeedSummary]) -> String {
    let seeds = seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = String::new();
    let mut gpu = None;
    for s in summary {
        if gpu != Some(s.gpu) {
            gpu = Some(s.gpu);
            let _ = write!(
                out,
                "{}#### {} over seeds {seeds}\n\n| scenario | strategy | vs bound (min) | vs bound (mean) | vs uncapped (min) | samples over cap (max) | max overshoot (max) |\n|---|---|---|---|---|---|---|\n",
                if out.is_empty() { "" } else { "\n" },
                s.gpu.label()
            );
        }
        let bound = s.throughput_percent_of_bound;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1}% | {:.1}% | {:.1}% |",
            s.scenario,
            s.strategy,
            percent(bound.map(|b| b.min)),
            percent(bound.map(|b| b.mean)),
            s.throughput_percent_of_uncapped.min,
            s.samples_over_cap_percent.max,
            s.max_overshoot_percent.max
        );
    }
    for strategy in HEADLINE_STRATEGIES {
        headline_markdown(&mut out, strategy, &seeds, summary);
    }
    out
}

/// `strategy`'s worst share of the bound per scenario, one column per model.
fn headline_markdown(out: &mut String, strategy: &str, seeds: &str, summary: &[SeedSummary]) {
    let headline: Vec<&SeedSummary> = summary.iter().filter(|s| s.strategy == strategy).collect();
    if headline.is_empty() {
        return;
    }
    let models: Vec<MeasuredCurve> = headline.iter().fold(Vec::new(), |mut models, s| {
        if !models.contains(&s.gpu) {
            models.push(s.gpu);
        }
        models
    });
    let _ = write!(
        out,
        "\n#### {strategy}: ours / bound, worst of seeds {seeds}\n\n| scenario |{}\n|---|{}\n",
        models
            .iter()
            .map(|m| format!(" {} |", m.label()))
            .collect::<String>(),
        "---|".repeat(models.len())
    );
    let mut scenarios: Vec<&str> = Vec::new();
    for s in &headline {
        if !scenarios.contains(&s.scenario.as_str()) {
            scenarios.push(&s.scenario);
        }
    }
    for scenario in scenarios {
        let cells: String = models
            .iter()
            .map(|m| {
                let cell = headline
                    .iter()
                    .find(|s| s.gpu == *m && s.scenario == scenario)
                    .and_then(|s| s.throughput_percent_of_bound)
                    .map(|b| b.min);
                format!(" {} |", percent(cell))
            })
            .collect();
        let _ = writeln!(out, "| {scenario} |{cells}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(seed_share: f64, over: f64) -> RunResult {
        RunResult {
            scenario: "step load".into(),
            gpu: MeasuredCurve::H200Compute,
            strategy: HEADLINE_STRATEGIES[0].into(),
            time_to_cap_seconds: 0.0,
            time_to_cap_periods: 0.0,
            max_overshoot_percent: over,
            samples_over_cap_percent: over / 10.0,
            mean_power_percent_of_cap: 90.0,
            throughput_percent_of_uncapped: seed_share * 0.8,
            energy_kj: 1.0,
            bound_throughput_percent_of_uncapped: Some(80.0),
            bound_upper_throughput_percent_of_uncapped: Some(80.1),
            throughput_percent_of_bound: Some(seed_share),
        }
    }

    #[test]
    fn the_summary_keeps_the_worst_and_the_mean_of_every_seed() {
        let runs = vec![
            SeedRun {
                seed: 42,
                results: vec![result(96.0, 0.0)],
            },
            SeedRun {
                seed: 7,
                results: vec![result(90.0, 4.0)],
            },
        ];
        let summary = summarise_seeds(&runs);
        assert_eq!(summary.len(), 1);
        let s = &summary[0];
        assert_eq!(s.seeds, 2);
        assert_eq!(
            s.throughput_percent_of_bound,
            Some(Spread {
                min: 90.0,
                mean: 93.0,
                max: 96.0
            })
        );
        assert_eq!(s.max_overshoot_percent.max, 4.0);
        let table = seeds_markdown(&[42, 7], &summary);
        assert!(
            table.contains("| step load | 90.0% |"),
            "the compact table shows the worst seed: {table}"
        );
    }
}
