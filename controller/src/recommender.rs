//! The action recommender (`freqtuning-recommender`): policy status ->
//! algorithm -> NodeFrequencies entries.
//!
//! Entries are written by server-side apply with one field manager per
//! policy, keyed `(gpuId, policy)` / `(cpuId, policy)`, so policies sharing a
//! node each own exactly their entries and the node agent merges them (the
//! most restrictive wins). Applying an empty list under a policy's manager
//! removes its entries. Every entry carries an `expiresAt`, renewed once
//! a quarter of its lifetime has passed (targets are computed each period but
//! written only when they change, see [`crate::due`]): if the recommender
//! stops, the node returns to defaults.
//!
//! Renewing every entry costs a write per (policy, node) pair every
//! quarter lifetime: 50 writes a second at 1500 pairs and a 120 s lifetime.
//! So where a node's agent announces that it watches this recommender's
//! leader-election Lease (`status.entryLease`), the entries are written
//! `keptByLease` and never renewed: the Lease the leader renews anyway
//! keeps them all alive, and when no replica renews it any more the agent
//! lets them lapse after its grace (the entry lifetime by default). A
//! policy whose targets are held (metrics unavailable) gives its kept
//! entries back their own lifetime, so they lapse as before.
//!
//! Policies carry no finalizer, so deleting one (or its namespace, or the
//! CRD) never waits for the recommender. Instead the leader collects
//! garbage each period: entries whose policy is no longer in the synced
//! policy store are removed, which also covers deletions while it was down.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use climatik_api::{
    CpuFrequency, CustomAlgorithm, DeviceKind, GpuFrequency, NodeFrequencies, PowerCappingPolicy,
    names::{
        LEGACY_FINALIZER_POLICY, MANAGER_RECOMMENDER_PREFIX, conditions, parse_policy_key,
        policy_key, recommender_manager,
    },
};
use k8s_openapi::{
    api::core::v1::Node,
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;

use crate::{
    Error, Result,
    algorithm::{self, Algorithm, AlgorithmError, Clocks, Device, Observation, Target},
    conditions::{Decided, is_true, render},
    driver, due,
    fair::{RECONCILE_SLOTS, Slots},
    lease::{Leadership, LeaseConfig},
    metrics::{Metrics, PolicyLabels},
    observe::CPU_DEVICE,
    shed,
};
use climatik_runtime::{ReadyFlag, Shutdown};

/// Field manager of the recommender's status writes (AlgorithmValid).
pub const MANAGER_STATUS: &str = MANAGER_RECOMMENDER_PREFIX;

/// Clock range assumed for a GPU the node agent has not reported yet; the
/// agent clamps targets to what the GPU supports.
const FALLBACK_GPU_CLOCKS: (i32, i32, i32) = (210, 2100, 15);
/// CPU ceiling range (MHz) the algorithms plan in; the agent clamps to the
/// CPU's `cpuinfo_min_freq`/`cpuinfo_max_freq`.
const CPU_CLOCKS: (i32, i32, i32) = (800, 3500, 100);

#[derive(Debug, Clone)]
pub struct RecommenderConfig {
    /// How often targets are recomputed and renewed.
    pub interval: Duration,
    /// Lifetime of an entry unless renewed.
    pub entry_ttl: Duration,
    pub lease: Option<LeaseConfig>,
    /// Only policies in this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    pub identity: String,
}

struct Context {
    client: kube::Client,
    config: RecommenderConfig,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    recorder: Recorder,
    node_frequencies: Store<NodeFrequencies>,
    policies: Mutex<HashMap<String, PolicyState>>,
}

/// What the recommender remembers about a policy between periods.
struct PolicyState {
    spec: Option<CustomAlgorithm>,
    algorithm: Box<dyn Algorithm>,
    /// `status.lastUpdated` of the observation last planned on: each
    /// observation is fed to the algorithm once.
    planned_on: Option<Time>,
    targets: Vec<Target>,
}

/// Runs the recommender until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    config: RecommenderConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    run_with_readiness(client, config, metrics, shutdown, ReadyFlag::default()).await
}

