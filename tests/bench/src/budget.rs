//! Budget bench: one rack power budget shared by workloads of different
//! priority, on the loop bench's simulated plant, against what an operator
//! could do without a shared budget.
//!
//! A rack of GPUs (four to a node) holds three policies: high-priority
//! bursty serving, medium-priority training and low-priority batch jobs.
//! Its budget is [`BUDGET_SHARE_OF_NAMEPLATE`] of the nameplate power of
//! [`BASE_GPUS`] GPUs. Each [`RackStrategy`] keeps (or fails to keep) the
//! rack's power under that budget; ours runs the production arbitration
//! (`climatik_controller::arbitration`) every control period over the three
//! policies and feeds each policy's share, as its effective cap, into the
//! per-policy loop the loop bench simulates (`feedback-budget` with the
//! node re-split, [`PolicyLoop`]). The headline, [`hosted_gpus`], is the
//! largest rack the same budget carries with the high-priority tier within
//! [`HP_LOSS_PERCENT`] of its uncapped throughput and no second over the
//! budget after the first actuation.
//!
//! Every scenario is a pure function of its seed, so runs are reproducible.

use climatik_controller::{algorithm, arbitration};
use climatik_sim_gpu::plant::MeasuredCurve;
use serde::Serialize;

use crate::bound::{self, Point};
use crate::budget_reaction;
use crate::closed_loop::{
    self, ACTUATION_S, PERIOD_S, PolicyLoad, PolicyLoop, Rng, STALENESS_S, Scenario, Strategy,
};

/// GPUs in the scenarios' rack.
pub const BASE_GPUS: usize = 48;
/// The rack's budget as a share of its [`BASE_GPUS`]' nameplate power.
pub const BUDGET_SHARE_OF_NAMEPLATE: f64 = 0.65;
/// The budget during the demand-response cut, as a share of nameplate.
pub const CUT_SHARE_OF_NAMEPLATE: f64 = 0.5;
/// Most the high-priority tier may lose, in percent of its uncapped
/// throughput, in a rack [`hosted_gpus`] counts as hosted.
pub const HP_LOSS_PERCENT: f64 = 3.0;
/// GPUs per node: racks grow a node at a time.
pub const GPUS_PER_NODE: usize = 4;
/// Second from which the rack's power is held to the budget: every loop
/// starts uncapped, and the first decision lands one period plus the
/// actuation delay in.
pub const FIRST_ACTUATION_S: usize = PERIOD_S + ACTUATION_S;
/// Share of its allocation a policy held at it asks for on top, so that it
/// finds out whether it needs more (the arbitration's probe).
pub const PROBE_FRACTION: f64 = 0.1;

/// Share of its cap the per-policy loop holds a policy to: the clock
/// ceilings of `feedback-budget` aim at `feedback`'s default `target`, 97 %
/// of the cap. The arbitration's demand estimate needs the level a policy
/// is held to, not its cap; with the cap, a policy held there never looks
/// held, its demand follows its power down, and the watts it gives up sit
/// unused as the highest tier's headroom.
pub const HELD_SHARE_OF_CAP: f64 = 0.97;

/// The per-policy loop under every strategy that caps a policy: the loop
/// bench's best (`feedback-budget`, power-limit mode, node re-split).
const POLICY_LOOP: Strategy = Strategy::OursNodeResplit(algorithm::FEEDBACK_BUDGET);

/// One workload tier of the rack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Tier {
    Serving,
    Training,
    Batch,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Serving, Tier::Training, Tier::Batch];

    pub fn label(self) -> &'static str {
        match self {
            Tier::Serving => "serving",
            Tier::Training => "training",
            Tier::Batch => "batch",
        }
    }

    /// The policy's `spec.priority`: serving first, batch last.
    pub fn priority(self) -> i32 {
        match self {
            Tier::Serving => 1000,
            Tier::Training => 100,
            Tier::Batch => 0,
        }
    }

    /// The policy's `spec.minWatts` as a share of its GPUs' nameplate
    /// power: serving is guaranteed most of what its bursts draw.
    pub fn guarantee_share_of_nameplate(self) -> f64 {
        match self {
            Tier::Serving => 0.7,
            Tier::Training | Tier::Batch => 0.0,
        }
    }

    /// This tier's GPUs in a rack of `gpus`: a quarter serving, the rest
    /// split evenly between training and batch (each rounded to whole
    /// nodes where the rack allows).
    pub fn gpus(self, gpus: usize) -> usize {
        let serving = gpus / 4;
        let training = (gpus - serving) / 2;
        match self {
            Tier::Serving => serving,
            Tier::Training => training,
            Tier::Batch => gpus - serving - training,
        }
    }
}

/// A rack under a budget: the policies (in [`Tier::ALL`] order) and the
/// budget per second. The policies' own caps are their GPUs' nameplate
/// power: only the budget limits them.
#[derive(Debug, Clone)]
pub struct RackScenario {
    /// The plant and the policies, as the loop bench runs them.
    pub rack: Scenario,
    /// Per second: the rack's budget in watts.
    pub budget: Vec<f64>,
    pub situation: Situation,
}

