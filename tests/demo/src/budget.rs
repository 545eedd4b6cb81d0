//! The shared-budget scene of `make demo`: a PowerBudget over one simulated
//! node, shared by a serving workload (`climatik.io/priority: "100"`) and a
//! training workload (`"0"`), both annotated as a user would. Serving's
//! load bursts: the budget moves watts from training to serving and
//! training's effective cap falls; the burst ends and the watts go back.
//! The demo and its test (`tests/budget.rs`) run the same scene: what it saw
//! comes back as a [`BudgetRecord`] for the test to judge, and the demo
//! writes it beside its other output.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Context;
use climatik_api::{PowerBudget, PowerCappingPolicy, names};
use climatik_test_support::TestCluster;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde::Serialize;

use crate::scenario::{SIM_LOAD, sim_deployment_annotated};

pub const SERVING: &str = "serving";
pub const TRAINING: &str = "training";
/// The node label the scene's budget selects its node by.
const NODE_LABEL: &str = "climatik.io/demo-budget";
/// GPUs per workload: both fill one simulated 4-GPU node.
const GPUS: u32 = 2;
/// Each workload's own cap: both could run uncapped (two GPUs draw about
/// 1400 W at full load), and together they would exceed the budget.
const CAP: &str = "1400W";
/// The budget: above the four GPUs' lowest power limits (4 x 200 W), so
/// capping can meet it, and below both caps together, so they compete.
pub const BUDGET_WATTS: i64 = 2000;
/// Serving's load between bursts, and in a burst.
const QUIET_LOAD: &str = "0.3";
const BURST_LOAD: &str = "full";
/// How far the allocations must move (training's down, serving's up)
/// before the burst ends: enough to see in `kubectl get pcp`.
const SHIFT_WATTS: i64 = 300;

/// Where and how the scene runs.
#[derive(Debug, Clone)]
pub struct BudgetScene {
    /// A namespace the stack's webhook serves (made by `Stack::namespace`).
    pub namespace: String,
    /// The simulated node both workloads share; nothing else may run there.
    pub node: String,
    /// The PowerBudget's name (cluster-scoped).
    pub budget: String,
    /// The controller's period: how often allocations can move.
    pub interval: Duration,
}

/// One policy at one look.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyLook {
    /// `status.allocatedWatts`: what the budget gives it.
    pub allocated_watts: Option<i64>,
    /// `status.effectiveCapWatts`: the cap it is held to.
    pub effective_cap_watts: Option<i64>,
    /// `status.currentPower`: measured power.
    pub power_watts: Option<f64>,
    /// The budget's estimate of its demand (`status.allocations`).
    pub demand_watts: Option<f64>,
}

/// The budget and both policies at one instant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Look {
    /// Seconds since the scene started.
    pub t: f64,
    pub serving: PolicyLook,
    pub training: PolicyLook,
    pub headroom_watts: Option<f64>,
}

/// What the scene saw: every look, and the three that tell the story.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BudgetRecord {
    pub budget_watts: i64,
    pub looks: Vec<Look>,
    /// Both allocated and steady, serving quiet.
    pub before: Option<Look>,
    /// In the burst, once [`SHIFT_WATTS`] moved from training to serving.
    pub burst: Option<Look>,
    /// After the burst, once training's allocation was back.
    pub after: Option<Look>,
}

impl BudgetScene {
    /// Runs the scene: sets up the budget and both workloads, bursts
    /// serving, ends the burst, and removes the budget and the node label
    /// again whatever happened. A phase that does not complete within its
    /// deadline leaves its look empty; `print` gets each line to show.
    pub async fn run(
        &self,
        cluster: &TestCluster,
        print: &mut dyn FnMut(&str),
    ) -> anyhow::Result<BudgetRecord> {
        let result = self.play(cluster, print).await;
        self.clean_up(cluster).await;
        result
    }

