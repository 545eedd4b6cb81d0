//! The budget bench's report: the table of one seed's runs, the GPUs each
//! seed's budget hosts, and the targets checked on the worst seed.

use std::fmt::Write as _;

use climatik_sim_gpu::plant::MeasuredCurve;
use serde::Serialize;

use crate::budget::{Hosted, RackResult, RackStrategy};

/// Every result and the headline of one seed.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRun {
    pub seed: u64,
    pub results: Vec<RackResult>,
    /// Per model.
    pub hosted: Vec<Hosted>,
}

/// At least this many percent more GPUs than nameplate provisioning.
pub const MORE_GPUS_PERCENT: f64 = 30.0;
/// High-priority throughput, percent of uncapped, at least.
pub const HP_PERCENT: f64 = 97.0;
/// Samples over the budget, percent, under.
pub const OVER_BUDGET_PERCENT: f64 = 0.5;
/// Total throughput above the static per-GPU limit, percent, at least.
pub const GAIN_OVER_STATIC_PERCENT: f64 = 10.0;
/// Share of the clairvoyant bound, percent, at least.
pub const BOUND_PERCENT: f64 = 95.0;
/// Freed watts taken again, and a budget cut on the devices, within this
/// many control periods.
pub const REACTION_PERIODS: f64 = 2.0;

/// One target on one model (and scenario), on the worst seed.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub gpu: MeasuredCurve,
    pub scenario: String,
    pub target: String,
    /// The worst seed's figure, in `unit`.
    pub worst: f64,
    /// `%` or `periods`.
    pub unit: String,
    pub met: bool,
}

fn models(runs: &[SeedRun]) -> Vec<MeasuredCurve> {
    runs.iter()
        .flat_map(|r| &r.results)
        .fold(Vec::new(), |mut models, r| {
            if !models.contains(&r.gpu) {
                models.push(r.gpu);
            }
            models
        })
}

fn scenarios(runs: &[SeedRun], gpu: MeasuredCurve) -> Vec<String> {
    runs.iter()
        .flat_map(|r| &r.results)
        .filter(|r| r.gpu == gpu)
        .fold(Vec::new(), |mut names, r| {
            if !names.contains(&r.scenario) {
                names.push(r.scenario.clone());
            }
            names
        })
}

/// `strategy`'s result on `gpu` and `scenario` in each seed.
fn each_seed<'a>(
    runs: &'a [SeedRun],
    gpu: MeasuredCurve,
    scenario: &'a str,
    strategy: RackStrategy,
) -> impl Iterator<Item = &'a RackResult> + 'a {
    runs.iter().filter_map(move |run| {
        run.results
            .iter()
            .find(|r| r.gpu == gpu && r.scenario == scenario && r.strategy == strategy.label())
    })
}

/// Every target of the issue, per model (and scenario), on the worst seed.
pub fn targets(runs: &[SeedRun]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for gpu in models(runs) {
        let more = runs
            .iter()
            .flat_map(|r| &r.hosted)
            .filter(|h| h.gpu == gpu)
            .map(|h| h.more_gpus_percent.unwrap_or(f64::NEG_INFINITY))
            .fold(f64::INFINITY, f64::min);
        out.push(TargetCheck {
            gpu,
            scenario: crate::budget::Situation::Oversubscribed.label().into(),
            target: format!("GPUs hosted: >= {MORE_GPUS_PERCENT:.0} % more than nameplate"),
            worst: more,
            unit: "%".into(),
            met: more >= MORE_GPUS_PERCENT,
        });
        for scenario in scenarios(runs, gpu) {
            let ours = || each_seed(runs, gpu, &scenario, RackStrategy::Arbitration);
            let min = |f: fn(&RackResult) -> f64| ours().map(f).fold(f64::INFINITY, f64::min);
            let hp = min(|r| r.high_priority_throughput_percent_of_uncapped);
            let over = ours()
                .map(|r| r.samples_over_budget_percent)
                .fold(0.0, f64::max);
            let bound = min(|r| r.throughput_percent_of_bound.unwrap_or(f64::NAN));
            let gain = ours()
                .zip(each_seed(
                    runs,
                    gpu,
                    &scenario,
                    RackStrategy::StaticPerGpuLimit,
                ))
                .map(|(o, s)| {
                    100.0
                        * (o.throughput_percent_of_uncapped / s.throughput_percent_of_uncapped
                            - 1.0)
                })
                .fold(f64::INFINITY, f64::min);
            for (target, worst, met) in [
                (
                    format!("high priority >= {HP_PERCENT:.0} % of uncapped"),
                    hp,
                    hp >= HP_PERCENT,
                ),
                (
                    format!("samples over budget < {OVER_BUDGET_PERCENT} %"),
                    over,
                    over < OVER_BUDGET_PERCENT,
                ),
                (
                    format!("total >= {GAIN_OVER_STATIC_PERCENT:.0} % above static per-GPU limit"),
                    gain,
                    gain >= GAIN_OVER_STATIC_PERCENT,
                ),
                (
                    format!(">= {BOUND_PERCENT:.0} % of the bound"),
                    bound,
                    bound >= BOUND_PERCENT,
                ),
            ] {
                out.push(TargetCheck {
                    gpu,
                    scenario: scenario.clone(),
                    target,
                    worst,
                    unit: "%".into(),
                    met,
                });
            }
            let slowest = |f: fn(&RackResult) -> Option<f64>| ours().filter_map(f).reduce(f64::max);
            for (target, worst) in [
                (
                    format!("freed watts taken within {REACTION_PERIODS:.0} periods"),
                    slowest(|r| r.return_periods),
                ),
                (
                    format!("cut on the devices within {REACTION_PERIODS:.0} periods"),
                    slowest(|r| r.cut_periods),
                ),
            ] {
                if let Some(worst) = worst {
                    out.push(TargetCheck {
                        gpu,
                        scenario: scenario.clone(),
                        target,
                        worst,
                        unit: "periods".into(),
                        met: worst <= REACTION_PERIODS,
                    });
                }
            }
        }
    }
    out
}

