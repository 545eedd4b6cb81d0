//! `feedback` (default): steps clocks so the policy's power settles just
//! under the cap.
//!
//! Each period it compares the total power with a target (97 % of the cap
//! by default) and moves every device's clock by the same ΔF = gain · ΔP /
//! Σ dP/df. The slope dP/df of each device starts from a conservative prior
//! (power above an idle floor, linear in clock down to the lowest clock) and
//! is refined by secants between successive observations. Secants from the
//! non-smooth parts of the curve (where lowering the clock raised power)
//! are ignored and every estimate is kept within 1/4–4x of the prior, so a
//! kink in the curve cannot blow the step up. Clocks are quantized
//! downwards, so a step never lands above the computed target.
//!
//! Hysteresis: above `upper` percent of the cap it lowers clocks at once
//! (full gain); it raises them again only when power has fallen below
//! `relax-below` percent, and then with a smaller gain, so power never
//! hunts around the cap.

use std::collections::HashMap;

use super::{Algorithm, AlgorithmError, Device, Observation, Params, Target};

/// Share of a device's power assumed not to depend on the clock when
/// nothing better is known (idle floor of the reference sweep ≈ 15–30 %).
const FLOOR_SHARE: f64 = 0.3;

#[derive(Debug, Clone)]
pub struct Feedback {
    /// Aim, fraction of the cap.
    target: f64,
    /// Lower clocks when power is above this fraction of the cap.
    upper: f64,
    /// Raise clocks when power is below this fraction of the cap.
    relax_below: f64,
    /// Gain when lowering clocks.
    gain: f64,
    /// Gain when raising clocks.
    relax_gain: f64,
    devices: HashMap<(String, String), DeviceState>,
}

#[derive(Debug, Clone)]
struct DeviceState {
    /// Last clock and power observed.
    last: (f64, f64),
    /// Estimated dP/df, W/MHz.
    slope: f64,
    /// The clock ceiling last commanded.
    commanded: Option<i32>,
}

impl Feedback {
    pub(crate) fn new(params: &Params<'_>) -> Result<Self, AlgorithmError> {
        let target = params.number("target", 97.0, 50.0..=100.0)? / 100.0;
        let relax_below = params.number("relax-below", 92.0, 10.0..=100.0)? / 100.0;
        if relax_below >= target {
            return Err(params.fail("relax-below", "must be below target"));
        }
        Ok(Self {
            target,
            upper: (target + 0.02).min(0.995).max(target),
            relax_below,
            gain: params.number("gain", 1.0, 0.1..=2.0)?,
            relax_gain: params.number("relax-gain", 0.6, 0.05..=1.0)?,
            devices: HashMap::new(),
        })
    }

    /// The ceiling the device runs under now: what was last commanded, else
    /// the target its entry already holds (set before this algorithm
    /// existed: a restarted recommender or a new leader must not start from
    /// the maximum, which would lift the cap for a period), else the
    /// maximum for a device not yet tuned. The observed SM clock is not
    /// used as the ceiling: an idle GPU reports its idle clock, and taking
    /// that for the operating point would lock it there.
    fn ceiling(&self, device: &Device) -> f64 {
        self.devices
            .get(&device.key())
            .and_then(|s| s.commanded)
            .or(device.entry_mhz)
            .map(f64::from)
            .unwrap_or_else(|| f64::from(device.clocks.max()))
    }

    fn prior_slope(device: &Device, clock: f64) -> f64 {
        let span = (clock - f64::from(device.clocks.min())).max(device.clocks.step());
        (device.power_watts * (1.0 - FLOOR_SHARE)).max(1.0) / span
    }

