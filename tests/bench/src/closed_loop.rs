//! Closed-loop benchmark: our algorithms against the alternatives an
//! operator has, on the same simulated plant, second by second.
//!
//! The plant is [`climatik_sim_gpu::plant`], in one of its measured models: the public
//! vLLM SM-clock sweep (V100-class, memory-bound) or this project's H200
//! sweep (compute-bound); caps scale with the model's peak power. The loop is modelled as it runs in a cluster: every control
//! period the recommender sees power as Prometheus reports it (a few seconds
//! stale), its targets take effect a couple of seconds later, and a GPU with
//! a `powerBudgetWatts` is held under it by the node agent's 1 Hz loop,
//! which reacts to the previous second's load. Prometheus outages freeze the
//! observations (targets are held), and a recommender restart loses the
//! algorithm's state and one period; the new one continues from what the
//! entries on the nodes hold (clock targets and budgets). A cap change reaches the recommender
//! at once (the monitor reconciles on the spec change and writes a fresh
//! status), so it triggers a decision outside the period.
//!
//! Every scenario is a pure function of its seed, so runs are reproducible.

use climatik_api::{CustomAlgorithm, DeviceKind};
use serde::Serialize;

use climatik_controller::algorithm::{self, Algorithm, Clocks, Device, Observation};
use climatik_sim_gpu::{plant::MeasuredCurve, resplit};

use crate::bound::Clairvoyant;

/// Seconds between recommender decisions.
pub const PERIOD_S: usize = 15;
/// Age of the power the recommender sees (scrape + exporter interval).
pub const STALENESS_S: usize = 5;
/// Delay from a decision to clocks in force (API write, watch, NVML call).
pub const ACTUATION_S: usize = 2;
/// Seconds at the start excluded from the overshoot and over-cap figures:
/// every loop starts uncapped and needs a first decision (time to cap
/// covers that start).
pub const WARMUP_S: usize = 2 * PERIOD_S + ACTUATION_S;
/// The original prototype's clock when above the threshold.
pub const THRESHOLD_LOW_CLOCK_MHZ: i32 = 840;

/// One policy of a scenario: its GPUs and cap over time.
#[derive(Debug, Clone)]
pub struct PolicyLoad {
    pub name: String,
    /// Per GPU, per second: utilisation 0..=1.
    pub loads: Vec<Vec<f64>>,
    /// Per GPU, the node it is on (the algorithms group by node).
    pub nodes: Vec<String>,
    /// Per second: the cap in watts.
    pub cap: Vec<f64>,
}

/// A reproducible situation to control.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub seconds: usize,
    pub policies: Vec<PolicyLoad>,
    /// Seconds during which Prometheus answers nothing.
    pub outage: Option<(usize, usize)>,
    /// Second at which the recommender restarts.
    pub restart_at: Option<usize>,
    /// Whether GPU loads differ markedly within a policy.
    pub uneven: bool,
    /// The simulated GPU.
    pub gpu: MeasuredCurve,
}

