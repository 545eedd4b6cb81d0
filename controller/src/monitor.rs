//! The power usage monitor (`powercapping-controller`): for each policy,
//! selector -> pods -> nodes and GPUs -> Prometheus -> `status`. A GPU
//! series counts only from the exporters' jobs and for a GPU the node agents
//! reported (see [`observe`]). The same process runs the [`generator`] of
//! policies from workload annotations.
//!
//! Work per policy per period is kept small, so 1000s of policies are each
//! measured every period: pods come from one shared watch
//! ([`pod_cache`]), power from one Prometheus query shared by all policies
//! ([`power_cache`]).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use climatik_api::{
    DeviceKind, NodeFrequencies, PowerCappingPolicy, PowerCappingPolicyStatus,
    bounds::{MAX_PRIORITY, MIN_PRIORITY},
    names::{MANAGER_CONTROLLER, conditions},
    policy::effective_priority,
};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};

use crate::{
    Error, Result,
    backlog::{self, Backlog},
    budget,
    cap::effective_cap_watts,
    conditions::{Decided, is_true, render, transitions},
    driver,
    due::{self, StatusWrites},
    energy::{self, Reading},
    fair::{RECONCILE_SLOTS, Slots},
    generator::{self, GeneratorConfig},
    lease::{Leadership, LeaseConfig},
    metrics::{Metrics, PolicyLabels},
    observe::{self, GpuReading, Ignored, Inventory, PodOnNode},
    pod_cache,
    policy_metrics::PolicyReading,
    power_cache::PowerCache,
    prom::Prometheus,
    reachable,
};
use climatik_runtime::{ReadyFlag, Shutdown};

/// Intervals between two measurements of a policy longer than this many
/// periods are left out of its energy and capping time: the power in
/// between is unknown.
const MAX_GAP_PERIODS: u32 = 3;

/// Most pod names listed in `status.matchedPods`: what the schema allows.
const MAX_LISTED_PODS: usize = climatik_api::bounds::MAX_MATCHED_PODS;

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub prometheus_url: String,
    pub prometheus_timeout: Duration,
    /// Read CPU power from Kepler.
    pub kepler: bool,
    /// Prometheus jobs whose DCGM series are believed (any job when empty).
    pub dcgm_jobs: Vec<String>,
    /// Prometheus jobs whose Kepler series are believed (any job when
    /// empty).
    pub kepler_jobs: Vec<String>,
    /// How often each policy is measured.
    pub interval: Duration,
    /// Leader election; `None` runs as the only replica.
    pub lease: Option<LeaseConfig>,
    /// Only policies in this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Names this replica in events.
    pub identity: String,
    /// Runs the policy generator (generated policies from workload
    /// annotations) beside the monitor, under the same leadership, with
    /// this full-resync period; `None` runs the monitor alone.
    pub generator_resync: Option<Duration>,
    /// When a measurement is worth a status write.
    pub status_writes: StatusWrites,
    /// Runs the budget controller (PowerBudgets) beside the monitor, under
    /// the same leadership.
    pub power_budgets: bool,
}

struct Context {
    client: kube::Client,
    /// Every policy's power, one query a period.
    power: PowerCache,
    /// The pods selectors are matched against (stripped, see
    /// [`pod_cache::strip`]).
    pods: Store<k8s_openapi::api::core::v1::Pod>,
    config: MonitorConfig,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    /// The node agents' GPU inventories (NodeFrequencies status).
    node_frequencies: Store<NodeFrequencies>,
    /// The last hour of each policy's energy (`status.energy`).
    energy: energy::Windows,
    /// When each policy was last measured.
    backlog: Backlog,
}

/// Runs the monitor until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    config: MonitorConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    run_with_readiness(client, config, metrics, shutdown, ReadyFlag::default()).await
}

