//! `dynamic-frequency-scaler`: the original project's algorithm. While power
//! is above the capping threshold it multiplies every clock by
//! `scaling-factor` (never below `min-frequency`); when even a full step
//! back up would stay under the threshold (assuming power proportional to
//! clock) it divides by the factor again.
//!
//! A multiplicative step cannot land close to the cap, so this algorithm
//! settles under the threshold but not necessarily near it; `feedback` is
//! the better default. To stop it hunting on the non-smooth power curve, a
//! clock that proved too high after a relax becomes a ceiling for
//! [`CEILING_PERIODS`] periods.

use std::collections::HashMap;

use super::{Algorithm, AlgorithmError, Device, Observation, Params, Target};

/// How long a clock that overshot after a relax stays off limits.
pub const CEILING_PERIODS: u32 = 20;

#[derive(Debug, Clone)]
pub struct DynamicFrequencyScaler {
    scaling_factor: f64,
    min_frequency: Option<f64>,
    devices: HashMap<(String, String), State>,
    relaxed_last: bool,
}

#[derive(Debug, Clone, Default)]
struct State {
    /// A clock that was too high, and for how many more periods it counts.
    ceiling: Option<(i32, u32)>,
}

impl DynamicFrequencyScaler {
    pub(crate) fn new(params: &Params<'_>) -> Result<Self, AlgorithmError> {
        Ok(Self {
            scaling_factor: params.number("scaling-factor", 0.9, 0.05..=0.99)?,
            min_frequency: params.optional("min-frequency", 1.0..=100_000.0)?,
            devices: HashMap::new(),
            relaxed_last: false,
        })
    }

    fn clock_now(device: &Device) -> f64 {
        device
            .clock_mhz
            .filter(|c| c.is_finite() && *c > 0.0)
            .unwrap_or_else(|| f64::from(device.clocks.max()))
    }
}

impl Algorithm for DynamicFrequencyScaler {
    fn name(&self) -> &'static str {
        super::DYNAMIC_FREQUENCY_SCALER
    }

    fn plan(&mut self, observation: &Observation) -> Vec<Target> {
        let threshold = observation.cap_watts * observation.threshold_percent / 100.0;
        let power = observation.total_power();
        let over = power > threshold;
        let may_relax = power / self.scaling_factor < threshold;
        let present: Vec<_> = observation.devices.iter().map(Device::key).collect();
        self.devices.retain(|k, _| present.contains(k));

        let mut relaxed = false;
        let targets = observation
            .devices
            .iter()
            .map(|device| {
                let now = Self::clock_now(device);
                let state = self.devices.entry(device.key()).or_default();
                if let Some((clock, periods)) = state.ceiling {
                    state.ceiling = (periods > 1).then_some((clock, periods - 1));
                }
                let floor = self.min_frequency.unwrap_or(f64::from(device.clocks.min()));
                let wanted = if over {
                    if self.relaxed_last {
                        // The last relax overshot: that clock is too high.
                        state.ceiling = Some((device.clocks.floor(now), CEILING_PERIODS));
                    }
                    (now * self.scaling_factor).max(floor)
                } else if may_relax {
                    let up = (now / self.scaling_factor).min(f64::from(device.clocks.max()));
                    let limit = state
                        .ceiling
                        .map_or(f64::INFINITY, |(c, _)| f64::from(c) - device.clocks.step());
                    up.min(limit).max(now)
                } else {
                    now
                };
                let frequency_mhz = device.clocks.floor(wanted);
                relaxed |= f64::from(frequency_mhz) > now + 0.5;
                Target {
                    node: device.node.clone(),
                    id: device.id.clone(),
                    kind: device.kind,
                    frequency_mhz,
                    power_budget_watts: None,
                }
            })
            .collect();
        self.relaxed_last = relaxed;
        targets
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DYNAMIC_FREQUENCY_SCALER, sim::Rig};

    fn rig(params: &[(&str, &str)], loads: &[f64], cap: f64) -> Rig {
        Rig::for_algorithm(DYNAMIC_FREQUENCY_SCALER, params, loads, cap)
    }

    #[test]
    fn settles_under_the_threshold_without_hunting() {
        for (loads, cap, threshold) in [(vec![1.0], 150.0, 100.0), (vec![1.0, 0.7], 350.0, 95.0)] {
            let mut rig = rig(&[("scaling-factor", "0.9")], &loads, cap);
            rig.threshold = threshold;
            let limit = cap * threshold / 100.0;
            let trace = rig.run(30);
            let first = trace.iter().position(|p| *p <= limit);
            assert!(matches!(first, Some(k) if k < 3), "{trace:?}");
            // After the first relax probe overshoots, it stays put.
            let tail = &trace[10..];
            assert!(tail.iter().all(|p| *p <= limit), "{trace:?}");
            assert!(
                tail.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-9),
                "{trace:?}"
            );
            // It lands under the threshold, but within two factor steps of it.
            assert!(tail[0] > limit * 0.9 * 0.9, "{trace:?}");
        }
    }

    #[test]
    fn never_goes_below_min_frequency() {
        let mut rig = rig(
            &[("scaling-factor", "0.5"), ("min-frequency", "600")],
            &[1.0],
            60.0,
        );
        rig.run(10);
        assert_eq!(rig.clocks, vec![600]);
    }

    #[test]
    fn relaxes_when_load_drops() {
        let mut rig = rig(&[], &[1.0], 150.0);
        rig.threshold = 100.0;
        rig.run(10);
        let capped = rig.clocks[0];
        rig.gpus[0].load = 0.3;
        let trace = rig.run(30);
        assert!(rig.clocks[0] > capped, "{capped} -> {}", rig.clocks[0]);
        assert!(trace.iter().all(|p| *p <= 150.0), "{trace:?}");
        assert_eq!(rig.clocks[0], climatik_sim_gpu::plant::MAX_CLOCK_MHZ);
    }
}
