//! The checks after each fault, each one measured: the figures of the
//! capped workload's power around the fault, the policies in the
//! namespace, and what a removed policy left behind on the node.

use std::collections::BTreeMap;

use anyhow::Context;
use climatik_api::{NodeFrequencies, PowerCappingPolicy};
use kube::{Api, api::ListParams};
use serde::Serialize;

use crate::observe::{Reading, is_of};

/// The capped workload's power around one fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapFigures {
    /// Highest power above the cap, in watts (0 when never above).
    pub worst_overshoot_watts: f64,
    /// The same, in % of the cap.
    pub worst_overshoot_percent: f64,
    /// Earliest time from which every later reading is at or under the
    /// cap; `None` when the last reading is still above it.
    pub held_from: Option<f64>,
}

/// `(t, watts)` points of the capped workload, measured against `cap`.
pub fn cap_figures(points: &[(f64, f64)], cap: f64) -> CapFigures {
    let worst = points.iter().map(|(_, w)| w - cap).fold(0.0_f64, f64::max);
    // Walk back from the end while the cap holds.
    let mut held_from = None;
    for (t, watts) in points.iter().rev() {
        if *watts > cap {
            break;
        }
        held_from = Some(*t);
    }
    CapFigures {
        worst_overshoot_watts: worst,
        worst_overshoot_percent: 100.0 * worst / cap.max(1.0),
        held_from,
    }
}

/// A fully loaded GPU with no cap: what "back to default" means for the
/// victim's GPU once its cap is gone. Taken before any cap is set. (An idle
/// GPU clocks itself down, so only a loaded one shows a clock left locked.)
#[derive(Debug, Clone, Default, Serialize)]
pub struct Baseline {
    /// SM clock, in MHz.
    pub loaded_clock_mhz: f64,
    /// Power, in watts: a power limit left set holds it below this.
    pub loaded_watts: f64,
}

/// Where the workloads live and what they are called.
#[derive(Debug, Clone)]
pub struct Workloads {
    pub namespace: String,
    /// The Deployment whose cap is held across every fault.
    pub steady: String,
    /// The Deployment whose cap is removed during each fault.
    pub victim: String,
}

/// The NodeFrequencies entries that still name `policy` (`namespace/name`).
pub async fn entries_of(client: &kube::Client, policy: &str) -> anyhow::Result<Vec<String>> {
    let all = Api::<NodeFrequencies>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing NodeFrequencies")?;
    let mut left = Vec::new();
    for object in all {
        let node = object.spec.node_name.clone();
        for entry in object
            .spec
            .gpu_frequencies
            .iter()
            .filter(|e| e.policy == policy)
        {
            left.push(format!("entry {node}/gpu {} of {policy}", entry.gpu_id));
        }
        for entry in object
            .spec
            .cpu_frequencies
            .iter()
            .filter(|e| e.policy == policy)
        {
            left.push(format!("entry {node}/cpu {} of {policy}", entry.cpu_id));
        }
    }
    Ok(left)
}

/// What a removed cap left set on the victim's GPU: fully loaded and
/// uncapped again, it must be back at the default clock and power. (The
/// victim's Deployment is recreated, not rolled, so its new pod gets the
/// GPU the old one had.)
pub fn device_leftovers(
    reading: &Reading,
    workloads: &Workloads,
    baseline: &Baseline,
) -> Vec<String> {
    let mut left = Vec::new();
    let victim = format!("{}-", workloads.victim);
    let gpus: Vec<_> = reading
        .gpus
        .iter()
        .filter(|g| is_of(g, &workloads.namespace, &victim))
        .collect();
    if gpus.is_empty() {
        left.push("the victim holds no GPU (its pod is not running)".into());
    }
    for gpu in gpus {
        if let Some(clock) = gpu.clock_mhz
            && clock < baseline.loaded_clock_mhz
        {
            left.push(format!(
                "clock {} at {clock:.0} MHz (default {:.0})",
                gpu.uuid, baseline.loaded_clock_mhz
            ));
        }
        if gpu.power_watts < 0.95 * baseline.loaded_watts {
            left.push(format!(
                "power {} at {:.0} W under full load (uncapped {:.0} W)",
                gpu.uuid, gpu.power_watts, baseline.loaded_watts
            ));
        }
    }
    left
}