/// [`run`], setting `ready` once the watches have synced (`/readyz`).
pub async fn run_with_readiness(
    client: kube::Client,
    config: MonitorConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: ReadyFlag,
) -> Result<()> {
    let shutdown = Shutdown::new(shutdown);
    let prometheus = Prometheus::new(&config.prometheus_url, config.prometheus_timeout)?;
    let (leadership, election) = driver::elect(&client, config.lease.as_ref(), &metrics, &shutdown);
    let (node_frequencies, reflector_task) = driver::node_frequencies(&client, &shutdown);
    let (pods, pod_task) = pod_cache::watch(&client, config.namespace.as_deref(), &shutdown);
    let query = observe::power_query(
        config.namespace.as_deref(),
        &config.dcgm_jobs,
        config.kepler.then_some(config.kepler_jobs.as_slice()),
    );
    let power = PowerCache::new(prometheus.clone(), query, config.interval, metrics.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER_CONTROLLER.to_string(),
            instance: Some(config.identity.clone()),
        },
    );
    let context = Arc::new(Context {
        client: client.clone(),
        power,
        pods: pods.clone(),
        config,
        recorder,
        metrics,
        leadership,
        node_frequencies: node_frequencies.clone(),
        energy: energy::Windows::default(),
        backlog: Backlog::default(),
    });
    // Before the inventories are listed every GPU series would be
    // ignored, and before the pods are, every policy would match none.
    tokio::select! {
        _ = async {
            let _ = node_frequencies.wait_until_ready().await;
            let _ = pods.wait_until_ready().await;
        } => {}
        _ = shutdown.wait() => {}
    }
    let namespace = context.config.namespace.clone();
    let generator = context.config.generator_resync.map(|resync| {
        tokio::spawn(generator::run(
            client.clone(),
            GeneratorConfig {
                namespace: namespace.clone(),
                resync,
            },
            context.leadership.clone(),
            context.metrics.clone(),
            shutdown.wait(),
        ))
    });
    let budgets = context.config.power_budgets.then(|| {
        tokio::spawn(budget::run(
            budget::Shared {
                client: client.clone(),
                prometheus: prometheus.clone(),
                recorder: context.recorder.clone(),
                metrics: context.metrics.clone(),
                leadership: context.leadership.clone(),
                node_frequencies: context.node_frequencies.clone(),
            },
            budget::BudgetConfig {
                interval: context.config.interval,
                dcgm_jobs: context.config.dcgm_jobs.clone(),
                namespace: namespace.clone(),
            },
            shutdown.clone(),
        ))
    });
    let reconciler = driver::Reconciler {
        reconcile,
        leadership: context.leadership.clone(),
        stepped_down: Action::requeue(context.config.interval),
        slots: Slots::new(RECONCILE_SLOTS, context.metrics.reconcile_waiting()),
        urgent: spec_changed,
    };
    let controller = driver::policy_controller(client, namespace.as_deref(), &shutdown);
    let sweep = tokio::spawn(sweep_policy_series(
        controller.store(),
        context.clone(),
        shutdown.wait(),
    ));
    let backlog_task = {
        let ctx = context.clone();
        let policies = controller.store();
        let stop = shutdown.wait();
        tokio::spawn(async move {
            let interval = ctx.config.interval;
            backlog::report(
                &ctx.backlog,
                policies,
                ctx.leadership.clone(),
                &ctx.metrics,
                interval,
                stop,
            )
            .await;
        })
    };
    driver::run_policies(controller, reconciler, error_policy, context, ready).await;
    backlog_task.abort();
    if let Some(generator) = generator {
        let _ = generator.await;
    }
    if let Some(budgets) = budgets {
        let _ = budgets.await;
    }
    sweep.abort();
    reflector_task.abort();
    pod_task.abort();
    driver::stop_election(election).await;
    Ok(())
}

/// Every period until `shutdown`, removes the per-policy series and energy
/// windows of policies the watch no longer lists (policies carry no
/// finalizer, so no reconcile sees them go), and all of them while this
/// replica does not lead (on leading again, a window starts from the
/// stored status). Nothing is removed before the watch has listed every
/// policy.
async fn sweep_policy_series(
    policies: Store<PowerCappingPolicy>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()>,
) {
    let sweep = async {
        if !driver::synced(&policies).await {
            return;
        }
        let mut ticks = tokio::time::interval(ctx.config.interval);
        loop {
            ticks.tick().await;
            let leading = ctx.leadership.is_leader();
            let keep = |p: &PolicyLabels| {
                leading
                    && policies
                        .get(&ObjectRef::new(&p.policy).within(&p.namespace))
                        .is_some()
            };
            ctx.metrics.policies.retain(keep);
            ctx.energy.retain(keep);
        }
    };
    tokio::select! {
        _ = sweep => {}
        _ = shutdown => {}
    }
}

