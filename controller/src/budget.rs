//! The budget controller: runs in the power usage monitor's process, under
//! its leadership. Each period, and at once when a budget, a policy's spec
//! or a node's labels change, a budget's reconcile arbitrates the whole
//! tree of budgets it lies in (`spec.parent`), once per tree: for each
//! budget of it the nodes its selector covers, the policies it
//! arbitrates, the power of the GPUs on its own nodes no policy measures
//! (one Prometheus query), then [`budget_status::decide_tree`] for the
//! tree. It writes each policy's `status.allocatedWatts`
//! and the budget's status, both by server-side apply under its own field
//! manager, so the monitor's status writes never touch them. The monitor
//! and the recommender act on the effective cap ([`crate::cap`]).
//!
//! Budgets carry no finalizer: each period the leader drops the
//! allocations of policies no valid budget arbitrates any more (budget
//! deleted or invalid, node relabelled, policy now spanning two budgets)
//! and the series of budgets that are gone.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use climatik_api::{
    NodeFrequencies, PowerBudget, PowerBudgetStatus, PowerCappingPolicy, names::conditions,
};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::Node,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::{PartialObjectMeta, Selector, SelectorExt},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder},
        predicates,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;

use crate::{
    Error, Result,
    budget_metrics::BudgetReading,
    budget_status::{self, Coverage, Inputs, Member, Shape},
    conditions::{Decided, render},
    driver::{self, WatchBackoff},
    lease::Leadership,
    metrics::Metrics,
    observe,
    prom::Prometheus,
    slim::slim,
    unmanaged::{self, Unmanaged, UnmanagedGpu},
};
use climatik_runtime::Shutdown;

pub use climatik_api::names::MANAGER_BUDGET;

/// Share of its allocation a policy held at it is assumed to want more,
/// so a workload that needs more finds out within a period or two.
const PROBE_FRACTION: f64 = 0.1;

/// What the budget controller needs from the monitor's configuration.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    /// How often each budget is arbitrated.
    pub interval: Duration,
    /// Prometheus jobs whose DCGM series are believed (any job when empty).
    pub dcgm_jobs: Vec<String>,
    /// Only policies in this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
}

struct Context {
    client: kube::Client,
    prometheus: Prometheus,
    config: BudgetConfig,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    budgets: Store<PowerBudget>,
    policies: Store<PowerCappingPolicy>,
    nodes: Store<PartialObjectMeta<Node>>,
    node_frequencies: Store<NodeFrequencies>,
    /// Policies already told they span budgets, so each hears it once.
    told_spanning: Mutex<HashSet<(String, String)>>,
    /// Counts policy spec and node label changes, so a budget is arbitrated
    /// again at once when what it covers changed.
    changes: Arc<AtomicU64>,
    /// Each budget's last arbitration: its generation, [`Context::changes`]
    /// then, and when.
    last: Mutex<HashMap<String, Arbitrated>>,
}

/// The generations of a tree's budgets, the count of changes, and when
/// the tree was arbitrated.
type Arbitrated = (Vec<(String, Option<i64>)>, u64, Instant);

impl Context {
    /// How long to wait before arbitrating the tree of budgets rooted at
    /// `root` again, or `None` to do it now. A budget's own status write
    /// wakes its reconcile too; without this, the allocations would be
    /// decided again within a second, on power measured before the last
    /// raise could take effect, and undone. A spec of any budget in the
    /// tree, a policy's spec or a node's labels changing still act at once.
    fn pace(&self, root: &str, tree: &[Arc<PowerBudget>]) -> Option<Duration> {
        let changes = self.changes.load(Ordering::Relaxed);
        let generation: Vec<(String, Option<i64>)> = tree
            .iter()
            .map(|b| (b.name_any(), b.metadata.generation))
            .collect();
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, c, at)) = last.get(root)
            && *g == generation
            && *c == changes
        {
            let due = *at + self.config.interval;
            if due > now {
                return Some(due - now);
            }
        }
        last.insert(root.to_string(), (generation, changes, now));
        None
    }
}

