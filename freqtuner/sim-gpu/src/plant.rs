//! A plant model of GPU power and throughput versus locked SM clock, on the
//! sweep's own clock axis: the recommender's algorithm test rig and the
//! benchmarks drive it.
//!
//! Calibrated on the public vLLM SM-clock sweep (opt-125m): 16 locked clocks
//! from 1380 MHz down to 300 MHz on a V100-class GPU. The measured averages
//! mix a busy and an idle GPU, so the model takes the *shape* of the curve
//! (the ratios across clocks) and scales it between an idle floor and a
//! peak power. The shape is kept as measured, including its non-monotonic
//! stretches (930 MHz draws more than 1005 MHz, 705 more than 855): a
//! controller must cope with them rather than rely on a smooth curve.
//!
//! A second model, [`MeasuredCurve::H200Compute`], follows the sweep measured on
//! an NVIDIA H200 under bf16 matrix products (`docs/hardware/h200.md`):
//! compute-bound work whose throughput follows the clock, on a part whose
//! firmware already holds it at its 700 W limit above about 1470 MHz.

use crate::sweep::{H200_SWEEP, SWEEP, interpolate};

/// Which measured curve a simulated GPU follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeasuredCurve {
    /// V100-class 250 W part serving opt-125m: memory-bound, throughput
    /// barely depends on the clock (the public vLLM sweep).
    #[default]
    V100Opt125m,
    /// NVIDIA H200 under bf16 matrix products: compute-bound, throughput
    /// follows the clock (measured on this project's H200 check).
    H200Compute,
}

impl MeasuredCurve {
    pub fn label(self) -> &'static str {
        match self {
            MeasuredCurve::V100Opt125m => "V100-class, opt-125m (memory-bound)",
            MeasuredCurve::H200Compute => "H200, bf16 GEMM (compute-bound)",
        }
    }

    /// A GPU of this model at full load.
    pub fn plant(self, load: f64) -> GpuPlant {
        match self {
            MeasuredCurve::V100Opt125m => GpuPlant::with_load(load),
            MeasuredCurve::H200Compute => GpuPlant {
                idle_watts: 78.0,
                peak_watts: 691.0,
                load,
                model: self,
            },
        }
    }

    /// Power of one fully loaded GPU at the maximum clock, in watts.
    pub fn peak_watts(self) -> f64 {
        self.plant(1.0).peak_watts
    }

    /// Lowest power limit the GPU accepts, in watts (a V100 accepts 100 W
    /// of its 250 W; the H200 reported 200 W of 700 W).
    pub fn min_power_limit_watts(self) -> f64 {
        match self {
            MeasuredCurve::V100Opt125m => 100.0,
            MeasuredCurve::H200Compute => 200.0,
        }
    }

    pub fn min_clock(self) -> i32 {
        match self {
            MeasuredCurve::V100Opt125m => MIN_CLOCK_MHZ,
            MeasuredCurve::H200Compute => 345,
        }
    }

    pub fn max_clock(self) -> i32 {
        match self {
            MeasuredCurve::V100Opt125m => MAX_CLOCK_MHZ,
            MeasuredCurve::H200Compute => 1980,
        }
    }

    /// The clocks the model's GPU can lock, ascending, 15 MHz apart (as the
    /// H200 reports; the V100 sweep sampled every 75).
    pub fn supported_clocks(self) -> Vec<i32> {
        (self.min_clock()..=self.max_clock()).step_by(15).collect()
    }
}

/// Lowest clock of the sweep, in MHz.
pub const MIN_CLOCK_MHZ: i32 = 300;
/// Highest clock of the sweep (the GPU's maximum), in MHz.
pub const MAX_CLOCK_MHZ: i32 = 1380;

/// One simulated GPU running an inference workload.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuPlant {
    /// Power that no clock setting removes, in watts (the sweep's floor).
    pub idle_watts: f64,
    /// Power at the maximum clock and full load, in watts.
    pub peak_watts: f64,
    /// Share of the GPU the workload keeps busy, 0..=1.
    pub load: f64,
    /// The measured curve the clock dependence follows.
    pub model: MeasuredCurve,
}

impl Default for GpuPlant {
    /// A V100-class 250 W part at full load, idle at the sweep's 36 W.
    fn default() -> Self {
        Self {
            idle_watts: 36.0,
            peak_watts: 250.0,
            load: 1.0,
            model: MeasuredCurve::V100Opt125m,
        }
    }
}

impl GpuPlant {
    /// A 250 W GPU with the given load.
    pub fn with_load(load: f64) -> Self {
        Self {
            load,
            ..Self::default()
        }
    }

    /// Steady power at a locked clock, in watts: the idle floor plus the
    /// loaded share of what a fully loaded GPU draws above it.
    pub fn power(&self, clock_mhz: f64) -> f64 {
        let full = match self.model {
            MeasuredCurve::V100Opt125m => {
                self.idle_watts + (self.peak_watts - self.idle_watts) * dynamic_shape(clock_mhz)
            }
            MeasuredCurve::H200Compute => {
                let top = H200_SWEEP[H200_SWEEP.len() - 1].1;
                self.peak_watts * interpolate(&H200_SWEEP, clock_mhz, |row| (row.0, row.1)) / top
            }
        };
        self.idle_watts + self.load.clamp(0.0, 1.0) * (full - self.idle_watts).max(0.0)
    }

