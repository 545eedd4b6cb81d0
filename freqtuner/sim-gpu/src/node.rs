//! The simulated node's GPU model (the freqtuner's `sim` backend): the
//! vLLM sweep ([`crate::sweep::SWEEP`]) normalized by its maximum clock and
//! its values at that clock, then scaled to the simulated GPU's maximum
//! clock, TDP and peak throughput, so any clock range and TDP can follow
//! the measured shape.

use std::fmt;

use crate::sweep::{SWEEP, interpolate};

/// Why a model cannot be built or used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError(pub String);

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ModelError {}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A curve over the clock normalized to the maximum (0..=1], with values
/// normalized to their value at the maximum clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// `(clock / max clock, value / value at max clock)`, ascending in x.
    points: Vec<(f64, f64)>,
}

impl Curve {
    /// From `(clock, value)` pairs in any order.
    fn normalized(mut raw: Vec<(f64, f64)>) -> Result<Self> {
        raw.sort_by(|a, b| a.0.total_cmp(&b.0));
        let &(max_clock, at_max) = raw
            .last()
            .ok_or_else(|| ModelError("reference curve is empty".into()))?;
        if max_clock <= 0.0 || at_max <= 0.0 {
            return Err(ModelError("reference curve has no positive maximum".into()));
        }
        Ok(Self {
            points: raw
                .into_iter()
                .map(|(clock, value)| (clock / max_clock, value / at_max))
                .collect(),
        })
    }

    /// Linear interpolation; flat beyond the measured range (the data is
    /// flat at its low end, and nothing runs above the maximum clock).
    pub fn at(&self, x: f64) -> f64 {
        interpolate(&self.points, x, |p| *p)
    }

    /// The measured points, normalized.
    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }
}

/// The reference curves.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Average power relative to the maximum clock's.
    pub power: Curve,
    /// Total token throughput relative to the maximum clock's.
    pub throughput: Curve,
}

impl Reference {
    /// The vLLM sweep's average power and total token throughput.
    pub fn embedded() -> Result<Self> {
        Ok(Self {
            power: Curve::normalized(SWEEP.iter().map(|r| (r.0, r.1)).collect())?,
            throughput: Curve::normalized(SWEEP.iter().map(|r| (r.0, r.4)).collect())?,
        })
    }
}

/// A simulated GPU model.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuModel {
    pub name: String,
    pub min_mhz: u32,
    pub max_mhz: u32,
    pub step_mhz: u32,
    pub tdp_watts: f64,
    pub idle_watts: f64,
    /// Tokens/s at full load and maximum clock.
    pub max_tokens_per_second: f64,
    pub reference: Reference,
}

impl GpuModel {
    /// H100-like defaults: 345–1980 MHz in 15 MHz steps, 700 W TDP, 70 W
    /// idle; the reference throughput scaled by the clock ratio.
    pub fn h100() -> Result<Self> {
        Ok(Self {
            name: "NVIDIA H100 80GB HBM3".into(),
            min_mhz: 345,
            max_mhz: 1980,
            step_mhz: 15,
            tdp_watts: 700.0,
            idle_watts: 70.0,
            max_tokens_per_second: 40_000.0,
            reference: Reference::embedded()?,
        })
    }

    /// Checks the numbers make a GPU.
    pub fn validate(&self) -> Result<()> {
        if self.min_mhz == 0 || self.min_mhz > self.max_mhz || self.step_mhz == 0 {
            return Err(ModelError(format!(
                "clock range {}..={} MHz step {} is not valid",
                self.min_mhz, self.max_mhz, self.step_mhz
            )));
        }
        let ok = |w: f64| w.is_finite() && w > 0.0;
        if !ok(self.tdp_watts) || !ok(self.idle_watts) || self.idle_watts >= self.tdp_watts {
            return Err(ModelError(format!(
                "idle {} W must be positive and below TDP {} W",
                self.idle_watts, self.tdp_watts
            )));
        }
        if !(self.max_tokens_per_second.is_finite() && self.max_tokens_per_second >= 0.0) {
            return Err(ModelError(
                "max tokens/s must be a non-negative number".into(),
            ));
        }
        Ok(())
    }

