//! The budget controller against the real API server and Prometheus: the
//! monitor (with its budget controller) and the recommender run in-process
//! on two fake GPU nodes whose DCGM series the test sets. A PowerBudget is
//! shared by a high-priority serving policy and a low-priority training
//! policy, with an idle GPU no policy selects drawing power beside them;
//! a policy without a priority takes its pods' PriorityClass value, and
//! `capUnmanaged` holds the GPU no policy selects to its share.

mod common;

use std::time::Duration;

use climatik_api::{NodeFrequencies, PowerBudget, PowerBudgetStatus, PowerCappingPolicy};
use climatik_controller::{
    metrics::Metrics,
    monitor::{self, MonitorConfig},
};
use common::*;
use k8s_openapi::api::{core::v1::Node, events::v1::Event, scheduling::v1::PriorityClass};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(60);
/// The label the test's budgets select their nodes by.
const RACK: &str = "climatik.io/test-rack";

/// One rack at a time. PowerBudgets are cluster-scoped and a budget
/// controller arbitrates every one in the cluster (one arbiter per
/// cluster, as installed); each rack's controller sees only its own
/// namespace's policies, so two racks at once would each arbitrate the
/// other's budgets as if their policies' GPUs were unmanaged, and write
/// that into their status.
static ONE_RACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Two nodes labelled as the namespace's rack, the DCGM endpoint, and the
/// monitor (budgets on) with the recommender; runs `body`, then removes
/// what it made (the namespace only when `body` passed).
async fn with_rack(
    prefix: &str,
    body: impl AsyncFnOnce(&Rack) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let _alone = ONE_RACK.lock().await;
    let cluster = climatik_test_support::cluster().await?;
    cluster.install_crds().await?;
    let ns = cluster.namespace(prefix).await?;
    let ns_name = ns.name().to_string();
    let admin = cluster.client.clone();
    let nodes: Vec<String> = (0..2).map(|i| format!("{ns_name}-node-{i}")).collect();
    for node in &nodes {
        create_node(&admin, node, 4).await?;
        Api::<Node>::all(admin.clone())
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": { RACK: ns_name } } })),
            )
            .await?;
    }
    let dcgm = DcgmServer::start().await?;
    scrape_dcgm(&cluster, &ns_name, &dcgm)?;
    let (stop_monitor, monitor_stopped) = oneshot::channel::<()>();
    let metrics = Metrics::new("powercapping-controller");
    let monitor = tokio::spawn(monitor::run(
        admin.clone(),
        MonitorConfig {
            power_budgets: true,
            ..monitor_config(cluster.prometheus_url(), &ns_name)
        },
        metrics.clone(),
        async move {
            let _ = monitor_stopped.await;
        },
    ));
    let recommender = InProcessRecommender::start(&admin, Duration::from_secs(60), &ns_name);
    let rack = Rack {
        admin: admin.clone(),
        ns: ns_name.clone(),
        nodes: nodes.clone(),
        dcgm,
        metrics,
    };
    let result = body(&rack).await;
    let _ = stop_monitor.send(());
    let stopped = monitor.await;
    recommender.stop().await?;
    let budgets = Api::<PowerBudget>::all(admin.clone());
    for budget in budgets.list(&ListParams::default()).await?.items {
        if budget
            .spec
            .node_selector
            .match_labels
            .as_ref()
            .and_then(|l| l.get(RACK))
            == Some(&ns_name)
        {
            let name = kube::ResourceExt::name_any(&budget);
            let _ = budgets.delete(&name, &DeleteParams::default()).await;
        }
    }
    delete_all_pods(&admin, &ns_name).await;
    delete_nodes(&admin, &nodes).await;
    cluster.remove_prometheus_target(&ns_name)?;
    result?;
    stopped??;
    ns.cleanup().await?;
    Ok(())
}

struct Rack {
    admin: kube::Client,
    ns: String,
    nodes: Vec<String>,
    dcgm: DcgmServer,
    metrics: std::sync::Arc<Metrics>,
}

impl Rack {
    fn policies(&self) -> Api<PowerCappingPolicy> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn budgets(&self) -> Api<PowerBudget> {
        Api::all(self.admin.clone())
    }