    async fn play(
        &self,
        cluster: &TestCluster,
        print: &mut dyn FnMut(&str),
    ) -> anyhow::Result<BudgetRecord> {
        let start = std::time::Instant::now();
        let mut record = BudgetRecord {
            budget_watts: BUDGET_WATTS,
            ..Default::default()
        };
        self.set_up(cluster).await?;
        print(&format!(
            "PowerBudget {} ({BUDGET_WATTS} W) over {}: {SERVING} (priority 100) and {TRAINING} (priority 0), caps {CAP} each",
            self.budget, self.node
        ));
        // Generous deadlines: a slow machine must not end a phase early.
        let deadline = self.interval * 20;

        // Quiet: both allocated, the same allocations in two looks in a row.
        let mut previous: Option<Look> = None;
        record.before = self
            .watch(cluster, start, &mut record.looks, deadline, print, |look| {
                let steady = both_allocated(look)
                    && look.training.effective_cap_watts.is_some()
                    && previous.as_ref().is_some_and(|p| {
                        p.serving.allocated_watts == look.serving.allocated_watts
                            && p.training.allocated_watts == look.training.allocated_watts
                    });
                previous = Some(look.clone());
                steady
            })
            .await?;
        self.show(cluster, "quiet", print).await;
        let Some(before) = record.before.clone() else {
            print("the budget did not allocate both workloads; burst skipped");
            return Ok(record);
        };

        print(&format!(
            "{SERVING} bursts: its pods' load goes to {BURST_LOAD}"
        ));
        self.serving_load(cluster, BURST_LOAD).await?;
        let before_training = before.training.allocated_watts.unwrap_or(0);
        let before_serving = before.serving.allocated_watts.unwrap_or(0);
        // A cut lands at once, the raise it frees a period later: wait for
        // both.
        record.burst = self
            .watch(cluster, start, &mut record.looks, deadline, print, |look| {
                look.training
                    .allocated_watts
                    .is_some_and(|t| t <= before_training - SHIFT_WATTS)
                    && look
                        .serving
                        .allocated_watts
                        .is_some_and(|s| s >= before_serving + SHIFT_WATTS)
            })
            .await?;
        self.show(cluster, "burst", print).await;

        print(&format!(
            "the burst ends: {SERVING}'s load back to {QUIET_LOAD}"
        ));
        self.serving_load(cluster, QUIET_LOAD).await?;
        record.after = self
            .watch(cluster, start, &mut record.looks, deadline, print, |look| {
                look.training
                    .allocated_watts
                    .is_some_and(|t| t >= before_training)
            })
            .await?;
        self.show(cluster, "given back", print).await;
        Ok(record)
    }

