//! Simulated CPUs: in-memory ceilings with intel_pstate-like limits. Like
//! simulated GPUs they boot at their defaults, so there is nothing to
//! restore after a restart.

use std::collections::BTreeMap;

use super::{CpuApplied, CpuBackend, CpuLimits, khz_to_mhz, plan_ceiling};
use crate::error::{Error, Result};

/// `count` CPUs of 800–3500 MHz.
pub struct SimCpus {
    count: u32,
    limits: CpuLimits,
    /// Ceilings changed from the default (kHz).
    ceilings: BTreeMap<u32, u64>,
}

impl SimCpus {
    pub fn new(count: u32) -> Self {
        Self {
            count,
            limits: CpuLimits {
                min_khz: 800_000,
                max_khz: 3_500_000,
                available_khz: Vec::new(),
            },
            ceilings: BTreeMap::new(),
        }
    }

    /// The ceiling now in force, in MHz.
    pub fn ceiling_mhz(&self, cpu: u32) -> Option<u32> {
        (cpu < self.count).then(|| {
            khz_to_mhz(
                self.ceilings
                    .get(&cpu)
                    .copied()
                    .unwrap_or(self.limits.max_khz),
            )
        })
    }
}

impl CpuBackend for SimCpus {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn set_max_frequency(&mut self, cpu: u32, target_mhz: u32) -> Result<CpuApplied> {
        if target_mhz == 0 {
            return Err(Error::InvalidTarget("0 MHz".into()));
        }
        if cpu >= self.count {
            return Err(Error::Unsupported(format!("no CPU {cpu} on this node")));
        }
        let (khz, note) = plan_ceiling(target_mhz, &self.limits);
        self.ceilings.insert(cpu, khz);
        Ok(CpuApplied {
            target_mhz: khz_to_mhz(khz),
            current_mhz: khz_to_mhz(khz),
            note,
        })
    }

    fn restore(&mut self, cpu: u32) -> Result<()> {
        self.ceilings.remove(&cpu);
        Ok(())
    }

    fn current_mhz(&mut self, cpu: u32) -> Result<u32> {
        self.ceiling_mhz(cpu)
            .ok_or_else(|| Error::Unsupported(format!("no CPU {cpu} on this node")))
    }

    fn touched(&self) -> Vec<u32> {
        self.ceilings.keys().copied().collect()
    }

    fn restore_leftovers(&mut self) -> Result<Vec<u32>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_and_restores() {
        let mut cpus = SimCpus::new(2);
        assert_eq!(cpus.set_max_frequency(1, 100).expect("set").target_mhz, 800);
        assert_eq!(cpus.ceiling_mhz(1), Some(800));
        assert!(
            cpus.set_max_frequency(2, 1000)
                .is_err_and(|e| e.is_unsupported())
        );
        cpus.restore(1).expect("restore");
        assert_eq!(cpus.ceiling_mhz(1), Some(3500));
        assert!(cpus.touched().is_empty());
    }
}