/// What [`run`] shares with the monitor it runs beside.
pub(crate) struct Shared {
    pub client: kube::Client,
    pub prometheus: Prometheus,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub leadership: Leadership,
    pub node_frequencies: Store<NodeFrequencies>,
}

/// Counts each item of a change stream in `changes` ([`Context::pace`]).
fn counted<T>(changes: &Arc<AtomicU64>) -> impl FnMut(T) + use<T> {
    let changes = changes.clone();
    move |_| {
        changes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Arbitrates every PowerBudget until `shutdown`.
pub(crate) async fn run(shared: Shared, config: BudgetConfig, shutdown: Shutdown) {
    let client = shared.client.clone();
    let changes = Arc::new(AtomicU64::new(0));
    let (policies, policy_writer) = reflector::store();
    let policy_changes = watcher(
        driver::policies_api(client.clone(), config.namespace.as_deref()),
        watcher::Config::default().any_semantic(),
    )
    .backoff(WatchBackoff::default())
    .modify(slim)
    .reflect(policy_writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default())
    .map(counted(&changes));
    let (nodes, node_writer) = reflector::store();
    let node_changes = watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .backoff(WatchBackoff::default())
    .modify(slim)
    .reflect(node_writer)
    .applied_objects()
    .predicate_filter(predicates::labels, Default::default())
    .map(counted(&changes));
    let controller = Controller::new(
        Api::<PowerBudget>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .with_config(crate::controller_config())
    .trigger_backoff(WatchBackoff::default())
    .graceful_shutdown_on(shutdown.wait())
    .reconcile_all_on(policy_changes)
    .reconcile_all_on(node_changes);
    let ctx = Arc::new(Context {
        client,
        prometheus: shared.prometheus,
        recorder: shared.recorder,
        metrics: shared.metrics,
        leadership: shared.leadership,
        budgets: controller.store(),
        policies,
        nodes,
        node_frequencies: shared.node_frequencies,
        told_spanning: Mutex::default(),
        changes,
        last: Mutex::default(),
        config,
    });
    let sweep = tokio::spawn(sweep_each_period(ctx.clone(), shutdown.wait()));
    let leadership = ctx.leadership.clone();
    let stepped_down = Action::requeue(ctx.config.interval);
    controller
        .run(
            move |budget, ctx| {
                let work = reconcile(budget, ctx);
                let lost = leadership.lost();
                let stepped_down = stepped_down.clone();
                async move {
                    tokio::select! {
                        biased;
                        _ = lost => Ok(stepped_down),
                        result = work => result,
                    }
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "budget reconciliation did not complete");
            }
        })
        .await;
    sweep.abort();
}

fn error_policy(budget: Arc<PowerBudget>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(budget = %budget.name_any(), %error, "budget reconcile failed");
    ctx.metrics.failed(error);
    Action::requeue(Duration::from_secs(5).min(ctx.config.interval))
}

/// Where every budget is: its parent and the nodes its selector covers.
/// A budget whose selector cannot be read is left out: it is invalid, so
/// no tree may arbitrate it, and a budget under it has an unknown parent.
fn shapes(ctx: &Context) -> BTreeMap<String, Shape> {
    let nodes = ctx.nodes.state();
    ctx.budgets
        .state()
        .iter()
        .filter_map(|budget| {
            let selector = Selector::try_from(budget.spec.node_selector.clone()).ok()?;
            let covered = nodes
                .iter()
                .filter(|n| selector.matches(n.labels()))
                .map(|n| n.name_any())
                .collect();
            Some((
                budget.name_any(),
                Shape {
                    parent: budget.spec.parent.clone(),
                    nodes: covered,
                },
            ))
        })
        .collect()
}

/// The budgets [`budget_status::validity`] accepts.
fn valid(shapes: &BTreeMap<String, Shape>) -> BTreeMap<String, Shape> {
    shapes
        .iter()
        .filter(|(name, _)| budget_status::validity(name, shapes).is_ok())
        .map(|(name, shape)| (name.clone(), shape.clone()))
        .collect()
}

/// The nodes a policy's devices were measured on.
fn policy_nodes(policy: &PowerCappingPolicy) -> BTreeSet<String> {
    policy
        .status
        .iter()
        .flat_map(|s| &s.nodes)
        .map(|n| n.node_name.clone())
        .collect()
}

#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(controller = "budget", budget = %budget.name_any())
)]
async fn reconcile(budget: Arc<PowerBudget>, ctx: Arc<Context>) -> Result<Action> {
    let requeue = Action::requeue(ctx.config.interval);
    if !ctx.leadership.is_leader() || budget.meta().deletion_timestamp.is_some() {
        return Ok(requeue);
    }
    // Until every watch has listed, a missing node or policy says nothing.
    if !(driver::synced(&ctx.policies).await && driver::synced(&ctx.nodes).await) {
        return Ok(requeue);
    }
    let name = budget.name_any();
    let shapes = shapes(&ctx);
    let selector_error = Selector::try_from(budget.spec.node_selector.clone()).err();
    let invalid = match selector_error {
        Some(e) => Some(budget_status::Invalid {
            reason: "InvalidSelector",
            message: format!("spec.nodeSelector: {e}"),
        }),
        None => budget_status::validity(&name, &shapes).err(),
    };
    let Some(invalid) = invalid else {
        // One decision per tree and period: whichever budget of a tree is
        // reconciled arbitrates the whole tree, paced under its root's
        // name, so the budgets of a tree never act on two decisions at
        // once and a child's own status write does not re-arbitrate it.
        let valid = valid(&shapes);
        let tree = tree_of(&ctx, &name, &valid);
        let root = tree.first().map(|b| b.name_any()).unwrap_or(name);
        if let Some(wait) = ctx.pace(&root, &tree) {
            return Ok(Action::requeue(wait));
        }
        arbitrate(&ctx, &tree, &valid).await?;
        return Ok(requeue);
    };
    if let Some(wait) = ctx.pace(&name, std::slice::from_ref(&budget)) {
        return Ok(Action::requeue(wait));
    }
    let _timer = ctx.metrics.reconcile_timer();
    let decided = budget_status::invalid_conditions(&invalid);
    let status = PowerBudgetStatus::default();
    write_budget_status(&ctx, &budget, status, &decided, &Time(Timestamp::now())).await?;
    ctx.metrics.budgets.record(
        &name,
        &BudgetReading {
            watts: budget.spec.watts as f64,
            measured_watts: None,
            allocations: vec![],
            overcommitted: false,
        },
    );
    ctx.metrics.reconciled();
    Ok(requeue)
}

