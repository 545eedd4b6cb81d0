//! What the demo records each second, and the numbers it reports.
//!
//! GPU readings come straight from each simulated agent's dcgm-exporter
//! `/metrics` (the ground truth, not Prometheus' few-seconds-old copy), and
//! policy state from the API server.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context;
use climatik_test_support::exposition::{self, Sample};
use serde::Serialize;

/// One GPU as an exporter reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuReading {
    pub node: String,
    pub uuid: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub power_watts: f64,
    pub clock_mhz: Option<f64>,
}

/// Reads the dcgm-exporter series of one `/metrics` page.
pub fn parse_dcgm(node: &str, text: &str) -> Vec<GpuReading> {
    let mut by_uuid: BTreeMap<String, GpuReading> = BTreeMap::new();
    for Sample {
        name,
        labels,
        value,
    } in exposition::samples(text)
    {
        let Some(uuid) = labels.get("UUID") else {
            continue;
        };
        let entry = by_uuid.entry(uuid.clone()).or_insert_with(|| GpuReading {
            node: node.to_string(),
            uuid: uuid.clone(),
            namespace: None,
            pod: None,
            power_watts: 0.0,
            clock_mhz: None,
        });
        let non_empty = |key: &str| labels.get(key).filter(|v| !v.is_empty()).cloned();
        if entry.pod.is_none() {
            entry.pod = non_empty("pod").or_else(|| non_empty("exported_pod"));
            entry.namespace = non_empty("namespace").or_else(|| non_empty("exported_namespace"));
        }
        match name.as_str() {
            "DCGM_FI_DEV_POWER_USAGE" => entry.power_watts = value,
            "DCGM_FI_DEV_SM_CLOCK" => entry.clock_mhz = Some(value),
            _ => {}
        }
    }
    by_uuid.into_values().collect()
}

/// A policy at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyPoint {
    pub t: f64,
    pub policy: String,
    pub cap_watts: f64,
    /// Sum of the policy's GPUs as the exporters report them now.
    pub power_watts: f64,
    /// What the controller last wrote in status.
    pub reported_watts: Option<f64>,
    pub capping: bool,
}

/// A GPU at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct GpuPoint {
    pub t: f64,
    pub node: String,
    pub uuid: String,
    pub policy: Option<String>,
    pub power_watts: f64,
    pub clock_mhz: Option<f64>,
}

/// Everything the demo saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Recording {
    pub policies: Vec<PolicyPoint>,
    pub gpus: Vec<GpuPoint>,
    /// `(t, what happened)`, e.g. a cap change.
    pub events: Vec<(f64, String)>,
}

/// Per-policy figures for one phase between events.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    pub policy: String,
    pub from: f64,
    pub to: f64,
    pub cap_watts: f64,
    pub mean_power_watts: f64,
    pub max_overshoot_percent: f64,
    pub share_over_cap_percent: f64,
    /// Seconds from the phase start until power first stays under the cap
    /// for 10 s; `None` if it never did.
    pub settle_seconds: Option<f64>,
}

impl Recording {
    /// Splits the run at every event and summarises each policy per phase.
    pub fn summarise(&self) -> Vec<PhaseSummary> {
        let end = self.policies.iter().map(|p| p.t).fold(0.0, f64::max);
        let mut bounds: Vec<f64> = std::iter::once(0.0)
            .chain(self.events.iter().map(|(t, _)| *t))
            .collect();
        bounds.push(end + 1.0);
        let names: std::collections::BTreeSet<&str> =
            self.policies.iter().map(|p| p.policy.as_str()).collect();
        let mut out = Vec::new();
        for window in bounds.windows(2) {
            let (from, to) = (window[0], window[1]);
            for name in &names {
                let points: Vec<&PolicyPoint> = self
                    .policies
                    .iter()
                    .filter(|p| p.policy == *name && p.t >= from && p.t < to)
                    .collect();
                if let Some(summary) = summarise_phase(name, from, to, &points) {
                    out.push(summary);
                }
            }
        }
        out
    }