/// [`run`], setting `ready` once the watches have synced (`/readyz`).
pub async fn run_with_readiness(
    client: kube::Client,
    config: RecommenderConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: ReadyFlag,
) -> Result<()> {
    let shutdown = Shutdown::new(shutdown);
    let (leadership, election) = driver::elect(&client, config.lease.as_ref(), &metrics, &shutdown);

    let (store, reflector_task) = driver::node_frequencies(&client, &shutdown);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER_RECOMMENDER_PREFIX.to_string(),
            instance: Some(config.identity.clone()),
        },
    );
    let context = Arc::new(Context {
        client: client.clone(),
        config,
        metrics,
        leadership,
        recorder,
        node_frequencies: store.clone(),
        policies: Mutex::new(HashMap::new()),
    });
    // Plans need the node agents' inventory; removal needs every entry.
    tokio::select! {
        _ = store.wait_until_ready() => {}
        _ = shutdown.wait() => {}
    }

    let namespace = context.config.namespace.clone();
    let controller = driver::policy_controller(client, namespace.as_deref(), &shutdown);
    let garbage_collector = tokio::spawn(collect_garbage_each_period(
        context.clone(),
        controller.store(),
        shutdown.wait(),
    ));
    let reconciler = driver::Reconciler {
        reconcile,
        leadership: context.leadership.clone(),
        stepped_down: Action::requeue(context.config.interval),
        slots: Slots::new(RECONCILE_SLOTS, context.metrics.reconcile_waiting()),
        urgent: measured_new_spec,
    };
    driver::run_policies(controller, reconciler, error_policy, context, ready).await;
    let _ = garbage_collector.await;
    reflector_task.abort();
    driver::stop_election(election).await;
    Ok(())
}

fn error_policy(policy: Arc<PowerCappingPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(policy = %policy.name_any(), namespace = ?policy.namespace(), %error, "reconcile failed");
    ctx.metrics.failed(error);
    Action::requeue(Duration::from_secs(2).min(ctx.config.interval))
}

/// Whether the monitor has measured `policy`'s current spec and this
/// controller has not acted on it yet (its AlgorithmValid condition is of
/// an older generation): a cap cut on its way to the nodes, reconciled
/// ahead of routine work (see [`crate::fair`]). A policy it never acted on
/// is not urgent: at a cold start they all are new.
fn measured_new_spec(policy: &PowerCappingPolicy) -> bool {
    let generation = policy.meta().generation;
    policy.status.as_ref().is_some_and(|status| {
        status.observed_generation == generation
            && status
                .conditions
                .iter()
                .find(|c| c.type_ == conditions::ALGORITHM_VALID)
                .is_some_and(|c| c.observed_generation != generation)
    })
}

/// One span per reconciliation, named after the policy, so its logs and
/// the API calls under it can be told apart from other policies'.
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(
        controller = "freqtuning-recommender",
        policy = %policy.name_any(),
        namespace = %policy.namespace().unwrap_or_default(),
    )
)]
async fn reconcile(policy: Arc<PowerCappingPolicy>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.leadership.is_leader() {
        return Ok(Action::requeue(ctx.config.interval));
    }
    // Timed from here on, errors included; the early returns above are
    // skips (not the leader, our own status echo), not reconciliations.
    let _timer = ctx.metrics.reconcile_timer();
    lift_legacy_finalizer(&ctx, &policy).await?;
    let action = if policy.meta().deletion_timestamp.is_some() {
        // Held by someone else's finalizer: stop acting for it now rather
        // than when it is gone.
        remove_entries(&ctx, &policy, &BTreeSet::new(), "policy deleted").await?;
        let labels = PolicyLabels::of(&policy);
        ctx.metrics.shed.retain(|l| *l != labels);
        Action::await_change()
    } else {
        apply(&ctx, &policy).await?
    };
    ctx.metrics.reconciled();
    Ok(action)
}