fn error_policy(policy: Arc<PowerCappingPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(policy = %policy.name_any(), namespace = ?policy.namespace(), %error, "reconcile failed");
    ctx.metrics.failed(error);
    Action::requeue(Duration::from_secs(5).min(ctx.config.interval))
}

/// One span per reconciliation, named after the policy, so its logs and
/// the API calls under it can be told apart from other policies'.
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(
        controller = "powercapping-controller",
        policy = %policy.name_any(),
        namespace = %policy.namespace().unwrap_or_default(),
    )
)]
async fn reconcile(policy: Arc<PowerCappingPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let requeue = Action::requeue(ctx.config.interval);
    if !ctx.leadership.is_leader() || policy.meta().deletion_timestamp.is_some() {
        return Ok(requeue);
    }
    // Our own status write comes back as a watch event. With the spec
    // unchanged and the status fresh, wait for the period instead of
    // measuring again: at scale that echo was a hot loop.
    if let Some(wait) = wait_before_measuring(&policy, ctx.config.interval, Timestamp::now()) {
        return Ok(Action::requeue(wait));
    }
    // Timed from here on, errors included; the early returns above are
    // skips (not the leader, our own status echo), not reconciliations.
    let _timer = ctx.metrics.reconcile_timer();
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;

    let pods = pod_cache::matching(
        ctx.pods.state().iter().map(|p| &**p),
        &namespace,
        &policy.spec.selector,
    )?;
    let measurement = if pods.is_empty() {
        Measurement::NoPods
    } else {
        measure(&ctx, &namespace, &policy, &pods).await
    };
    let now = Time(Timestamp::now());
    let previous = policy.status.clone().unwrap_or_default();
    let (mut status, decided) = build_status(&policy, &pods, &measurement, ctx.config.kepler, &now);
    let labels = PolicyLabels {
        namespace: namespace.clone(),
        policy: policy.name_any(),
    };
    let max_gap = ctx.config.interval * MAX_GAP_PERIODS;
    let energy_reading = Reading {
        fresh: matches!(measurement, Measurement::Measured { .. }),
        watts: status.current_power.unwrap_or(0.0),
        capping: status.capping_action_required,
    };
    status.energy = Some(
        ctx.energy
            .update(&labels, &previous, energy_reading, now.0, max_gap),
    );

    let rules = ctx
        .config
        .status_writes
        .rules(ctx.config.interval, ctx.backlog.policies());
    match due::status_due(&previous, &status, now.0, &rules) {
        Some(reason) => {
            write_status(&ctx, &policy, &status).await?;
            ctx.metrics
                .write_decision(driver::POLICY_STATUS, true, reason.metric_label());
            // A condition that changes is always written, so each
            // transition is seen (and announced) once.
            publish_transitions(&ctx, &policy, &previous.conditions, &decided).await;
        }
        None => ctx
            .metrics
            .write_decision(driver::POLICY_STATUS, false, "unchanged"),
    }
    let measured = Instant::now();
    ctx.metrics.policies.record(
        &labels,
        &reading(&policy, &status, &measurement),
        measured,
        max_gap,
    );
    ctx.backlog.measured(&labels, measured);
    ctx.metrics.reconciled();
    Ok(requeue)
}

/// Server-side applies `status` as the monitor's field manager.
async fn write_status(
    ctx: &Context,
    policy: &PowerCappingPolicy,
    status: &PowerCappingPolicyStatus,
) -> Result<()> {
    driver::apply_policy_status(
        &ctx.client,
        &ctx.metrics,
        policy,
        MANAGER_CONTROLLER,
        status,
    )
    .await
}