/// How clocks are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Strategy {
    Uncapped,
    /// Per-GPU power limit = budget / GPUs, enforced by the GPU itself.
    EqualSplitPowerLimit,
    /// The best single clock that keeps the whole run under the cap.
    StaticClockOracle,
    /// Drop to a fixed low clock above the threshold, as the prototype did.
    ThresholdOnly,
    /// One of our recommender algorithms.
    Ours(&'static str),
    /// One of our algorithms with the agent in power-limit mode
    /// (`--gpu-power-limit`): each GPU's `powerBudgetWatts` becomes its
    /// NVML power limit, which the GPU enforces within milliseconds.
    OursPowerLimit(&'static str),
    /// [`OursPowerLimit`](Self::OursPowerLimit) with the policy's
    /// `node-resplit`: each node's budgets for the policy's GPUs there
    /// summed and re-split every second by the demand the node agent
    /// estimates from its last readings, with the agent's own estimator and
    /// split ([`climatik_sim_gpu::resplit`]).
    OursNodeResplit(&'static str),
    /// Not a controller: the most any controller could serve, knowing each
    /// second's load ([`crate::bound`]). Every strategy is measured against it.
    ClairvoyantBound,
}

impl Strategy {
    pub fn label(&self) -> String {
        match self {
            Strategy::Uncapped => "uncapped".into(),
            Strategy::EqualSplitPowerLimit => "equal-split power limit".into(),
            Strategy::StaticClockOracle => "static clock (oracle)".into(),
            Strategy::ThresholdOnly => "threshold-only (prototype)".into(),
            Strategy::Ours(name) => format!("climatik {name}"),
            Strategy::OursPowerLimit(name) => format!("climatik {name} + power limit"),
            Strategy::OursNodeResplit(name) => {
                format!("climatik {name} + node re-split")
            }
            Strategy::ClairvoyantBound => "clairvoyant bound".into(),
        }
    }
}

/// What one run achieved, over all its policies.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub gpu: MeasuredCurve,
    pub strategy: String,
    /// Time to get under the cap: the longest stretch of consecutive
    /// seconds over it (worst policy), in seconds.
    pub time_to_cap_seconds: f64,
    /// The same in control periods.
    pub time_to_cap_periods: f64,
    /// Largest excess over the cap after the warm-up, percent of the cap.
    pub max_overshoot_percent: f64,
    /// Share of 1 s samples over the cap after the warm-up, percent.
    pub samples_over_cap_percent: f64,
    /// Mean power as percent of the cap.
    pub mean_power_percent_of_cap: f64,
    /// Tokens served relative to the uncapped run, percent.
    pub throughput_percent_of_uncapped: f64,
    /// Energy over the run, kJ.
    pub energy_kj: f64,
    /// The clairvoyant bound's tokens relative to the uncapped run,
    /// percent: a feasible allocation, so the true optimum is at least this.
    pub bound_throughput_percent_of_uncapped: Option<f64>,
    /// No allocation under the cap serves more than this (percent of the
    /// uncapped run; the bound's linear relaxation): the gap to the bound
    /// above is all its discretisation could hide.
    pub bound_upper_throughput_percent_of_uncapped: Option<f64>,

    /// This strategy's tokens relative to the clairvoyant bound, percent.
    pub throughput_percent_of_bound: Option<f64>,
}

/// A scenario of one `serving` policy on `gpu`, from its per-GPU loads and
/// its cap per second: no outage, no restart, uneven load. Scenarios that
/// differ override fields with struct update syntax.
fn serving(name: &str, gpu: MeasuredCurve, loads: Vec<Vec<f64>>, cap: Vec<f64>) -> Scenario {
    Scenario {
        name: name.to_string(),
        seconds: cap.len(),
        policies: vec![policy("serving", loads, cap)],
        outage: None,
        restart_at: None,
        uneven: true,
        gpu,
    }
}

/// A policy of a generated scenario: its GPUs four to a node.
pub(crate) fn policy(name: &str, loads: Vec<Vec<f64>>, cap: Vec<f64>) -> PolicyLoad {
    PolicyLoad {
        name: name.to_string(),
        nodes: (0..loads.len())
            .map(|i| format!("node-{}", i / 4))
            .collect(),
        loads,
        cap,
    }
}

/// The benchmark's scenarios on `gpu`, built from `seed`. Caps are written
/// for 250 W parts and scaled by the model's peak power.
pub fn scenarios(seed: u64, gpu: MeasuredCurve) -> Vec<Scenario> {
    let mut rng = Rng::new(seed);
    let scale = gpu.peak_watts() / 250.0;
    let minutes = |m: usize| m * 60;
    let gpus = 8;
    let uneven_levels = |i: usize| if i.is_multiple_of(2) { 1.0 } else { 0.35 };
    // Per GPU: `before` until `at`, then the GPU's uneven level.
    let step_to_uneven = |len: usize, at: usize, before: f64| -> Vec<Vec<f64>> {
        (0..gpus)
            .map(|i| {
                (0..len)
                    .map(|t| if t < at { before } else { uneven_levels(i) })
                    .collect()
            })
            .collect()
    };

    let len = minutes(10);
    let step = serving(
        "step load",
        gpu,
        step_to_uneven(len, 120, 0.3),
        vec![1100.0 * scale; len],
    );

    let len = minutes(15);
    let bursty = serving(
        "bursty inference",
        gpu,
        (0..gpus).map(|_| bursty_trace(&mut rng, len)).collect(),
        vec![1000.0 * scale; len],
    );

    let len = minutes(20);
    let diurnal_loads = (0..gpus)
        .map(|i| {
            let phase = i as f64 * 0.2;
            (0..len)
                .map(|t| {
                    let x = std::f64::consts::PI * t as f64 / len as f64 + phase;
                    (0.15 + 0.85 * x.sin().powi(2)).clamp(0.0, 1.0)
                })
                .collect()
        })
        .collect();
    let diurnal = Scenario {
        uneven: false,
        ..serving(
            "diurnal ramp",
            gpu,
            diurnal_loads,
            vec![1200.0 * scale; len],
        )
    };

    let len = minutes(10);
    let shared = Scenario {
        name: "two policies, shared nodes".into(),
        seconds: len,
        policies: vec![
            policy(
                "training",
                (0..4).map(|_| vec![0.95; len]).collect(),
                vec![650.0 * scale; len],
            ),
            policy(
                "serving",
                (0..4).map(|_| bursty_trace(&mut rng, len)).collect(),
                vec![500.0 * scale; len],
            ),
        ],
        outage: None,
        restart_at: None,
        uneven: true,
        gpu,
    };

    let len = minutes(10);
    let lowered = serving(
        "cap lowered mid-run",
        gpu,
        (0..gpus)
            .map(|i| vec![uneven_levels(i) * 0.9; len])
            .collect(),
        (0..len)
            .map(|t| scale * if t < 300 { 1300.0 } else { 900.0 })
            .collect(),
    );

    let len = minutes(10);
    let outage = Scenario {
        outage: Some((230, 260)),
        ..serving(
            "Prometheus outage 30 s",
            gpu,
            step_to_uneven(len, 240, 0.5),
            vec![1100.0 * scale; len],
        )
    };

    let len = minutes(10);
    let restart = Scenario {
        restart_at: Some(300),
        ..serving(
            "recommender restart",
            gpu,
            (0..gpus).map(|_| bursty_trace(&mut rng, len)).collect(),
            vec![1000.0 * scale; len],
        )
    };

    vec![step, bursty, diurnal, shared, lowered, outage, restart]
}

/// Share of a policy's GPUs' peak power a replayed trace is capped at by
/// default: the bursty scenarios' 1000 W over eight 250 W parts.
pub const TRACE_CAP_SHARE_OF_PEAK: f64 = 0.5;

/// A user's trace as a scenario on `gpu`: one policy per `policy` column
/// value (in order of first appearance), each capped at `cap_watts` or, by
/// default, [`TRACE_CAP_SHARE_OF_PEAK`] of its GPUs' peak power. No outage,
/// no restart.
pub fn from_trace(
    name: &str,
    trace: &crate::trace::LoadTrace,
    gpu: MeasuredCurve,
    cap_watts: Option<f64>,
) -> Scenario {
    let mut policies: Vec<PolicyLoad> = Vec::new();
    for g in &trace.gpus {
        let at = match policies.iter().position(|p| p.name == g.policy) {
            Some(at) => at,
            None => {
                policies.push(PolicyLoad {
                    name: g.policy.clone(),
                    loads: Vec::new(),
                    nodes: Vec::new(),
                    cap: Vec::new(),
                });
                policies.len() - 1
            }
        };
        policies[at].loads.push(g.loads.clone());
        policies[at].nodes.push(g.node.clone());
    }
    for p in &mut policies {
        let cap =
            cap_watts.unwrap_or(TRACE_CAP_SHARE_OF_PEAK * gpu.peak_watts() * p.loads.len() as f64);
        p.cap = vec![cap; trace.seconds];
    }
    Scenario {
        name: name.to_string(),
        seconds: trace.seconds,
        policies,
        outage: None,
        restart_at: None,
        uneven: true,
        gpu,
    }
}

/// Mostly light load with bursts, as an inference server sees: a seeded
/// version of the reference trace's shape.
pub(crate) fn bursty_trace(rng: &mut Rng, seconds: usize) -> Vec<f64> {
    let base = 0.15 + 0.25 * rng.next_f64();
    let mut out = Vec::with_capacity(seconds);
    let mut level = base;
    let mut left = 0usize;
    for _ in 0..seconds {
        if left == 0 {
            if rng.next_f64() < 0.5 {
                level = 0.6 + 0.4 * rng.next_f64();
                left = 10 + (rng.next_f64() * 50.0) as usize;
            } else {
                level = base;
                left = 10 + (rng.next_f64() * 30.0) as usize;
            }
        }
        left -= 1;
        out.push(level);
    }
    out
}

/// xorshift64*: small, seedable, good enough for load traces.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 becomes 1: xorshift stays at 0).
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub(crate) fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a GPU was told: a clock ceiling and an optional power budget.
type Command = (i32, Option<f64>);

/// Per-second trace of one policy under one strategy.
#[derive(Clone)]
pub(crate) struct Trace {
    pub(crate) power: Vec<f64>,
    pub(crate) tokens: Vec<f64>,
}

fn supported(gpu: MeasuredCurve) -> Clocks {
    match Clocks::from_supported(gpu.supported_clocks()) {
        Some(c) => c,
        None => unreachable!("the plant has clocks"),
    }
}

/// Runs `strategy` on `scenario`, measured against the uncapped run only
/// (the bound's figures are `None`) unless it is the bound itself:
/// [`run_all`] solves the bound once for many strategies.
pub fn run(scenario: &Scenario, strategy: Strategy) -> RunResult {
    if strategy == Strategy::ClairvoyantBound {
        let mut results = run_all(scenario, &[strategy], &mut Clairvoyant::default());
        return match results.pop() {
            Some(result) => result,
            None => unreachable!("one result per strategy"),
        };
    }
    let uncapped = uncapped_traces(scenario);
    let reference = Reference {
        uncapped: &uncapped,
        bound: None,
    };
    summarise(
        scenario,
        strategy,
        &run_policies(scenario, strategy),
        &reference,
    )
}

fn uncapped_traces(scenario: &Scenario) -> Vec<Trace> {
    scenario
        .policies
        .iter()
        .map(|p| run_fixed(scenario.gpu, p, scenario.gpu.max_clock()))
        .collect()
}

fn run_policies(scenario: &Scenario, strategy: Strategy) -> Vec<Trace> {
    scenario
        .policies
        .iter()
        .map(|policy| run_policy(scenario, policy, strategy))
        .collect()
}

/// Runs every one of `strategies` on `scenario`, each measured against the
/// uncapped run and the clairvoyant bound (solved once, through `bound`).
pub fn run_all(
    scenario: &Scenario,
    strategies: &[Strategy],
    bound: &mut Clairvoyant,
) -> Vec<RunResult> {
    let uncapped = uncapped_traces(scenario);
    let (best, upper_tokens) = run_bound(scenario, bound);
    let reference = Reference {
        uncapped: &uncapped,
        bound: Some(BoundTokens {
            tokens: best.iter().map(|t| t.tokens.iter().sum::<f64>()).sum(),
            upper_tokens,
        }),
    };
    strategies
        .iter()
        .map(|strategy| {
            let traces = match strategy {
                Strategy::ClairvoyantBound => best.clone(),
                _ => run_policies(scenario, *strategy),
            };
            summarise(scenario, *strategy, &traces, &reference)
        })
        .collect()
}

pub(crate) fn run_policy(scenario: &Scenario, policy: &PolicyLoad, strategy: Strategy) -> Trace {
    match strategy {
        Strategy::Uncapped => run_fixed(scenario.gpu, policy, scenario.gpu.max_clock()),
        Strategy::StaticClockOracle => {
            let clock = oracle_clock(scenario.gpu, policy);
            run_fixed(scenario.gpu, policy, clock)
        }
        Strategy::EqualSplitPowerLimit => run_equal_split(scenario.gpu, policy),
        Strategy::ThresholdOnly
        | Strategy::Ours(_)
        | Strategy::OursPowerLimit(_)
        | Strategy::OursNodeResplit(_) => run_loop(scenario, policy, strategy),
        Strategy::ClairvoyantBound => unreachable!("the bound is solved once per scenario"),
    }
}

/// The clairvoyant bound's trace per policy (each policy's own cap over its
/// own GPUs), and the tokens of its upper bound.
fn run_bound(scenario: &Scenario, bound: &mut Clairvoyant) -> (Vec<Trace>, f64) {
    let mut upper_tokens = 0.0;
    let traces = scenario
        .policies
        .iter()
        .map(|policy| {
            let mut trace = Trace {
                power: Vec::with_capacity(policy.cap.len()),
                tokens: Vec::with_capacity(policy.cap.len()),
            };
            let mut loads = Vec::with_capacity(policy.loads.len());
            for (t, cap) in policy.cap.iter().enumerate() {
                loads.clear();
                loads.extend(policy.loads.iter().map(|l| l[t]));
                let second = bound.second(scenario.gpu, &loads, *cap);
                trace.power.push(second.watts);
                trace.tokens.push(second.tokens);
                upper_tokens += second.upper_tokens;
            }
            trace
        })
        .collect();
    (traces, upper_tokens)
}

fn run_fixed(gpu: MeasuredCurve, policy: &PolicyLoad, clock: i32) -> Trace {
    let seconds = policy.cap.len();
    let mut trace = Trace {
        power: vec![0.0; seconds],
        tokens: vec![0.0; seconds],
    };
    let clock = f64::from(clock);
    for t in 0..seconds {
        for loads in &policy.loads {
            let gpu = gpu.plant(loads[t]);
            trace.power[t] += gpu.power(clock);
            trace.tokens[t] += gpu.throughput(clock);
        }
    }
    trace
}

/// The highest single clock whose power stays under the cap at every second.
fn oracle_clock(gpu: MeasuredCurve, policy: &PolicyLoad) -> i32 {
    let clocks = supported(gpu);
    clocks
        .as_slice()
        .iter()
        .rev()
        .copied()
        .find(|clock| {
            (0..policy.cap.len()).all(|t| {
                let power: f64 = policy
                    .loads
                    .iter()
                    .map(|l| gpu.plant(l[t]).power(f64::from(*clock)))
                    .sum();
                power <= policy.cap[t]
            })
        })
        .unwrap_or_else(|| clocks.min())
}

fn run_equal_split(model: MeasuredCurve, policy: &PolicyLoad) -> Trace {
    let seconds = policy.cap.len();
    let clocks = supported(model);
    let n = policy.loads.len().max(1) as f64;
    let mut trace = Trace {
        power: vec![0.0; seconds],
        tokens: vec![0.0; seconds],
    };
    for t in 0..seconds {
        let limit = policy.cap[t] / n;
        for loads in &policy.loads {
            // The GPU's own power limiter reacts within milliseconds.
            let gpu = model.plant(loads[t]);
            let clock = f64::from(gpu.clock_for_budget(clocks.as_slice(), limit));
            trace.power[t] += gpu.power(clock);
            trace.tokens[t] += gpu.throughput(clock);
        }
    }
    trace
}

/// The algorithm a strategy runs, with the parameters a policy would
/// give it (`node-resplit: "true"` for the node re-split).
fn build(strategy: Strategy) -> Option<Box<dyn Algorithm>> {
    let (name, parameters) = match strategy {
        Strategy::Ours(name) | Strategy::OursPowerLimit(name) => (name, Default::default()),
        Strategy::OursNodeResplit(name) => (
            name,
            [("node-resplit".to_string(), "true".to_string())].into(),
        ),
        _ => return None,
    };
    algorithm::from_spec(Some(&CustomAlgorithm {
        name: name.to_string(),
        parameters,
    }))
    .ok()
}

fn run_loop(scenario: &Scenario, policy: &PolicyLoad, strategy: Strategy) -> Trace {
    let mut control = PolicyLoop::new(scenario, policy, strategy);
    for cap in &policy.cap {
        control.step(*cap);
    }
    control.into_trace()
}

/// One policy's control loop under a strategy (the threshold prototype or
/// one of our algorithms), advanced one second at a time under that
/// second's cap: the loop bench feeds it a scenario's caps, the budget
/// bench (`budget-bench`) the caps its arbitration sets each period.
pub struct PolicyLoop<'a> {
    model: MeasuredCurve,
    policy: &'a PolicyLoad,
    strategy: Strategy,
    outage: Option<(usize, usize)>,
    restart_at: Option<usize>,
    clocks: Clocks,
    algorithm: Option<Box<dyn Algorithm>>,
    /// Commanded per GPU: (clock ceiling, optional budget), and when the
    /// next command lands.
    commanded: Vec<Command>,
    pending: Option<(usize, Vec<Command>)>,
    /// What the GPUs' entries hold: the targets last planned (written at
    /// once, in force after the actuation delay), none before the first
    /// decision. A restarted recommender continues from them.
    entries: Option<Vec<Command>>,
    applied_clock: Vec<i32>,
    per_gpu_power: Vec<Vec<f64>>,
    trace: Trace,
    /// The cap of the second before (a change is acted on at once).
    last_cap: Option<f64>,
}