    /// Updates the slope estimate of a device with its new reading.
    fn learn(&mut self, device: &Device, clock: f64) -> f64 {
        let prior = Self::prior_slope(device, clock);
        let state = self
            .devices
            .entry(device.key())
            .or_insert_with(|| DeviceState {
                last: (clock, device.power_watts),
                slope: prior,
                commanded: None,
            });
        let (last_clock, last_power) = state.last;
        if (clock - last_clock).abs() >= device.clocks.step() * 0.5 {
            let secant = (device.power_watts - last_power) / (clock - last_clock);
            if secant.is_finite() && secant > 0.0 {
                state.slope = 0.5 * state.slope + 0.5 * secant;
            }
        }
        state.slope = state.slope.clamp(prior * 0.25, prior * 4.0);
        state.last = (clock, device.power_watts);
        state.slope
    }
}

impl Algorithm for Feedback {
    fn name(&self) -> &'static str {
        super::FEEDBACK
    }

    fn plan(&mut self, observation: &Observation) -> Vec<Target> {
        let cap = observation.cap_watts;
        let power = observation.total_power();
        let clocks: Vec<f64> = observation
            .devices
            .iter()
            .map(|d| self.ceiling(d))
            .collect();
        let slopes: Vec<f64> = observation
            .devices
            .iter()
            .zip(&clocks)
            .map(|(d, c)| self.learn(d, *c))
            .collect();
        // Forget devices the policy no longer has.
        let present: Vec<_> = observation.devices.iter().map(Device::key).collect();
        self.devices.retain(|k, _| present.contains(k));

        let below_max = observation
            .devices
            .iter()
            .zip(&clocks)
            .any(|(d, c)| *c < f64::from(d.clocks.max()));
        let watts = if power > cap * self.upper {
            self.gain * (cap * self.target - power)
        } else if power < cap * self.relax_below && below_max {
            self.relax_gain * (cap * self.target - power)
        } else {
            0.0
        };
        let new_clocks = distribute(observation, &clocks, &slopes, watts);

        let targets: Vec<Target> = observation
            .devices
            .iter()
            .zip(new_clocks)
            .map(|(d, clock)| Target {
                node: d.node.clone(),
                id: d.id.clone(),
                kind: d.kind,
                frequency_mhz: d.clocks.floor(clock),
                power_budget_watts: None,
            })
            .collect();
        for (device, target) in observation.devices.iter().zip(&targets) {
            if let Some(state) = self.devices.get_mut(&device.key()) {
                state.commanded = Some(target.frequency_mhz);
            }
        }
        targets
    }
}

/// Moves all devices' clocks by one common ΔF that changes total power by
/// `watts` under the slope estimates; devices that hit a clock limit drop
/// out and the rest take over their share.
fn distribute(observation: &Observation, clocks: &[f64], slopes: &[f64], watts: f64) -> Vec<f64> {
    let mut new_clocks = clocks.to_vec();
    if watts == 0.0 {
        return new_clocks;
    }
    let mut free: Vec<usize> = (0..clocks.len()).collect();
    let mut remaining = watts;
    for _ in 0..clocks.len().max(1) {
        let slope_sum: f64 = free.iter().map(|i| slopes[*i]).sum();
        if free.is_empty() || slope_sum <= 0.0 || remaining.abs() < 1e-9 {
            break;
        }
        let delta = remaining / slope_sum;
        let mut pinned = Vec::new();
        for &i in &free {
            let d = &observation.devices[i];
            let (lo, hi) = (f64::from(d.clocks.min()), f64::from(d.clocks.max()));
            let wanted = new_clocks[i] + delta;
            let got = wanted.clamp(lo, hi);
            remaining -= slopes[i] * (got - new_clocks[i]);
            new_clocks[i] = got;
            if got != wanted {
                pinned.push(i);
            }
        }
        if pinned.is_empty() {
            break;
        }
        free.retain(|i| !pinned.contains(i));
    }
    new_clocks
}

#[cfg(test)]
mod tests {
    use super::super::{FEEDBACK, sim::Rig};

    fn rig(loads: &[f64], cap: f64) -> Rig {
        Rig::for_algorithm(FEEDBACK, &[], loads, cap)
    }