/// The per-policy series' figures from the status just measured for
/// `measurement`.
fn reading(
    policy: &PowerCappingPolicy,
    status: &PowerCappingPolicyStatus,
    measurement: &Measurement,
) -> PolicyReading {
    let is_true = |type_: &str| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    };
    PolicyReading {
        cap_watts: policy.spec.power_cap_limit as f64,
        effective_cap_watts: effective_cap_watts(policy) as f64,
        power_watts: status.current_power,
        fresh: matches!(
            measurement,
            Measurement::Measured { .. } | Measurement::NoPods
        ),
        metrics_available: is_true(conditions::METRICS_AVAILABLE),
        capping: is_true(conditions::CAPPING),
        matched_pods: usize::try_from(status.matched_pod_count).unwrap_or(0),
    }
}

/// What Prometheus said about a policy's pods.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Measurement {
    NoPods,
    /// Prometheus could not be asked.
    Failed(String),
    /// Prometheus answered, but not about these pods.
    NoData(String),
    Measured {
        gpus: Vec<GpuReading>,
        cpu: BTreeMap<String, f64>,
        /// GPU series about the pods that were not believed.
        ignored: Ignored,
    },
}

async fn measure(
    ctx: &Context,
    namespace: &str,
    policy: &PowerCappingPolicy,
    pods: &[PodOnNode],
) -> Measurement {
    let wants_gpu = policy.acts_on(DeviceKind::Gpu);
    let wants_cpu = policy.acts_on(DeviceKind::Cpu) && ctx.config.kepler;
    let mut gpus = Vec::new();
    let mut ignored = Ignored::default();
    let mut cpu = BTreeMap::new();
    if !(wants_gpu || wants_cpu) {
        return no_data(
            policy,
            ctx.config.kepler,
            pods,
            &ignored,
            wants_gpu,
            wants_cpu,
        );
    }
    let series = match ctx.power.latest().await {
        Ok(series) => series,
        Err(e) => return Measurement::Failed(e),
    };
    if wants_gpu {
        let inventory = inventory(&ctx.node_frequencies, pods);
        (gpus, ignored) = observe::gpus(
            namespace,
            pods,
            &inventory,
            series.gpu_power(namespace),
            series.gpu_clock(namespace),
        );
        for (reason, count) in &ignored.0 {
            ctx.metrics.ignored_series(reason.metric_label(), *count);
        }
    }
    if wants_cpu {
        cpu = observe::cpu(pods, series.cpu(namespace));
    }
    if gpus.is_empty() && cpu.is_empty() {
        return no_data(
            policy,
            ctx.config.kepler,
            pods,
            &ignored,
            wants_gpu,
            wants_cpu,
        );
    }
    Measurement::Measured { gpus, cpu, ignored }
}

/// Why nothing was measured for `pods`.
fn no_data(
    policy: &PowerCappingPolicy,
    kepler: bool,
    pods: &[PodOnNode],
    ignored: &Ignored,
    wants_gpu: bool,
    wants_cpu: bool,
) -> Measurement {
    if policy.acts_on(DeviceKind::Cpu) && !kepler && !wants_gpu {
        return Measurement::NoData(
            "CPU power needs Kepler; the controller runs without --kepler".into(),
        );
    }
    let mut what = Vec::new();
    if wants_gpu {
        what.push(format!("{} series", observe::GPU_POWER));
    }
    if wants_cpu {
        what.push(format!("{} series", observe::KEPLER_CPU));
    }
    Measurement::NoData(ignored.appended_to(format!(
        "no {} for the {} matched pod(s)",
        what.join(" or "),
        pods.len()
    )))
}

/// The GPU inventories of the nodes `pods` are bound to.
fn inventory(store: &Store<NodeFrequencies>, pods: &[PodOnNode]) -> Inventory {
    let mut inventory = Inventory::default();
    for node in pods.iter().filter_map(|p| p.node.as_deref()) {
        if let Some(status) = store
            .get(&ObjectRef::new(node))
            .and_then(|nf| nf.status.clone())
        {
            inventory.insert(node, &status.gpus);
        }
    }
    inventory
}