impl RackScenario {
    pub fn gpus(&self) -> usize {
        self.rack.policies.iter().map(|p| p.loads.len()).sum()
    }

    /// The budget most of the run, in watts (the first second's).
    pub fn nominal_budget(&self) -> f64 {
        self.budget.first().copied().unwrap_or_default()
    }
}

/// The budget the scenarios share on `gpu`, in watts.
pub fn rack_budget(gpu: MeasuredCurve) -> f64 {
    BUDGET_SHARE_OF_NAMEPLATE * BASE_GPUS as f64 * gpu.peak_watts()
}

/// GPUs nameplate provisioning hosts under `budget`: as many as it feeds
/// at full power.
pub fn nameplate_gpus(gpu: MeasuredCurve, budget: f64) -> usize {
    (budget / gpu.peak_watts()).floor() as usize
}

/// Which of the benchmark's situations a rack is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Situation {
    /// Bursty serving, steady training, batch jobs coming and going.
    Oversubscribed,
    /// A day compressed into 20 minutes: serving follows the day, batch
    /// fills the night.
    Diurnal,
    /// The budget cut to [`CUT_SHARE_OF_NAMEPLATE`] for 10 minutes.
    BudgetCut,
    /// The serving GPUs idle until a high-priority workload arrives at
    /// minute 5.
    HighPriorityArrival,
}

impl Situation {
    pub const ALL: [Situation; 4] = [
        Situation::Oversubscribed,
        Situation::Diurnal,
        Situation::BudgetCut,
        Situation::HighPriorityArrival,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Situation::Oversubscribed => "oversubscribed rack",
            Situation::Diurnal => "diurnal day (20 min)",
            Situation::BudgetCut => "budget cut to 50 % for 10 min",
            Situation::HighPriorityArrival => "high-priority arrival mid-run",
        }
    }

    /// Length of the run, in seconds.
    pub fn seconds(self) -> usize {
        match self {
            Situation::Oversubscribed | Situation::HighPriorityArrival => 15 * 60,
            Situation::Diurnal => 20 * 60,
            Situation::BudgetCut => 16 * 60,
        }
    }
}

/// Start and end second of the budget cut.
pub const CUT_SECONDS: (usize, usize) = (3 * 60, 13 * 60);
/// Second the high-priority workload arrives.
pub const ARRIVAL_S: usize = 5 * 60;

/// `situation` on a rack of `gpus` GPUs of model `gpu` under the
/// scenarios' budget ([`rack_budget`]), built from `seed`.
pub fn rack(situation: Situation, gpu: MeasuredCurve, gpus: usize, seed: u64) -> RackScenario {
    let mut rng = Rng::new(seed);
    let len = situation.seconds();
    let day = |t: usize| (std::f64::consts::PI * t as f64 / len as f64).sin().powi(2);
    let policies = Tier::ALL
        .into_iter()
        .map(|tier| {
            let loads: Vec<Vec<f64>> = (0..tier.gpus(gpus))
                .map(|_| match (tier, situation) {
                    (Tier::Serving, Situation::Diurnal) => {
                        let bursts = closed_loop::bursty_trace(&mut rng, len);
                        (0..len).map(|t| bursts[t] * (0.3 + 0.7 * day(t))).collect()
                    }
                    (Tier::Serving, Situation::HighPriorityArrival) => {
                        let bursts = closed_loop::bursty_trace(&mut rng, len);
                        (0..len)
                            .map(|t| if t < ARRIVAL_S { 0.0 } else { bursts[t] })
                            .collect()
                    }
                    (Tier::Serving, _) => closed_loop::bursty_trace(&mut rng, len),
                    (Tier::Training, _) => vec![0.9 + 0.1 * rng.next_f64(); len],
                    (Tier::Batch, Situation::Diurnal) => {
                        let jobs = batch_trace(&mut rng, len);
                        (0..len).map(|t| jobs[t] * (1.0 - 0.5 * day(t))).collect()
                    }
                    (Tier::Batch, _) => batch_trace(&mut rng, len),
                })
                .collect();
            let n = loads.len();
            closed_loop::policy(tier.label(), loads, vec![n as f64 * gpu.peak_watts(); len])
        })
        .collect();
    let nominal = rack_budget(gpu);
    let cut = CUT_SHARE_OF_NAMEPLATE * BASE_GPUS as f64 * gpu.peak_watts();
    let budget = (0..len)
        .map(|t| match situation {
            Situation::BudgetCut if (CUT_SECONDS.0..CUT_SECONDS.1).contains(&t) => cut,
            _ => nominal,
        })
        .collect();
    RackScenario {
        rack: Scenario {
            name: situation.label().into(),
            seconds: len,
            policies,
            outage: None,
            restart_at: None,
            uneven: true,
            gpu,
        },
        budget,
        situation,
    }
}

/// Every situation on the scenarios' rack of [`BASE_GPUS`].
pub fn racks(seed: u64, gpu: MeasuredCurve) -> Vec<RackScenario> {
    Situation::ALL
        .into_iter()
        .map(|s| rack(s, gpu, BASE_GPUS, seed))
        .collect()
}