    /// The UUID of the rack's GPU `name` ("GPU-S", "GPU-T", "GPU-U"):
    /// unique to the rack, because every test's exporter is scraped by
    /// the same Prometheus and the unmanaged GPUs' power is read by UUID
    /// alone (a test running beside this one would add its GPU-U's draw).
    fn gpu_id(&self, name: &str) -> String {
        format!("{name}-{}", self.ns)
    }

    /// The budget's status as the API server has it now.
    async fn budget_status(&self, name: &str) -> anyhow::Result<PowerBudgetStatus> {
        Ok(self.budgets().get(name).await?.status.unwrap_or_default())
    }

    /// Serving (priority 10) on node 0's GPU-S, training (0) on node 1's
    /// GPU-T, GPU-U idle beside it under no policy; both policies plan
    /// with the budget allocator, so their entries carry
    /// `powerBudgetWatts`.
    async fn start_workloads(&self, min_power_limit: Option<f64>) -> anyhow::Result<()> {
        let [node0, node1] = [&self.nodes[0], &self.nodes[1]];
        create_pod(&self.admin, &self.ns, "s0", node0, "serving").await?;
        create_pod(&self.admin, &self.ns, "t0", node1, "training").await?;
        let [s, t, u] = ["GPU-S", "GPU-T", "GPU-U"].map(|g| self.gpu_id(g));
        report_gpus(&self.admin, node0, &[&s], min_power_limit).await?;
        report_gpus(&self.admin, node1, &[&t, &u], min_power_limit).await?;
        for (name, priority) in [("serving", 10), ("training", 0)] {
            self.create_policy(name, priority).await?;
        }
        Ok(())
    }

    /// A 1000 W policy of `priority` over the pods labelled `app=name`,
    /// planned by the budget allocator, so its entries carry
    /// `powerBudgetWatts`.
    async fn create_policy(&self, name: &str, priority: i32) -> anyhow::Result<()> {
        self.policies()
            .create(
                &PostParams::default(),
                &policy(
                    name,
                    name,
                    1000,
                    json!({
                        "priority": priority,
                        "customAlgorithms": [{ "name": "budget-allocator" }],
                    }),
                )?,
            )
            .await?;
        Ok(())
    }

    /// Serving, training and the idle GPU draw these watts.
    fn draw(&self, serving: f64, training: f64, idle: f64) {
        let (ns, nodes) = (&self.ns, &self.nodes);
        let mut idle_gpu = gpu(&self.gpu_id("GPU-U"), "pod", "", ns, &nodes[1], idle);
        idle_gpu.namespace = String::new();
        self.dcgm.set(vec![
            gpu(&self.gpu_id("GPU-S"), "pod", "s0", ns, &nodes[0], serving),
            gpu(&self.gpu_id("GPU-T"), "pod", "t0", ns, &nodes[1], training),
            idle_gpu,
        ]);
    }

