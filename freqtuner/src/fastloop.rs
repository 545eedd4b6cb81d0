//! The local fast loop: holds a GPU under its `powerBudgetWatts` from its own
//! power readings (about once a second), between the controller's much
//! slower, Prometheus-fed updates. One step per reading, through supported
//! clocks, never above the entry's target clock.

/// Step sizes and the dead band of the loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetLoop {
    /// Fraction of the relative excess taken off the clock per step. Power
    /// falls slower than the clock (idle floor), so 0.7 closes most of the
    /// gap without overshooting.
    pub down_gain: f64,
    /// Fraction of the relative headroom added per step; smaller than the
    /// down gain so the loop creeps up and jumps down.
    pub up_gain: f64,
    /// Hold while power is within this fraction below the budget.
    pub dead_band: f64,
}

impl Default for BudgetLoop {
    fn default() -> Self {
        Self {
            down_gain: 0.7,
            up_gain: 0.3,
            dead_band: 0.05,
        }
    }
}

impl BudgetLoop {
    /// The clock for the next interval, given the clock in force, the power
    /// just read, the budget, the ceiling (the entry's snapped target) and
    /// the supported clocks (ascending).
    pub fn next_clock(
        &self,
        current: u32,
        power_watts: f64,
        budget_watts: f64,
        ceiling: u32,
        supported: &[u32],
    ) -> u32 {
        let Some(&lowest) = supported.first() else {
            return current;
        };
        let at_or_below = |mhz: f64| {
            supported
                .iter()
                .copied()
                .filter(|c| f64::from(*c) <= mhz)
                .max()
                .unwrap_or(lowest)
        };
        let ceiling = at_or_below(f64::from(ceiling));
        let current = at_or_below(f64::from(current.min(ceiling)));
        if !power_watts.is_finite() || !budget_watts.is_finite() || budget_watts <= 0.0 {
            return current;
        }
        if power_watts > budget_watts {
            let excess = (power_watts - budget_watts) / power_watts;
            let wanted = f64::from(current) * (1.0 - self.down_gain * excess);
            // At least one step down.
            let one_below = supported
                .iter()
                .copied()
                .filter(|c| *c < current)
                .max()
                .unwrap_or(lowest);
            at_or_below(wanted).min(one_below)
        } else if power_watts < budget_watts * (1.0 - self.dead_band) {
            let headroom = (budget_watts - power_watts) / budget_watts;
            let wanted = f64::from(current) * (1.0 + self.up_gain * headroom);
            // At least one step up, never past the ceiling.
            let one_above = supported
                .iter()
                .copied()
                .find(|c| *c > current)
                .unwrap_or(current);
            at_or_below(wanted).max(one_above).min(ceiling)
        } else {
            current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::model::GpuModel;

    fn run(
        model: &GpuModel,
        load: f64,
        budget: f64,
        ceiling: u32,
        start: u32,
        steps: usize,
    ) -> Vec<(u32, f64)> {
        let supported = model.supported_clocks();
        let control = BudgetLoop::default();
        let mut clock = start;
        let mut trace = Vec::new();
        for _ in 0..steps {
            let power = model.power_watts(clock, load);
            trace.push((clock, power));
            clock = control.next_clock(clock, power, budget, ceiling, &supported);
        }
        trace
    }

    #[test]
    fn converges_under_the_budget_without_oscillating() {
        let model = GpuModel::h100().expect("model");
        let trace = run(&model, 1.0, 500.0, 1980, 1980, 20);
        let settled = &trace[10..];
        assert!(settled.iter().all(|(_, p)| *p <= 500.0), "{trace:?}");
        assert!(settled.iter().all(|(_, p)| *p >= 500.0 * 0.95), "{trace:?}");
        assert!(settled.windows(2).all(|w| w[0].0 == w[1].0), "{trace:?}");
        // Within a few seconds, not tens.
        assert!(trace[5].1 <= 500.0, "{trace:?}");
    }

    #[test]
    fn never_exceeds_the_ceiling_and_climbs_back_when_load_drops() {
        let model = GpuModel::h100().expect("model");
        let trace = run(&model, 0.3, 500.0, 1500, 600, 30);
        assert!(trace.iter().all(|(c, _)| *c <= 1500));
        assert_eq!(trace.last().map(|t| t.0), Some(1500));
    }

    #[test]
    fn bottoms_out_at_the_lowest_clock() {
        let model = GpuModel::h100().expect("model");
        let trace = run(&model, 1.0, 50.0, 1980, 1980, 40);
        assert_eq!(trace.last().map(|t| t.0), Some(345));
    }

    #[test]
    fn snaps_to_supported_clocks_and_ignores_garbage_readings() {
        let control = BudgetLoop::default();
        let supported = [300, 600, 900, 1200];
        assert_eq!(
            control.next_clock(1200, 1000.0, 900.0, 1200, &supported),
            900
        );
        assert_eq!(
            control.next_clock(1000, f64::NAN, 900.0, 1200, &supported),
            900
        );
        assert_eq!(
            control.next_clock(1200, 100.0, 900.0, 1000, &supported),
            900
        );
        assert_eq!(control.next_clock(900, 100.0, 900.0, 1200, &[]), 900);
    }
}