/// A batch GPU's load: jobs of one to five minutes at 70-100 %, with idle
/// gaps of 10-60 s between them.
fn batch_trace(rng: &mut Rng, seconds: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(seconds);
    let mut running = rng.next_f64() < 0.8;
    while out.len() < seconds {
        let (level, length) = if running {
            (
                0.7 + 0.3 * rng.next_f64(),
                60 + (rng.next_f64() * 240.0) as usize,
            )
        } else {
            (0.0, 10 + (rng.next_f64() * 50.0) as usize)
        };
        out.extend(std::iter::repeat_n(level, length.min(seconds - out.len())));
        running = !running;
    }
    out
}

/// How the rack's power is kept under its budget. The static baselines
/// follow a budget change the moment it comes, as if an operator re-applied
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RackStrategy {
    /// No cap at all: the throughput reference, far over the budget.
    Uncapped,
    /// Only as many GPUs as the budget feeds at full power, uncapped; the
    /// rest of the rack is not hosted.
    Nameplate,
    /// Every GPU's power limit at budget / GPUs.
    StaticPerGpuLimit,
    /// Per-policy caps proportional to each policy's GPUs, each held by the
    /// per-policy loop.
    ProportionalCaps,
    /// Per-policy caps by priority, fixed: serving at its nameplate power
    /// (where the others' minimum limits leave room), the rest split by
    /// GPUs; each held by the per-policy loop, no shared budget.
    PriorityCaps,
    /// Ours: the shared budget's arbitration every period, each policy's
    /// share held by the per-policy loop.
    Arbitration,
    /// Not a controller: the most throughput any allocation of clocks
    /// under the budget serves, knowing every second's load.
    ClairvoyantBound,
}

impl RackStrategy {
    pub const ALL: [RackStrategy; 7] = [
        RackStrategy::Uncapped,
        RackStrategy::Nameplate,
        RackStrategy::StaticPerGpuLimit,
        RackStrategy::ProportionalCaps,
        RackStrategy::PriorityCaps,
        RackStrategy::Arbitration,
        RackStrategy::ClairvoyantBound,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RackStrategy::Uncapped => "uncapped (over budget)",
            RackStrategy::Nameplate => "nameplate provisioning",
            RackStrategy::StaticPerGpuLimit => "static per-GPU limit",
            RackStrategy::ProportionalCaps => "per-policy caps by GPU count",
            RackStrategy::PriorityCaps => "per-policy caps by priority",
            RackStrategy::Arbitration => "climatik shared budget",
            RackStrategy::ClairvoyantBound => "clairvoyant bound",
        }
    }
}

/// One tier's throughput in a run.
#[derive(Debug, Clone, Serialize)]
pub struct TierThroughput {
    pub tier: Tier,
    pub gpus: usize,
    /// Tokens relative to the tier's uncapped run, percent.
    pub throughput_percent_of_uncapped: f64,
}

/// What one strategy achieved on one rack.
#[derive(Debug, Clone, Serialize)]
pub struct RackResult {
    pub scenario: String,
    pub gpu: MeasuredCurve,
    pub strategy: String,
    /// GPUs in the rack, and of them the ones the strategy hosts.
    pub gpus: usize,
    pub hosted_gpus: usize,
    pub budget_watts: f64,
    /// Seconds with the rack's power over the budget after the first
    /// actuation, and their share of those seconds in percent.
    pub seconds_over_budget: usize,
    pub samples_over_budget_percent: f64,
    /// Largest excess over the budget after the first actuation, watts.
    pub max_watts_over_budget: f64,
    /// The high-priority tier's tokens relative to its uncapped run.
    pub high_priority_throughput_percent_of_uncapped: f64,
    /// Per tier (serving, training, batch); empty for the bound.
    pub tiers: Vec<TierThroughput>,
    /// All tokens relative to the uncapped rack, percent.
    pub throughput_percent_of_uncapped: f64,
    pub energy_kj: f64,
    /// The bound's (feasible) tokens and its relaxation's, relative to the
    /// uncapped rack, percent.
    pub bound_throughput_percent_of_uncapped: Option<f64>,
    pub bound_upper_throughput_percent_of_uncapped: Option<f64>,
    /// This strategy's tokens relative to the bound, percent.
    pub throughput_percent_of_bound: Option<f64>,
    /// Periods in which the guarantees alone exceeded the budget (ours).
    pub overcommitted_periods: usize,
    /// Ours: the longest time freed watts waited for a taker after the
    /// first actuation ([`budget_reaction::return_periods`]), in periods.
    pub return_periods: Option<f64>,
    /// The budget cut only: how long it took to reach the devices
    /// ([`budget_reaction::cut_periods`]), in periods.
    pub cut_periods: Option<f64>,
    /// Ours in the high-priority arrival only: how long serving waited for
    /// an allocation covering what it draws uncapped
    /// ([`budget_reaction::covered_periods`]), in periods.
    pub arrival_periods: Option<f64>,
}