/// Every policy of the namespace is the one expected, exactly once, with
/// the uid it had before the faults: not lost, not recreated, not doubled.
pub async fn policy_problems(
    client: &kube::Client,
    namespace: &str,
    expected: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<String>> {
    let listed = Api::<PowerCappingPolicy>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .context("listing policies")?;
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for policy in &listed {
        let name = policy.metadata.name.clone().unwrap_or_default();
        *seen.entry(name.clone()).or_default() += 1;
        match expected.get(&name) {
            None => problems.push(format!("unexpected policy {namespace}/{name}")),
            Some(uid) if policy.metadata.uid.as_deref() != Some(uid.as_str()) => problems.push(
                format!("policy {namespace}/{name} was recreated (uid {uid} is gone)"),
            ),
            Some(_) => {}
        }
    }
    for name in expected.keys() {
        match seen.get(name).copied().unwrap_or(0) {
            0 => problems.push(format!("policy {namespace}/{name} is lost")),
            1 => {}
            n => problems.push(format!("policy {namespace}/{name} is listed {n} times")),
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overshoot_and_the_time_the_cap_holds_again() {
        let points = [
            (0.0, 880.0),
            (1.0, 990.0),
            (2.0, 950.0),
            (3.0, 890.0),
            (4.0, 900.0),
        ];
        let figures = cap_figures(&points, 900.0);
        assert_eq!(figures.worst_overshoot_watts, 90.0);
        assert_eq!(figures.worst_overshoot_percent, 10.0);
        assert_eq!(figures.held_from, Some(3.0));
    }

    #[test]
    fn a_cap_still_exceeded_at_the_end_is_not_held() {
        let figures = cap_figures(&[(0.0, 800.0), (1.0, 901.0)], 900.0);
        assert_eq!(figures.held_from, None);
        let figures = cap_figures(&[(0.0, 800.0), (1.0, 850.0)], 900.0);
        assert_eq!(figures.worst_overshoot_watts, 0.0);
        assert_eq!(figures.held_from, Some(0.0));
    }

    fn gpu(
        uuid: &str,
        pod: Option<&str>,
        clock: f64,
        watts: f64,
    ) -> climatik_demo::samples::GpuReading {
        climatik_demo::samples::GpuReading {
            node: "n".into(),
            uuid: uuid.into(),
            namespace: pod.map(|_| "ns".to_string()),
            pod: pod.map(str::to_string),
            power_watts: watts,
            clock_mhz: Some(clock),
        }
    }

    #[test]
    fn leftovers_are_a_lowered_clock_or_limited_power_on_the_victims_gpu() {
        let workloads = Workloads {
            namespace: "ns".into(),
            steady: "steady".into(),
            victim: "victim".into(),
        };
        let baseline = Baseline {
            loaded_clock_mhz: 1980.0,
            loaded_watts: 700.0,
        };
        let reading = |victim_clock, victim_watts| Reading {
            t: 0.0,
            gpus: vec![
                gpu("a", Some("steady-1"), 1200.0, 450.0),
                gpu("b", Some("victim-1"), victim_clock, victim_watts),
                gpu("c", None, 345.0, 70.0),
            ],
        };
        assert!(device_leftovers(&reading(1980.0, 700.0), &workloads, &baseline).is_empty());
        let left = device_leftovers(&reading(1500.0, 500.0), &workloads, &baseline);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left[0].starts_with("clock b"), "{left:?}");
        assert!(left[1].starts_with("power b"), "{left:?}");
        let nobody = Reading {
            t: 0.0,
            gpus: vec![gpu("c", None, 345.0, 70.0)],
        };
        assert_eq!(device_leftovers(&nobody, &workloads, &baseline).len(), 1);
    }
}