/// The valid budgets of the tree `name` lies in, its root first, then the
/// rest by name.
fn tree_of(ctx: &Context, name: &str, valid: &BTreeMap<String, Shape>) -> Vec<Arc<PowerBudget>> {
    let root_of = |name: &str| {
        let mut at = name.to_string();
        // Valid budgets form no cycle; the bound only guards the loop.
        for _ in 0..valid.len() {
            match valid.get(&at).and_then(|s| s.parent.clone()) {
                Some(parent) => at = parent,
                None => break,
            }
        }
        at
    };
    let root = root_of(name);
    let mut tree: Vec<Arc<PowerBudget>> = ctx
        .budgets
        .state()
        .into_iter()
        .filter(|b| valid.contains_key(&b.name_any()) && root_of(&b.name_any()) == root)
        .collect();
    tree.sort_by_key(|b| (b.name_any() != root, b.name_any()));
    tree
}

/// One budget's part of its tree's arbitration: what it decides from and
/// whom it writes to.
struct Gathered {
    inputs: Inputs,
    member_policies: Vec<Arc<PowerCappingPolicy>>,
    spanning: Vec<(Arc<PowerCappingPolicy>, Vec<String>)>,
    /// The GPUs on its own nodes no policy measures, which `capUnmanaged`
    /// holds to their share.
    capped: Vec<UnmanagedGpu>,
    /// Its nodes outside its children.
    own_nodes: BTreeSet<String>,
}

