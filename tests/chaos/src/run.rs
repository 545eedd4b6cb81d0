//! One fault, start to finish: put a cap on the victim workload, wait until
//! the steady workload's cap holds, inject the fault, remove the victim's
//! cap while the fault is on, lift the fault, then measure recovery and
//! check what was left.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use climatik_api::{PowerCappingPolicy, names};
use climatik_test_support::eventually;
use kube::Api;

use crate::{
    checks::{self, Baseline, Workloads},
    faults::{self, Durations, Fault, Target},
    memory::{Limits, peak_rss_mib},
    observe::Observer,
    report::FaultResult,
};

/// The cap the victim gets while it has one; one fully loaded simulated
/// GPU (700 W) must be throttled to stay under it, and can (its floor at
/// the lowest clock is about 370 W).
pub const VICTIM_CAP: &str = "450W";

/// Everything a fault runs against and measures with.
pub struct Run<'a> {
    pub target: Target<'a>,
    pub observer: &'a Observer,
    pub workloads: Workloads,
    pub baseline: Baseline,
    pub cap_watts: f64,
    /// `policy name -> uid` of the policies that must survive every fault.
    pub expected: BTreeMap<String, String>,
    pub limits: Limits,
    pub interval: Duration,
    pub entry_ttl: Duration,
    pub durations: Durations,
}