/// A percentage as the loop bench writes it; a dash also where there was
/// nothing to measure (no rack hosted, no bound).
fn percent(value: Option<f64>) -> String {
    crate::report::percent(value.filter(|v| v.is_finite()))
}

/// Periods to one decimal; a dash where the figure does not apply.
fn periods(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// A target's worst figure in its unit.
fn figure(check: &TargetCheck) -> String {
    match check.unit.as_str() {
        "%" => percent(Some(check.worst)),
        _ => periods(Some(check.worst)),
    }
}

/// The report: per model the first seed's runs, then the GPUs hosted on
/// every seed, then the targets on the worst seed.
pub fn markdown(runs: &[SeedRun]) -> String {
    let mut out = String::new();
    let Some(first) = runs.first() else {
        return out;
    };
    for gpu in models(runs) {
        let _ = write!(
            out,
            "#### {}, seed {}\n\n| scenario | strategy | GPUs hosted | s over budget | max W over | serving | training | batch | total | energy (MJ) | vs bound |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
            gpu.label(),
            first.seed
        );
        for r in first.results.iter().filter(|r| r.gpu == gpu) {
            let tier = |i: usize| percent(r.tiers.get(i).map(|t| t.throughput_percent_of_uncapped));
            let _ = writeln!(
                out,
                "| {} | {} | {} of {} | {} | {:.0} | {} | {} | {} | {:.1}% | {:.1} | {} |",
                r.scenario,
                r.strategy,
                r.hosted_gpus,
                r.gpus,
                r.seconds_over_budget,
                r.max_watts_over_budget,
                tier(0),
                tier(1),
                tier(2),
                r.throughput_percent_of_uncapped,
                r.energy_kj / 1000.0,
                percent(r.throughput_percent_of_bound)
            );
        }
        out.push('\n');
    }
    let seeds = runs
        .iter()
        .map(|r| r.seed.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        out,
        "#### GPUs hosted per budget, seeds {seeds}\n\n| model | budget (kW) | nameplate provisioning | climatik shared budget, per seed | worst: more GPUs |\n|---|---|---|---|---|\n"
    );
    for gpu in models(runs) {
        let hosted: Vec<&Hosted> = runs
            .iter()
            .flat_map(|r| &r.hosted)
            .filter(|h| h.gpu == gpu)
            .collect();
        let Some(h) = hosted.first() else { continue };
        let per_seed = hosted
            .iter()
            .map(|h| h.ours_gpus.map_or_else(|| "-".into(), |g| g.to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        let worst = hosted
            .iter()
            .map(|h| h.more_gpus_percent.unwrap_or(f64::NEG_INFINITY))
            .fold(f64::INFINITY, f64::min);
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {} | {} |",
            gpu.label(),
            h.budget_watts / 1000.0,
            h.nameplate_gpus,
            per_seed,
            percent(Some(worst))
        );
    }
    let _ = write!(
        out,
        "\n#### How fast ours reacts, in {}-s periods, worst of seeds {seeds}\n\n| model | scenario | freed watts taken | cut on the devices | serving covered after arriving |\n|---|---|---|---|---|\n",
        crate::closed_loop::PERIOD_S
    );
    for gpu in models(runs) {
        for scenario in scenarios(runs, gpu) {
            let slowest = |f: fn(&RackResult) -> Option<f64>| {
                each_seed(runs, gpu, &scenario, RackStrategy::Arbitration)
                    .filter_map(f)
                    .reduce(f64::max)
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                gpu.label(),
                scenario,
                periods(slowest(|r| r.return_periods)),
                periods(slowest(|r| r.cut_periods)),
                periods(slowest(|r| r.arrival_periods)),
            );
        }
    }
    let _ = write!(
        out,
        "\n#### Targets, worst of seeds {seeds}\n\n| model | scenario | target | worst | met |\n|---|---|---|---|---|\n"
    );
    for t in targets(runs) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            t.gpu.label(),
            t.scenario,
            t.target,
            figure(&t),
            if t.met { "yes" } else { "**no**" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(
        strategy: RackStrategy,
        hp: f64,
        total: f64,
        over: f64,
        return_periods: f64,
    ) -> RackResult {
        RackResult {
            scenario: "oversubscribed rack".into(),
            gpu: MeasuredCurve::H200Compute,
            strategy: strategy.label().into(),
            gpus: 48,
            hosted_gpus: 48,
            budget_watts: 1000.0,
            seconds_over_budget: 0,
            samples_over_budget_percent: over,
            max_watts_over_budget: 0.0,
            high_priority_throughput_percent_of_uncapped: hp,
            tiers: Vec::new(),
            throughput_percent_of_uncapped: total,
            energy_kj: 1.0,
            bound_throughput_percent_of_uncapped: Some(90.0),
            bound_upper_throughput_percent_of_uncapped: Some(90.1),
            throughput_percent_of_bound: Some(100.0 * total / 90.0),
            overcommitted_periods: 0,
            return_periods: Some(return_periods),
            cut_periods: None,
            arrival_periods: None,
        }
    }

    fn hosted(seed: u64, ours: Option<usize>) -> Hosted {
        Hosted {
            gpu: MeasuredCurve::H200Compute,
            seed,
            budget_watts: 1000.0,
            nameplate_gpus: 30,
            ours_gpus: ours,
            more_gpus_percent: ours.map(|o| 100.0 * (o as f64 / 30.0 - 1.0)),
            at: None,
        }
    }

    /// Every target is judged on the worst seed, per figure.
    #[test]
    fn targets_take_the_worst_seed_of_each_figure() {
        let runs = vec![
            SeedRun {
                seed: 1,
                results: vec![
                    result(RackStrategy::Arbitration, 99.0, 88.0, 0.0, 1.5),
                    result(RackStrategy::StaticPerGpuLimit, 90.0, 80.0, 0.0, 9.0),
                ],
                hosted: vec![hosted(1, Some(48))],
            },
            SeedRun {
                seed: 2,
                results: vec![
                    result(RackStrategy::Arbitration, 96.0, 86.4, 0.6, 2.4),
                    result(RackStrategy::StaticPerGpuLimit, 90.0, 80.0, 0.0, 9.0),
                ],
                hosted: vec![hosted(2, Some(36))],
            },
        ];
        let checks = targets(&runs);
        let check = |prefix: &str| {
            checks
                .iter()
                .find(|c| c.target.starts_with(prefix))
                .map(|c| (c.worst, c.met))
        };
        let close = |got: Option<(f64, bool)>, want: f64, met: bool| {
            got.is_some_and(|(worst, m)| (worst - want).abs() < 1e-9 && m == met)
        };
        assert!(close(check("GPUs hosted"), 20.0, false), "{checks:?}");
        assert!(close(check("high priority"), 96.0, false), "{checks:?}");
        assert!(close(check("samples over"), 0.6, false), "{checks:?}");
        assert!(close(check("total"), 8.0, false), "{checks:?}");
        assert!(close(check(">= 95"), 96.0, true), "{checks:?}");
        // The slowest return of ours (not the static limit's), in periods.
        assert!(close(check("freed watts"), 2.4, false), "{checks:?}");
        // No run has a cut: no target for it.
        assert!(check("cut").is_none(), "{checks:?}");
        let table = markdown(&runs);
        assert!(table.contains("| 48, 36 | 20.0% |"), "{table}");
        assert!(
            table.contains("| oversubscribed rack | 2.4 | - | - |"),
            "{table}"
        );
    }
}
