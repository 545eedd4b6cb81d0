//! Carrying out a plan against the GPU and CPU backends: the only part of
//! the actuator that touches hardware. Each write's outcome is recorded,
//! not judged; what it means for the status is the report's business.

use crate::{
    cpu::{CpuApplied, CpuBackend},
    error::{Error, Result},
    gpu::GpuBackend,
};

use super::plan::{CpuPlan, GpuPlan, GpuSet};

/// What one GPU pass did and read.
#[derive(Debug, Default)]
pub struct GpuOutcome {
    /// What is in force afterwards, as far as the agent knows.
    pub set: GpuSet,
    /// Every failed read and write, in the order they happened.
    pub errors: Vec<Error>,
    /// The limit the GPU took when one was set (it clamps to its range).
    pub limit_taken: Option<f64>,
    /// The SM clock after the writes, in MHz.
    pub current_mhz: Option<u32>,
    /// The power reading the pass used, in watts.
    pub power_watts: Option<f64>,
}

/// The power reading a budget step plans from, when `wanted`; a failed
/// read is kept in `errors` and the step plans without one.
pub fn sample_power(
    backend: &mut dyn GpuBackend,
    uuid: &str,
    wanted: bool,
    errors: &mut Vec<Error>,
) -> Option<f64> {
    if !wanted {
        return None;
    }
    match backend.power_watts(uuid) {
        Ok(watts) => Some(watts),
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

/// How `uuid` differs from what this agent set on it (`previous`), when
/// someone else changed it: `nvidia-smi -rgc` or `-pl`, a GPU reset. One
/// clock read per locked GPU and one limit read per limited GPU: a locked
/// GPU never runs above its lock, while an unlocked one boosts above it
/// under load (an idle unlocked GPU runs low and costs nothing until then).
pub fn drift(backend: &mut dyn GpuBackend, uuid: &str, previous: GpuSet) -> Option<String> {
    let mut found = Vec::new();
    if let Some(locked) = previous.locked
        && let Ok(current) = backend.current_clock(uuid)
        && current > locked
    {
        found.push(format!(
            "SM clock {current} MHz above the {locked} MHz locked"
        ));
    }
    if let Some(limit) = previous.power_limit {
        // What the GPU took: the limit clamped to its range.
        let taken = match backend.device(uuid).and_then(|d| d.power_limits) {
            Some(range) => limit.clamp(range.min_watts, range.max_watts),
            None => limit,
        };
        if let Ok(watts) = backend.power_limit_watts(uuid)
            && (watts - taken).abs() > POWER_LIMIT_TOLERANCE_WATTS
        {
            found.push(format!("power limit {watts} W instead of {taken} W"));
        }
    }
    (!found.is_empty()).then(|| found.join(", "))
}

/// How `cpu` differs from the ceiling this agent applied, when someone
/// else raised it (a tuning daemon, a hand-written `scaling_max_freq`): one
/// sysfs read per capped CPU. Only a ceiling above the cap counts, as a
/// shared policy may hold a lower one for another of its CPUs.
pub fn cpu_drift(backend: &mut dyn CpuBackend, cpu: u32, applied: &CpuApplied) -> Option<String> {
    let now = backend.current_mhz(cpu).ok()?;
    (now > applied.target_mhz)
        .then(|| format!("ceiling {now} MHz above the {} MHz set", applied.target_mhz))
}

/// NVML keeps limits in milliwatts; anything closer is the limit set.
const POWER_LIMIT_TOLERANCE_WATTS: f64 = 0.5;

/// Makes the writes of `plan` on `uuid`, starting from `previous`, then
/// reads back the clock (and the power, unless `sample` already has it).
/// `errors` holds what went wrong before (the power sample).
pub fn gpu(
    backend: &mut dyn GpuBackend,
    uuid: &str,
    plan: &GpuPlan,
    previous: GpuSet,
    sample: Option<f64>,
    errors: Vec<Error>,
) -> GpuOutcome {
    let mut out = GpuOutcome {
        set: previous,
        errors,
        ..GpuOutcome::default()
    };
    let mut reset = false;
    if plan.reset_first {
        match backend.reset(uuid) {
            Ok(()) => {
                out.set = GpuSet::default();
                reset = true;
            }
            Err(e) => out.errors.push(e),
        }
    }
    if plan.lock || reset {
        match backend.set_locked_clock(uuid, plan.clock_mhz) {
            Ok(()) => out.set.locked = Some(plan.clock_mhz),
            Err(e) => {
                out.set.locked = None;
                out.errors.push(e);
            }
        }
    }
    if let Some(limit) = plan.power_limit {
        match backend.set_power_limit(uuid, limit) {
            Ok(taken) => {
                out.set.power_limit = Some(limit);
                out.limit_taken = Some(taken);
            }
            Err(e) => out.errors.push(e),
        }
    }
    out.current_mhz = backend.current_clock(uuid).ok();
    out.power_watts = sample.or_else(|| backend.power_watts(uuid).ok());
    out
}

/// The ceiling in force for a CPU after carrying out `plan`.
pub fn cpu(backend: &mut dyn CpuBackend, cpu: u32, plan: CpuPlan) -> Result<CpuApplied> {
    match plan {
        CpuPlan::Keep(applied) => Ok(applied),
        CpuPlan::Set(mhz) => backend.set_max_frequency(cpu, mhz),
    }
}
