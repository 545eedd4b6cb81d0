//! `target/chaos/report.json` and the Markdown table of it (the README's
//! "Fault injection" section is one).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context;
use serde::Serialize;

use crate::{checks::CapFigures, forged::Answers};

/// One fault in one round.
#[derive(Debug, Clone, Serialize)]
pub struct FaultResult {
    pub fault: String,
    pub round: usize,
    /// How long the fault lasted, from injection until it was lifted.
    pub fault_seconds: f64,
    /// From the end of the fault until the cap held again for good
    /// (0 when it never broke); `None` when it did not hold again.
    pub recovery_seconds: Option<f64>,
    pub cap_watts: f64,
    pub cap: Option<CapFigures>,
    /// From the removed policy's disappearance until nothing it set was
    /// left; `None` when something was still left at the deadline.
    pub cleared_seconds: Option<f64>,
    /// What the removed policy left behind at the deadline.
    pub leftovers: Vec<String>,
    /// `component -> peak resident set in MiB` (the highest of its
    /// processes during the fault).
    pub peak_rss_mib: BTreeMap<String, f64>,
    pub forged: Option<Answers>,
    /// `(seconds since the fault began, watts)` of the capped workload.
    pub trace: Vec<(f64, f64)>,
    pub notes: Vec<String>,
    pub passed: bool,
    /// Why it failed; empty when it passed.
    pub reasons: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub settings: BTreeMap<String, String>,
    pub memory_limits_mib: BTreeMap<String, f64>,
    pub results: Vec<FaultResult>,
    pub passed: bool,
}

impl Report {
    /// Writes `report.json` and `summary.md` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("summary.md"), self.table())?;
        Ok(())
    }

    /// One row per fault, over its rounds: worst figures.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| fault | rounds passed | recovery (worst) | worst overshoot | leftovers cleared (worst) | peak RSS (worst component) |\n|---|---|---|---|---|---|\n",
        );
        let mut faults: Vec<&str> = Vec::new();
        for r in &self.results {
            if !faults.contains(&r.fault.as_str()) {
                faults.push(&r.fault);
            }
        }
        for fault in faults {
            let rounds: Vec<&FaultResult> =
                self.results.iter().filter(|r| r.fault == fault).collect();
            let passed = rounds.iter().filter(|r| r.passed).count();
            let recovery = worst(rounds.iter().map(|r| r.recovery_seconds), "not recovered");
            let cleared = worst(rounds.iter().map(|r| r.cleared_seconds), "left over");
            let (watts, percent) = rounds
                .iter()
                .filter_map(|r| r.cap.as_ref())
                .map(|c| (c.worst_overshoot_watts, c.worst_overshoot_percent))
                .fold((0.0_f64, 0.0_f64), |a, b| (a.0.max(b.0), a.1.max(b.1)));
            let rss = rounds
                .iter()
                .flat_map(|r| r.peak_rss_mib.iter())
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(c, m)| format!("{m:.0} MiB ({c})"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "| {fault} | {passed}/{} | {recovery} | {watts:.0} W ({percent:.1} %) | {cleared} | {rss} |",
                rounds.len()
            );
        }
        out
    }
}

/// The largest of some seconds, or `missing` when any is `None`.
fn worst(values: impl Iterator<Item = Option<f64>>, missing: &str) -> String {
    let mut max = 0.0_f64;
    for v in values {
        match v {
            Some(v) => max = max.max(v),
            None => return missing.to_string(),
        }
    }
    format!("{max:.0} s")
}