    /// Writes `samples.json`, `policies.csv`, `gpus.csv` and `summary.md`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("samples.json"), serde_json::to_vec_pretty(self)?)?;
        let mut csv = String::from("t,policy,cap_watts,power_watts,reported_watts,capping\n");
        for p in &self.policies {
            let reported = p
                .reported_watts
                .map(|w| format!("{w:.1}"))
                .unwrap_or_default();
            let _ = writeln!(
                csv,
                "{:.1},{},{:.0},{:.1},{},{}",
                p.t, p.policy, p.cap_watts, p.power_watts, reported, p.capping
            );
        }
        std::fs::write(dir.join("policies.csv"), csv)?;
        let mut csv = String::from("t,node,uuid,policy,power_watts,clock_mhz\n");
        for g in &self.gpus {
            let clock = g.clock_mhz.map(|c| format!("{c:.0}")).unwrap_or_default();
            let _ = writeln!(
                csv,
                "{:.1},{},{},{},{:.1},{}",
                g.t,
                g.node,
                g.uuid,
                g.policy.as_deref().unwrap_or(""),
                g.power_watts,
                clock
            );
        }
        std::fs::write(dir.join("gpus.csv"), csv)?;
        std::fs::write(dir.join("summary.md"), self.summary_table())?;
        Ok(())
    }

    /// The summary as a Markdown table.
    pub fn summary_table(&self) -> String {
        let mut out = String::from(
            "| policy | phase (s) | cap (W) | mean power (W) | mean % of cap | max overshoot | samples over cap | settled after |\n|---|---|---|---|---|---|---|---|\n",
        );
        for s in self.summarise() {
            let settle = s
                .settle_seconds
                .map(|v| format!("{v:.0} s"))
                .unwrap_or_else(|| "not yet".into());
            let _ = writeln!(
                out,
                "| {} | {:.0}–{:.0} | {:.0} | {:.1} | {:.0}% | {:.1}% | {:.1}% | {} |",
                s.policy,
                s.from,
                s.to,
                s.cap_watts,
                s.mean_power_watts,
                100.0 * s.mean_power_watts / s.cap_watts.max(1.0),
                s.max_overshoot_percent,
                s.share_over_cap_percent,
                settle
            );
        }
        out
    }
}

fn summarise_phase(
    policy: &str,
    from: f64,
    to: f64,
    points: &[&PolicyPoint],
) -> Option<PhaseSummary> {
    let last = points.last()?;
    let cap = last.cap_watts;
    let n = points.len() as f64;
    let mean = points.iter().map(|p| p.power_watts).sum::<f64>() / n;
    let over: Vec<&&PolicyPoint> = points
        .iter()
        .filter(|p| p.power_watts > p.cap_watts)
        .collect();
    let max_overshoot = points
        .iter()
        .map(|p| 100.0 * (p.power_watts - p.cap_watts) / p.cap_watts.max(1.0))
        .fold(0.0, f64::max);
    Some(PhaseSummary {
        policy: policy.to_string(),
        from,
        to: to.min(last.t),
        cap_watts: cap,
        mean_power_watts: mean,
        max_overshoot_percent: max_overshoot,
        share_over_cap_percent: 100.0 * over.len() as f64 / n,
        settle_seconds: settle_time(points, 10.0).map(|t| t - from),
    })
}

/// First time from which power stays at or under the cap for `hold` seconds.
pub fn settle_time(points: &[&PolicyPoint], hold: f64) -> Option<f64> {
    let mut start: Option<f64> = None;
    for p in points {
        if p.power_watts <= p.cap_watts {
            let s = *start.get_or_insert(p.t);
            if p.t - s >= hold {
                return Some(s);
            }
        } else {
            start = None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dcgm_exporter_lines() {
        let text = "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).\n\
            # TYPE DCGM_FI_DEV_POWER_USAGE gauge\n\
            DCGM_FI_DEV_POWER_USAGE{gpu=\"0\",UUID=\"GPU-a\",Hostname=\"n0\",pod=\"p\",namespace=\"ns\",container=\"c\"} 312.5\n\
            DCGM_FI_DEV_SM_CLOCK{gpu=\"0\",UUID=\"GPU-a\",Hostname=\"n0\",pod=\"p\",namespace=\"ns\"} 1410\n\
            DCGM_FI_DEV_POWER_USAGE{gpu=\"1\",UUID=\"GPU-b\",Hostname=\"n0\",pod=\"\",namespace=\"\"} 70\n";
        let readings = parse_dcgm("n0", text);
        assert_eq!(readings.len(), 2);
        assert_eq!(readings[0].uuid, "GPU-a");
        assert_eq!(readings[0].pod.as_deref(), Some("p"));
        assert_eq!(readings[0].power_watts, 312.5);
        assert_eq!(readings[0].clock_mhz, Some(1410.0));
        assert_eq!(readings[1].pod, None);
    }

    fn point(t: f64, power: f64, cap: f64) -> PolicyPoint {
        PolicyPoint {
            t,
            policy: "ns/p".into(),
            cap_watts: cap,
            power_watts: power,
            reported_watts: None,
            capping: false,
        }
    }

    #[test]
    fn summary_measures_settling_and_overshoot() {
        let mut recording = Recording::default();
        for t in 0..40 {
            let power = if t < 5 { 600.0 } else { 480.0 };
            recording.policies.push(point(f64::from(t), power, 500.0));
        }
        let summary = recording.summarise();
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].settle_seconds, Some(5.0));
        assert!((summary[0].max_overshoot_percent - 20.0).abs() < 1e-9);
        assert!((summary[0].share_over_cap_percent - 12.5).abs() < 1e-9);
    }
}