/// Removes [`LEGACY_FINALIZER_POLICY`] from a policy written by an earlier
/// version, so it (and its namespace) can be deleted after an upgrade.
async fn lift_legacy_finalizer(ctx: &Context, policy: &PowerCappingPolicy) -> Result<()> {
    if !policy
        .finalizers()
        .iter()
        .any(|f| f == LEGACY_FINALIZER_POLICY)
    {
        return Ok(());
    }
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let rest: Vec<&String> = policy
        .finalizers()
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER_POLICY)
        .collect();
    // A merge patch replaces the whole list: the resourceVersion makes it
    // fail (and the reconcile retry) if someone changed the list meanwhile.
    let body = json!({
        "metadata": { "finalizers": rest, "resourceVersion": policy.resource_version() },
    });
    let result = Api::<PowerCappingPolicy>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &policy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(body),
        )
        .await;
    ctx.metrics
        .api_write("powercappingpolicies", "patch", result.is_ok());
    match result {
        Ok(_) => {
            tracing::info!(
                finalizer = LEGACY_FINALIZER_POLICY,
                "lifted the finalizer of an earlier version"
            );
            Ok(())
        }
        // Gone already: nothing holds it.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What to do with a policy's entries this period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write (or renew) targets.
    Act,
    /// Leave entries as they are; they expire unless renewed later.
    Hold(&'static str),
    /// Remove the policy's entries.
    Remove(&'static str),
}

/// Decides from spec and status alone, so the rules are unit-tested.
pub(crate) fn decide(policy: &PowerCappingPolicy) -> Decision {
    if policy.spec.dry_run {
        return Decision::Remove("dry run");
    }
    let Some(status) = policy.status.as_ref() else {
        return Decision::Hold("not measured yet");
    };
    if status.last_updated.is_none() {
        return Decision::Hold("not measured yet");
    }
    let no_pods = status.conditions.iter().any(|c| {
        c.type_ == conditions::READY && c.status == "False" && c.reason == "NoMatchingPods"
    });
    if no_pods {
        return Decision::Remove("no matching pods");
    }
    if is_true(&status.conditions, conditions::METRICS_AVAILABLE) != Some(true) {
        return Decision::Hold("metrics unavailable");
    }
    Decision::Act
}

async fn apply(ctx: &Context, policy: &PowerCappingPolicy) -> Result<Action> {
    let requeue = Action::requeue(ctx.config.interval);
    let uid = policy.uid().unwrap_or_else(|| policy.name_any());
    let spec = policy.algorithm().cloned();

    // Build (or keep) the algorithm; a bad spec changes no frequencies.
    let built = {
        let mut states = ctx.policies.lock().unwrap_or_else(|e| e.into_inner());
        match states.get(&uid) {
            Some(state) if state.spec == spec => Ok(()),
            _ => algorithm::from_spec(spec.as_ref()).map(|algorithm| {
                states.insert(
                    uid.clone(),
                    PolicyState {
                        spec: spec.clone(),
                        algorithm,
                        planned_on: None,
                        targets: Vec::new(),
                    },
                );
            }),
        }
    };
    if let Err(error) = built {
        ctx.policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
        set_algorithm_condition(ctx, policy, Err(&error)).await?;
        return Ok(requeue);
    }
    set_algorithm_condition(ctx, policy, Ok(())).await?;

    let decision = decide(policy);
    match decision {
        Decision::Remove(why) => {
            remove_entries(ctx, policy, &BTreeSet::new(), why).await?;
            // Its devices are no longer held back by this policy.
            ctx.metrics.shed.set(PolicyLabels::of(policy), 0.0);
            if let Some(state) = ctx
                .policies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&uid)
            {
                state.planned_on = None;
                state.targets.clear();
            }
            return Ok(requeue);
        }
        Decision::Hold(why) => {
            tracing::debug!(policy = %policy.name_any(), why, "holding targets");
            unkeep_entries(ctx, policy).await?;
            return Ok(requeue);
        }
        Decision::Act => {}
    }

    let observation = observe(ctx, policy);
    ctx.metrics.shed.set(
        PolicyLabels::of(policy),
        shed::estimate_shed_watts(&observation.devices),
    );
    let last_updated = policy.status.as_ref().and_then(|s| s.last_updated.clone());
    let (targets, pooled) = {
        let mut states = ctx.policies.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = states.get_mut(&uid) else {
            return Ok(requeue);
        };
        if state.planned_on != last_updated || state.targets.is_empty() {
            state.targets = state.algorithm.plan(&observation);
            state.planned_on = last_updated;
        }
        (state.targets.clone(), state.algorithm.pools_node_budgets())
    };
    write_targets(ctx, policy, &targets, pooled).await?;
    Ok(requeue)
}

/// Runs [`collect_garbage`] each period while leading, from the moment the
/// policy watch has listed everything (before that, an empty store would
/// read as "every policy deleted") until `shutdown`.
async fn collect_garbage_each_period(
    ctx: Arc<Context>,
    policies: Store<PowerCappingPolicy>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    tokio::select! {
        synced = driver::synced(&policies) => if !synced { return },
        _ = &mut shutdown => return,
    }
    let mut period = tokio::time::interval(ctx.config.interval);
    period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = period.tick() => {}
            _ = &mut shutdown => return,
        }
        if !ctx.leadership.is_leader() {
            // A follower acts on nothing: its estimates would only go stale.
            ctx.metrics.shed.retain(|_| false);
            continue;
        }
        if let Err(error) = collect_garbage(&ctx, &policies).await {
            tracing::warn!(%error, "could not remove the entries of deleted policies");
            ctx.metrics.failed(&error);
        }
    }
}

