//! `capUnmanaged`: the NodeFrequencies entries that hold the GPUs on a
//! PowerBudget's own nodes that no policy selects to the share the budget
//! allots them as its lowest-priority claim
//! ([`crate::budget_status::decide`]).
//!
//! The entries are keyed [`budget_key`] (never a policy's `namespace/name`,
//! so the recommender's garbage collection passes them by) and applied by
//! server-side apply under one field manager per budget
//! ([`budget_entries_manager`]): the recommender's applies and other
//! budgets' never remove them, nor they those. Each entry leaves the clock
//! at the GPU's highest (`targetFrequency`) and carries a `powerBudgetWatts`;
//! the entries add up to the share, split evenly within each GPU's
//! power-limit range, and one `budgetGroup` per node lets the agent move
//! watts between a node's GPUs by demand. A GPU a policy measures gets no
//! entry, so one that becomes managed loses it at the next apply; the
//! entries of a budget that is gone, invalid or no longer capping are
//! removed by the budget controller's sweep ([`stale`]), and their
//! `expiresAt` is the backstop when no controller runs.
//!
//! The pure part (which entries a budget wants, which are stale) is
//! unit-tested here; [`write`] applies one budget's entries where they
//! differ from what the nodes hold or are due for renewal
//! ([`due::entries_due`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use climatik_api::{
    DeviceKind, GpuFrequency, GpuInventory, NodeFrequencies, PowerCappingPolicy,
    bounds::MAX_DEVICE_WATTS,
    names::{budget_entries_manager, budget_key, conditions, parse_budget_key},
};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::reflector::{ObjectRef, Store},
};
use serde_json::json;

use crate::{
    Result,
    arbitration::{self, Claim},
    due,
    metrics::Metrics,
};

/// How long an entry lives unless renewed: the recommender's default, or
/// four periods of a slower controller, so a renewal every quarter of it
/// ([`due::entries_due`]) still comes at most once a period.
pub fn entry_ttl(interval: Duration) -> Duration {
    (interval * 4).max(Duration::from_secs(120))
}

/// A GPU on a budget's own nodes that no policy measures.
#[derive(Debug, Clone, PartialEq)]
pub struct UnmanagedGpu {
    pub node: String,
    pub gpu: GpuInventory,
}

impl UnmanagedGpu {
    /// The lowest budget the GPU takes: its lowest power limit (at least
    /// 1 W, the least an entry may carry).
    fn lowest_watts(&self) -> f64 {
        self.gpu.min_power_limit_watts.unwrap_or(0.0).max(1.0)
    }

    /// The most a budget can give it: its power limit, when reported.
    fn highest_watts(&self) -> f64 {
        self.gpu
            .power_limit_watts
            .unwrap_or(MAX_DEVICE_WATTS)
            .clamp(self.lowest_watts(), MAX_DEVICE_WATTS)
    }
}

/// What the arbitration needs to know of the unmanaged GPUs beside their
/// measured draw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Unmanaged {
    /// What the budget's entries hold them to now (the sum of their
    /// `powerBudgetWatts`); `None` when no entry holds them.
    pub held_watts: Option<f64>,
    /// The sum of their lowest power limits: the claim's guarantee, as no
    /// entry can hold a GPU below it.
    pub floor_watts: f64,
    /// The sum of their power limits: the claim's cap.
    pub limit_watts: f64,
}

impl Unmanaged {
    /// The unmanaged GPUs `gpus` and the entries `held` that hold them.
    pub fn of(gpus: &[UnmanagedGpu], held: &[GpuFrequency]) -> Self {
        Self {
            held_watts: (!held.is_empty())
                .then(|| held.iter().filter_map(|e| e.power_budget_watts).sum()),
            floor_watts: gpus.iter().map(UnmanagedGpu::lowest_watts).sum(),
            limit_watts: gpus.iter().map(UnmanagedGpu::highest_watts).sum(),
        }
    }
}

