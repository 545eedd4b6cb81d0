//! What the actuator tells the world about a pass: the per-device status
//! text and state (pure functions of the plan and its outcome), and the
//! [`Reporter`] that keeps the gauges in line with what is in force and
//! logs a persistent failure once rather than on every tick.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use climatik_api::{CpuFrequencyStatus, DeviceState, GpuFrequencyStatus};

use crate::{
    cpu::CpuApplied,
    error::Error,
    merge::Want,
    metrics::{CpuLabels, GpuLabels, Metrics},
};

use super::{
    execute::GpuOutcome,
    plan::{GpuPlan, Refusal},
};

/// MHz as the status has them (the CRD uses `int32`).
pub fn mhz(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// `"; "`-joined, skipping empty parts.
fn join(parts: impl IntoIterator<Item = String>) -> String {
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn error_state(e: &Error) -> DeviceState {
    if e.is_unsupported() {
        DeviceState::Unsupported
    } else {
        DeviceState::Failed
    }
}

/// The status of a GPU entry that was not acted on.
pub fn refused_gpu(uuid: &str, want: &Want, refusal: Refusal) -> GpuFrequencyStatus {
    GpuFrequencyStatus {
        gpu_id: uuid.to_string(),
        current_frequency: None,
        target_frequency: None,
        power_budget_watts: want.budget_watts,
        power_watts: None,
        state: refusal.state,
        message: refusal.message,
    }
}

/// The status of a GPU entry in an agent without a GPU backend.
pub fn gpu_without_backend(uuid: &str, want: &Want) -> GpuFrequencyStatus {
    refused_gpu(
        uuid,
        want,
        Refusal {
            state: DeviceState::Unsupported,
            message: "this agent runs without a GPU backend".into(),
        },
    )
}

/// The status of a GPU after a pass: failed or unsupported when any read
/// or write failed; pending while a budget is exceeded above the lowest
/// clock; applied otherwise.
pub fn gpu(uuid: &str, want: &Want, plan: &GpuPlan, outcome: &GpuOutcome) -> GpuFrequencyStatus {
    let power = outcome.power_watts;
    let mut notes: Vec<String> = plan.note.iter().cloned().collect();
    if let (Some(asked), Some(taken)) = (plan.power_limit, outcome.limit_taken)
        && (taken - asked).abs() > 0.5
    {
        notes.push(format!("power limit clamped {asked:.0} -> {taken:.0} W"));
    }
    if let Some(budget) = want.budget_watts {
        let at = power.map_or(String::new(), |p| format!(" at {p:.0} W"));
        notes.push(format!(
            "holding {budget:.0} W: locked {} MHz{at}",
            plan.clock_mhz
        ));
    }
    notes.extend(want.notes.iter().cloned());
    let state = if outcome.errors.is_empty() {
        let above = want
            .budget_watts
            .zip(power)
            .is_some_and(|(b, p)| p > b && Some(plan.clock_mhz) != plan.floor_mhz);
        if above {
            DeviceState::Pending
        } else {
            DeviceState::Applied
        }
    } else {
        let text = outcome
            .errors
            .iter()
            .map(Error::to_string)
            .collect::<Vec<_>>();
        notes.insert(0, text.join("; "));
        if outcome.errors.iter().all(Error::is_unsupported) {
            DeviceState::Unsupported
        } else {
            DeviceState::Failed
        }
    };
    GpuFrequencyStatus {
        gpu_id: uuid.to_string(),
        current_frequency: outcome.current_mhz.map(mhz),
        target_frequency: Some(mhz(plan.target_mhz)),
        power_budget_watts: want.budget_watts,
        power_watts: power.map(|p| (p * 10.0).round() / 10.0),
        state,
        message: join(notes),
    }
}

/// The status of a GPU named only by expired or invalid entries.
/// `restore` is the outcome of putting it back in this pass, if it was
/// (`Some(Some(error))` when that failed).
pub fn inactive_gpu(
    uuid: &str,
    present: bool,
    current_mhz: Option<u32>,
    restore: Option<&Option<String>>,
) -> GpuFrequencyStatus {
    let (state, message) = match restore {
        Some(Some(error)) => (
            DeviceState::Failed,
            format!("no live entry, but restoring the defaults failed: {error}"),
        ),
        _ if !present => (
            DeviceState::Unsupported,
            format!("no live entry; no GPU {uuid} on this node"),
        ),
        _ => (
            DeviceState::Applied,
            "no live entry (expired or invalid); defaults restored".to_string(),
        ),
    };
    GpuFrequencyStatus {
        gpu_id: uuid.to_string(),
        current_frequency: current_mhz.map(mhz),
        target_frequency: None,
        power_budget_watts: None,
        power_watts: None,
        state,
        message,
    }
}

fn cpu_id(cpu: u32) -> i32 {
    i32::try_from(cpu).unwrap_or(i32::MAX)
}

/// The status of a CPU entry in an agent without a CPU backend.
pub fn cpu_without_backend(cpu: u32) -> CpuFrequencyStatus {
    CpuFrequencyStatus {
        cpu_id: cpu_id(cpu),
        current_frequency: None,
        target_frequency: None,
        state: DeviceState::Unsupported,
        message: "this agent runs without a CPU backend".into(),
    }
}

/// The status of a CPU after a pass.
pub fn cpu(cpu: u32, want: &Want, result: &Result<CpuApplied, Error>) -> CpuFrequencyStatus {
    match result {
        Ok(applied) => CpuFrequencyStatus {
            cpu_id: cpu_id(cpu),
            current_frequency: Some(mhz(applied.current_mhz)),
            target_frequency: Some(mhz(applied.target_mhz)),
            state: DeviceState::Applied,
            message: join(applied.note.clone().into_iter().chain(want.notes.clone())),
        },
        Err(e) => CpuFrequencyStatus {
            cpu_id: cpu_id(cpu),
            current_frequency: None,
            target_frequency: None,
            state: error_state(e),
            message: e.to_string(),
        },
    }
}

/// The status of a CPU named only by expired or invalid entries; see
/// [`inactive_gpu`] for `restore`.
pub fn inactive_cpu(cpu: u32, restore: Option<&Option<String>>) -> CpuFrequencyStatus {
    let (state, message) = match restore {
        Some(Some(error)) => (
            DeviceState::Failed,
            format!("no live entry, but restoring the default failed: {error}"),
        ),
        _ => (
            DeviceState::Applied,
            "no live entry (expired or invalid); default restored".to_string(),
        ),
    };
    CpuFrequencyStatus {
        cpu_id: cpu_id(cpu),
        current_frequency: None,
        target_frequency: None,
        state,
        message,
    }
}

/// A device failure worth telling operators about: its first error, or a
/// different one than before (an Event, see [`crate::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `gpu <uuid>` or `cpu <n>`.
    pub device: String,
    /// `ActuationFailed`, or `DeviceUnsupported` when the device cannot do
    /// what the entry asks.
    pub reason: &'static str,
    pub error: String,
}

/// Gauges, error counters and de-duplicated failure logs and notices.
pub struct Reporter {
    pub metrics: Arc<Metrics>,
    /// Last error logged per device, so a persistent failure logs once.
    last_errors: BTreeMap<String, String>,
    /// Devices reported on in this pass; a device no pass acts on any more
    /// (its entry removed) is forgotten, so a failure when it comes back
    /// is news again.
    seen: BTreeSet<String>,
    /// The failures that are news in this pass.
    notices: Vec<Notice>,
}

/// A CPU's key among the devices: `cpu<n>`, where GPUs have their UUID.
pub fn cpu_key(cpu: u32) -> String {
    format!("cpu{cpu}")
}

impl Reporter {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            last_errors: BTreeMap::new(),
            seen: BTreeSet::new(),
            notices: Vec::new(),
        }
    }

    /// Ends a pass: forgets the devices it did not act on and returns the
    /// failures that are news.
    pub fn finish_pass(&mut self) -> Vec<Notice> {
        let seen = std::mem::take(&mut self.seen);
        self.last_errors.retain(|key, _| seen.contains(key));
        std::mem::take(&mut self.notices)
    }

    /// Counts `error`; logs it unless it is what `key` failed with last.
    fn failed(&mut self, key: &str, kind: &str, error: &Error) {
        self.metrics.error(kind, error);
        self.news(key, kind, error.is_unsupported(), error.to_string());
    }

    /// An entry for the `kind` device `key` that was not acted on (no such
    /// device, no backend, a target it cannot take): nothing was tried, so
    /// nothing is counted, but operators hear of it like of a failure.
    pub fn refused(&mut self, key: &str, kind: &str, state: DeviceState, why: &str) {
        self.news(key, kind, state != DeviceState::Failed, why.to_string());
    }

    /// Logs `error` of the `kind` device `key`, and keeps it as a notice,
    /// unless it is what `key` failed with last.
    fn news(&mut self, key: &str, kind: &str, unsupported: bool, error: String) {
        self.seen.insert(key.to_string());
        if self.last_errors.get(key) == Some(&error) {
            return;
        }
        tracing::warn!(device = key, error = %error, "actuation failed");
        let id = key.strip_prefix(kind).unwrap_or(key);
        self.notices.push(Notice {
            device: format!("{kind} {id}"),
            reason: if unsupported {
                "DeviceUnsupported"
            } else {
                "ActuationFailed"
            },
            error: error.clone(),
        });
        self.last_errors.insert(key.to_string(), error);
    }

    fn ok(&mut self, key: &str) {
        self.seen.insert(key.to_string());
        self.last_errors.remove(key);
    }

    /// A GPU no longer wanted is back at its defaults; `was_set` when this
    /// agent had set it (as opposed to a backend-reported leftover).
    pub fn gpu_restored(&mut self, uuid: &str, was_set: bool) {
        if was_set {
            tracing::info!(gpu = %uuid, "restored the GPU's default clocks");
            self.metrics.restores.inc();
        }
        self.metrics.forget_gpu(uuid);
        self.ok(uuid);
    }

    /// Someone else changed a GPU this agent set; it is set again.
    pub fn gpu_drifted(&mut self, uuid: &str, what: &str) {
        tracing::warn!(gpu = %uuid, drift = what, "the GPU was changed by someone else: applying again");
        self.metrics.drifted("gpu");
    }

    /// Someone else raised a CPU's ceiling; it is set again.
    pub fn cpu_drifted(&mut self, cpu: u32, what: &str) {
        tracing::warn!(
            cpu,
            drift = what,
            "the CPU's ceiling was changed by someone else: applying again"
        );
        self.metrics.drifted("cpu");
    }

    pub fn gpu_restore_failed(&mut self, uuid: &str, error: &Error) {
        self.failed(uuid, "gpu", error);
    }

    /// The gauges and logs of a GPU pass.
    pub fn gpu(&mut self, uuid: &str, want: &Want, plan: &GpuPlan, outcome: &GpuOutcome) {
        let labels = GpuLabels {
            gpu: uuid.to_string(),
        };
        self.metrics
            .gpu_target_mhz
            .get_or_create(&labels)
            .set(i64::from(plan.target_mhz));
        // A pass that kept the limit has nothing new to say about it: the
        // value the GPU took when it was set stays.
        match (outcome.set.power_limit, outcome.limit_taken) {
            (None, _) => {
                self.metrics.gpu_power_limit_watts.remove(&labels);
            }
            (Some(_), Some(taken)) => {
                self.metrics
                    .gpu_power_limit_watts
                    .get_or_create(&labels)
                    .set(taken);
            }
            (Some(_), None) => {}
        }
        match outcome.power_watts {
            Some(p) => {
                self.metrics.gpu_power_watts.get_or_create(&labels).set(p);
            }
            None => {
                self.metrics.gpu_power_watts.remove(&labels);
            }
        }
        match outcome.set.locked {
            Some(c) => {
                self.metrics
                    .gpu_locked_mhz
                    .get_or_create(&labels)
                    .set(i64::from(c));
            }
            None => {
                self.metrics.gpu_locked_mhz.remove(&labels);
            }
        }
        match want.budget_watts {
            Some(b) => {
                self.metrics.gpu_budget_watts.get_or_create(&labels).set(b);
            }
            None => {
                self.metrics.gpu_budget_watts.remove(&labels);
            }
        }
        let Some(first) = outcome.errors.first() else {
            self.ok(uuid);
            return;
        };
        for e in &outcome.errors {
            self.metrics.error("gpu", e);
        }
        // One log line and notice per change of the first error, not one
        // per tick.
        self.news(uuid, "gpu", first.is_unsupported(), first.to_string());
    }

    /// A CPU no longer wanted has its ceiling back; see [`Self::gpu_restored`].
    pub fn cpu_restored(&mut self, cpu: u32, was_set: bool) {
        if was_set {
            tracing::info!(cpu, "restored the CPU's frequency ceiling");
            self.metrics.restores.inc();
        }
        self.metrics.cpu_max_mhz.remove(&CpuLabels {
            cpu: cpu.to_string(),
        });
        self.ok(&cpu_key(cpu));
    }

    pub fn cpu_restore_failed(&mut self, cpu: u32, error: &Error) {
        self.failed(&cpu_key(cpu), "cpu", error);
    }

    /// The gauge and logs of a CPU pass.
    pub fn cpu(&mut self, cpu: u32, result: &Result<CpuApplied, Error>) {
        match result {
            Ok(applied) => {
                self.ok(&cpu_key(cpu));
                self.metrics
                    .cpu_max_mhz
                    .get_or_create(&CpuLabels {
                        cpu: cpu.to_string(),
                    })
                    .set(i64::from(applied.target_mhz));
            }
            Err(e) => self.failed(&cpu_key(cpu), "cpu", e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(budget_watts: Option<f64>) -> Want {
        Want {
            target_mhz: 1200,
            budget_watts,
            policies: vec!["ns/p".into()],
            notes: vec!["ignored power budget NaN W of ns/q".into()],
        }
    }

    fn plan(clock_mhz: u32, budget_watts: Option<f64>) -> GpuPlan {
        GpuPlan {
            target_mhz: 1200,
            clock_mhz,
            budget_watts,
            reset_first: false,
            lock: true,
            power_limit: budget_watts,
            floor_mhz: Some(300),
            note: Some("snapped 1250 -> 1200 MHz".into()),
        }
    }

    #[test]
    fn gpu_status_text_puts_errors_first_then_notes_in_order() {
        let outcome = GpuOutcome {
            limit_taken: Some(400.0),
            power_watts: Some(512.34),
            current_mhz: Some(900),
            ..GpuOutcome::default()
        };
        let s = gpu(
            "GPU-a",
            &want(Some(450.0)),
            &plan(900, Some(450.0)),
            &outcome,
        );
        assert_eq!(s.state, DeviceState::Pending, "over budget above the floor");
        assert_eq!(s.power_watts, Some(512.3));
        assert_eq!(
            s.message,
            "snapped 1250 -> 1200 MHz; power limit clamped 450 -> 400 W; \
             holding 450 W: locked 900 MHz at 512 W; ignored power budget NaN W of ns/q"
        );

        let at_floor = gpu(
            "GPU-a",
            &want(Some(450.0)),
            &plan(300, Some(450.0)),
            &outcome,
        );
        assert_eq!(at_floor.state, DeviceState::Applied);

        let failed = GpuOutcome {
            errors: vec![
                Error::Unsupported("no power".into()),
                Error::InvalidTarget("x".into()),
            ],
            ..GpuOutcome::default()
        };
        let s = gpu("GPU-a", &want(None), &plan(1200, None), &failed);
        assert_eq!(s.state, DeviceState::Failed);
        assert!(
            s.message
                .starts_with("no power; invalid target: x; snapped"),
            "{s:?}"
        );
        let unsupported = GpuOutcome {
            errors: vec![Error::Unsupported("no power".into())],
            ..GpuOutcome::default()
        };
        let s = gpu("GPU-a", &want(None), &plan(1200, None), &unsupported);
        assert_eq!(s.state, DeviceState::Unsupported);
    }

    #[test]
    fn a_persistent_failure_is_counted_every_time_and_logged_once() {
        let metrics = Arc::new(Metrics::default());
        let mut reporter = Reporter::new(metrics.clone());
        let err = Err(Error::ReadOnly("scaling_max_freq".into()));
        reporter.cpu(3, &err);
        assert_eq!(
            reporter.finish_pass(),
            vec![Notice {
                device: "cpu 3".into(),
                reason: "ActuationFailed",
                error: "scaling_max_freq is read-only".into(),
            }]
        );
        reporter.cpu(3, &err);
        assert_eq!(reporter.finish_pass(), vec![], "the same failure again");
        assert_eq!(reporter.last_errors.len(), 1);
        let text = metrics.encode();
        assert!(
            text.contains(
                "climatik_freqtuner_actuation_errors_total{device=\"cpu\",error=\"read_only\"} 2"
            ),
            "{text}"
        );
        reporter.cpu_restored(3, false);
        assert!(reporter.last_errors.is_empty());
    }

    #[test]
    fn a_failure_is_news_again_after_its_device_was_left_alone() {
        let mut reporter = Reporter::new(Arc::new(Metrics::default()));
        let missing = Err(Error::Unsupported("no CPU 9 on this node".into()));
        reporter.cpu(9, &missing);
        let first = reporter.finish_pass();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].reason, "DeviceUnsupported");
        // The entry is removed: a pass without CPU 9.
        assert_eq!(reporter.finish_pass(), vec![]);
        // It comes back and fails the same way: news again.
        reporter.cpu(9, &missing);
        assert_eq!(reporter.finish_pass(), first);
    }
}