    /// Throughput at a locked clock relative to the maximum clock (0..=1),
    /// scaled by load (a half-loaded GPU serves half the tokens).
    pub fn throughput(&self, clock_mhz: f64) -> f64 {
        let relative = match self.model {
            MeasuredCurve::V100Opt125m => {
                interpolate(&SWEEP, clock_mhz, |row| (row.0, row.3)) / SWEEP[SWEEP.len() - 1].3
            }
            MeasuredCurve::H200Compute => {
                interpolate(&H200_SWEEP, clock_mhz, |row| (row.0, row.2))
                    / H200_SWEEP[H200_SWEEP.len() - 1].2
            }
        };
        self.load.clamp(0.0, 1.0) * relative
    }

    /// The highest of `clocks` whose power stays within `budget_watts`, or
    /// the lowest clock when none does: where an ideal local power loop
    /// (the node agent's ~1 Hz budget loop) settles between controller
    /// updates.
    pub fn clock_for_budget(&self, clocks: &[i32], budget_watts: f64) -> i32 {
        clocks
            .iter()
            .copied()
            .filter(|c| self.power(f64::from(*c)) <= budget_watts)
            .max()
            .or_else(|| clocks.iter().copied().min())
            .unwrap_or(self.model.min_clock())
    }
}

/// The clocks the default (V100-class) model can lock: 300–1380 MHz in
/// 15 MHz steps (real parts offer ~7.5 MHz steps; the sweep sampled every 75).
pub fn supported_clocks() -> Vec<i32> {
    MeasuredCurve::V100Opt125m.supported_clocks()
}

/// Dynamic power at a clock as a fraction of dynamic power at the maximum
/// clock: (avg(f) - avg(min)) / (avg(max) - avg(min)), linear between the
/// measured clocks, clamped outside them.
pub fn dynamic_shape(clock_mhz: f64) -> f64 {
    let floor = SWEEP[0].1;
    let top = SWEEP[SWEEP.len() - 1].1;
    ((interpolate(&SWEEP, clock_mhz, |row| (row.0, row.1)) - floor) / (top - floor)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_spans_idle_to_peak_and_is_not_smooth() {
        let gpu = GpuPlant::default();
        assert!((gpu.power(1380.0) - 250.0).abs() < 1e-9);
        assert!((gpu.power(300.0) - 36.0).abs() < 1e-9);
        // The measured non-monotonic stretch survives the scaling.
        assert!(gpu.power(930.0) > gpu.power(1005.0));
        assert!(gpu.power(705.0) > gpu.power(855.0));
    }

    #[test]
    fn throughput_falls_in_steps() {
        let gpu = GpuPlant::default();
        assert!((gpu.throughput(1380.0) - 1.0).abs() < 1e-9);
        let at_705 = gpu.throughput(705.0);
        assert!(at_705 > 0.7 && at_705 < 0.8, "{at_705}");
        // 480 -> 405 MHz loses about a third of the throughput.
        assert!(gpu.throughput(405.0) / gpu.throughput(480.0) < 0.7);
    }

    /// The H200 table is the checked-in measurement, not a retyped guess:
    /// each row's power and work are the sweep's means at that lock.
    #[test]
    fn h200_model_follows_the_measured_sweep() {
        let gpu = MeasuredCurve::H200Compute.plant(1.0);
        for (mhz, watts, work) in H200_SWEEP {
            assert!((gpu.power(mhz) - watts).abs() < 1e-9);
            assert!((gpu.throughput(mhz) - work / 661.0).abs() < 1e-9);
        }
        // Above the firmware's power-capped clock, a higher lock changes nothing.
        assert_eq!(gpu.power(1980.0), gpu.power(1485.0));
        // Compute-bound: throughput roughly follows the clock.
        assert!(gpu.throughput(885.0) < 0.6);
        // An idle H200 draws its idle floor at any clock.
        let idle = MeasuredCurve::H200Compute.plant(0.0);
        assert!((idle.power(1980.0) - 78.0).abs() < 1e-9);
        let clocks = MeasuredCurve::H200Compute.supported_clocks();
        assert_eq!((clocks[0], clocks[clocks.len() - 1]), (345, 1980));
    }

    #[test]
    fn budget_clock_is_the_highest_that_fits() {
        let gpu = GpuPlant::default();
        let clocks = supported_clocks();
        let clock = gpu.clock_for_budget(&clocks, 150.0);
        assert!(gpu.power(f64::from(clock)) <= 150.0);
        assert!(
            clocks
                .iter()
                .filter(|c| **c > clock)
                .all(|c| gpu.power(f64::from(*c)) > 150.0)
        );
        assert_eq!(gpu.clock_for_budget(&clocks, 10.0), MIN_CLOCK_MHZ);
    }
}