/// Per policy (the bound: one series for the rack), per second: power and
/// tokens.
struct RackTraces {
    power: Vec<Vec<f64>>,
    tokens: Vec<Vec<f64>>,
    /// The bound's relaxation over the run (0 for the others).
    upper_tokens: f64,
    /// GPUs hosted (all but under nameplate provisioning).
    hosted: usize,
    overcommitted_periods: usize,
    /// Ours: per policy, per second, the allocation in force (empty for
    /// the others).
    allocations: Vec<Vec<f64>>,
}

/// Runs every one of `strategies` on `scenario`.
pub fn run_all(scenario: &RackScenario, strategies: &[RackStrategy]) -> Vec<RackResult> {
    let uncapped = run(scenario, RackStrategy::Uncapped);
    let bound = clairvoyant(scenario);
    strategies
        .iter()
        .map(|strategy| {
            let owned;
            let traces = match strategy {
                RackStrategy::Uncapped => &uncapped,
                RackStrategy::ClairvoyantBound => &bound,
                _ => {
                    owned = run(scenario, *strategy);
                    &owned
                }
            };
            summarise(scenario, *strategy, traces, &uncapped, Some(&bound))
        })
        .collect()
}

/// Just the arbitration on `scenario`, measured as [`run_all`] would,
/// without the bound (the headline search runs many racks).
pub fn run_ours(scenario: &RackScenario) -> RackResult {
    let uncapped = run(scenario, RackStrategy::Uncapped);
    let ours = run(scenario, RackStrategy::Arbitration);
    summarise(scenario, RackStrategy::Arbitration, &ours, &uncapped, None)
}

fn run(scenario: &RackScenario, strategy: RackStrategy) -> RackTraces {
    let rack = &scenario.rack;
    let fixed = |strategy: Strategy, caps: &dyn Fn(usize, usize) -> f64| {
        RackTraces {
            power: Vec::new(),
            tokens: Vec::new(),
            upper_tokens: 0.0,
            hosted: scenario.gpus(),
            overcommitted_periods: 0,
            allocations: Vec::new(),
        }
        .with_policies(rack.policies.iter().enumerate().map(|(p, policy)| {
            let capped = PolicyLoad {
                cap: (0..rack.seconds).map(|t| caps(p, t)).collect(),
                ..policy.clone()
            };
            closed_loop::run_policy(rack, &capped, strategy)
        }))
    };
    let gpus = scenario.gpus() as f64;
    let share = |p: usize| rack.policies[p].loads.len() as f64 / gpus;
    match strategy {
        RackStrategy::Uncapped | RackStrategy::Nameplate => {
            let mut traces = fixed(Strategy::Uncapped, &|p, t| rack.policies[p].cap[t]);
            if strategy == RackStrategy::Nameplate {
                traces.host_share(nameplate_gpus(rack.gpu, scenario.nominal_budget()));
            }
            traces
        }
        RackStrategy::StaticPerGpuLimit => fixed(Strategy::EqualSplitPowerLimit, &|p, t| {
            scenario.budget[t] * share(p)
        }),
        RackStrategy::ProportionalCaps => fixed(POLICY_LOOP, &|p, t| scenario.budget[t] * share(p)),
        RackStrategy::PriorityCaps => {
            let floor =
                |p: usize| rack.policies[p].loads.len() as f64 * rack.gpu.min_power_limit_watts();
            let serving =
                |t: usize| rack.policies[0].cap[t].min(scenario.budget[t] - floor(1) - floor(2));
            let others = (gpus - rack.policies[0].loads.len() as f64).max(1.0);
            fixed(POLICY_LOOP, &|p, t| match p {
                0 => serving(t),
                _ => {
                    (scenario.budget[t] - serving(t)) * rack.policies[p].loads.len() as f64 / others
                }
            })
        }
        RackStrategy::Arbitration => arbitrated(scenario),
        RackStrategy::ClairvoyantBound => clairvoyant(scenario),
    }
}

impl RackTraces {
    fn with_policies(mut self, traces: impl Iterator<Item = closed_loop::Trace>) -> Self {
        for trace in traces {
            self.power.push(trace.power);
            self.tokens.push(trace.tokens);
        }
        self
    }

    /// Keeps `hosted` of the rack's GPUs, each tier scaled by the same
    /// share: what nameplate provisioning runs of the rack's work.
    fn host_share(&mut self, hosted: usize) {
        let share = hosted as f64 / self.hosted.max(1) as f64;
        for series in self.power.iter_mut().chain(self.tokens.iter_mut()) {
            for x in series.iter_mut() {
                *x *= share;
            }
        }
        self.hosted = hosted;
    }
}