    /// Settles under the cap within 3 periods, never overshoots it by 5 %,
    /// and ends within 90–100 % of it.
    fn assert_settles(trace: &[f64], cap: f64) {
        let first_under = trace.iter().position(|p| *p <= cap);
        assert!(
            matches!(first_under, Some(k) if k < 3),
            "not under {cap} W within 3 periods: {trace:?}"
        );
        let peak = trace[first_under.unwrap_or(0)..]
            .iter()
            .copied()
            .fold(0.0, f64::max);
        assert!(
            peak < cap * 1.05,
            "overshoot {peak} W over {cap} W: {trace:?}"
        );
        let tail = &trace[trace.len() - 4..];
        for p in tail {
            assert!(
                *p >= cap * 0.9 && *p <= cap,
                "steady state {p} W outside 90–100 % of {cap} W: {trace:?}"
            );
        }
        // Steady means steady: no hunting at the end.
        assert!(
            tail.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-9),
            "{trace:?}"
        );
    }

    /// A recommender restarted (or a new leader) builds the algorithm
    /// afresh; it must continue from the entries on the nodes, not lift
    /// every clock to the maximum for a period.
    #[test]
    fn a_new_instance_continues_from_the_entries_and_keeps_the_cap() {
        for (loads, cap) in [(vec![1.0], 150.0), (vec![1.0, 1.0, 0.8, 0.6], 600.0)] {
            let mut rig = rig(&loads, cap);
            let settled = rig.run(12);
            assert_settles(&settled, cap);
            rig.restart_algorithm(FEEDBACK);
            let after = rig.run(6);
            assert!(
                after.iter().all(|p| *p <= cap),
                "over {cap} W after a restart: {after:?} (settled {settled:?})"
            );
        }
    }

    #[test]
    fn settles_under_the_cap_from_uncapped() {
        for (loads, cap) in [
            (vec![1.0], 150.0),
            (vec![1.0], 200.0),
            (vec![1.0], 80.0),
            (vec![1.0, 1.0, 0.8, 0.6], 600.0),
            (vec![1.0, 0.3], 300.0),
            (vec![0.9; 8], 1200.0),
        ] {
            let mut rig = rig(&loads, cap);
            assert!(rig.power() > cap, "starts above the cap");
            let trace = rig.run(12);
            assert_settles(&trace, cap);
        }
    }

    #[test]
    fn resettles_after_a_cap_change() {
        let mut rig = rig(&[1.0, 1.0], 400.0);
        assert_settles(&rig.run(10), 400.0);
        rig.cap = 280.0;
        assert_settles(&rig.run(10), 280.0);
        rig.cap = 420.0;
        let trace = rig.run(12);
        let tail = &trace[trace.len() - 3..];
        assert!(tail.iter().all(|p| *p >= 378.0 && *p <= 420.0), "{trace:?}");
        assert!(trace.iter().all(|p| *p < 420.0 * 1.05), "{trace:?}");
    }

    #[test]
    fn relaxes_clocks_when_load_drops() {
        let mut rig = rig(&[1.0, 1.0], 300.0);
        assert_settles(&rig.run(10), 300.0);
        let capped: Vec<i32> = rig.clocks.clone();
        for gpu in &mut rig.gpus {
            gpu.load = 0.4;
        }
        let trace = rig.run(12);
        assert!(trace.iter().all(|p| *p <= 300.0 * 1.05), "{trace:?}");
        for (before, after) in capped.iter().zip(&rig.clocks) {
            assert!(after > before, "clock {before} -> {after} did not relax");
        }
        // At 40 % load both GPUs fit under the cap at full clock.
        assert!(
            rig.clocks
                .iter()
                .all(|c| *c == climatik_sim_gpu::plant::MAX_CLOCK_MHZ),
            "{:?}",
            rig.clocks
        );
    }

    #[test]
    fn below_the_cap_it_leaves_clocks_alone() {
        let mut rig = rig(&[0.5], 250.0);
        let trace = rig.run(5);
        assert!(
            rig.clocks
                .iter()
                .all(|c| *c == climatik_sim_gpu::plant::MAX_CLOCK_MHZ)
        );
        assert!(trace.iter().all(|p| *p < 250.0));
    }
}