/// Arbitrates a tree of valid budgets (root first) as one and writes every
/// budget's status and its members' allocations.
async fn arbitrate(
    ctx: &Context,
    tree: &[Arc<PowerBudget>],
    valid: &BTreeMap<String, Shape>,
) -> Result<()> {
    let _timer = ctx.metrics.reconcile_timer();
    let now = Time(Timestamp::now());
    let mut gathered = Vec::with_capacity(tree.len());
    for budget in tree {
        gathered.push(gather(ctx, budget, valid).await);
    }
    let index: HashMap<String, usize> = tree
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name_any(), i))
        .collect();
    for (g, budget) in gathered.iter_mut().zip(tree) {
        g.inputs.parent = budget
            .spec
            .parent
            .as_ref()
            .and_then(|p| index.get(p).copied());
    }
    let inputs: Vec<Inputs> = gathered.iter().map(|g| g.inputs.clone()).collect();
    let decisions = budget_status::decide_tree(&inputs);
    for ((budget, g), decision) in tree.iter().zip(&gathered).zip(decisions) {
        apply(ctx, budget, g, decision, &now).await?;
    }
    ctx.metrics.reconciled();
    Ok(())
}

/// What `budget` arbitrates: its members, the policies spanning it and
/// other budgets, and the power on its own nodes (outside its children)
/// that no member holds.
async fn gather(ctx: &Context, budget: &PowerBudget, valid: &BTreeMap<String, Shape>) -> Gathered {
    let name = budget.name_any();
    let own = valid.get(&name).cloned().unwrap_or_default();
    let children: Vec<&Shape> = valid
        .values()
        .filter(|s| s.parent.as_deref() == Some(name.as_str()))
        .collect();
    let own_nodes: BTreeSet<String> = own
        .nodes
        .iter()
        .filter(|n| !children.iter().any(|c| c.nodes.contains(*n)))
        .cloned()
        .collect();

    let mut members = Vec::new();
    let mut member_policies = Vec::new();
    let mut spanning = Vec::new();
    for policy in ctx.policies.state() {
        match budget_status::coverage(&policy_nodes(&policy), valid) {
            Coverage::One(owner) if owner == name => {
                members.push(member(&policy, budget));
                member_policies.push(policy);
            }
            Coverage::Spans(budgets) if budgets.contains(&name) => {
                spanning.push((policy, budgets));
            }
            _ => {}
        }
    }
    // Of the GPUs the agents report on the budget's own nodes, those a
    // member measures count with their floors; the rest is unmanaged.
    let member_gpus: BTreeSet<&str> = member_policies
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| &s.nodes)
        .flat_map(|n| &n.devices)
        .map(|d| d.device_id.as_str())
        .collect();
    let managed = unmanaged::measured_gpus(&ctx.policies.state());
    let mut floor_watts = 0.0;
    let mut unmanaged_gpus = Vec::new();
    let mut capped = Vec::new();
    for node in &own_nodes {
        let Some(nf) = ctx.node_frequencies.get(&ObjectRef::new(node)) else {
            continue;
        };
        for gpu in nf.status.iter().flat_map(|s| &s.gpus) {
            // An unmanaged GPU's draw is taken off the top as measured; only
            // the members' GPUs are held to what the budget leaves.
            if member_gpus.contains(gpu.gpu_id.as_str()) {
                floor_watts += gpu.min_power_limit_watts.unwrap_or(0.0);
            } else {
                unmanaged_gpus.push(gpu.gpu_id.clone());
                if !managed.contains(&gpu.gpu_id) {
                    capped.push(UnmanagedGpu {
                        node: node.clone(),
                        gpu: gpu.clone(),
                    });
                }
            }
        }
    }
    let unmanaged_watts = unmanaged_power(ctx, &unmanaged_gpus).await;
    let unmanaged = Unmanaged::of(
        &capped,
        &unmanaged::held_anywhere(&ctx.node_frequencies.state(), &name),
    );
    Gathered {
        inputs: Inputs {
            name,
            parent: None,
            watts: budget.spec.watts as f64,
            reserved_watts: budget.spec.reserved_watts as f64,
            unmanaged_watts,
            floor_watts,
            probe_fraction: PROBE_FRACTION,
            cap_unmanaged: budget.spec.cap_unmanaged,
            unmanaged,
            members,
        },
        member_policies,
        spanning,
        capped,
        own_nodes,
    }
}