/// Ours: at the start of every period (and at once when the budget
/// changes) the arbitration splits the budget over the policies by
/// priority, each up to its estimated demand; a policy's share is its
/// effective cap, which its loop acts on at once (as on any cap change).
fn arbitrated(scenario: &RackScenario) -> RackTraces {
    let rack = &scenario.rack;
    let mut loops: Vec<PolicyLoop> = rack
        .policies
        .iter()
        .map(|p| PolicyLoop::new(rack, p, POLICY_LOOP))
        .collect();
    let own_caps: Vec<f64> = rack.policies.iter().map(|p| p.cap[0]).collect();
    let mut caps = own_caps.clone();
    let mut allocated: Option<Vec<f64>> = None;
    // The demands of the last arbitration, as the controller reads them back
    // from the budget's status (an unused probe is remembered).
    let mut demands: Option<Vec<f64>> = None;
    let mut power: Vec<Vec<f64>> = vec![Vec::with_capacity(rack.seconds); loops.len()];
    let mut tokens: Vec<Vec<f64>> = vec![Vec::with_capacity(rack.seconds); loops.len()];
    let mut allocations: Vec<Vec<f64>> = vec![Vec::with_capacity(rack.seconds); loops.len()];
    let mut overcommitted_periods = 0;
    for t in 0..rack.seconds {
        let budget_changed = t > 0 && scenario.budget[t] != scenario.budget[t - 1];
        if t > 0 && (t.is_multiple_of(PERIOD_S) || budget_changed) {
            let claims: Vec<arbitration::Claim> = Tier::ALL
                .iter()
                .enumerate()
                .map(|(p, tier)| {
                    // The policy's power as the monitor last measured it
                    // (its status' current power), Prometheus' age old.
                    let measured = power[p][t.saturating_sub(STALENESS_S)];
                    let held_at = allocated.as_ref().map(|a| a[p] * HELD_SHARE_OF_CAP);
                    arbitration::Claim {
                        priority: tier.priority(),
                        min_watts: guarantee_watts(scenario, p),
                        cap_watts: own_caps[p],
                        demand_watts: arbitration::estimate_demand(
                            measured,
                            held_at,
                            demands.as_ref().map(|d| d[p]),
                            PROBE_FRACTION,
                        ),
                        held: arbitration::held_short(
                            measured,
                            held_at,
                            allocated.as_ref().map(|a| a[p]),
                            demands.as_ref().map(|d| d[p]),
                        ),
                    }
                })
                .collect();
            let arbitration = arbitration::allocate(scenario.budget[t], &claims);
            demands = Some(claims.iter().map(|c| c.demand_watts).collect());
            if arbitration.overcommitted {
                overcommitted_periods += 1;
            }
            caps = arbitration
                .watts
                .iter()
                .zip(&own_caps)
                .map(|(share, own)| share.min(*own))
                .collect();
            allocated = Some(arbitration.watts);
        }
        for (p, control) in loops.iter_mut().enumerate() {
            let (watts, served) = control.step(caps[p]);
            power[p].push(watts);
            tokens[p].push(served);
            allocations[p].push(caps[p]);
        }
    }
    RackTraces {
        power,
        tokens,
        upper_tokens: 0.0,
        hosted: scenario.gpus(),
        overcommitted_periods,
        allocations,
    }
}

/// Policy `p`'s `minWatts`: its tier's guarantee, and at least its GPUs'
/// minimum power limits (the GPUs accept no lower limit: a smaller share
/// would not be kept anyway).
fn guarantee_watts(scenario: &RackScenario, p: usize) -> f64 {
    let rack = &scenario.rack;
    let policy = &rack.policies[p];
    (policy.loads.len() as f64 * rack.gpu.min_power_limit_watts())
        .max(Tier::ALL[p].guarantee_share_of_nameplate() * policy.cap[0])
}

/// The clairvoyant bound over the whole rack: each second, the allocation
/// of clocks to every GPU under the budget that serves the most tokens
/// (the relaxation's greedy rounding, [`bound::hull_greedy`]: the exact
/// knapsack is too slow for a rack every second), as one series for the
/// whole rack.
fn clairvoyant(scenario: &RackScenario) -> RackTraces {
    let rack = &scenario.rack;
    let mut frontiers: std::collections::HashMap<u64, Vec<Point>> = Default::default();
    let mut power = Vec::with_capacity(rack.seconds);
    let mut tokens = Vec::with_capacity(rack.seconds);
    let mut upper = 0.0;
    for t in 0..rack.seconds {
        let gpus: Vec<Vec<Point>> = rack
            .policies
            .iter()
            .flat_map(|p| &p.loads)
            .map(|l| {
                frontiers
                    .entry(l[t].to_bits())
                    .or_insert_with(|| bound::plant_points(rack.gpu, l[t]))
                    .clone()
            })
            .collect();
        match bound::hull_greedy(&gpus, scenario.budget[t]) {
            Some(h) => {
                power.push(h.watts);
                tokens.push(h.tokens);
                upper += h.upper_tokens;
            }
            None => {
                // Nothing fits: every GPU at its lowest point.
                let (w, s) = gpus
                    .iter()
                    .filter_map(|g| g.first())
                    .fold((0.0, 0.0), |(w, s), p| (w + p.watts, s + p.tokens));
                power.push(w);
                tokens.push(s);
                upper += s;
            }
        }
    }
    RackTraces {
        power: vec![power],
        tokens: vec![tokens],
        upper_tokens: upper,
        hosted: scenario.gpus(),
        overcommitted_periods: 0,
        allocations: Vec::new(),
    }
}