/// `share_watts` split among `gpus`: evenly, each within its power-limit
/// range (never below its lowest limit, so below the sum of those each
/// gets its lowest), each rounded down to a whole watt so the split never
/// adds up to more than the share it was given.
pub fn split(share_watts: f64, gpus: &[UnmanagedGpu]) -> Vec<f64> {
    let lowest: Vec<f64> = gpus.iter().map(UnmanagedGpu::lowest_watts).collect();
    if share_watts <= lowest.iter().sum::<f64>() {
        return lowest;
    }
    let claims: Vec<Claim> = gpus
        .iter()
        .map(|g| Claim {
            priority: 0,
            min_watts: g.lowest_watts(),
            cap_watts: g.highest_watts(),
            demand_watts: g.highest_watts(),
            held: false,
        })
        .collect();
    arbitration::allocate(share_watts, &claims)
        .watts
        .into_iter()
        .zip(&lowest)
        .map(|(w, low)| w.floor().max(*low))
        .collect()
}

/// The entries budget `budget` wants for `gpus` when they share
/// `share_watts`, by node; a node of `nodes` with no unmanaged GPU wants
/// none (so what it holds is removed).
pub fn wanted(
    budget: &str,
    share_watts: f64,
    gpus: &[UnmanagedGpu],
    nodes: &BTreeSet<String>,
    expires_at: &Time,
) -> BTreeMap<String, Vec<GpuFrequency>> {
    let key = budget_key(budget);
    let mut by_node: BTreeMap<String, Vec<GpuFrequency>> =
        nodes.iter().map(|n| (n.clone(), Vec::new())).collect();
    for (gpu, watts) in gpus.iter().zip(split(share_watts, gpus)) {
        let highest = gpu
            .gpu
            .supported_frequencies
            .iter()
            .copied()
            .max()
            .unwrap_or(gpu.gpu.max_frequency);
        by_node
            .entry(gpu.node.clone())
            .or_default()
            .push(GpuFrequency {
                gpu_id: gpu.gpu.gpu_id.clone(),
                target_frequency: highest,
                power_budget_watts: Some(watts),
                budget_group: Some(key.clone()),
                policy: key.clone(),
                expires_at: expires_at.clone(),
                kept_by_lease: false,
            });
    }
    by_node
}

/// Whether the monitor has measured the GPUs of every GPU policy as its
/// spec now stands (or found it has no pods), so the GPUs none of them
/// measures are known. Before that a policy's GPUs would look unmanaged (a
/// new policy, a controller just started, series not scraped yet), and
/// capping them would hold a workload to the lowest priority's share. A
/// policy whose pods have no GPU series (pending pods) holds the entries
/// as they are until it is measured.
pub fn known(policies: &[Arc<PowerCappingPolicy>]) -> bool {
    policies.iter().all(|p| {
        p.status.as_ref().is_some_and(|s| {
            let measured = s.conditions.iter().any(|c| {
                c.type_ == conditions::METRICS_AVAILABLE
                    && matches!(c.reason.as_str(), "MetricsFound" | "NoMatchingPods")
            });
            s.observed_generation == p.metadata.generation
                && (measured || !p.acts_on(DeviceKind::Gpu))
        })
    })
}

/// The entries of budget `budget` that `nf` holds.
pub fn held(nf: &NodeFrequencies, budget: &str) -> Vec<GpuFrequency> {
    let key = budget_key(budget);
    nf.spec
        .gpu_frequencies
        .iter()
        .filter(|e| e.policy == key)
        .cloned()
        .collect()
}

/// The entries of budget `budget` on every node.
pub fn held_anywhere(node_frequencies: &[Arc<NodeFrequencies>], budget: &str) -> Vec<GpuFrequency> {
    node_frequencies
        .iter()
        .flat_map(|nf| held(nf, budget))
        .collect()
}

/// The GPUs some policy measures: never capped as unmanaged, whichever
/// budget the policy belongs to (one spanning budgets belongs to none).
pub fn measured_gpus(policies: &[Arc<PowerCappingPolicy>]) -> BTreeSet<String> {
    policies
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| &s.nodes)
        .flat_map(|n| &n.devices)
        .map(|d| d.device_id.clone())
        .collect()
}