/// Writes one budget's decision: its members' allocations (with an event
/// for a cut the workload feels), the spanning policies' conditions, its
/// series and its status.
async fn apply(
    ctx: &Context,
    budget: &PowerBudget,
    gathered: &Gathered,
    decision: budget_status::Decision,
    now: &Time,
) -> Result<()> {
    let name = budget.name_any();
    let Gathered {
        inputs,
        member_policies,
        spanning,
        capped,
        own_nodes,
    } = gathered;
    // capUnmanaged: the unmanaged GPUs held to their share; without it,
    // none. With nothing to go on (no share decided, or a policy not
    // measured yet), the entries are held as they are.
    let unknown =
        decision.unmanaged_share_watts.is_none() || !unmanaged::known(&ctx.policies.state());
    if !(budget.spec.cap_unmanaged && unknown) {
        unmanaged::apply(
            &ctx.client,
            &ctx.metrics,
            &ctx.node_frequencies,
            &name,
            decision.unmanaged_share_watts,
            capped,
            own_nodes,
            ctx.config.interval,
        )
        .await?;
    }
    for ((policy, member), allocation) in member_policies
        .iter()
        .zip(&inputs.members)
        .zip(&decision.allocations)
    {
        if *allocation != member.allocated_watts {
            write_allocation(ctx, policy, *allocation).await?;
            // A cut the workload feels: below what it draws.
            if let (Some(before), Some(after)) = (member.allocated_watts, *allocation)
                && after < before
                && member.measured_watts.is_some_and(|w| w > after as f64)
            {
                announce(
                    ctx,
                    policy.as_ref(),
                    EventType::Normal,
                    "BudgetCut",
                    format!("PowerBudget {name} lowered this policy's allocation from {before} W to {after} W"),
                )
                .await;
            }
        }
    }
    for (policy, budgets) in spanning {
        tell_spanning(ctx, policy, budgets).await;
    }

    announce_unmanaged_over_share(ctx, budget, &decision.conditions).await;
    let mut decided = decision.conditions.clone();
    if !spanning.is_empty()
        && let Some(valid) = decided.iter_mut().find(|d| d.type_ == conditions::VALID)
    {
        let names: Vec<String> = spanning
            .iter()
            .map(|(p, _)| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        valid.message = format!(
            "{}; not arbitrated, as their nodes lie in other budgets too: {}",
            valid.message,
            names.join(", ")
        );
    }
    ctx.metrics.budgets.record(
        &name,
        &BudgetReading {
            watts: budget.spec.watts as f64,
            measured_watts: decision.status.measured_watts,
            allocations: decision
                .status
                .allocations
                .iter()
                .map(|a| {
                    (
                        a.namespace.clone(),
                        a.name.clone(),
                        a.allocated_watts as f64,
                    )
                })
                .collect(),
            overcommitted: decision.overcommitted,
        },
    );
    write_budget_status(ctx, budget, decision.status, &decided, now).await
}

/// A policy as the arbitration sees it; its last demand is what the
/// budget's status recorded for it.
fn member(policy: &PowerCappingPolicy, budget: &PowerBudget) -> Member {
    let status = policy.status.as_ref();
    let namespace = policy.namespace().unwrap_or_default();
    let previous_demand_watts = budget
        .status
        .iter()
        .flat_map(|s| &s.allocations)
        .find(|a| a.namespace == namespace && a.name == policy.name_any())
        .map(|a| a.demand_watts);
    Member {
        namespace,
        name: policy.name_any(),
        priority: policy.effective_priority(),
        min_watts: policy.spec.min_watts.unwrap_or(0) as f64,
        cap_watts: policy.spec.power_cap_limit as f64,
        measured_watts: status.and_then(|s| s.current_power),
        allocated_watts: status.and_then(|s| s.allocated_watts),
        previous_demand_watts,
        held_share: f64::from(policy.spec.capping_threshold) / 100.0,
    }
}

/// The power of `gpus` (their UUIDs) from Prometheus: `Some(0)` for none,
/// `None` when Prometheus could not be asked. A GPU without a series
/// counts 0 W: its exporter is not scraped, and its agent's floor still
/// counts.
async fn unmanaged_power(ctx: &Context, gpus: &[String]) -> Option<f64> {
    if gpus.is_empty() {
        return Some(0.0);
    }
    let uuids: Vec<&str> = gpus.iter().map(String::as_str).collect();
    let query = observe::dcgm_gpus_query(observe::GPU_POWER, &uuids, &ctx.config.dcgm_jobs);
    let started = Instant::now();
    let answer = ctx.prometheus.instant(&query).await;
    ctx.metrics.prometheus_query(
        "unmanaged_gpu_power",
        answer.is_ok(),
        started.elapsed().as_secs_f64(),
    );
    match answer {
        Ok(samples) => Some(
            samples
                .iter()
                .filter(|s| s.value.is_finite() && s.value >= 0.0)
                .map(|s| s.value)
                .sum(),
        ),
        Err(error) => {
            tracing::warn!(%error, "could not read the power of unmanaged GPUs");
            None
        }
    }
}

const BUDGET_STATUS: &str = "powerbudgets/status";

/// Applies `status.allocatedWatts` of `policy` as the budget controller;
/// `None` gives the field up, which removes it. What else this manager
/// applied before (a `BudgetAssigned` condition) is given up with it.
async fn write_allocation(
    ctx: &Context,
    policy: &PowerCappingPolicy,
    watts: Option<i64>,
) -> Result<()> {
    let status = match watts {
        Some(w) => json!({ "allocatedWatts": w }),
        None => json!({}),
    };
    apply_policy_status(ctx, policy, status).await
}

/// Applies `status` to `policy` as the budget controller: every field it
/// owns and `status` lacks is removed.
async fn apply_policy_status(
    ctx: &Context,
    policy: &PowerCappingPolicy,
    status: serde_json::Value,
) -> Result<()> {
    driver::apply_policy_status(&ctx.client, &ctx.metrics, policy, MANAGER_BUDGET, status).await
}

/// The policy's `BudgetAssigned` condition, when it has one.
fn budget_assigned(policy: &PowerCappingPolicy) -> Option<&Condition> {
    policy
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == conditions::BUDGET_ASSIGNED)
}