impl<'a> PolicyLoop<'a> {
    /// The loop of `policy` (one of `scenario`'s, or laid out as they are)
    /// at its first second, every GPU uncapped.
    pub fn new(scenario: &Scenario, policy: &'a PolicyLoad, strategy: Strategy) -> Self {
        let clocks = supported(scenario.gpu);
        let n = policy.loads.len();
        let seconds = policy.loads.first().map_or(0, Vec::len);
        Self {
            model: scenario.gpu,
            policy,
            strategy,
            outage: scenario.outage,
            restart_at: scenario.restart_at,
            algorithm: build(strategy),
            commanded: vec![(clocks.max(), None); n],
            pending: None,
            entries: None,
            applied_clock: vec![clocks.max(); n],
            per_gpu_power: vec![Vec::with_capacity(seconds); n],
            trace: Trace {
                power: Vec::with_capacity(seconds),
                tokens: Vec::with_capacity(seconds),
            },
            last_cap: None,
            clocks,
        }
    }

    /// Runs the next second under `cap`; returns the policy's power and
    /// tokens in it.
    pub fn step(&mut self, cap: f64) -> (f64, f64) {
        let t = self.trace.power.len();
        let (model, policy, strategy) = (self.model, self.policy, self.strategy);
        let n = policy.loads.len();
        if let Some((at, targets)) = &self.pending
            && *at == t
        {
            self.commanded = targets.clone();
            self.pending = None;
        }
        if self.restart_at == Some(t) {
            // A new process: fresh algorithm state, no decision this period;
            // it continues from the entries (`entries`), as the recommender
            // does.
            self.algorithm = build(strategy);
        }
        let budgets: Vec<Option<f64>> = match strategy {
            Strategy::OursNodeResplit(_) => {
                // What the agent read of each GPU in the second before.
                let readings: Vec<Option<resplit::Reading>> = (0..n)
                    .map(|i| {
                        Some(resplit::Reading {
                            power_watts: *self.per_gpu_power[i].last()?,
                            clock_mhz: u32::try_from(self.applied_clock[i]).ok()?,
                        })
                    })
                    .collect();
                node_resplit(model, policy, &self.commanded, &readings)
            }
            _ => self.commanded.iter().map(|c| c.1).collect(),
        };
        let (mut power_now, mut tokens_now) = (0.0, 0.0);
        for (i, loads) in policy.loads.iter().enumerate() {
            let gpu = model.plant(loads[t]);
            let (ceiling, _) = self.commanded[i];
            let clock = match budgets[i] {
                Some(budget) => {
                    // The agent's 1 Hz clock loop sees the previous second's load.
                    let seen = model.plant(loads[t.saturating_sub(1)]);
                    let mut fits = seen.clock_for_budget(self.clocks.as_slice(), budget);
                    if matches!(
                        strategy,
                        Strategy::OursPowerLimit(_) | Strategy::OursNodeResplit(_)
                    ) {
                        // The GPU's own limiter acts within milliseconds, but
                        // accepts no limit below its minimum.
                        let limit = budget.max(model.min_power_limit_watts());
                        fits = fits.min(gpu.clock_for_budget(self.clocks.as_slice(), limit));
                    }
                    fits.min(ceiling)
                }
                None => ceiling,
            };
            self.applied_clock[i] = clock;
            let power = gpu.power(f64::from(clock));
            self.per_gpu_power[i].push(power);
            power_now += power;
            tokens_now += gpu.throughput(f64::from(clock));
        }
        self.trace.power.push(power_now);
        self.trace.tokens.push(tokens_now);

        let cap_changed = t > 0 && self.last_cap.is_some_and(|last| last != cap);
        self.last_cap = Some(cap);
        let decide = t > 0 && (t.is_multiple_of(PERIOD_S) || cap_changed);
        let in_outage = self.outage.is_some_and(|(a, b)| t >= a && t < b);
        let restarting = self.restart_at.is_some_and(|r| t >= r && t < r + PERIOD_S);
        if !decide || in_outage || restarting {
            return (power_now, tokens_now);
        }
        let seen_at = t.saturating_sub(STALENESS_S);
        let targets: Vec<Command> = match strategy {
            Strategy::ThresholdOnly => {
                let power = self.trace.power[seen_at];
                let clock = if power > cap * 0.9 {
                    THRESHOLD_LOW_CLOCK_MHZ
                } else {
                    self.clocks.max()
                };
                vec![(clock, None); n]
            }
            _ => {
                let Some(algorithm) = self.algorithm.as_mut() else {
                    return (power_now, tokens_now);
                };
                let observation = Observation {
                    cap_watts: cap,
                    threshold_percent: 90.0,
                    devices: (0..n)
                        .map(|i| Device {
                            id: format!("GPU-{i}"),
                            node: policy.nodes[i].clone(),
                            kind: DeviceKind::Gpu,
                            power_watts: self.per_gpu_power[i][seen_at],
                            clock_mhz: Some(f64::from(self.applied_clock[i])),
                            clocks: self.clocks.clone(),
                            min_power_limit_watts: Some(model.min_power_limit_watts()),
                            entry_mhz: self.entries.as_ref().map(|e| e[i].0),
                            entry_budget_watts: self.entries.as_ref().and_then(|e| e[i].1),
                        })
                        .collect(),
                };
                let planned = algorithm.plan(&observation);
                let mut targets = self.commanded.clone();
                for target in planned {
                    if let Some(i) = target
                        .id
                        .strip_prefix("GPU-")
                        .and_then(|i| i.parse::<usize>().ok())
                        .filter(|i| *i < n)
                    {
                        targets[i] = (target.frequency_mhz, target.power_budget_watts);
                    }
                }
                targets
            }
        };
        self.entries = Some(targets.clone());
        self.pending = Some((t + ACTUATION_S, targets));
        (power_now, tokens_now)
    }