/// Removes the entries of policies that no longer exist and forgets their
/// algorithm state. Safe only on a synced `policies` store.
async fn collect_garbage(ctx: &Context, policies: &Store<PowerCappingPolicy>) -> Result<()> {
    // NodeFrequencies before policies: an entry is written for a policy the
    // store already holds, so a policy missing from the later read was
    // deleted. (An entry written for a policy this store has not seen yet,
    // by a leader handing over, is removed and written again next period.)
    let node_frequencies = ctx.node_frequencies.state();
    let policies = policies.state();
    let live: BTreeSet<String> = policies
        .iter()
        .filter_map(|p| Some(policy_key(&p.namespace()?, &p.name_any())))
        .collect();
    let uids: BTreeSet<String> = policies.iter().filter_map(|p| p.uid()).collect();
    ctx.metrics
        .shed
        .retain(|l| live.contains(&policy_key(&l.namespace, &l.policy)));
    ctx.policies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|uid, _| uids.contains(uid));

    let mut first_error = None;
    for (key, nodes) in orphans(&node_frequencies, &live, ctx.config.namespace.as_deref()) {
        let Some((namespace, name)) = parse_policy_key(&key) else {
            continue;
        };
        if let Err(error) = withdraw(ctx, namespace, name, &nodes, "policy deleted").await {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The entries of policies not in `live`, as policy key -> nodes holding
/// them: only keys of a policy (not `manual`), and only in `namespace` when
/// the recommender watches one (policies elsewhere are not in its store).
pub(crate) fn orphans(
    node_frequencies: &[Arc<NodeFrequencies>],
    live: &BTreeSet<String>,
    namespace: Option<&str>,
) -> BTreeMap<String, Vec<String>> {
    let mut orphans: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for nf in node_frequencies {
        let keys: BTreeSet<&str> = nf
            .spec
            .gpu_frequencies
            .iter()
            .map(|e| e.policy.as_str())
            .chain(nf.spec.cpu_frequencies.iter().map(|e| e.policy.as_str()))
            .collect();
        for key in keys {
            let Some((ns, _)) = parse_policy_key(key) else {
                continue;
            };
            if live.contains(key) || namespace.is_some_and(|watched| watched != ns) {
                continue;
            }
            orphans
                .entry(key.to_string())
                .or_default()
                .push(nf.name_any());
        }
    }
    orphans
}

/// The algorithm's view of a policy: its devices from the status, clock
/// ranges from the node agents' inventory.
fn observe(ctx: &Context, policy: &PowerCappingPolicy) -> Observation {
    let mut devices = Vec::new();
    let nodes = policy
        .status
        .as_ref()
        .map(|s| s.nodes.as_slice())
        .unwrap_or_default();
    let key = policy_key(
        policy.namespace().as_deref().unwrap_or_default(),
        &policy.name_any(),
    );
    for node in nodes {
        let node_frequencies = ctx.node_frequencies.get(&ObjectRef::new(&node.node_name));
        let inventory = node_frequencies
            .as_ref()
            .and_then(|nf| nf.status.clone())
            .map(|s| s.gpus)
            .unwrap_or_default();
        // What this policy's entries hold on the node now: the clock
        // target and the power budget (a GPU's own, also where the agent
        // re-splits its group's sum), which a new algorithm continues from.
        let entry_of = |device_id: &str| -> Option<(i32, Option<f64>)> {
            let spec = &node_frequencies.as_ref()?.spec;
            if device_id == CPU_DEVICE {
                spec.cpu_frequencies
                    .iter()
                    .find(|e| e.policy == key)
                    .map(|e| (e.target_frequency, None))
            } else {
                spec.gpu_frequencies
                    .iter()
                    .find(|e| e.policy == key && e.gpu_id == device_id)
                    .map(|e| (e.target_frequency, e.power_budget_watts))
            }
        };
        for device in &node.devices {
            // What the node agent reports of this GPU (none for the CPU).
            let reported = inventory.iter().find(|g| g.gpu_id == device.device_id);
            let (kind, clocks) = if device.device_id == CPU_DEVICE {
                (
                    DeviceKind::Cpu,
                    Clocks::range(CPU_CLOCKS.0, CPU_CLOCKS.1, CPU_CLOCKS.2),
                )
            } else {
                let clocks = match reported.map(|g| Clocks::of_gpu(g, FALLBACK_GPU_CLOCKS.2)) {
                    Some(Ok(clocks)) => Some(clocks),
                    Some(Err(why)) => {
                        tracing::warn!(gpu = %device.device_id, node = %node.node_name, %why,
                            "the node agent's inventory of this GPU is out of bounds; skipping it");
                        continue;
                    }
                    None => None,
                };
                (
                    DeviceKind::Gpu,
                    clocks.or_else(|| {
                        Clocks::range(
                            FALLBACK_GPU_CLOCKS.0,
                            FALLBACK_GPU_CLOCKS.1,
                            FALLBACK_GPU_CLOCKS.2,
                        )
                    }),
                )
            };
            let Some(clocks) = clocks else { continue };
            if !policy.acts_on(kind) {
                continue;
            }
            let entry = entry_of(&device.device_id);
            devices.push(Device {
                id: device.device_id.clone(),
                node: node.node_name.clone(),
                kind,
                power_watts: device.power_watts,
                clock_mhz: device.frequency_mhz,
                clocks,
                min_power_limit_watts: reported.and_then(|g| g.min_power_limit_watts),
                entry_mhz: entry.map(|(mhz, _)| mhz),
                entry_budget_watts: entry.and_then(|(_, budget)| budget),
            });
        }
    }
    Observation {
        cap_watts: crate::cap::effective_cap_watts(policy) as f64,
        threshold_percent: f64::from(policy.spec.capping_threshold),
        devices,
    }
}

/// Applies the targets node by node and removes the policy's entries from
/// nodes that no longer host it. `pooled`: the budgeted GPU entries carry
/// the policy key as their `budgetGroup`, so each node's agent re-splits
/// the policy's budget there.
async fn write_targets(
    ctx: &Context,
    policy: &PowerCappingPolicy,
    targets: &[Target],
    pooled: bool,
) -> Result<()> {
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let key = policy_key(&namespace, &policy.name_any());
    let expires_at = expiry_from_now(ctx);
    let mut by_node: BTreeMap<&str, (Vec<GpuFrequency>, Vec<CpuFrequency>)> = BTreeMap::new();
    for target in targets {
        let entries = by_node.entry(target.node.as_str()).or_default();
        match target.kind {
            DeviceKind::Gpu => entries.0.push(GpuFrequency {
                gpu_id: target.id.clone(),
                target_frequency: target.frequency_mhz,
                power_budget_watts: target.power_budget_watts,
                budget_group: target
                    .power_budget_watts
                    .filter(|_| pooled)
                    .map(|_| key.clone()),
                policy: key.clone(),
                expires_at: expires_at.clone(),
                kept_by_lease: false,
            }),
            DeviceKind::Cpu => {
                for cpu_id in 0..node_cpus(ctx, &target.node).await {
                    entries.1.push(CpuFrequency {
                        cpu_id,
                        target_frequency: target.frequency_mhz,
                        policy: key.clone(),
                        expires_at: expires_at.clone(),
                        kept_by_lease: false,
                    });
                }
            }
        }
    }
    let manager = recommender_manager(&namespace, &policy.name_any());
    let now = Timestamp::now();
    for (node, (gpus, cpus)) in &mut by_node {
        // The node's agent creates its NodeFrequencies; the recommender
        // only adds entries to one that exists (it has no right to create
        // one: a node without an agent would apply nothing anyway).
        let Some(held) = ctx.node_frequencies.get(&ObjectRef::new(node)) else {
            tracing::warn!(
                node,
                "no NodeFrequencies for this node (is its freqtuner running?); no targets written there"
            );
            continue;
        };
        let kept = kept_by_our_lease(ctx, &held);
        gpus.iter_mut().for_each(|e| e.kept_by_lease = kept);
        cpus.iter_mut().for_each(|e| e.kept_by_lease = kept);
        let held_gpus: Vec<GpuFrequency> = held
            .spec
            .gpu_frequencies
            .iter()
            .filter(|e| e.policy == key)
            .cloned()
            .collect();
        let held_cpus: Vec<CpuFrequency> = held
            .spec
            .cpu_frequencies
            .iter()
            .filter(|e| e.policy == key)
            .cloned()
            .collect();
        match due::entries_due(
            (&held_gpus, &held_cpus),
            (gpus, cpus),
            now,
            ctx.config.entry_ttl,
        ) {
            Some(reason) => {
                apply_entries(ctx, &manager, node, gpus, cpus).await?;
                ctx.metrics
                    .write_decision(NODE_FREQUENCIES, true, reason.metric_label());
            }
            None => ctx
                .metrics
                .write_decision(NODE_FREQUENCIES, false, "unchanged"),
        }
    }
    let keep: BTreeSet<String> = by_node.keys().map(|n| n.to_string()).collect();
    remove_entries(ctx, policy, &keep, "node no longer hosts the workload").await
}

/// Whether the node's agent keeps entries alive while this recommender's
/// Lease is renewed (it names that Lease in `status.entryLease`). Never
/// without leader election: then no Lease is renewed.
fn kept_by_our_lease(ctx: &Context, node_frequencies: &NodeFrequencies) -> bool {
    let announced = node_frequencies
        .status
        .as_ref()
        .and_then(|s| s.entry_lease.as_deref());
    ctx.config
        .lease
        .as_ref()
        .is_some_and(|lease| announced == Some(lease.key().as_str()))
}

/// Gives the policy's `keptByLease` entries their own lifetime again
/// (`expiresAt` one entry lifetime from now, not kept): a policy whose
/// targets are held must not keep its devices capped for as long as the
/// recommender lives. One write per node, when the hold begins.
async fn unkeep_entries(ctx: &Context, policy: &PowerCappingPolicy) -> Result<()> {
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let key = policy_key(&namespace, &policy.name_any());
    let manager = recommender_manager(&namespace, &policy.name_any());
    let expires_at = expiry_from_now(ctx);
    for held in ctx.node_frequencies.state() {
        // Only this policy's entries: on most nodes there are none.
        let mut gpus: Vec<GpuFrequency> = held
            .spec
            .gpu_frequencies
            .iter()
            .filter(|e| e.policy == key)
            .cloned()
            .collect();
        let mut cpus: Vec<CpuFrequency> = held
            .spec
            .cpu_frequencies
            .iter()
            .filter(|e| e.policy == key)
            .cloned()
            .collect();
        if !gpus.iter().any(|e| e.kept_by_lease) && !cpus.iter().any(|e| e.kept_by_lease) {
            continue;
        }
        for e in &mut gpus {
            (e.expires_at, e.kept_by_lease) = (expires_at.clone(), false);
        }
        for e in &mut cpus {
            (e.expires_at, e.kept_by_lease) = (expires_at.clone(), false);
        }
        let node = held.name_any();
        apply_entries(ctx, &manager, &node, &gpus, &cpus).await?;
        ctx.metrics.write_decision(NODE_FREQUENCIES, true, "unkept");
        tracing::info!(policy = %key, node, "targets held: entries no longer kept by the Lease, they lapse unless renewed");
    }
    Ok(())
}

/// `expiresAt` for an entry written now: one entry lifetime ahead.
fn expiry_from_now(ctx: &Context) -> Time {
    Time(
        Timestamp::now()
            + SignedDuration::try_from(ctx.config.entry_ttl)
                .unwrap_or(SignedDuration::from_secs(120)),
    )
}

/// Logical CPUs of a node (its `cpu` capacity); 0 if it cannot be read.
async fn node_cpus(ctx: &Context, node: &str) -> i32 {
    match Api::<Node>::all(ctx.client.clone()).get(node).await {
        Ok(n) => n
            .status
            .and_then(|s| s.capacity)
            .and_then(|c| c.get("cpu").map(|q| q.0.clone()))
            .and_then(|q| parse_cpus(&q))
            .unwrap_or(0),
        Err(error) => {
            tracing::warn!(%error, node, "cannot read the node's CPU count; no CPU targets for it");
            0
        }
    }
}

/// `"32"` or `"32000m"` -> 32 (whole CPUs).
pub(crate) fn parse_cpus(quantity: &str) -> Option<i32> {
    let q = quantity.trim();
    let cpus = match q.strip_suffix('m') {
        Some(milli) => milli.parse::<i64>().ok()? / 1000,
        None => q.parse::<i64>().ok()?,
    };
    i32::try_from(cpus.clamp(0, 4096)).ok()
}

/// The resource entry writes are counted under.
const NODE_FREQUENCIES: &str = "nodefrequencies";

/// Server-side applies one policy's entries (those of its field `manager`)
/// for one node.
async fn apply_entries(
    ctx: &Context,
    manager: &str,
    node: &str,
    gpus: &[GpuFrequency],
    cpus: &[CpuFrequency],
) -> Result<()> {
    let body = json!({
        "apiVersion": NodeFrequencies::api_version(&()),
        "kind": NodeFrequencies::kind(&()),
        "metadata": { "name": node },
        "spec": {
            "nodeName": node,
            "gpuFrequencies": gpus,
            "cpuFrequencies": cpus,
        },
    });
    let applied = Api::<NodeFrequencies>::all(ctx.client.clone())
        .patch(
            node,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(body),
        )
        .await;
    ctx.metrics
        .api_write(NODE_FREQUENCIES, "apply", applied.is_ok());
    applied?;
    ctx.metrics
        .node_frequency_applies
        .get_or_create(&ctx.metrics.labels())
        .inc();
    Ok(())
}

/// Removes the policy's entries from every node not in `keep`.
async fn remove_entries(
    ctx: &Context,
    policy: &PowerCappingPolicy,
    keep: &BTreeSet<String>,
    why: &str,
) -> Result<()> {
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let key = policy_key(&namespace, &policy.name_any());
    let stale: Vec<String> = ctx
        .node_frequencies
        .state()
        .iter()
        .filter(|nf| {
            nf.spec.gpu_frequencies.iter().any(|e| e.policy == key)
                || nf.spec.cpu_frequencies.iter().any(|e| e.policy == key)
        })
        .map(|nf| nf.name_any())
        .filter(|name| !keep.contains(name))
        .collect();
    withdraw(ctx, &namespace, &policy.name_any(), &stale, why).await
}

/// Removes the entries of policy `namespace/name` from `nodes`: an empty
/// apply under its field manager.
async fn withdraw(
    ctx: &Context,
    namespace: &str,
    name: &str,
    nodes: &[String],
    why: &str,
) -> Result<()> {
    let manager = recommender_manager(namespace, name);
    let key = policy_key(namespace, name);
    for node in nodes {
        match apply_entries(ctx, &manager, node, &[], &[]).await {
            Ok(()) => tracing::info!(policy = %key, node, why, "removed frequency entries"),
            // Gone already: nothing left to remove.
            Err(Error::Kube(kube::Error::Api(status))) if status.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes AlgorithmValid (only when it changes) and an event on failure.
async fn set_algorithm_condition(
    ctx: &Context,
    policy: &PowerCappingPolicy,
    result: Result<(), &AlgorithmError>,
) -> Result<()> {
    let name = policy
        .algorithm()
        .map_or(algorithm::FEEDBACK, |a| a.name.as_str())
        .to_string();
    let decided = match result {
        Ok(()) => Decided::new(
            conditions::ALGORITHM_VALID,
            true,
            "Valid",
            format!("algorithm {name}"),
        ),
        Err(e) => Decided::new(
            conditions::ALGORITHM_VALID,
            false,
            e.reason(),
            e.to_string(),
        ),
    };
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let current = previous
        .iter()
        .find(|c| c.type_ == conditions::ALGORITHM_VALID);
    let same = current.is_some_and(|c| {
        c.status == if decided.status { "True" } else { "False" }
            && c.reason == decided.reason
            && c.message == decided.message
            && c.observed_generation == policy.meta().generation
    });
    if same {
        return Ok(());
    }
    let condition = render(
        &previous,
        &decided,
        policy.meta().generation,
        &Time(Timestamp::now()),
    );
    let body = json!({
        "apiVersion": PowerCappingPolicy::api_version(&()),
        "kind": PowerCappingPolicy::kind(&()),
        "status": { "conditions": [condition] },
    });
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let written = Api::<PowerCappingPolicy>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &policy.name_any(),
            &PatchParams::apply(MANAGER_STATUS).force(),
            &Patch::Apply(body),
        )
        .await;
    ctx.metrics
        .api_write("powercappingpolicies/status", "apply", written.is_ok());
    written?;
    if !decided.status {
        let event = Event {
            type_: EventType::Warning,
            reason: "InvalidAlgorithm".to_string(),
            note: Some(decided.message.chars().take(1000).collect()),
            action: "Recommend".to_string(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
            tracing::warn!(%error, "could not publish an event");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use climatik_api::{PowerCappingPolicySpec, PowerCappingPolicyStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};

    fn policy(dry_run: bool, conditions: &[(&str, &str, &str)]) -> PowerCappingPolicy {
        let mut p = PowerCappingPolicy::new(
            "p",
            PowerCappingPolicySpec {
                power_cap_limit: 300,
                selector: LabelSelector::default(),
                capping_threshold: 90,
                custom_algorithms: vec![],
                dry_run,
                devices: vec![DeviceKind::Gpu],
                priority: None,
                min_watts: None,
            },
        );
        p.status = Some(PowerCappingPolicyStatus {
            last_updated: Some(Time(Timestamp::UNIX_EPOCH)),
            conditions: conditions
                .iter()
                .map(|(t, s, r)| Condition {
                    type_: t.to_string(),
                    status: s.to_string(),
                    reason: r.to_string(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: Time(Timestamp::UNIX_EPOCH),
                })
                .collect(),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_measured_spec_change_not_yet_acted_on_is_urgent() {
        let mut p = policy(false, &[("AlgorithmValid", "True", "Valid")]);
        let set = |p: &mut PowerCappingPolicy, generation: i64, measured: i64, acted: i64| {
            p.metadata.generation = Some(generation);
            if let Some(status) = p.status.as_mut() {
                status.observed_generation = Some(measured);
                status.conditions[0].observed_generation = Some(acted);
            }
        };
        set(&mut p, 2, 2, 1);
        assert!(measured_new_spec(&p));
        // Acted on already, or not measured by the monitor yet: routine.
        set(&mut p, 2, 2, 2);
        assert!(!measured_new_spec(&p));
        set(&mut p, 2, 1, 1);
        assert!(!measured_new_spec(&p));
        // Never acted on (a cold start): routine.
        let fresh = policy(false, &[]);
        assert!(!measured_new_spec(&fresh));
    }

    #[test]
    fn decisions() {
        let ok = [
            ("Ready", "True", "Observed"),
            ("MetricsAvailable", "True", "MetricsFound"),
        ];
        assert_eq!(decide(&policy(false, &ok)), Decision::Act);
        assert!(matches!(decide(&policy(true, &ok)), Decision::Remove(_)));
        let no_pods = [
            ("Ready", "False", "NoMatchingPods"),
            ("MetricsAvailable", "False", "NoMatchingPods"),
        ];
        assert!(matches!(
            decide(&policy(false, &no_pods)),
            Decision::Remove(_)
        ));
        let down = [
            ("Ready", "False", "MetricsUnavailable"),
            ("MetricsAvailable", "False", "PrometheusUnavailable"),
        ];
        assert!(matches!(decide(&policy(false, &down)), Decision::Hold(_)));
        let mut fresh = policy(false, &ok);
        fresh.status = None;
        assert!(matches!(decide(&fresh), Decision::Hold(_)));
    }

    fn node_frequencies(
        node: &str,
        gpu_policies: &[&str],
        cpu_policies: &[&str],
    ) -> Arc<NodeFrequencies> {
        let spec = climatik_api::NodeFrequenciesSpec {
            node_name: node.to_string(),
            gpu_frequencies: gpu_policies
                .iter()
                .map(|p| GpuFrequency {
                    gpu_id: "GPU-0".into(),
                    target_frequency: 1200,
                    power_budget_watts: None,
                    budget_group: None,
                    policy: p.to_string(),
                    expires_at: Time(Timestamp::UNIX_EPOCH),
                    kept_by_lease: false,
                })
                .collect(),
            cpu_frequencies: cpu_policies
                .iter()
                .map(|p| CpuFrequency {
                    cpu_id: 0,
                    target_frequency: 2000,
                    policy: p.to_string(),
                    expires_at: Time(Timestamp::UNIX_EPOCH),
                    kept_by_lease: false,
                })
                .collect(),
        };
        Arc::new(NodeFrequencies::new(node, spec))
    }

    #[test]
    fn orphans_are_entries_of_missing_policies_in_the_watched_namespaces() {
        let nfs = [
            node_frequencies("n0", &["a/live", "a/gone", "manual"], &["a/gone"]),
            node_frequencies("n1", &["b/gone"], &["a/cpu-only", "a/live"]),
            node_frequencies("n2", &[], &[]),
        ];
        let live: BTreeSet<String> = ["a/live".to_string()].into();
        let everywhere = orphans(&nfs, &live, None);
        let want: BTreeMap<String, Vec<String>> = [
            ("a/cpu-only".to_string(), vec!["n1".to_string()]),
            ("a/gone".to_string(), vec!["n0".to_string()]),
            ("b/gone".to_string(), vec!["n1".to_string()]),
        ]
        .into();
        assert_eq!(everywhere, want);
        let in_a = orphans(&nfs, &live, Some("a"));
        assert_eq!(in_a.keys().collect::<Vec<_>>(), ["a/cpu-only", "a/gone"]);
        // Every policy live: nothing to collect.
        let all: BTreeSet<String> = ["a/live", "a/gone", "a/cpu-only", "b/gone"]
            .map(String::from)
            .into();
        assert!(orphans(&nfs, &all, None).is_empty());
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(parse_cpus("32"), Some(32));
        assert_eq!(parse_cpus("32000m"), Some(32));
        assert_eq!(parse_cpus("1500m"), Some(1));
        assert_eq!(parse_cpus("lots"), None);
    }
}