impl Run<'_> {
    /// Runs `fault` once; any error becomes a failed result with its reason.
    pub async fn fault(&mut self, fault: &Fault, round: usize) -> FaultResult {
        let mut result = FaultResult {
            fault: fault.name(),
            round,
            fault_seconds: 0.0,
            recovery_seconds: None,
            cap_watts: self.cap_watts,
            cap: None,
            cleared_seconds: None,
            leftovers: Vec::new(),
            peak_rss_mib: BTreeMap::new(),
            forged: None,
            trace: Vec::new(),
            notes: Vec::new(),
            passed: false,
            reasons: Vec::new(),
        };
        if let Err(err) = self.measure(fault, &mut result).await {
            result.reasons.push(format!("{err:#}"));
        }
        if let Err(err) = self.target.stack.check_alive() {
            result.reasons.push(format!("{err:#}"));
        }
        self.check_memory(&mut result);
        result.passed = result.reasons.is_empty();
        result
    }

    async fn measure(&mut self, fault: &Fault, result: &mut FaultResult) -> anyhow::Result<()> {
        let period = self.interval.as_secs_f64();
        self.arm_victim().await?;
        self.wait_cap_held().await?;
        // Mid-period: the components work on the period's boundaries.
        tokio::time::sleep(self.interval / 2).await;
        self.sample_memory(result);

        let started = self.observer.now();
        let active = faults::begin(&mut self.target, fault, &self.durations).await?;
        // Removed while the fault is on; when the fault refuses it (the
        // webhook or the API server is down), right after.
        let disarmed = self.disarm_victim().await.is_ok();
        let (notes, forged) = faults::end(&mut self.target, fault, active, &self.durations).await?;
        let ended = self.observer.now();
        result.fault_seconds = ended - started;
        result.notes.extend(notes);
        if let Some(answers) = &forged
            && (answers.server_errors > 0 || answers.unanswered > 0)
        {
            result.reasons.push(format!(
                "the webhook failed {} forged reviews and left {} unanswered ({})",
                answers.server_errors,
                answers.unanswered,
                answers.unanswered_reasons.join("; ")
            ));
        }
        result.forged = forged;
        if !disarmed {
            result
                .notes
                .push("the victim's cap could only be removed after the fault".into());
            eventually(
                "the victim's cap to be removed",
                Duration::from_secs(60),
                || async { Ok(self.disarm_victim().await.ok()) },
            )
            .await?;
        }

        // Recovery: the cap must hold again within three periods of the
        // fault's end, and what the victim's policy set must be gone within
        // its entries' TTL of the policy's removal.
        let hold = 2.0 * period;
        let recovery_deadline = ended + 3.0 * period;
        let margin = 2.0 * period + 5.0;
        let mut gone_at: Option<f64> = None;
        let mut cleared_at: Option<f64> = None;
        let mut leftovers = Vec::new();
        loop {
            let now = self.observer.now();
            if gone_at.is_none() && self.victim_policy_gone().await.unwrap_or(false) {
                gone_at = Some(now);
            }
            if let Some(gone) = gone_at
                && cleared_at.is_none()
            {
                leftovers = self.leftovers().await;
                if leftovers.is_empty() {
                    cleared_at = Some(now);
                    result.cleared_seconds = Some(now - gone);
                }
            }
            let figures = checks::cap_figures(&self.points(started), self.cap_watts);
            let held = figures.held_from.is_some_and(|from| now - from >= hold);
            let clear_deadline = gone_at.map(|g| g + self.entry_ttl.as_secs_f64() + margin);
            let clear_done = cleared_at.is_some() || clear_deadline.is_some_and(|d| now > d);
            // Observed until the cap holds (however late), to measure it.
            let cap_done = held && now >= recovery_deadline;
            if cap_done && clear_done || now > ended + self.entry_ttl.as_secs_f64() + 120.0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }

        let points = self.points(started);
        let figures = checks::cap_figures(&points, self.cap_watts);
        result.trace = points
            .iter()
            .map(|(t, watts)| (round1(t - started), watts.round()))
            .collect();
        match figures.held_from {
            Some(from) => {
                let recovery = (from - ended).max(0.0);
                result.recovery_seconds = Some(recovery);
                if from > recovery_deadline {
                    result.reasons.push(format!(
                        "the cap held again {recovery:.0} s after the fault, later than three periods ({:.0} s)",
                        3.0 * period
                    ));
                }
            }
            None => result
                .reasons
                .push("the cap did not hold again after the fault".into()),
        }
        result.cap = Some(figures);
        match gone_at {
            None => result
                .reasons
                .push("the victim's policy was not removed".into()),
            Some(_) if cleared_at.is_none() => {
                result.reasons.push(format!(
                    "left set past the entry TTL ({} s) after the victim's policy was removed: {}",
                    self.entry_ttl.as_secs(),
                    leftovers.join("; ")
                ));
                result.leftovers = leftovers;
            }
            Some(_) => {}
        }
        let policies = checks::policy_problems(
            &self.target.cluster.client,
            &self.workloads.namespace,
            &self.expected,
        )
        .await?;
        result.reasons.extend(policies);
        self.sample_memory(result);
        Ok(())
    }

    /// `(t, watts)` of the steady workload from `since` on.
    fn points(&self, since: f64) -> Vec<(f64, f64)> {
        let prefix = format!("{}-", self.workloads.steady);
        self.observer
            .since(since)
            .iter()
            .filter_map(|r| {
                let (watts, gpus) = r.workload_power(&self.workloads.namespace, &prefix);
                (gpus > 0).then_some((r.t, watts))
            })
            .collect()
    }

    /// Entries in the API and clocks or power limits on the GPUs.
    async fn leftovers(&self) -> Vec<String> {
        let key = names::policy_key(&self.workloads.namespace, &self.victim_policy());
        let mut left = match checks::entries_of(&self.target.cluster.client, &key).await {
            Ok(left) => left,
            Err(err) => vec![format!("NodeFrequencies unreadable: {err:#}")],
        };
        match self.observer.next_after(self.observer.now()).await {
            Ok(reading) => left.extend(checks::device_leftovers(
                &reading,
                &self.workloads,
                &self.baseline,
            )),
            Err(err) => left.push(format!("no reading: {err:#}")),
        }
        left
    }

    fn victim_policy(&self) -> String {
        names::generated_policy_name("Deployment", &self.workloads.victim)
    }

    async fn victim_policy_gone(&self) -> anyhow::Result<bool> {
        let api = Api::<PowerCappingPolicy>::namespaced(
            self.target.cluster.client.clone(),
            &self.workloads.namespace,
        );
        Ok(api.get_opt(&self.victim_policy()).await?.is_none())
    }

    /// Puts the cap on the victim and waits until its entry is on the node.
    async fn arm_victim(&self) -> anyhow::Result<()> {
        let cap = format!("{}={VICTIM_CAP}", names::ANNOTATION_POWER_CAP);
        eventually(
            "the victim's cap to be set",
            Duration::from_secs(60),
            || async { Ok(self.annotate_victim(&cap).await.ok()) },
        )
        .await?;
        let key = names::policy_key(&self.workloads.namespace, &self.victim_policy());
        let client = self.target.cluster.client.clone();
        eventually(
            "the victim's NodeFrequencies entry",
            Duration::from_secs(120),
            || async {
                let entries = checks::entries_of(&client, &key).await.unwrap_or_default();
                Ok((!entries.is_empty()).then_some(()))
            },
        )
        .await
    }

    async fn disarm_victim(&self) -> anyhow::Result<()> {
        self.annotate_victim(&format!("{}-", names::ANNOTATION_POWER_CAP))
            .await
    }

    async fn annotate_victim(&self, annotation: &str) -> anyhow::Result<()> {
        self.target
            .cluster
            .kubectl([
                "annotate",
                "--overwrite",
                "-n",
                &self.workloads.namespace,
                &format!("deployment/{}", self.workloads.victim),
                annotation,
            ])
            .await
            .map(|_| ())
    }

    /// Waits until the steady workload's cap has held for two periods.
    async fn wait_cap_held(&self) -> anyhow::Result<()> {
        let hold = 2.0 * self.interval.as_secs_f64();
        let since = self.observer.now();
        eventually(
            "the steady workload's cap to hold before the fault",
            Duration::from_secs(180),
            || async {
                let now = self.observer.now();
                let figures = checks::cap_figures(&self.points(since), self.cap_watts);
                Ok(figures
                    .held_from
                    .filter(|from| now - from >= hold)
                    .map(|_| ()))
            },
        )
        .await
        .context("before the fault")
    }

    /// Reads every component's peak RSS; a process's peak ends with it, so
    /// this runs before a kill and after recovery.
    fn sample_memory(&self, result: &mut FaultResult) {
        for component in self.target.stack.component_names() {
            if let Some(mib) = self.target.stack.pid(&component).and_then(peak_rss_mib) {
                let peak = result.peak_rss_mib.entry(component).or_insert(0.0);
                *peak = peak.max(mib);
            }
        }
    }

    fn check_memory(&self, result: &mut FaultResult) {
        for (component, mib) in &result.peak_rss_mib {
            if let Some(limit) = self.limits.of(component)
                && *mib > limit
            {
                result.reasons.push(format!(
                    "{component} peaked at {mib:.0} MiB, over the chart's {limit:.0} MiB limit"
                ));
            }
        }
    }
}

/// Seconds to a tenth, for the report.
fn round1(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}