    /// Creates a budget over the rack's nodes, or over those of them
    /// `spec.nodeSelector.matchLabels` also selects.
    async fn create_budget(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        let mut spec = spec;
        spec["nodeSelector"]["matchLabels"][RACK] = json!(self.ns);
        let budget: PowerBudget = serde_json::from_value(json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "PowerBudget",
            "metadata": { "name": name },
            "spec": spec,
        }))?;
        self.budgets()
            .create(&PostParams::default(), &budget)
            .await?;
        Ok(())
    }

    /// `(serving, training)` allocations.
    async fn allocations(&self) -> anyhow::Result<(Option<i64>, Option<i64>)> {
        let allocated = |p: PowerCappingPolicy| p.status.and_then(|s| s.allocated_watts);
        Ok((
            allocated(self.policies().get("serving").await?),
            allocated(self.policies().get("training").await?),
        ))
    }

    /// `(serving, training)`: the sum of each policy's entries'
    /// `powerBudgetWatts` on the rack's nodes.
    async fn entry_watts(&self) -> anyhow::Result<(f64, f64)> {
        let sums = self.entry_watts_of(&["serving", "training"]).await?;
        Ok((sums[0], sums[1]))
    }

    /// The sum of each named policy's entries' `powerBudgetWatts` on the
    /// rack's nodes, in `names`' order.
    async fn entry_watts_of(&self, names: &[&str]) -> anyhow::Result<Vec<f64>> {
        let mut sums = vec![0.0; names.len()];
        for node in &self.nodes {
            let Some(nf) = Api::<NodeFrequencies>::all(self.admin.clone())
                .get_opt(node)
                .await?
            else {
                continue;
            };
            for entry in nf.spec.gpu_frequencies {
                let watts = entry.power_budget_watts.unwrap_or(0.0);
                if let Some(i) = names
                    .iter()
                    .position(|n| entry.policy == format!("{}/{n}", self.ns))
                {
                    sums[i] += watts;
                }
            }
        }
        Ok(sums)
    }

    /// Waits until `check` holds for the entries, asserting on every look
    /// that they add up to no more than `budget` watts.
    async fn entries_until(
        &self,
        what: &str,
        budget: f64,
        check: impl Fn((f64, f64)) -> bool,
    ) -> anyhow::Result<(f64, f64)> {
        let sums = self
            .entries_of_until(&["serving", "training"], what, budget, |s| {
                check((s[0], s[1]))
            })
            .await?;
        Ok((sums[0], sums[1]))
    }

    /// Waits until `check` holds for the named policies' entries
    /// ([`Rack::entry_watts_of`]), asserting on every look that they add
    /// up to no more than `budget` watts.
    async fn entries_of_until(
        &self,
        names: &[&str],
        what: &str,
        budget: f64,
        check: impl Fn(&[f64]) -> bool,
    ) -> anyhow::Result<Vec<f64>> {
        wait_for(what, TIMEOUT, || async {
            let entries = self.entry_watts_of(names).await?;
            let sum: f64 = entries.iter().sum();
            anyhow::ensure!(
                sum <= budget,
                "the entries {entries:?} add up to more than the {budget} W budget"
            );
            Ok(check(&entries).then_some(entries))
        })
        .await
    }

    /// `(status, reason)` of a policy's condition `type_`.
    async fn policy_condition(
        &self,
        name: &str,
        type_: &str,
    ) -> anyhow::Result<Option<(String, String)>> {
        let policy = self.policies().get(name).await?;
        Ok(policy.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status, c.reason))
        }))
    }

    async fn budget_condition(
        &self,
        name: &str,
        type_: &str,
    ) -> anyhow::Result<Option<(String, String)>> {
        let budget = self.budgets().get(name).await?;
        Ok(budget.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status, c.reason))
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_budget_moves_watts_by_priority_and_cuts_the_lowest_first() -> anyhow::Result<()> {
    with_rack("budget-share", async |rack| {
        // 1000 W for the rack; the idle GPU takes 100 W of it.
        rack.draw(200.0, 600.0, 100.0);
        rack.start_workloads(None).await?;
        let name = format!("{}-rack", rack.ns);
        rack.create_budget(&name, json!({ "watts": 1000 })).await?;

        // Both allocated, within the 900 W the policies share.
        let (serving, training) = wait_for("both policies allocated", TIMEOUT, || async {
            Ok(match rack.allocations().await? {
                (Some(s), Some(t)) if s + t <= 900 && t >= 550 => Some((s, t)),
                _ => None,
            })
        })
        .await?;
        let budget = rack.budgets().get(&name).await?;
        let status = budget.status.unwrap_or_default();
        assert_eq!(status.unmanaged_watts, Some(100.0), "{status:?}");
        assert_eq!(status.available_watts, Some(900.0), "{status:?}");
        // The effective cap is the allocation, in the status and the series.
        let training_policy = rack.policies().get("training").await?;
        wait_for("training's effective cap", TIMEOUT, || async {
            let p = rack.policies().get("training").await?;
            let s = p.status.unwrap_or_default();
            Ok((s.effective_cap_watts == s.allocated_watts).then_some(()))
        })
        .await?;
        assert!(training_policy.spec.power_cap_limit > training);
        let page = read_page(&rack.metrics)?;
        assert!(value(&page, "climatik_policy_effective_cap_watts", "training").is_some());
        assert_eq!(
            page.find(
                "climatik_budget_allocated_watts",
                &[("budget", name.as_str()), ("policy", "training")]
            )
            .len(),
            1,
            "no climatik_budget_allocated_watts series of training"
        );
        rack.entries_until("entries for both", 1000.0, |(s, t)| s > 0.0 && t > 0.0)
            .await?;

        // Serving bursts: it takes watts from training.
        rack.draw(800.0, 600.0, 100.0);
        let (burst_serving, burst_training) =
            wait_for("serving's burst allocated", TIMEOUT, || async {
                Ok(match rack.allocations().await? {
                    (Some(s), Some(t)) if s > serving + 200 && t < training => Some((s, t)),
                    _ => None,
                })
            })
            .await?;
        assert!(burst_serving + burst_training <= 900);
        rack.entries_until("training's entries cut for the burst", 1000.0, |(_, t)| {
            t < training as f64
        })
        .await?;
        // Training heard about it.
        let events = Api::<Event>::namespaced(rack.admin.clone(), &rack.ns);
        wait_for("a BudgetCut event", TIMEOUT, || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("BudgetCut"))
                .then_some(()))
        })
        .await?;

        // The burst ends: training gets its watts back, down to its
        // entries.
        rack.draw(150.0, 600.0, 100.0);
        let given_back = wait_for("training's watts given back", TIMEOUT, || async {
            Ok(match rack.allocations().await? {
                (Some(_), Some(t)) if t >= training => Some(t),
                _ => None,
            })
        })
        .await?;
        let before_cut = rack
            .entries_until("training's entries given back", 1000.0, |(s, t)| {
                s > 0.0 && t >= given_back as f64 * 0.9
            })
            .await?;

        // Demand response: the budget drops to 500 W (400 W to share).
        // Training gives way: serving still gets all it asks for.
        rack.budgets()
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "watts": 500 } })),
            )
            .await?;
        let after = wait_for("the entries cut to fit 500 W", TIMEOUT, || async {
            let entries = rack.entry_watts().await?;
            Ok((entries.0 + entries.1 <= 400.0 && entries.1 < before_cut.1).then_some(entries))
        })
        .await?;
        assert!(after.0 > 0.0, "{after:?}");
        // A raise waits a period for the watts a cut frees (staging), so
        // serving may trail its probe for one; it settles at its demand.
        wait_for(
            "serving at its demand, training giving way",
            TIMEOUT,
            || async {
                let status = rack.budget_status(&name).await?;
                let share = |policy: &str| {
                    status
                        .allocations
                        .iter()
                        .find(|a| a.name == policy)
                        .cloned()
                };
                let (Some(serving), Some(training)) = (share("serving"), share("training")) else {
                    anyhow::bail!("both policies should be allocated: {status:?}");
                };
                anyhow::ensure!(
                    serving.allocated_watts + training.allocated_watts <= 400,
                    "{status:?}"
                );
                Ok(
                    (serving.allocated_watts as f64 >= serving.demand_watts.floor()
                        && (training.allocated_watts as f64) < training.demand_watts)
                        .then_some(()),
                )
            },
        )
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_budget_says_why_and_caps_nothing() -> anyhow::Result<()> {
    with_rack("budget-bad", async |rack| {
        // Every GPU accepts no less than 300 W: the policies' two need
        // 600 W, more than a 600 W budget leaves beside the idle GPU.
        rack.draw(200.0, 600.0, 100.0);
        rack.start_workloads(Some(300.0)).await?;
        let orphan = format!("{}-orphan", rack.ns);
        rack.create_budget(
            &orphan,
            json!({ "watts": 5000, "parent": "no-such-budget" }),
        )
        .await?;
        wait_for("the orphan invalid", TIMEOUT, || async {
            Ok(rack
                .budget_condition(&orphan, "Valid")
                .await?
                .filter(|c| c == &("False".to_string(), "UnknownParent".to_string())))
        })
        .await?;
        rack.budgets()
            .delete(&orphan, &DeleteParams::default())
            .await?;
        let small = format!("{}-small", rack.ns);
        rack.create_budget(&small, json!({ "watts": 600 })).await?;
        wait_for("the small budget invalid", TIMEOUT, || async {
            Ok(rack
                .budget_condition(&small, "Valid")
                .await?
                .filter(|c| c == &("False".to_string(), "BelowMinimumPowerLimits".to_string())))
        })
        .await?;
        // Measured and not allocated: both keep their own 1000 W cap. A
        // round that ran before the policies' GPUs were measured did not
        // know those GPUs' floors and may have allocated once; the
        // monitor's next measurement then writes the cap back.
        wait_for("both measured at their own cap", TIMEOUT, || async {
            let mut settled = true;
            for name in ["serving", "training"] {
                let status = rack.policies().get(name).await?.status.unwrap_or_default();
                settled &= status.current_power.is_some()
                    && status.allocated_watts.is_none()
                    && status.effective_cap_watts == Some(1000);
            }
            Ok(settled.then_some(()))
        })
        .await?;
        let small_valid = rack.budget_condition(&small, "Valid").await?;
        assert_eq!(
            small_valid,
            Some(("False".to_string(), "BelowMinimumPowerLimits".to_string()))
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_spanning_two_budgets_says_so_on_itself() -> anyhow::Result<()> {
    with_rack("budget-span", async |rack| {
        const HALF: &str = "climatik.io/test-half";
        for (i, node) in rack.nodes.iter().enumerate() {
            Api::<Node>::all(rack.admin.clone())
                .patch(
                    node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": { "labels": { HALF: i.to_string() } } })),
                )
                .await?;
        }
        // Serving runs on both nodes: s0 on node 0, s1 on node 1.
        rack.start_workloads(None).await?;
        create_pod(&rack.admin, &rack.ns, "s1", &rack.nodes[1], "serving").await?;
        let (ns, nodes) = (&rack.ns, &rack.nodes);
        rack.dcgm.set(vec![
            gpu(&rack.gpu_id("GPU-S"), "pod", "s0", ns, &nodes[0], 200.0),
            gpu(&rack.gpu_id("GPU-U"), "pod", "s1", ns, &nodes[1], 200.0),
            gpu(&rack.gpu_id("GPU-T"), "pod", "t0", ns, &nodes[1], 300.0),
        ]);
        let halves: Vec<String> = (0..2).map(|i| format!("{}-half-{i}", rack.ns)).collect();
        for (i, name) in halves.iter().enumerate() {
            rack.create_budget(
                name,
                json!({ "watts": 5000, "nodeSelector": { "matchLabels": { HALF: i.to_string() } } }),
            )
            .await?;
        }
        let spans = ("False".to_string(), "SpansBudgets".to_string());
        wait_for("serving told it spans budgets", TIMEOUT, || async {
            Ok(rack
                .policy_condition("serving", "BudgetAssigned")
                .await?
                .filter(|c| c == &spans))
        })
        .await?;
        let serving = rack.policies().get("serving").await?;
        let status = serving.status.unwrap_or_default();
        assert_eq!(status.allocated_watts, None, "{status:?}");
        // The monitor's own conditions stay beside it.
        assert!(
            status.conditions.iter().any(|c| c.type_ == "Ready"),
            "{:?}",
            status.conditions
        );
        // Training, on node 1 only, is arbitrated by that half.
        wait_for("training allocated", TIMEOUT, || async {
            Ok(rack.allocations().await?.1)
        })
        .await?;
        assert_eq!(rack.policy_condition("training", "BudgetAssigned").await?, None);

        // With one half gone serving lies in the other only: the condition
        // is given up and that budget arbitrates it.
        rack.budgets()
            .delete(&halves[0], &DeleteParams::default())
            .await?;
        wait_for("serving arbitrated by one budget", TIMEOUT, || async {
            let assigned = rack.policy_condition("serving", "BudgetAssigned").await?;
            let allocated = rack.allocations().await?.0;
            Ok((assigned.is_none() && allocated.is_some()).then_some(()))
        })
        .await?;
        Ok(())
    })
    .await
}

/// A row budget over two racks (a child budget per node), each rack with
/// a high- and a low-priority policy: a cut of the row reaches the
/// low-priority policies of both racks first, each rack gets no more than
/// its parent grants it, and the row lists both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_cut_reaches_every_rack_lowest_priority_first() -> anyhow::Result<()> {
    with_rack("budget-tree", async |rack| {
        const HALF: &str = "climatik.io/test-half";
        // Rack 0 holds serving-a (priority 10) and batch-a (0), rack 1
        // serving-b (5) and batch-b (1): one GPU each, all drawing 300 W.
        let placed = [
            ("serving-a", 10, 0, "GPU-SA"),
            ("batch-a", 0, 0, "GPU-BA"),
            ("serving-b", 5, 1, "GPU-SB"),
            ("batch-b", 1, 1, "GPU-BB"),
        ]
        .map(|(name, priority, node, gpu)| (name, priority, node, rack.gpu_id(gpu)));
        let names: Vec<&str> = placed.iter().map(|p| p.0).collect();
        for (i, node) in rack.nodes.iter().enumerate() {
            Api::<Node>::all(rack.admin.clone())
                .patch(
                    node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": { "labels": { HALF: i.to_string() } } })),
                )
                .await?;
            let gpus: Vec<&str> = placed
                .iter()
                .filter(|p| p.2 == i)
                .map(|p| p.3.as_str())
                .collect();
            report_gpus(&rack.admin, node, &gpus, None).await?;
        }
        let mut series = Vec::new();
        for (name, priority, node, uuid) in placed {
            let node = &rack.nodes[node];
            create_pod(&rack.admin, &rack.ns, name, node, name).await?;
            series.push(gpu(&uuid, "pod", name, &rack.ns, node, 300.0));
            rack.create_policy(name, priority).await?;
        }
        rack.dcgm.set(series);
        let row = format!("{}-row", rack.ns);
        rack.create_budget(&row, json!({ "watts": 3000 })).await?;
        let racks: Vec<String> = (0..2).map(|i| format!("{}-rack-{i}", rack.ns)).collect();
        for (i, name) in racks.iter().enumerate() {
            // Each rack alone could feed all its policies: only the row binds.
            rack.create_budget(
                name,
                json!({
                    "watts": 1500,
                    "parent": row,
                    "nodeSelector": { "matchLabels": { HALF: i.to_string() } },
                }),
            )
            .await?;
        }
        let budgets = rack.budgets();
        let allocations = async || -> anyhow::Result<Vec<Option<i64>>> {
            let mut all = Vec::new();
            for name in &names {
                let policy = rack.policies().get(name).await?;
                all.push(policy.status.and_then(|s| s.allocated_watts));
            }
            Ok(all)
        };
        wait_for("all four allocated", TIMEOUT, || async {
            Ok(allocations()
                .await?
                .iter()
                .all(Option::is_some)
                .then_some(()))
        })
        .await?;
        rack.entries_of_until(&names, "entries for all four", 3000.0, |e| {
            e.iter().all(|w| *w > 0.0)
        })
        .await?;

        // Demand response on the row: 1000 W for four policies that want
        // about 330 W each. The racks' own 1500 W no longer bind.
        budgets
            .patch(
                &row,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "watts": 1000 } })),
            )
            .await?;
        rack.entries_of_until(
            &names,
            "the entries cut to fit 1000 W",
            f64::INFINITY,
            |e| e.iter().sum::<f64>() <= 1000.0,
        )
        .await?;
        // From here on every look stays within the row, and the cut lands
        // on the lowest priorities of both racks: both serving policies
        // at their demand, batch-b (1) above batch-a (0).
        wait_for("serving kept, batch cut lowest first", TIMEOUT, || async {
            let entries = rack.entry_watts_of(&names).await?;
            anyhow::ensure!(
                entries.iter().sum::<f64>() <= 1000.0,
                "the entries {entries:?} add up to more than the row's 1000 W"
            );
            let mut statuses = Vec::new();
            for name in &racks {
                statuses.push(budgets.get(name).await?.status.unwrap_or_default());
            }
            let mut shares = Vec::new();
            for status in &statuses {
                let allocated: i64 = status.allocations.iter().map(|a| a.allocated_watts).sum();
                let granted = status.granted_watts.unwrap_or(f64::INFINITY);
                anyhow::ensure!(
                    allocated as f64 <= granted && granted <= 1000.0,
                    "a rack holds more than its parent grants it: {status:?}"
                );
                shares.extend(status.allocations.iter().cloned());
            }
            let total: i64 = shares.iter().map(|a| a.allocated_watts).sum();
            anyhow::ensure!(total <= 1000, "{shares:?}");
            let share = |name: &str| shares.iter().find(|a| a.name == name).cloned();
            let (Some(sa), Some(ba), Some(sb), Some(bb)) = (
                share("serving-a"),
                share("batch-a"),
                share("serving-b"),
                share("batch-b"),
            ) else {
                return Ok(None);
            };
            let at_demand = |a: &climatik_api::BudgetAllocation| {
                a.allocated_watts as f64 >= a.demand_watts.floor()
            };
            Ok((at_demand(&sa)
                && at_demand(&sb)
                && (ba.allocated_watts as f64) < ba.demand_watts
                && ba.allocated_watts < bb.allocated_watts)
                .then_some(()))
        })
        .await?;
        // The row lists both racks and what each takes of it.
        let status = budgets.get(&row).await?.status.unwrap_or_default();
        let children: Vec<(&str, i64)> = status
            .children
            .iter()
            .map(|c| (c.name.as_str(), c.watts))
            .collect();
        assert_eq!(
            children,
            [(racks[0].as_str(), 1500), (racks[1].as_str(), 1500)],
            "{status:?}"
        );
        let taken: f64 = status.children.iter().map(|c| c.allocated_watts).sum();
        assert!(taken <= 1000.0, "{status:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_without_a_priority_takes_its_pods_priority_class() -> anyhow::Result<()> {
    with_rack("budget-class", async |rack| {
        rack.draw(200.0, 300.0, 100.0);
        let class = format!("{}-high", rack.ns);
        let classes = Api::<PriorityClass>::all(rack.admin.clone());
        classes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": { "name": class },
                    "value": 500,
                }))?,
            )
            .await?;
        let result = async {
            // Both workloads' pods run at the class's 500; serving's policy
            // has no priority of its own, training's says 7.
            let [node0, node1] = [&rack.nodes[0], &rack.nodes[1]];
            let in_class = json!({ "priorityClassName": class });
            create_pod_with(
                &rack.admin,
                &rack.ns,
                "s0",
                node0,
                "serving",
                in_class.clone(),
            )
            .await?;
            create_pod_with(&rack.admin, &rack.ns, "t0", node1, "training", in_class).await?;
            let [s, t, u] = ["GPU-S", "GPU-T", "GPU-U"].map(|g| rack.gpu_id(g));
            report_gpus(&rack.admin, node0, &[&s], None).await?;
            report_gpus(&rack.admin, node1, &[&t, &u], None).await?;
            for (name, extra) in [
                ("serving", json!({})),
                ("training", json!({ "priority": 7 })),
            ] {
                rack.policies()
                    .create(&PostParams::default(), &policy(name, name, 1000, extra)?)
                    .await?;
            }
            let name = format!("{}-rack", rack.ns);
            rack.create_budget(&name, json!({ "watts": 1000 })).await?;
            let priorities = wait_for("both arbitrated", TIMEOUT, || async {
                let status = rack.budget_status(&name).await?;
                let of = |policy: &str| {
                    status
                        .allocations
                        .iter()
                        .find(|a| a.name == policy)
                        .map(|a| a.priority)
                };
                Ok(match (of("serving"), of("training")) {
                    (Some(s), Some(t)) if s != 0 => Some((s, t)),
                    _ => None,
                })
            })
            .await?;
            assert_eq!(priorities, (500, 7));
            let serving = rack
                .policies()
                .get("serving")
                .await?
                .status
                .unwrap_or_default();
            assert_eq!(serving.pod_priority, Some(500), "{serving:?}");
            assert_eq!(serving.effective_priority, Some(500), "{serving:?}");
            let training = rack
                .policies()
                .get("training")
                .await?
                .status
                .unwrap_or_default();
            assert_eq!(training.effective_priority, Some(7), "{training:?}");
            anyhow::Ok(())
        }
        .await;
        classes.delete(&class, &DeleteParams::default()).await?;
        result
    })
    .await
}