    pub(crate) fn into_trace(self) -> Trace {
        self.trace
    }
}

/// What every strategy of a scenario is measured against.
struct Reference<'a> {
    /// Per policy, the run at the maximum clock.
    uncapped: &'a [Trace],
    /// The clairvoyant bound, when solved.
    bound: Option<BoundTokens>,
}

/// The clairvoyant bound's tokens over a whole scenario.
struct BoundTokens {
    /// Of its allocation (feasible: a lower bound on the optimum).
    tokens: f64,
    /// No allocation under the caps serves more than this.
    upper_tokens: f64,
}

/// Each GPU's budget in the coming second under the node re-split: per
/// node, when every GPU of the policy there has a budget, their sum split
/// as the node agent splits it, by the demand it estimates from what it
/// read of each GPU in the second before (`readings`: power and applied
/// clock, none before the first second), under the ceiling of the GPU's
/// entry and within its power-limit range; otherwise the budgets as
/// commanded.
fn node_resplit(
    model: MeasuredCurve,
    policy: &PolicyLoad,
    commanded: &[Command],
    readings: &[Option<resplit::Reading>],
) -> Vec<Option<f64>> {
    let mut budgets: Vec<Option<f64>> = commanded.iter().map(|c| c.1).collect();
    let mut nodes: Vec<&str> = Vec::new();
    for node in &policy.nodes {
        if !nodes.contains(&node.as_str()) {
            nodes.push(node);
        }
    }
    let mhz = |clock: i32| u32::try_from(clock).unwrap_or(0);
    for node in nodes {
        let on_node: Vec<usize> = (0..policy.loads.len())
            .filter(|i| policy.nodes[*i] == node)
            .collect();
        let Some(total) = on_node.iter().map(|i| commanded[*i].1).sum::<Option<f64>>() else {
            continue;
        };
        let demands: Vec<resplit::Demand> = on_node
            .iter()
            .map(|i| {
                resplit::Demand::estimate(
                    readings[*i],
                    mhz(commanded[*i].0.min(model.max_clock())),
                    model.min_power_limit_watts(),
                    model.peak_watts(),
                )
            })
            .collect();
        let limits = resplit::split(total, &demands);
        for (i, limit) in on_node.into_iter().zip(limits) {
            budgets[i] = Some(limit);
        }
    }
    budgets
}