    /// Labels the node, creates the budget, applies both workloads.
    async fn set_up(&self, cluster: &TestCluster) -> anyhow::Result<()> {
        Api::<Node>::all(cluster.client.clone())
            .patch(
                &self.node,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "metadata": { "labels": { NODE_LABEL: self.budget } }
                })),
            )
            .await
            .with_context(|| format!("labelling {}", self.node))?;
        let budget = serde_json::json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "PowerBudget",
            "metadata": { "name": self.budget },
            "spec": {
                "watts": BUDGET_WATTS,
                "nodeSelector": { "matchLabels": { NODE_LABEL: self.budget } },
            },
        });
        cluster
            .kubectl_with_stdin(["apply", "-f", "-"], &budget.to_string())
            .await
            .context("creating the PowerBudget")?;
        for (name, priority, load) in [(SERVING, "100", QUIET_LOAD), (TRAINING, "0", "full")] {
            let manifest = sim_deployment_annotated(
                &self.namespace,
                name,
                &self.node,
                GPUS,
                &[
                    (names::ANNOTATION_POWER_CAP, CAP),
                    (names::ANNOTATION_PRIORITY, priority),
                    // Per-GPU power limits hold each workload at its
                    // allocation within a second.
                    (names::ANNOTATION_ALGORITHM, "feedback-budget"),
                ],
                load,
            );
            cluster
                .kubectl_with_stdin(["apply", "-f", "-"], &manifest)
                .await
                .with_context(|| format!("applying {name}"))?;
        }
        Ok(())
    }

    /// Sets the simulated load of serving's pods: a traffic burst, as the
    /// simulated GPUs see it.
    async fn serving_load(&self, cluster: &TestCluster, load: &str) -> anyhow::Result<()> {
        cluster
            .kubectl([
                "annotate",
                "--overwrite",
                "pods",
                "-n",
                &self.namespace,
                "-l",
                &format!("app={SERVING}"),
                &format!("{SIM_LOAD}={load}"),
            ])
            .await
            .with_context(|| format!("setting {SERVING}'s load to {load}"))?;
        Ok(())
    }

    /// Looks once a second until `done` holds for a look or `deadline`
    /// passes; every look is kept and printed. Returns the look that
    /// completed the phase.
    async fn watch(
        &self,
        cluster: &TestCluster,
        start: std::time::Instant,
        looks: &mut Vec<Look>,
        deadline: Duration,
        print: &mut dyn FnMut(&str),
        mut done: impl FnMut(&Look) -> bool,
    ) -> anyhow::Result<Option<Look>> {
        let until = tokio::time::Instant::now() + deadline;
        let mut last_printed = String::new();
        loop {
            let look = self.look(cluster, start.elapsed().as_secs_f64()).await?;
            let line = look_line(&look);
            // Only changes: the allocations move once a period.
            if line != last_printed {
                print(&format!("t={:>4.0}s {line}", look.t));
                last_printed = line;
            }
            looks.push(look.clone());
            if done(&look) {
                return Ok(Some(look));
            }
            if tokio::time::Instant::now() >= until {
                print(&format!("not seen within {} s", deadline.as_secs()));
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn look(&self, cluster: &TestCluster, t: f64) -> anyhow::Result<Look> {
        let budget = Api::<PowerBudget>::all(cluster.client.clone())
            .get_opt(&self.budget)
            .await?
            .and_then(|b| b.status)
            .unwrap_or_default();
        let policies =
            Api::<PowerCappingPolicy>::namespaced(cluster.client.clone(), &self.namespace);
        let mut looks = Vec::new();
        for workload in [SERVING, TRAINING] {
            let name = format!("deployment-{workload}");
            let status = policies
                .get_opt(&name)
                .await?
                .and_then(|p| p.status)
                .unwrap_or_default();
            looks.push(PolicyLook {
                allocated_watts: status.allocated_watts,
                effective_cap_watts: status.effective_cap_watts,
                power_watts: status.current_power,
                demand_watts: budget
                    .allocations
                    .iter()
                    .find(|a| a.namespace == self.namespace && a.name == name)
                    .map(|a| a.demand_watts),
            });
        }
        let training = looks.pop().unwrap_or_default();
        let serving = looks.pop().unwrap_or_default();
        Ok(Look {
            t,
            serving,
            training,
            headroom_watts: budget.headroom_watts,
        })
    }

    /// What a user would type to see it: `kubectl get pb` and the
    /// policies' wide columns (priority, allocation).
    async fn show(&self, cluster: &TestCluster, phase: &str, print: &mut dyn FnMut(&str)) {
        for args in [
            vec!["get", "pb", self.budget.as_str()],
            vec!["get", "pcp", "-n", self.namespace.as_str(), "-o", "wide"],
        ] {
            match cluster.kubectl(&args).await {
                Ok(out) => print(&format!("[{phase}] kubectl {}\n{out}", args.join(" "))),
                Err(err) => print(&format!("[{phase}] kubectl {}: {err:#}", args.join(" "))),
            }
        }
    }

    /// Deletes the budget (its allocations go with it) and the node label.
    async fn clean_up(&self, cluster: &TestCluster) {
        let _ = cluster
            .kubectl(["delete", "pb", &self.budget, "--ignore-not-found"])
            .await;
        let _ = cluster
            .kubectl(["label", "node", &self.node, &format!("{NODE_LABEL}-")])
            .await;
    }
}

fn both_allocated(look: &Look) -> bool {
    look.serving.allocated_watts.is_some() && look.training.allocated_watts.is_some()
}

fn watts<T: std::fmt::Display>(value: Option<T>) -> String {
    value
        .map(|v| format!("{v:.0}"))
        .unwrap_or_else(|| "-".into())
}

/// `serving alloc/eff cap/power | training ... | headroom`, in watts.
fn look_line(look: &Look) -> String {
    let policy = |name: &str, p: &PolicyLook| {
        format!(
            "{name} allocated {:>5} effective cap {:>5} power {:>5} demand {:>5}",
            watts(p.allocated_watts),
            watts(p.effective_cap_watts),
            watts(p.power_watts),
            watts(p.demand_watts),
        )
    };
    format!(
        "{} | {} | headroom {}",
        policy(SERVING, &look.serving),
        policy(TRAINING, &look.training),
        watts(look.headroom_watts)
    )
}

impl BudgetRecord {
    /// Writes `budget.json` (every look) and `budget.md` (the three looks
    /// that tell the story).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("budget.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("budget.md"), self.summary_table())?;
        Ok(())
    }

    /// The quiet, burst and given-back looks as a Markdown table.
    pub fn summary_table(&self) -> String {
        let mut out = format!(
            "PowerBudget of {} W shared by {SERVING} (priority 100) and {TRAINING} (priority 0)\n\n\
             | phase | t (s) | {SERVING} allocated (W) | {SERVING} power (W) | {TRAINING} allocated (W) | {TRAINING} effective cap (W) | {TRAINING} power (W) |\n|---|---|---|---|---|---|---|\n",
            self.budget_watts
        );
        for (phase, look) in [
            ("quiet", &self.before),
            ("burst", &self.burst),
            ("given back", &self.after),
        ] {
            match look {
                Some(l) => {
                    let _ = writeln!(
                        out,
                        "| {phase} | {:.0} | {} | {} | {} | {} | {} |",
                        l.t,
                        watts(l.serving.allocated_watts),
                        watts(l.serving.power_watts),
                        watts(l.training.allocated_watts),
                        watts(l.training.effective_cap_watts),
                        watts(l.training.power_watts),
                    );
                }
                None => {
                    let _ = writeln!(out, "| {phase} | not seen | | | | | |");
                }
            }
        }
        out
    }
}