/// The `powerBudgetWatts` of budget `budget`'s entries on the rack's nodes,
/// by GPU.
async fn unmanaged_entries(
    rack: &Rack,
    budget: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let mut entries = std::collections::BTreeMap::new();
    for node in &rack.nodes {
        let Some(nf) = Api::<NodeFrequencies>::all(rack.admin.clone())
            .get_opt(node)
            .await?
        else {
            continue;
        };
        for entry in nf.spec.gpu_frequencies {
            if entry.policy == format!("powerbudget:{budget}") {
                anyhow::ensure!(entry.target_frequency == 2100, "{entry:?}");
                entries.insert(entry.gpu_id, entry.power_budget_watts.unwrap_or(0.0));
            }
        }
    }
    Ok(entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cap_unmanaged_holds_the_gpus_no_policy_selects_to_their_share() -> anyhow::Result<()> {
    with_rack("budget-unmanaged", async |rack| {
        // 700 W; serving and training want about 550 W between them, and
        // GPU-U, under no policy, draws 400 W: as the lowest priority it
        // is allotted what the policies leave, at least its 100 W floor.
        rack.draw(200.0, 300.0, 400.0);
        rack.start_workloads(Some(100.0)).await?;
        // Measured first: a policy the budget controller has not seen yet
        // cannot keep its GPUs out of the unmanaged claim (its entries go
        // a period after it is measured).
        wait_for("both policies measured", TIMEOUT, || async {
            let measured = |p: PowerCappingPolicy| {
                p.status
                    .is_some_and(|s| s.nodes.iter().any(|n| !n.devices.is_empty()))
            };
            Ok((measured(rack.policies().get("serving").await?)
                && measured(rack.policies().get("training").await?))
            .then_some(()))
        })
        .await?;
        let name = format!("{}-rack", rack.ns);
        rack.create_budget(&name, json!({ "watts": 700, "capUnmanaged": true }))
            .await?;
        // The budget's first round may come before its own watch holds the
        // policies' measured status: GPU-U is then allotted the whole budget
        // until the next round. What it settles on is what counts.
        let entries = wait_for(
            "an entry holding GPU-U to what the policies leave",
            TIMEOUT,
            || async {
                let entries = unmanaged_entries(rack, &name).await?;
                let share = entries.values().sum::<f64>();
                Ok((!entries.is_empty() && (100.0..400.0).contains(&share)).then_some(entries))
            },
        )
        .await?;
        assert_eq!(
            entries.keys().collect::<Vec<_>>(),
            [&rack.gpu_id("GPU-U")],
            "{entries:?}"
        );
        let share = entries.values().sum::<f64>();
        wait_for("UnmanagedWithinShare False", TIMEOUT, || async {
            Ok(rack
                .budget_condition(&name, "UnmanagedWithinShare")
                .await?
                .filter(|c| c.0 == "False"))
        })
        .await?;

        // The agent holds GPU-U there: with its draw down to the share,
        // everything the budget covers fits in it, and the entries, the
        // policies' and GPU-U's, add up to no more than the budget.
        rack.draw(200.0, 300.0, share);
        wait_for("the budget within", TIMEOUT, || async {
            let held = unmanaged_entries(rack, &name).await?.values().sum::<f64>();
            let (serving, training) = rack.entry_watts().await?;
            anyhow::ensure!(
                serving + training + held <= 700.0,
                "entries {serving} + {training} + {held} W exceed the 700 W budget"
            );
            Ok(rack
                .budget_condition(&name, "WithinBudget")
                .await?
                .filter(|c| c.0 == "True" && serving > 0.0 && training > 0.0 && held > 0.0))
        })
        .await?;

        // capUnmanaged off: the entries go.
        rack.budgets()
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "capUnmanaged": false } })),
            )
            .await?;
        wait_for("GPU-U's entry removed", TIMEOUT, || async {
            Ok(unmanaged_entries(rack, &name)
                .await?
                .is_empty()
                .then_some(()))
        })
        .await?;
        Ok(())
    })
    .await
}