fn summarise(
    scenario: &Scenario,
    strategy: Strategy,
    traces: &[Trace],
    reference: &Reference,
) -> RunResult {
    let mut longest = 0usize;
    let mut overshoot = 0.0_f64;
    let mut over = 0usize;
    let mut counted = 0usize;
    let mut mean_percent = 0.0;
    let mut tokens = 0.0;
    let mut tokens_uncapped = 0.0;
    let mut energy = 0.0;
    for ((trace, base), policy) in traces
        .iter()
        .zip(reference.uncapped)
        .zip(&scenario.policies)
    {
        longest = longest.max(longest_excursion(&trace.power, &policy.cap));
        for t in WARMUP_S.min(trace.power.len())..trace.power.len() {
            let cap = policy.cap[t];
            counted += 1;
            if trace.power[t] > cap {
                over += 1;
                overshoot = overshoot.max(100.0 * (trace.power[t] - cap) / cap);
            }
        }
        mean_percent += trace
            .power
            .iter()
            .zip(&policy.cap)
            .map(|(p, c)| 100.0 * p / c)
            .sum::<f64>()
            / trace.power.len() as f64;
        tokens += trace.tokens.iter().sum::<f64>();
        tokens_uncapped += base.tokens.iter().sum::<f64>();
        energy += trace.power.iter().sum::<f64>() / 1000.0;
    }
    RunResult {
        scenario: scenario.name.clone(),
        gpu: scenario.gpu,
        strategy: strategy.label(),
        time_to_cap_seconds: longest as f64,
        time_to_cap_periods: longest as f64 / PERIOD_S as f64,
        max_overshoot_percent: overshoot,
        samples_over_cap_percent: 100.0 * over as f64 / counted.max(1) as f64,
        mean_power_percent_of_cap: mean_percent / scenario.policies.len().max(1) as f64,
        throughput_percent_of_uncapped: 100.0 * tokens / tokens_uncapped.max(f64::EPSILON),
        energy_kj: energy,
        bound_throughput_percent_of_uncapped: reference
            .bound
            .as_ref()
            .map(|b| 100.0 * b.tokens / tokens_uncapped.max(f64::EPSILON)),
        bound_upper_throughput_percent_of_uncapped: reference
            .bound
            .as_ref()
            .map(|b| 100.0 * b.upper_tokens / tokens_uncapped.max(f64::EPSILON)),
        throughput_percent_of_bound: reference
            .bound
            .as_ref()
            .map(|b| 100.0 * tokens / b.tokens.max(f64::EPSILON)),
    }
}