/// Applies the budget's status when it differs from what it holds (the
/// write comes back as a watch event; an unchanged status ends there).
async fn write_budget_status(
    ctx: &Context,
    budget: &PowerBudget,
    mut status: PowerBudgetStatus,
    decided: &[Decided],
    now: &Time,
) -> Result<()> {
    let previous = budget.status.clone().unwrap_or_default();
    status.observed_generation = budget.meta().generation;
    status.conditions = decided
        .iter()
        .map(|d| render(&previous.conditions, d, budget.meta().generation, now))
        .collect();
    if status == previous {
        ctx.metrics
            .write_decision(BUDGET_STATUS, false, "unchanged");
        return Ok(());
    }
    let patch = json!({
        "apiVersion": PowerBudget::api_version(&()),
        "kind": PowerBudget::kind(&()),
        "status": status,
    });
    let written = Api::<PowerBudget>::all(ctx.client.clone())
        .patch_status(
            &budget.name_any(),
            &PatchParams::apply(MANAGER_BUDGET).force(),
            &Patch::Apply(patch),
        )
        .await;
    ctx.metrics
        .api_write(BUDGET_STATUS, "apply", written.is_ok());
    ctx.metrics.write_decision(BUDGET_STATUS, true, "changed");
    written?;
    Ok(())
}

async fn announce<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Arbitrate".to_string(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(%error, object = %object.name_any(), "could not publish an event");
    }
}

/// One Warning event on the budget when `capUnmanaged` finds the
/// unmanaged GPUs drawing more than their lowest-priority share, as the
/// condition turns False.
async fn announce_unmanaged_over_share(ctx: &Context, budget: &PowerBudget, decided: &[Decided]) {
    let Some(over) = decided
        .iter()
        .find(|d| d.type_ == conditions::UNMANAGED_WITHIN_SHARE && !d.status)
    else {
        return;
    };
    let was_over = budget
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .any(|c| c.type_ == conditions::UNMANAGED_WITHIN_SHARE && c.status == "False");
    if !was_over {
        announce(
            ctx,
            budget,
            EventType::Warning,
            "UnmanagedOverShare",
            over.message.clone(),
        )
        .await;
    }
}