/// Whether `policy`'s spec changed since its status was written: measured
/// at once, ahead of routine measurements (see [`crate::fair`]). A policy
/// never measured is not urgent: at a cold start they all are new.
fn spec_changed(policy: &PowerCappingPolicy) -> bool {
    policy
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation != policy.meta().generation)
}

/// How long to wait before measuring `policy` again, or `None` to measure
/// now: when the status was written for the current generation less than
/// 80 % of a period ago, the rest of the period. A spec change (new
/// generation) or a status from a clock ahead of ours measures at once.
pub(crate) fn wait_before_measuring(
    policy: &PowerCappingPolicy,
    interval: Duration,
    now: Timestamp,
) -> Option<Duration> {
    let status = policy.status.as_ref()?;
    if status.observed_generation != policy.meta().generation {
        return None;
    }
    let written = status.last_updated.as_ref()?.0;
    let age_ms = now.as_millisecond() - written.as_millisecond();
    let age = Duration::from_millis(u64::try_from(age_ms).ok()?);
    (age < interval.mul_f64(0.8)).then(|| interval.saturating_sub(age))
}

/// The status to write and the conditions it carries, decided from a
/// measurement. Pure, so the rules are unit-tested.
pub(crate) fn build_status(
    policy: &PowerCappingPolicy,
    pods: &[PodOnNode],
    measurement: &Measurement,
    kepler: bool,
    now: &Time,
) -> (PowerCappingPolicyStatus, Vec<Decided>) {
    let previous = policy.status.clone().unwrap_or_default();
    let effective_cap = effective_cap_watts(policy);
    let cap = effective_cap as f64;
    let threshold = cap * f64::from(policy.spec.capping_threshold) / 100.0;
    // System classes sit above the range a policy's priority may take.
    let pod_priority = pods
        .iter()
        .filter_map(|p| p.priority)
        .max()
        .map(|p| p.clamp(MIN_PRIORITY, MAX_PRIORITY));
    let mut status = PowerCappingPolicyStatus {
        power_cap_limit: Some(policy.spec.power_cap_limit),
        effective_cap_watts: Some(effective_cap),
        matched_pods: pods
            .iter()
            .take(MAX_LISTED_PODS)
            .map(|p| p.name.clone())
            .collect(),
        matched_pod_count: i32::try_from(pods.len()).unwrap_or(i32::MAX),
        pod_priority,
        effective_priority: Some(effective_priority(&policy.spec, pod_priority)),
        observed_generation: policy.meta().generation,
        last_updated: Some(now.clone()),
        ..Default::default()
    };
    let mut decided = match measurement {
        Measurement::NoPods => {
            status.current_power = Some(0.0);
            let message = format!(
                "the selector matches no running pods in namespace {}",
                policy.namespace().unwrap_or_default()
            );
            vec![
                Decided::new(conditions::READY, false, "NoMatchingPods", message.clone()),
                Decided::new(
                    conditions::METRICS_AVAILABLE,
                    false,
                    "NoMatchingPods",
                    message.clone(),
                ),
                Decided::new(conditions::CAPPING, false, "NoMatchingPods", message),
            ]
        }
        Measurement::Failed(error) => {
            // Hold the last readings: the recommender holds its targets
            // until they expire, and people still see the last known power.
            status.current_power = previous.current_power;
            status.gpu_power = previous.gpu_power;
            status.cpu_power = previous.cpu_power;
            status.nodes = previous.nodes.clone();
            status.capping_action_required = previous.capping_action_required;
            let capping = previous
                .conditions
                .iter()
                .find(|c| c.type_ == conditions::CAPPING)
                .map(|c| (c.status == "True", c.reason.clone(), c.message.clone()))
                .unwrap_or((false, "MetricsUnavailable".into(), String::new()));
            vec![
                Decided::new(
                    conditions::READY,
                    false,
                    "MetricsUnavailable",
                    format!("Prometheus: {error}"),
                ),
                Decided::new(
                    conditions::METRICS_AVAILABLE,
                    false,
                    "PrometheusUnavailable",
                    error.clone(),
                ),
                Decided::new(conditions::CAPPING, capping.0, &capping.1, capping.2),
            ]
        }
        Measurement::NoData(why) => vec![
            Decided::new(conditions::READY, false, "MetricsUnavailable", why.clone()),
            Decided::new(conditions::METRICS_AVAILABLE, false, "NoData", why.clone()),
            Decided::new(conditions::CAPPING, false, "NoData", why.clone()),
        ],
        Measurement::Measured { gpus, cpu, ignored } => {
            let gpu_power: f64 = gpus.iter().map(|g| g.power_watts).sum();
            let cpu_power: f64 = cpu.values().sum();
            let mut total = 0.0;
            if policy.acts_on(DeviceKind::Gpu) {
                status.gpu_power = Some(round(gpu_power));
                total += gpu_power;
            }
            if policy.acts_on(DeviceKind::Cpu) && kepler {
                status.cpu_power = Some(round(cpu_power));
                total += cpu_power;
            }
            status.current_power = Some(round(total));
            status.nodes = observe::node_powers(gpus, cpu);
            for node in &mut status.nodes {
                node.power_watts = round(node.power_watts);
            }
            status.capping_action_required = total > threshold;
            let nodes = status.nodes.len();
            let capping = if status.capping_action_required {
                Decided::new(
                    conditions::CAPPING,
                    true,
                    "AboveThreshold",
                    format!(
                        "{:.1} W is above {}% of the {} W cap",
                        total, policy.spec.capping_threshold, effective_cap
                    ),
                )
            } else {
                Decided::new(
                    conditions::CAPPING,
                    false,
                    "BelowThreshold",
                    format!(
                        "{:.1} W is within {}% of the {} W cap",
                        total, policy.spec.capping_threshold, effective_cap
                    ),
                )
            };
            vec![
                Decided::new(
                    conditions::READY,
                    true,
                    "Observed",
                    format!("measuring {} pod(s) on {nodes} node(s)", pods.len()),
                ),
                Decided::new(
                    conditions::METRICS_AVAILABLE,
                    true,
                    "MetricsFound",
                    ignored.appended_to(format!(
                        "{} GPU(s), CPU power on {} node(s)",
                        gpus.len(),
                        cpu.len()
                    )),
                ),
                capping,
            ]
        }
    };
    // Without a GPU reading there is nothing new to tell about the cap:
    // the last verdict stands, so it does not flap (and re-announce
    // itself) with every gap in the metrics.
    let reachable = match measurement {
        Measurement::Measured { gpus, .. } => reachable::decide(effective_cap, gpus, &previous),
        _ => None,
    }
    .or_else(|| {
        previous
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::CAP_REACHABLE)
            .map(|c| {
                Decided::new(
                    conditions::CAP_REACHABLE,
                    c.status == "True",
                    &c.reason,
                    c.message.clone(),
                )
            })
    });
    decided.extend(reachable);
    status.conditions = decided
        .iter()
        .map(|d| render(&previous.conditions, d, policy.meta().generation, now))
        .collect();
    (status, decided)
}

