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
    if !limits.available_khz.is_empty() {
        // Highest listed frequency at or below the ceiling, so the cap holds;
        // the lowest one if the ceiling is below all of them.
        khz = limits
            .available_khz
            .iter()
            .copied()
            .filter(|f| *f <= khz)
            .max()
            .or_else(|| limits.available_khz.iter().copied().min())
            .unwrap_or(khz);
    }
    // Written after snapping, so the note names the value actually written
    // (a clamp to a limit that is not itself available snaps further).
    let written = khz / 1000;
    let note = if wanted < limits.min_khz {
        Some(format!(
            "clamped {target_mhz} -> {written} MHz, below the CPU's minimum"
        ))
    } else if wanted > limits.max_khz {
        Some(format!(
            "clamped {target_mhz} -> {written} MHz, above the CPU's maximum"
        ))
    } else if khz != wanted {
        Some(format!(
            "snapped {target_mhz} -> {written} MHz, the nearest available frequency at or below"
        ))
    } else {
        None
    };
    (khz, note)
}

/// kHz to whole MHz, for status and metrics.
pub fn khz_to_mhz(khz: u64) -> u32 {
    u32::try_from(khz / 1000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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

    /// Limits as sysfs reports them: min <= max, and for a discrete driver
    /// distinct ascending frequencies within [min, max] (whole MHz or not).
    fn any_limits() -> impl Strategy<Value = CpuLimits> {
        (400_000u64..2_000_000, 0u64..3_000_000).prop_flat_map(|(min_khz, span)| {
            let max_khz = min_khz + span;
            let available = prop::collection::btree_set(min_khz..=max_khz, 1..10)
                .prop_map(|s| s.into_iter().collect::<Vec<u64>>());
            prop_oneof![Just(Vec::new()), available].prop_map(move |available_khz| CpuLimits {
                min_khz,
                max_khz,
                available_khz,
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_ceiling_is_settable_and_never_above_the_target(
            limits in any_limits(),
            target_mhz in 1u32..6_000,
        ) {
            let (khz, note) = plan_ceiling(target_mhz, &limits);
            let wanted = u64::from(target_mhz) * 1000;
            prop_assert!((limits.min_khz..=limits.max_khz).contains(&khz), "{khz}");
            if !limits.available_khz.is_empty() {
                prop_assert!(limits.available_khz.contains(&khz), "{khz}");
            }
            // The lowest ceiling the CPU takes: above the target only when
            // the target is below it.
            let lowest = limits
                .available_khz
                .first()
                .copied()
                .unwrap_or(limits.min_khz)
                .max(limits.min_khz);
            if wanted >= lowest {
                prop_assert!(khz <= wanted, "{khz} above {wanted}");
                // The highest settable value at or below the target.
                let settable_between = if limits.available_khz.is_empty() {
                    khz < wanted.min(limits.max_khz)
                } else {
                    limits.available_khz.iter().any(|f| khz < *f && *f <= wanted)
                };
                prop_assert!(!settable_between, "{khz} is not the nearest to {wanted}");
            } else {
                prop_assert_eq!(khz, lowest);
            }
            // A target the CPU takes is written as it is, silently; any other
            // is explained, naming the value written.
            let settable = (limits.min_khz..=limits.max_khz).contains(&wanted)
                && (limits.available_khz.is_empty() || limits.available_khz.contains(&wanted));
            if settable {
                prop_assert_eq!((khz, note), (wanted, None));
            } else {
                let note = note.expect("a changed target is explained");
                let written = format!("{target_mhz} -> {} MHz", khz_to_mhz(khz));
                prop_assert!(note.contains(&written), "{note:?} does not say {written:?}");
            }
        }
    }
}
