//! CPU frequency ceilings: the backend trait and the clamping rule shared by
//! every implementation.

pub mod cpufreq;
pub mod sim;

use crate::error::Result;

/// What a backend put in force for one CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuApplied {
    /// The ceiling written, after clamping, in MHz.
    pub target_mhz: u32,
    /// The ceiling the kernel reports afterwards, in MHz.
    pub current_mhz: u32,
    /// Why the target differs from the request, if it does.
    pub note: Option<String>,
}

/// A way to set per-CPU frequency ceilings.
pub trait CpuBackend: Send {
    /// `cpufreq` or `sim`.
    fn name(&self) -> &'static str;

    /// Sets CPU `cpu`'s ceiling to `target_mhz`, bounded by the CPU's limits;
    /// remembers the value it replaces the first time.
    fn set_max_frequency(&mut self, cpu: u32, target_mhz: u32) -> Result<CpuApplied>;

    /// Puts back the value found before the first change (no-op for a CPU
    /// this backend never changed).
    fn restore(&mut self, cpu: u32) -> Result<()>;

    /// The ceiling in force now, in MHz: read back to notice that someone
    /// else changed it.
    fn current_mhz(&mut self, cpu: u32) -> Result<u32>;

    /// CPUs changed and not yet restored.
    fn touched(&self) -> Vec<u32>;

    /// Restores what a previous agent on this node changed and did not put
    /// back (it was killed); returns the CPUs restored.
    fn restore_leftovers(&mut self) -> Result<Vec<u32>>;
}

/// A CPU's frequency limits, in kHz as sysfs has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuLimits {
    pub min_khz: u64,
    pub max_khz: u64,
    /// Discrete frequencies (acpi-cpufreq), ascending; empty when the
    /// driver accepts any value in range (intel_pstate, amd-pstate).
    pub available_khz: Vec<u64>,
}

/// The ceiling to write for a target in MHz, and a note when it had to be
/// clamped or snapped to what the CPU supports.
pub fn plan_ceiling(target_mhz: u32, limits: &CpuLimits) -> (u64, Option<String>) {
    let wanted = u64::from(target_mhz) * 1000;
    let mut khz = wanted.clamp(limits.min_khz, limits.max_khz);
    let mut note = if wanted < limits.min_khz {
        Some(format!(
            "clamped {target_mhz} -> {} MHz, below the CPU's minimum",
            khz / 1000
        ))
    } else if wanted > limits.max_khz {
        Some(format!(
            "clamped {target_mhz} -> {} MHz, above the CPU's maximum",
            khz / 1000
        ))
    } else {
        None
    };
    if !limits.available_khz.is_empty() {
        // Highest listed frequency at or below the ceiling, so the cap holds;
        // the lowest one if the ceiling is below all of them.
        let snapped = limits
            .available_khz
            .iter()
            .copied()
            .filter(|f| *f <= khz)
            .max()
            .or_else(|| limits.available_khz.iter().copied().min())
            .unwrap_or(khz);
        if snapped != khz && note.is_none() {
            note = Some(format!(
                "snapped {target_mhz} -> {} MHz, the nearest available frequency at or below",
                snapped / 1000
            ));
        }
        khz = snapped;
    }
    (khz, note)
}

/// kHz to whole MHz, for status and metrics.
pub fn khz_to_mhz(khz: u64) -> u32 {
    u32::try_from(khz / 1000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(available: &[u64]) -> CpuLimits {
        CpuLimits {
            min_khz: 800_000,
            max_khz: 3_500_000,
            available_khz: available.to_vec(),
        }
    }

    #[test]
    fn in_range_targets_are_taken_as_is() {
        assert_eq!(plan_ceiling(2000, &limits(&[])), (2_000_000, None));
    }

    #[test]
    fn out_of_range_targets_are_clamped_with_a_note() {
        let (khz, note) = plan_ceiling(100, &limits(&[]));
        assert_eq!(khz, 800_000);
        assert_eq!(
            note.as_deref(),
            Some("clamped 100 -> 800 MHz, below the CPU's minimum")
        );
        let (khz, note) = plan_ceiling(9000, &limits(&[]));
        assert_eq!(khz, 3_500_000);
        assert!(note.is_some_and(|n| n.contains("above")));
    }

    #[test]
    fn discrete_frequencies_snap_down() {
        let available = [800_000, 1_600_000, 2_400_000, 3_500_000];
        let (khz, note) = plan_ceiling(2000, &limits(&available));
        assert_eq!(khz, 1_600_000);
        assert!(note.is_some_and(|n| n.contains("snapped 2000 -> 1600")));
        assert_eq!(plan_ceiling(2400, &limits(&available)), (2_400_000, None));
    }
}