/// The longest run of consecutive seconds with power over the cap.
fn longest_excursion(power: &[f64], cap: &[f64]) -> usize {
    let mut longest = 0;
    let mut run = 0;
    for (p, c) in power.iter().zip(cap) {
        run = if p > c { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

/// Every strategy the benchmark compares.
pub fn strategies() -> Vec<Strategy> {
    vec![
        Strategy::Uncapped,
        Strategy::EqualSplitPowerLimit,
        Strategy::StaticClockOracle,
        Strategy::ThresholdOnly,
        Strategy::Ours(algorithm::FEEDBACK),
        Strategy::Ours(algorithm::BUDGET_ALLOCATOR),
        Strategy::Ours(algorithm::DYNAMIC_FREQUENCY_SCALER),
        Strategy::OursPowerLimit(algorithm::BUDGET_ALLOCATOR),
        Strategy::OursPowerLimit(algorithm::FEEDBACK_BUDGET),
        Strategy::OursNodeResplit(algorithm::FEEDBACK_BUDGET),
        Strategy::ClairvoyantBound,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_reproducible_from_the_seed() {
        let a = scenarios(7, MeasuredCurve::default());
        let b = scenarios(7, MeasuredCurve::default());
        let c = scenarios(8, MeasuredCurve::default());
        assert_eq!(a[1].policies[0].loads, b[1].policies[0].loads);
        assert_ne!(a[1].policies[0].loads, c[1].policies[0].loads);
    }

    #[test]
    fn uncapped_is_the_throughput_reference_and_the_oracle_stays_under() {
        let scenario = &scenarios(1, MeasuredCurve::default())[0];
        let uncapped = run(scenario, Strategy::Uncapped);
        assert!((uncapped.throughput_percent_of_uncapped - 100.0).abs() < 1e-9);
        let oracle = run(scenario, Strategy::StaticClockOracle);
        assert_eq!(oracle.samples_over_cap_percent, 0.0);
        assert_eq!(oracle.time_to_cap_seconds, 0.0);
        assert!(oracle.throughput_percent_of_uncapped < 100.0);
    }

    #[test]
    fn excursions_are_consecutive_seconds_over_the_cap() {
        let cap = vec![10.0; 7];
        assert_eq!(
            longest_excursion(&[20.0, 5.0, 20.0, 20.0, 5.0, 20.0, 5.0], &cap),
            2
        );
        assert_eq!(longest_excursion(&[5.0; 7], &cap), 0);
    }

    #[test]
    fn clocks_under_budgets_beat_the_equal_split_on_uneven_compute_bound_load() {
        for scenario in scenarios(42, MeasuredCurve::H200Compute)
            .iter()
            .filter(|s| s.uneven)
        {
            let ours = run(
                scenario,
                Strategy::OursPowerLimit(algorithm::FEEDBACK_BUDGET),
            );
            let split = run(scenario, Strategy::EqualSplitPowerLimit);
            assert!(
                ours.throughput_percent_of_uncapped >= split.throughput_percent_of_uncapped,
                "{}: {ours:?} vs {split:?}",
                scenario.name
            );
            assert!(ours.samples_over_cap_percent < 1.0, "{ours:?}");
        }
    }

    /// Re-splitting a node's budget every second (the model) moves watts
    /// to the GPUs in a burst without giving up the cap: on uneven
    /// compute-bound load it serves more than per-GPU budgets do.
    #[test]
    fn the_modelled_node_resplit_serves_more_under_the_same_cap() {
        for scenario in scenarios(42, MeasuredCurve::H200Compute)
            .iter()
            .filter(|s| s.uneven)
        {
            let resplit = run(
                scenario,
                Strategy::OursNodeResplit(algorithm::FEEDBACK_BUDGET),
            );
            let per_gpu = run(
                scenario,
                Strategy::OursPowerLimit(algorithm::FEEDBACK_BUDGET),
            );
            assert!(
                resplit.throughput_percent_of_uncapped > per_gpu.throughput_percent_of_uncapped,
                "{}: {resplit:?} vs {per_gpu:?}",
                scenario.name
            );
            assert!(
                resplit.samples_over_cap_percent <= per_gpu.samples_over_cap_percent,
                "{resplit:?} vs {per_gpu:?}"
            );
        }
    }

    /// The re-split knows only what the agent reads: two GPUs that read
    /// the same get the same budget whatever their load, and one held below
    /// its ceiling counts as wanting more than it draws.
    #[test]
    fn the_node_resplit_splits_by_the_agents_readings_not_the_load() {
        let gpu = MeasuredCurve::H200Compute;
        let policy = policy("p", vec![vec![1.0], vec![0.2], vec![0.2]], vec![1200.0]);
        let commanded = vec![(gpu.max_clock(), Some(400.0)); 3];
        let read = |power_watts, clock_mhz| {
            Some(resplit::Reading {
                power_watts,
                clock_mhz,
            })
        };
        let max = u32::try_from(gpu.max_clock()).unwrap_or(0);
        let budgets = node_resplit(
            gpu,
            &policy,
            &commanded,
            &[read(300.0, max), read(300.0, max), read(300.0, max / 2)],
        );
        let [Some(a), Some(b), Some(c)] = budgets[..] else {
            panic!("every GPU budgeted: {budgets:?}");
        };
        assert!((a - b).abs() < 1e-9, "{budgets:?}");
        assert!(c > a, "{budgets:?}");
        assert!(a + b + c <= 1200.0 + 1e-6, "{budgets:?}");
        // Before any reading, an even split.
        let first = node_resplit(gpu, &policy, &commanded, &[None; 3]);
        assert!(
            first
                .iter()
                .all(|b| b.is_some_and(|b| (b - 400.0).abs() < 1e-6)),
            "{first:?}"
        );
    }

    /// The bound never goes over a cap, and no strategy that stays under
    /// the cap every second serves more than its upper bound.
    #[test]
    fn nothing_that_keeps_the_cap_beats_the_bound() {
        for gpu in [MeasuredCurve::V100Opt125m, MeasuredCurve::H200Compute] {
            // The step load and the cap cut: few distinct seconds to solve.
            for scenario in [0, 4].map(|i| scenarios(42, gpu).swap_remove(i)) {
                let results = run_all(&scenario, &strategies(), &mut Clairvoyant::default());
                for r in &results {
                    let (Some(bound), Some(upper), Some(share)) = (
                        r.bound_throughput_percent_of_uncapped,
                        r.bound_upper_throughput_percent_of_uncapped,
                        r.throughput_percent_of_bound,
                    ) else {
                        panic!("run_all measures against the bound: {r:?}");
                    };
                    assert!(bound <= upper && upper < 100.0, "{r:?}");
                    if r.strategy == Strategy::ClairvoyantBound.label() {
                        assert_eq!(r.samples_over_cap_percent, 0.0, "{r:?}");
                        assert_eq!(r.time_to_cap_seconds, 0.0, "{r:?}");
                        assert!((share - 100.0).abs() < 1e-9, "{r:?}");
                    } else if r.time_to_cap_seconds == 0.0 {
                        assert!(r.throughput_percent_of_uncapped <= upper + 1e-9, "{r:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn power_limited_budgets_never_exceed_the_cap() {
        for scenario in [MeasuredCurve::V100Opt125m, MeasuredCurve::H200Compute]
            .into_iter()
            .flat_map(|gpu| scenarios(3, gpu))
        {
            for strategy in [
                Strategy::OursPowerLimit(algorithm::BUDGET_ALLOCATOR),
                Strategy::OursPowerLimit(algorithm::FEEDBACK_BUDGET),
                Strategy::OursNodeResplit(algorithm::FEEDBACK_BUDGET),
            ] {
                let result = run(&scenario, strategy);
                // Until the first decision every GPU is uncapped, so only the
                // first period may exceed.
                assert!(
                    result.time_to_cap_seconds <= (PERIOD_S + ACTUATION_S) as f64,
                    "{}: {result:?}",
                    scenario.name
                );
            }
        }
    }
}