/// Tells a policy that its nodes lie in budgets not nested in each other,
/// so none of them lowers its cap: the condition `BudgetAssigned=False`
/// (reason `SpansBudgets`) on the policy, which also gives up any
/// allocation, and one Warning event.
async fn tell_spanning(ctx: &Context, policy: &PowerCappingPolicy, budgets: &[String]) {
    let message = format!(
        "the policy's nodes lie in PowerBudgets {}, which are not nested in each other; none of them arbitrates it",
        budgets.join(", ")
    );
    let decided = Decided::new(conditions::BUDGET_ASSIGNED, false, "SpansBudgets", &message);
    let previous: Vec<Condition> = budget_assigned(policy).cloned().into_iter().collect();
    let condition = render(
        &previous,
        &decided,
        policy.meta().generation,
        &Time(Timestamp::now()),
    );
    let allocated = policy
        .status
        .as_ref()
        .is_some_and(|s| s.allocated_watts.is_some());
    let same = previous.first().is_some_and(|c| {
        (&c.status, &c.reason, &c.message, c.observed_generation)
            == (
                &condition.status,
                &condition.reason,
                &condition.message,
                condition.observed_generation,
            )
    });
    if allocated || !same {
        let status = json!({ "conditions": [condition] });
        if let Err(error) = apply_policy_status(ctx, policy, status).await {
            tracing::warn!(%error, policy = %policy.name_any(), "could not mark a policy spanning budgets");
        }
    }
    let key = (policy.namespace().unwrap_or_default(), policy.name_any());
    let first = ctx
        .told_spanning
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key);
    if first {
        announce(ctx, policy, EventType::Warning, "SpansBudgets", message).await;
    }
}

/// Every period until `shutdown`: while leading, gives up the allocations
/// of policies no valid budget arbitrates any more, and drops the series
/// of budgets that are gone (all of them while not leading).
async fn sweep_each_period(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let sweep = async {
        if !(driver::synced(&ctx.budgets).await && driver::synced(&ctx.policies).await) {
            return;
        }
        let mut ticks = tokio::time::interval(ctx.config.interval);
        loop {
            ticks.tick().await;
            let leading = ctx.leadership.is_leader();
            let budgets = ctx.budgets.clone();
            ctx.metrics
                .budgets
                .retain(|b| leading && budgets.get(&ObjectRef::new(b)).is_some());
            // A new leader, or a budget made again, is arbitrated at once.
            ctx.last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|b, _| leading && budgets.get(&ObjectRef::new(b)).is_some());
            if !leading {
                continue;
            }
            let valid = valid(&shapes(&ctx));
            // Entries of budgets gone, invalid or no longer capping.
            let capping: BTreeSet<String> = ctx
                .budgets
                .state()
                .iter()
                .filter(|b| b.spec.cap_unmanaged && valid.contains_key(&b.name_any()))
                .map(|b| b.name_any())
                .collect();
            unmanaged::remove_stale(
                &ctx.client,
                &ctx.metrics,
                &ctx.node_frequencies,
                &capping,
                ctx.config.interval,
            )
            .await;
            for policy in ctx.policies.state() {
                let allocated = policy.status.as_ref().and_then(|s| s.allocated_watts);
                let coverage = budget_status::coverage(&policy_nodes(&policy), &valid);
                // Spanning policies are told by the budgets' reconciles;
                // one that no longer spans gives its condition up here,
                // keeping an allocation a budget now arbitrates.
                let keep = match coverage {
                    Coverage::Spans(_) => continue,
                    Coverage::One(_) => allocated,
                    Coverage::None => None,
                };
                let stale = budget_assigned(&policy).is_some() || allocated != keep;
                if stale && let Err(error) = write_allocation(&ctx, &policy, keep).await {
                    tracing::warn!(%error, policy = %policy.name_any(), "could not give up an allocation");
                }
            }
        }
    };
    tokio::select! {
        _ = sweep => {}
        _ = shutdown => {}
    }
}