fn summarise(
    scenario: &RackScenario,
    strategy: RackStrategy,
    traces: &RackTraces,
    uncapped: &RackTraces,
    bound: Option<&RackTraces>,
) -> RackResult {
    let sum = |series: &[Vec<f64>]| series.iter().map(|s| s.iter().sum::<f64>()).sum::<f64>();
    let percent = |a: f64, b: f64| 100.0 * a / b.max(f64::EPSILON);
    let rack_power: Vec<f64> = (0..scenario.rack.seconds)
        .map(|t| traces.power.iter().map(|p| p[t]).sum())
        .collect();
    let counted = FIRST_ACTUATION_S.min(rack_power.len())..rack_power.len();
    let excess: Vec<f64> = counted
        .clone()
        .map(|t| rack_power[t] - scenario.budget[t])
        .collect();
    let over = excess.iter().filter(|e| **e > 0.0).count();
    let uncapped_tokens = sum(&uncapped.tokens);
    let is_bound = strategy == RackStrategy::ClairvoyantBound;
    let tokens = sum(&traces.tokens);
    let tiers: Vec<TierThroughput> = if is_bound {
        Vec::new()
    } else {
        Tier::ALL
            .iter()
            .enumerate()
            .map(|(p, tier)| TierThroughput {
                tier: *tier,
                gpus: scenario.rack.policies[p].loads.len(),
                throughput_percent_of_uncapped: percent(
                    traces.tokens[p].iter().sum(),
                    uncapped.tokens[p].iter().sum(),
                ),
            })
            .collect()
    };
    RackResult {
        scenario: scenario.rack.name.clone(),
        gpu: scenario.rack.gpu,
        strategy: strategy.label().into(),
        gpus: scenario.gpus(),
        hosted_gpus: traces.hosted,
        budget_watts: scenario.nominal_budget(),
        seconds_over_budget: over,
        samples_over_budget_percent: percent(over as f64, excess.len() as f64),
        max_watts_over_budget: excess.iter().copied().fold(0.0, f64::max),
        high_priority_throughput_percent_of_uncapped: tiers
            .first()
            .map_or(f64::NAN, |t| t.throughput_percent_of_uncapped),
        tiers,
        throughput_percent_of_uncapped: percent(tokens, uncapped_tokens),
        energy_kj: rack_power.iter().sum::<f64>() / 1000.0,
        bound_throughput_percent_of_uncapped: bound
            .map(|b| percent(sum(&b.tokens), uncapped_tokens)),
        bound_upper_throughput_percent_of_uncapped: bound
            .map(|b| percent(b.upper_tokens, uncapped_tokens)),
        throughput_percent_of_bound: bound.map(|b| percent(tokens, sum(&b.tokens))),
        overcommitted_periods: traces.overcommitted_periods,
        return_periods: (!traces.allocations.is_empty()).then(|| {
            let guarantees: Vec<f64> = (0..traces.power.len())
                .map(|p| guarantee_watts(scenario, p))
                .collect();
            let stranded = budget_reaction::stranded_watts(
                &scenario.budget,
                &traces.power,
                &uncapped.power,
                &traces.allocations,
                &guarantees,
            );
            budget_reaction::return_periods(&stranded, counted.start)
        }),
        cut_periods: (scenario.situation == Situation::BudgetCut)
            .then(|| budget_reaction::cut_periods(&scenario.budget, &rack_power, CUT_SECONDS)),
        arrival_periods: traces
            .allocations
            .first()
            .zip(uncapped.power.first())
            .filter(|_| scenario.situation == Situation::HighPriorityArrival)
            .map(|(allocation, uncapped)| {
                budget_reaction::covered_periods(allocation, uncapped, ARRIVAL_S)
            }),
    }
}

/// Whether ours hosts the rack: the high-priority tier within
/// [`HP_LOSS_PERCENT`] of uncapped and no second over the budget after the
/// first actuation.
pub fn hosts(result: &RackResult) -> bool {
    result.seconds_over_budget == 0
        && result.high_priority_throughput_percent_of_uncapped >= 100.0 - HP_LOSS_PERCENT
}

/// The largest of `lo, lo + step, ..., hi` for which `passes` holds,
/// assuming it holds up to some size and fails above (a bigger rack under
/// the same budget is never easier); `None` when even `lo` fails. Bisection
/// over the steps: few runs of the costly check.
pub fn largest_passing(
    lo: usize,
    hi: usize,
    step: usize,
    mut passes: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let step = step.max(1);
    if hi < lo || !passes(lo) {
        return None;
    }
    // Invariant: `lo + good * step` passes, `lo + bad * step` fails (or is
    // past `hi`).
    let (mut good, mut bad) = (0, (hi - lo) / step + 1);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if passes(lo + mid * step) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(lo + good * step)
}