/// `(budget, node)` of every budget's entries the nodes hold whose budget
/// is not in `capping` (gone, invalid, or not capping its unmanaged GPUs).
pub fn stale(
    node_frequencies: &[Arc<NodeFrequencies>],
    capping: &BTreeSet<String>,
) -> BTreeSet<(String, String)> {
    node_frequencies
        .iter()
        .flat_map(|nf| {
            nf.spec
                .gpu_frequencies
                .iter()
                .filter_map(parse_key)
                .filter(|budget| !capping.contains(*budget))
                .map(|budget| (budget.to_string(), nf.name_any()))
        })
        .collect()
}

fn parse_key(entry: &GpuFrequency) -> Option<&str> {
    parse_budget_key(&entry.policy)
}

/// The nodes holding entries of budget `budget`.
pub fn nodes_holding(node_frequencies: &[Arc<NodeFrequencies>], budget: &str) -> BTreeSet<String> {
    node_frequencies
        .iter()
        .filter(|nf| !held(nf, budget).is_empty())
        .map(|nf| nf.name_any())
        .collect()
}

const NODE_FREQUENCIES: &str = "nodefrequencies";

/// Applies budget `budget`'s `wanted` entries on each node where they
/// differ from what it holds or are due for renewal; an empty list removes
/// them. A node without a NodeFrequencies (no agent) is left alone.
pub async fn write(
    client: &kube::Client,
    metrics: &Metrics,
    store: &Store<NodeFrequencies>,
    budget: &str,
    wanted: &BTreeMap<String, Vec<GpuFrequency>>,
    ttl: Duration,
) -> Result<()> {
    let now = Timestamp::now();
    let manager = budget_entries_manager(budget);
    for (node, entries) in wanted {
        let Some(nf) = store.get(&ObjectRef::new(node)) else {
            continue;
        };
        let held = held(&nf, budget);
        if held.is_empty() && entries.is_empty() {
            continue;
        }
        let Some(reason) = due::entries_due((&held, &[]), (entries, &[]), now, ttl) else {
            metrics.write_decision(NODE_FREQUENCIES, false, "unchanged");
            continue;
        };
        let body = json!({
            "apiVersion": NodeFrequencies::api_version(&()),
            "kind": NodeFrequencies::kind(&()),
            "metadata": { "name": node },
            "spec": { "nodeName": node, "gpuFrequencies": entries },
        });
        let applied = Api::<NodeFrequencies>::all(client.clone())
            .patch(
                node,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(body),
            )
            .await;
        metrics.api_write(NODE_FREQUENCIES, "apply", applied.is_ok());
        metrics.write_decision(NODE_FREQUENCIES, true, reason.metric_label());
        applied?;
    }
    Ok(())
}

/// Holds the unmanaged `gpus` on budget `budget`'s own `nodes` to
/// `share_watts`, or, with `None`, removes every entry of the budget.
/// Nodes that hold its entries and are no longer among `nodes`, or GPUs no
/// longer in `gpus`, lose them.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    client: &kube::Client,
    metrics: &Metrics,
    store: &Store<NodeFrequencies>,
    budget: &str,
    share_watts: Option<f64>,
    gpus: &[UnmanagedGpu],
    nodes: &BTreeSet<String>,
    interval: Duration,
) -> Result<()> {
    let ttl = entry_ttl(interval);
    let mut visit = nodes_holding(&store.state(), budget);
    let gpus = match share_watts {
        Some(_) => {
            visit.extend(nodes.iter().cloned());
            gpus
        }
        None => &[],
    };
    let wanted = wanted(
        budget,
        share_watts.unwrap_or(0.0),
        gpus,
        &visit,
        &expires_at(ttl),
    );
    write(client, metrics, store, budget, &wanted, ttl).await
}