fn round(watts: f64) -> f64 {
    (watts * 100.0).round() / 100.0
}

/// One event per condition that changes status.
async fn publish_transitions(
    ctx: &Context,
    policy: &PowerCappingPolicy,
    previous: &[Condition],
    decided: &[Decided],
) {
    // Whether the status before carried a condition of this type: a
    // change back is news only after one was announced.
    let had = |type_: &str| is_true(previous, type_).is_some();
    for d in decided.iter().filter(|d| transitions(previous, d)) {
        let (type_, reason) = match (d.type_, d.status) {
            (conditions::CAPPING, true) => (EventType::Normal, "CappingStarted"),
            (conditions::CAPPING, false) if had(conditions::CAPPING) => {
                (EventType::Normal, "CappingStopped")
            }
            (conditions::METRICS_AVAILABLE, false) => (EventType::Warning, "MetricsUnavailable"),
            // Only when the metrics come back: a policy's first measurement
            // is no news (and at a cold start would be one Event a policy).
            (conditions::METRICS_AVAILABLE, true) if had(conditions::METRICS_AVAILABLE) => {
                (EventType::Normal, "MetricsAvailable")
            }
            (conditions::READY, false) if d.reason == "NoMatchingPods" => {
                (EventType::Warning, "NoMatchingPods")
            }
            (conditions::CAP_REACHABLE, false) => (EventType::Warning, d.reason.as_str()),
            (conditions::CAP_REACHABLE, true) if had(conditions::CAP_REACHABLE) => {
                (EventType::Normal, "CapReachable")
            }
            _ => continue,
        };
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(d.message.chars().take(1000).collect()),
            action: "Measure".to_string(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
            tracing::warn!(%error, policy = %policy.name_any(), "could not publish an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::GpuFloor;
    use climatik_api::PowerCappingPolicySpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn policy(devices: Vec<DeviceKind>) -> PowerCappingPolicy {
        let mut p = PowerCappingPolicy::new(
            "p",
            PowerCappingPolicySpec {
                power_cap_limit: 300,
                selector: LabelSelector::default(),
                capping_threshold: 90,
                custom_algorithms: vec![],
                dry_run: false,
                devices,
                priority: None,
                min_watts: None,
            },
        );
        p.metadata.namespace = Some("ns".into());
        p.metadata.generation = Some(3);
        p
    }

    #[test]
    fn a_spec_change_after_a_measurement_is_urgent() {
        let mut p = policy(vec![DeviceKind::Gpu]);
        // Never measured (a cold start): routine.
        assert!(!spec_changed(&p));
        p.status = Some(PowerCappingPolicyStatus {
            observed_generation: Some(3),
            ..Default::default()
        });
        assert!(!spec_changed(&p));
        p.metadata.generation = Some(4);
        assert!(spec_changed(&p));
    }

    #[test]
    fn own_status_writes_do_not_trigger_a_new_measurement() {
        let interval = Duration::from_secs(15);
        let now = Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let ago = |secs: i64| {
            Time(Timestamp::from_second(1_000_000 - secs).unwrap_or(Timestamp::UNIX_EPOCH))
        };
        let set_written = |p: &mut PowerCappingPolicy, at: Time| {
            if let Some(status) = p.status.as_mut() {
                status.last_updated = Some(at);
            }
        };
        let mut p = policy(vec![DeviceKind::Gpu]);
        // Never measured: now.
        assert_eq!(wait_before_measuring(&p, interval, now), None);
        p.status = Some(PowerCappingPolicyStatus {
            observed_generation: Some(3),
            last_updated: Some(ago(2)),
            ..Default::default()
        });
        assert_eq!(
            wait_before_measuring(&p, interval, now),
            Some(Duration::from_secs(13))
        );
        // Most of a period old: measure.
        set_written(&mut p, ago(13));
        assert_eq!(wait_before_measuring(&p, interval, now), None);
        // The spec changed since the status was written: measure at once.
        set_written(&mut p, ago(1));
        p.metadata.generation = Some(4);
        assert_eq!(wait_before_measuring(&p, interval, now), None);
        // A status stamped in our future (clock skew): measure.
        p.metadata.generation = Some(3);
        set_written(&mut p, ago(-5));
        assert_eq!(wait_before_measuring(&p, interval, now), None);
    }

    fn gpu(node: &str, uuid: &str, watts: f64) -> GpuReading {
        GpuReading {
            node: node.into(),
            uuid: uuid.into(),
            power_watts: watts,
            clock_mhz: Some(1380.0),
            floor: GpuFloor::default(),
        }
    }

    fn pods() -> Vec<PodOnNode> {
        vec![PodOnNode {
            name: "a".into(),
            node: Some("n1".into()),
            priority: None,
        }]
    }

    fn time(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    fn condition<'a>(status: &'a PowerCappingPolicyStatus, type_: &str) -> &'a Condition {
        match status.conditions.iter().find(|c| c.type_ == type_) {
            Some(c) => c,
            None => panic!("no {type_} condition in {status:?}"),
        }
    }

    #[test]
    fn measured_power_above_threshold_requires_capping() {
        let measured = Measurement::Measured {
            gpus: vec![gpu("n1", "GPU-1", 200.0), gpu("n1", "GPU-2", 90.0)],
            cpu: BTreeMap::from([("n1".to_string(), 40.0)]),
            ignored: Ignored::default(),
        };
        // GPU only: 290 W > 270 W (90 % of 300); CPU not counted.
        let (status, _) = build_status(
            &policy(vec![DeviceKind::Gpu]),
            &pods(),
            &measured,
            true,
            &time(10),
        );
        assert_eq!(status.current_power, Some(290.0));
        assert_eq!(status.gpu_power, Some(290.0));
        assert_eq!(status.cpu_power, None);
        assert!(status.capping_action_required);
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.matched_pod_count, 1);
        assert_eq!(condition(&status, "Capping").status, "True");
        assert_eq!(condition(&status, "Ready").status, "True");
        // GPU and CPU: 330 W.
        let (status, _) = build_status(
            &policy(vec![DeviceKind::Gpu, DeviceKind::Cpu]),
            &pods(),
            &measured,
            true,
            &time(10),
        );
        assert_eq!(status.current_power, Some(330.0));
        assert_eq!(status.cpu_power, Some(40.0));
    }

    #[test]
    fn prometheus_failure_keeps_last_readings_and_transition_times() {
        let mut p = policy(vec![DeviceKind::Gpu]);
        let measured = Measurement::Measured {
            gpus: vec![gpu("n1", "GPU-1", 280.0)],
            cpu: BTreeMap::new(),
            ignored: Ignored::default(),
        };
        let (first, _) = build_status(&p, &pods(), &measured, false, &time(10));
        p.status = Some(first.clone());
        let (held, _) = build_status(
            &p,
            &pods(),
            &Measurement::Failed("connection refused".into()),
            false,
            &time(20),
        );
        assert_eq!(held.current_power, Some(280.0));
        assert_eq!(held.nodes, first.nodes);
        assert!(held.capping_action_required);
        let metrics = condition(&held, "MetricsAvailable");
        assert_eq!(
            (metrics.status.as_str(), metrics.reason.as_str()),
            ("False", "PrometheusUnavailable")
        );
        assert_eq!(metrics.last_transition_time, time(20));
        // Capping did not change, so its transition time is the first one.
        assert_eq!(condition(&held, "Capping").last_transition_time, time(10));
        assert_eq!(condition(&held, "Capping").status, "True");
    }

    #[test]
    fn the_cap_verdict_and_effective_cap_are_in_the_status() {
        let mut p = policy(vec![DeviceKind::Gpu]);
        let mut below = gpu("n1", "GPU-1", 150.0);
        below.floor.min_power_limit_watts = Some(400.0);
        let measured = Measurement::Measured {
            gpus: vec![below],
            cpu: BTreeMap::new(),
            ignored: Ignored::default(),
        };
        let (first, decided) = build_status(&p, &pods(), &measured, false, &time(10));
        assert_eq!(first.effective_cap_watts, Some(300));
        let reachable = condition(&first, "CapReachable");
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("False", "BelowMinimumPowerLimit")
        );
        assert!(decided.iter().any(|d| d.type_ == "CapReachable"));
        // Without a measurement the verdict stands, transition time and all.
        p.status = Some(first);
        let (held, _) = build_status(
            &p,
            &pods(),
            &Measurement::NoData("gone".into()),
            false,
            &time(20),
        );
        let reachable = condition(&held, "CapReachable");
        assert_eq!(
            (
                reachable.status.as_str(),
                reachable.last_transition_time.clone()
            ),
            ("False", time(10))
        );
    }

    #[test]
    fn no_pods_says_so() {
        let (status, _) = build_status(
            &policy(vec![DeviceKind::Gpu]),
            &[],
            &Measurement::NoPods,
            false,
            &time(1),
        );
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NoMatchingPods")
        );
        assert!(!status.capping_action_required);
        assert_eq!(status.matched_pod_count, 0);
    }
}