    /// Supported SM clocks, ascending: min, min+step, …, and max itself.
    pub fn supported_clocks(&self) -> Vec<u32> {
        let mut clocks: Vec<u32> = (self.min_mhz..=self.max_mhz)
            .step_by(self.step_mhz as usize)
            .collect();
        if clocks.last() != Some(&self.max_mhz) {
            clocks.push(self.max_mhz);
        }
        clocks
    }

    fn x(&self, clock_mhz: u32) -> f64 {
        f64::from(clock_mhz) / f64::from(self.max_mhz)
    }

    /// Watts at a clock and a utilisation in 0..=1: the idle floor plus the
    /// load's share of the reference power curve at full load (which is
    /// TDP at the maximum clock).
    pub fn power_watts(&self, clock_mhz: u32, load: f64) -> f64 {
        let load = load.clamp(0.0, 1.0);
        let full =
            (self.tdp_watts * self.reference.power.at(self.x(clock_mhz))).max(self.idle_watts);
        self.idle_watts + load * (full - self.idle_watts)
    }

    /// Tokens/s at a clock and a utilisation, following the reference
    /// throughput curve (with its steps).
    pub fn tokens_per_second(&self, clock_mhz: u32, load: f64) -> f64 {
        load.clamp(0.0, 1.0)
            * self.max_tokens_per_second
            * self.reference.throughput.at(self.x(clock_mhz))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> GpuModel {
        GpuModel::h100().expect("embedded data parses")
    }

    #[test]
    fn embedded_csvs_have_sixteen_clocks() {
        let reference = Reference::embedded().expect("parse");
        assert_eq!(reference.power.points().len(), 16);
        assert_eq!(reference.throughput.points().len(), 16);
        assert_eq!(reference.power.at(1.0), 1.0);
    }

    /// The calibration claim: at full load, locking a lower clock lowers
    /// power by the ratio the reference measured at the same relative clock.
    #[test]
    fn power_ratios_follow_the_reference_csv() {
        let m = model();
        let at_max = m.power_watts(m.max_mhz, 1.0);
        assert!((at_max - 700.0).abs() < 1e-9);
        for (clock, watts) in SWEEP.map(|r| (r.0, r.1)) {
            let ref_ratio = watts / 67.73;
            let sim_clock = (clock / 1380.0 * f64::from(m.max_mhz)).round() as u32;
            let sim_ratio = m.power_watts(sim_clock, 1.0) / at_max;
            assert!(
                (sim_ratio - ref_ratio).abs() < 0.02,
                "{clock} MHz: reference {ref_ratio:.3}, sim {sim_ratio:.3}"
            );
        }
    }

    #[test]
    fn throughput_keeps_the_reference_steps() {
        let m = model();
        let t = |ref_mhz: f64| m.tokens_per_second((ref_mhz / 1380.0 * 1980.0) as u32, 1.0);
        // 480 -> 405 MHz roughly halves throughput in the reference.
        let ratio = t(405.0) / t(480.0);
        assert!((0.6..0.75).contains(&ratio), "{ratio}");
        // 1380 -> 705 MHz loses about a quarter.
        let ratio = t(705.0) / t(1380.0);
        assert!((0.72..0.8).contains(&ratio), "{ratio}");
    }

    #[test]
    fn idle_is_a_floor_and_load_is_bounded() {
        let m = model();
        assert_eq!(m.power_watts(1980, 0.0), 70.0);
        assert_eq!(m.power_watts(345, 0.0), 70.0);
        assert_eq!(m.power_watts(1980, 7.0), m.power_watts(1980, 1.0));
        assert_eq!(m.tokens_per_second(1980, 0.0), 0.0);
    }

    #[test]
    fn clock_table_covers_the_range() {
        let clocks = model().supported_clocks();
        assert_eq!(clocks.first(), Some(&345));
        assert_eq!(clocks.last(), Some(&1980));
        assert!(clocks.windows(2).all(|w| w[1] - w[0] == 15));
        let mut odd = model();
        odd.step_mhz = 100;
        assert_eq!(odd.supported_clocks().last(), Some(&1980));
        assert!(odd.validate().is_ok());
        odd.idle_watts = 900.0;
        assert!(odd.validate().is_err());
    }
}