/// Removes the entries of every budget not in `capping` (gone, invalid or
/// not capping) from the nodes that hold them; a failure is logged and
/// tried again next period.
pub async fn remove_stale(
    client: &kube::Client,
    metrics: &Metrics,
    store: &Store<NodeFrequencies>,
    capping: &BTreeSet<String>,
    interval: Duration,
) {
    for (budget, node) in stale(&store.state(), capping) {
        let none = BTreeMap::from([(node, Vec::new())]);
        if let Err(error) = write(client, metrics, store, &budget, &none, entry_ttl(interval)).await
        {
            tracing::warn!(%error, %budget, "could not remove a budget's entries");
        }
    }
}

/// When entries written now expire.
pub fn expires_at(ttl: Duration) -> Time {
    Time(Timestamp::now() + SignedDuration::try_from(ttl).unwrap_or(SignedDuration::from_secs(120)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use climatik_api::NodeFrequenciesSpec;

    fn gpu(node: &str, id: &str, lowest: Option<f64>, limit: Option<f64>) -> UnmanagedGpu {
        UnmanagedGpu {
            node: node.into(),
            gpu: GpuInventory {
                gpu_id: id.into(),
                min_frequency: 210,
                max_frequency: 1980,
                supported_frequencies: vec![210, 1410, 1980],
                power_limit_watts: limit,
                min_power_limit_watts: lowest,
                ..Default::default()
            },
        }
    }

    fn time() -> Time {
        Time(Timestamp::UNIX_EPOCH)
    }

    fn nf(node: &str, entries: &[(&str, &str, f64)]) -> Arc<NodeFrequencies> {
        let mut nf = NodeFrequencies::new(
            node,
            NodeFrequenciesSpec {
                node_name: node.into(),
                gpu_frequencies: entries
                    .iter()
                    .map(|(id, key, watts)| GpuFrequency {
                        gpu_id: (*id).into(),
                        target_frequency: 1980,
                        power_budget_watts: Some(*watts),
                        budget_group: None,
                        policy: (*key).into(),
                        expires_at: time(),
                        kept_by_lease: false,
                    })
                    .collect(),
                cpu_frequencies: vec![],
            },
        );
        nf.metadata.name = Some(node.into());
        Arc::new(nf)
    }

    #[test]
    fn a_share_is_split_evenly_within_each_gpus_limits_and_never_exceeded() {
        let gpus = [
            gpu("n1", "GPU-a", Some(200.0), Some(700.0)),
            gpu("n1", "GPU-b", Some(200.0), Some(300.0)),
            gpu("n2", "GPU-c", Some(100.0), Some(700.0)),
        ];
        // Even where every GPU has room; b stops at its limit and the rest
        // goes to the others.
        assert_eq!(split(900.0, &gpus), vec![300.0, 300.0, 300.0]);
        assert_eq!(split(1300.0, &gpus), vec![500.0, 300.0, 500.0]);
        // Whole watts, rounded down.
        assert!(split(1000.5, &gpus).iter().sum::<f64>() <= 1000.5);
        // Above every limit: each at its limit, less than the share.
        assert_eq!(split(5000.0, &gpus), vec![700.0, 300.0, 700.0]);
        // Below the lowest limits: each at its lowest, never under it.
        assert_eq!(split(300.0, &gpus), vec![200.0, 200.0, 100.0]);
        // Nothing known of a GPU: at least 1 W, the least an entry takes.
        assert_eq!(split(0.0, &[gpu("n", "x", None, None)]), vec![1.0]);
    }

    #[test]
    fn entries_hold_the_highest_clock_and_group_by_node_under_the_budget_key() {
        let gpus = [
            gpu("n1", "GPU-a", Some(100.0), Some(700.0)),
            gpu("n1", "GPU-b", Some(100.0), Some(700.0)),
            gpu("n2", "GPU-c", Some(100.0), Some(700.0)),
        ];
        let nodes = BTreeSet::from(["n1".to_string(), "n2".into(), "n3".into()]);
        let wanted = wanted("rack", 600.0, &gpus, &nodes, &time());
        assert_eq!(wanted.len(), 3);
        // A covered node without unmanaged GPUs wants none.
        assert_eq!(wanted.get("n3").map(Vec::len), Some(0));
        let all: Vec<&GpuFrequency> = wanted.values().flatten().collect();
        assert_eq!(all.len(), 3);
        let total: f64 = all.iter().filter_map(|e| e.power_budget_watts).sum();
        assert_eq!(total, 600.0);
        for entry in all {
            assert_eq!(entry.policy, "powerbudget:rack");
            assert_eq!(entry.budget_group.as_deref(), Some("powerbudget:rack"));
            assert_eq!(entry.target_frequency, 1980);
        }
        assert_eq!(wanted.get("n1").map(Vec::len), Some(2));
    }

    #[test]
    fn the_claim_counts_what_the_entries_hold_and_the_gpus_limits() {
        let gpus = [
            gpu("n1", "GPU-a", Some(100.0), Some(700.0)),
            gpu("n1", "GPU-b", None, None),
        ];
        let none = Unmanaged::of(&gpus, &[]);
        assert_eq!(none.held_watts, None);
        assert_eq!(none.floor_watts, 101.0);
        assert_eq!(none.limit_watts, 700.0 + MAX_DEVICE_WATTS);
        let nf = nf(
            "n1",
            &[
                ("GPU-a", "powerbudget:rack", 150.0),
                ("GPU-b", "ns/p", 90.0),
            ],
        );
        let held = held(&nf, "rack");
        assert_eq!(held.len(), 1);
        assert_eq!(Unmanaged::of(&gpus, &held).held_watts, Some(150.0));
    }

    #[test]
    fn unmanaged_gpus_are_known_once_every_policy_is_measured_as_it_stands() {
        let policy = |generation: i64, observed: Option<i64>, reason: &str| {
            let mut p: PowerCappingPolicy = match serde_json::from_value(serde_json::json!({
                "apiVersion": "climatik.io/v1alpha1",
                "kind": "PowerCappingPolicy",
                "metadata": { "name": "p", "namespace": "ns", "generation": generation },
                "spec": { "powerCapLimit": 100, "selector": {} },
            })) {
                Ok(p) => p,
                Err(e) => panic!("test policy: {e}"),
            };
            p.status = observed.map(|g| climatik_api::PowerCappingPolicyStatus {
                observed_generation: Some(g),
                conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                    type_: conditions::METRICS_AVAILABLE.into(),
                    status: "True".into(),
                    reason: reason.into(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: time(),
                }],
                ..Default::default()
            });
            Arc::new(p)
        };
        assert!(known(&[]));
        assert!(known(&[policy(2, Some(2), "MetricsFound")]));
        assert!(known(&[policy(2, Some(2), "NoMatchingPods")]));
        // Pods whose GPU series are not there (yet).
        assert!(!known(&[policy(2, Some(2), "NoData")]));
        assert!(!known(&[
            policy(2, Some(2), "MetricsFound"),
            policy(1, None, "")
        ]));
        assert!(!known(&[policy(3, Some(2), "MetricsFound")]));
    }

    #[test]
    fn entries_of_budgets_not_capping_are_stale_and_policies_entries_never() {
        let nfs = [
            nf(
                "n1",
                &[
                    ("GPU-a", "powerbudget:rack", 150.0),
                    ("GPU-b", "powerbudget:gone", 150.0),
                    ("GPU-c", "ns/powerbudget:gone", 150.0),
                    ("GPU-d", "manual", 150.0),
                ],
            ),
            nf("n2", &[("GPU-e", "powerbudget:gone", 150.0)]),
        ];
        let capping = BTreeSet::from(["rack".to_string()]);
        assert_eq!(
            stale(&nfs, &capping),
            BTreeSet::from([
                ("gone".to_string(), "n1".to_string()),
                ("gone".to_string(), "n2".to_string())
            ])
        );
        assert_eq!(
            nodes_holding(&nfs, "gone"),
            BTreeSet::from(["n1".to_string(), "n2".to_string()])
        );
    }
}