/// The headline on one model and seed: GPUs the budget hosts under ours
/// and under nameplate provisioning.
#[derive(Debug, Clone, Serialize)]
pub struct Hosted {
    pub gpu: MeasuredCurve,
    pub seed: u64,
    pub budget_watts: f64,
    pub nameplate_gpus: usize,
    /// The largest rack ours hosts (a node at a time), `None` when not
    /// even nameplate's count.
    pub ours_gpus: Option<usize>,
    /// Ours over nameplate, percent more GPUs.
    pub more_gpus_percent: Option<f64>,
    /// Ours at that rack.
    pub at: Option<RackResult>,
}

/// [`Situation::Oversubscribed`] on racks of growing size under the same
/// budget: the largest that ours hosts ([`hosts`]). Racks grow a node at a
/// time, from the nameplate count up to the largest whose GPUs' minimum
/// power limits fit the budget.
pub fn hosted_gpus(gpu: MeasuredCurve, seed: u64) -> Hosted {
    let budget = rack_budget(gpu);
    let nameplate = nameplate_gpus(gpu, budget);
    let most = (budget / gpu.min_power_limit_watts()).floor() as usize;
    let mut at = None;
    let ours = largest_passing(
        nameplate.next_multiple_of(GPUS_PER_NODE),
        most - most % GPUS_PER_NODE,
        GPUS_PER_NODE,
        |gpus| {
            let result = run_ours(&rack(Situation::Oversubscribed, gpu, gpus, seed));
            let ok = hosts(&result);
            if ok && at.as_ref().is_none_or(|a: &RackResult| a.gpus < gpus) {
                at = Some(result);
            }
            ok
        },
    );
    Hosted {
        gpu,
        seed,
        budget_watts: budget,
        nameplate_gpus: nameplate,
        ours_gpus: ours,
        more_gpus_percent: ours.map(|o| 100.0 * (o as f64 / nameplate.max(1) as f64 - 1.0)),
        at: at.filter(|a| Some(a.gpus) == ours),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MODELS: [MeasuredCurve; 2] = [MeasuredCurve::V100Opt125m, MeasuredCurve::H200Compute];

    #[test]
    fn the_scenarios_rack_is_oversubscribed_as_the_issue_asks() {
        for gpu in MODELS {
            for rack in racks(42, gpu) {
                assert_eq!(rack.gpus(), BASE_GPUS, "{}", rack.rack.name);
                assert!(rack.gpus() >= 32, "a rack of at least 32 GPUs");
                let nameplate = BASE_GPUS as f64 * gpu.peak_watts();
                let share = rack.nominal_budget() / nameplate;
                assert!((0.6..=0.7).contains(&share), "{share}");
                assert_eq!(rack.budget.len(), rack.rack.seconds);
                for p in &rack.rack.policies {
                    assert!(p.loads.iter().all(|l| l.len() == rack.rack.seconds));
                    assert!(p.loads.iter().flatten().all(|l| (0.0..=1.0).contains(l)));
                }
            }
            let nameplate = nameplate_gpus(gpu, rack_budget(gpu));
            assert!(nameplate as f64 * gpu.peak_watts() <= rack_budget(gpu));
            assert!((nameplate + 1) as f64 * gpu.peak_watts() > rack_budget(gpu));
        }
    }

    #[test]
    fn racks_are_reproducible_from_the_seed() {
        let loads = |seed| {
            racks(seed, MeasuredCurve::H200Compute)
                .into_iter()
                .map(|r| {
                    r.rack
                        .policies
                        .into_iter()
                        .map(|p| p.loads)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(loads(7), loads(7));
        assert_ne!(loads(7), loads(8));
    }

    #[test]
    fn the_budget_is_cut_to_half_for_ten_minutes_only_in_the_cut() {
        let gpu = MeasuredCurve::V100Opt125m;
        let half = CUT_SHARE_OF_NAMEPLATE * BASE_GPUS as f64 * gpu.peak_watts();
        let cut = rack(Situation::BudgetCut, gpu, BASE_GPUS, 1);
        let at_half: Vec<usize> = (0..cut.budget.len())
            .filter(|t| cut.budget[*t] == half)
            .collect();
        assert_eq!(at_half.len(), 600);
        assert_eq!(at_half.first(), Some(&CUT_SECONDS.0));
        assert!(
            cut.budget
                .iter()
                .all(|b| *b == half || *b == rack_budget(gpu))
        );
        for other in [
            Situation::Oversubscribed,
            Situation::Diurnal,
            Situation::HighPriorityArrival,
        ] {
            let r = rack(other, gpu, BASE_GPUS, 1);
            assert!(
                r.budget.iter().all(|b| *b == rack_budget(gpu)),
                "{}",
                r.rack.name
            );
        }
    }

    #[test]
    fn the_high_priority_workload_arrives_mid_run() {
        let r = rack(
            Situation::HighPriorityArrival,
            MeasuredCurve::H200Compute,
            16,
            3,
        );
        let serving = &r.rack.policies[0];
        assert_eq!(serving.name, Tier::Serving.label());
        for gpu in &serving.loads {
            assert!(gpu[..ARRIVAL_S].iter().all(|l| *l == 0.0));
            assert!(gpu[ARRIVAL_S..].iter().all(|l| *l > 0.0));
        }
    }

    #[test]
    fn tiers_are_ordered_by_priority() {
        assert!(Tier::Serving.priority() > Tier::Training.priority());
        assert!(Tier::Training.priority() > Tier::Batch.priority());
    }

    #[test]
    fn the_search_finds_the_last_rack_that_passes() {
        // A monotone fake: racks up to 52 GPUs pass.
        let mut checked = Vec::new();
        let found = largest_passing(32, 96, 4, |g| {
            checked.push(g);
            g <= 52
        });
        assert_eq!(found, Some(52));
        // Bisection: far fewer checks than the 17 sizes.
        assert!(checked.len() <= 6, "{checked:?}");
        assert_eq!(largest_passing(32, 96, 4, |_| false), None);
        assert_eq!(largest_passing(32, 96, 4, |_| true), Some(96));
        assert_eq!(largest_passing(32, 98, 4, |_| true), Some(96));
        assert_eq!(largest_passing(40, 32, 4, |_| true), None);
    }

    proptest! {
        /// On any monotone check, bisection agrees with trying every size.
        #[test]
        fn the_search_agrees_with_a_linear_scan(lo in 0usize..50, span in 0usize..200, step in 1usize..9, limit in 0usize..300) {
            let hi = lo + span;
            let linear = (lo..=hi).step_by(step).take_while(|g| *g <= limit).last();
            prop_assert_eq!(largest_passing(lo, hi, step, |g| g <= limit), linear);
        }

        /// The tiers split any rack without losing or inventing a GPU.
        #[test]
        fn the_tiers_split_the_rack(gpus in 0usize..500) {
            prop_assert_eq!(Tier::ALL.iter().map(|t| t.gpus(gpus)).sum::<usize>(), gpus);
        }
    }

    /// A third of the scenarios' rack under a third of their budget: as
    /// oversubscribed, cheaper to run.
    fn small(situation: Situation, gpu: MeasuredCurve, seed: u64) -> RackScenario {
        let mut rack = rack(situation, gpu, BASE_GPUS / 3, seed);
        for b in &mut rack.budget {
            *b /= 3.0;
        }
        rack
    }

    /// Ours on the controller's arbitration keeps the rack under its budget
    /// after the first actuation (but for the actuation delay after the
    /// budget is cut), serves the tiers in priority order, and leaves
    /// little of the budget unused while training and batch want more than
    /// it: watts a policy does not use go to the next one within periods.
    #[test]
    fn ours_keeps_the_budget_serves_by_priority_and_uses_the_watts() {
        for gpu in MODELS {
            for situation in Situation::ALL {
                let rack = small(situation, gpu, 11);
                let traces = arbitrated(&rack);
                let r = summarise(
                    &rack,
                    RackStrategy::Arbitration,
                    &traces,
                    &run(&rack, RackStrategy::Uncapped),
                    None,
                );
                let allowed = if situation == Situation::BudgetCut {
                    ACTUATION_S
                } else {
                    0
                };
                assert!(r.seconds_over_budget <= allowed, "{r:?}");
                let tier = |i: usize| r.tiers[i].throughput_percent_of_uncapped;
                // Bursty serving loses a little of each burst to the
                // actuation delay even when every watt it asks for is
                // given: served in priority order means it reaches the
                // issue's 97 % or at least what training gets.
                assert!(
                    tier(0) >= tier(1).min(crate::budget_report::HP_PERCENT) && tier(1) >= tier(2),
                    "{r:?}"
                );
                // The rack's power as a share of the budget after the
                // first actuation, in the steady oversubscribed rack on the
                // compute-bound model (where every policy draws up to its
                // share).
                if situation == Situation::Oversubscribed && gpu == MeasuredCurve::H200Compute {
                    let used: f64 = (FIRST_ACTUATION_S..rack.rack.seconds)
                        .map(|t| traces.power.iter().map(|p| p[t]).sum::<f64>() / rack.budget[t])
                        .sum::<f64>()
                        / (rack.rack.seconds - FIRST_ACTUATION_S) as f64;
                    assert!(
                        used >= 0.88,
                        "{:?}: {:.1} % of the budget used",
                        gpu,
                        100.0 * used
                    );
                }
            }
        }
    }

    /// The bound never goes over the budget, and no strategy that stays
    /// under it every second serves more than the bound's relaxation.
    #[test]
    fn nothing_that_keeps_the_budget_beats_the_bound() {
        for gpu in MODELS {
            let rack = small(Situation::Oversubscribed, gpu, 5);
            for r in run_all(&rack, &RackStrategy::ALL) {
                let (Some(bound), Some(upper)) = (
                    r.bound_throughput_percent_of_uncapped,
                    r.bound_upper_throughput_percent_of_uncapped,
                ) else {
                    panic!("run_all measures against the bound: {r:?}");
                };
                assert!(bound <= upper && upper < 100.0, "{r:?}");
                if r.strategy == RackStrategy::ClairvoyantBound.label() {
                    assert_eq!(r.seconds_over_budget, 0, "{r:?}");
                } else if r.seconds_over_budget == 0 {
                    assert!(r.throughput_percent_of_uncapped <= upper + 1e-9, "{r:?}");
                }
            }
        }
    }
}
