//! A plant model of GPU power and throughput versus locked SM clock, used to
//! test the recommender's algorithms (and reused by the benchmarks).
//!
//! Calibrated on the public vLLM SM-clock sweep (opt-125m): 16 locked clocks
//! from 1380 MHz down to 300 MHz on a V100-class GPU. The measured averages
//! mix a busy and an idle GPU, so the model takes the *shape* of the curve
//! (the ratios across clocks) and scales it between an idle floor and a
//! peak power. The shape is kept as measured, including its non-monotonic
//! stretches (930 MHz draws more than 1005 MHz, 705 more than 855): a
//! controller must cope with them rather than rely on a smooth curve.

/// One row of the sweep: locked clock (MHz), average power (W), p99 power
/// (W), output throughput (tokens/s). Source: public vLLM SM-clock sweep
/// (opt-125m), `power_summary_16.csv` and `performance_summary_16.csv`.
pub const SWEEP: [(f64, f64, f64, f64); 16] = [
    (300.0, 35.88, 53.00, 2259.99),
    (330.0, 35.91, 53.31, 2266.24),
    (405.0, 35.90, 53.47, 2253.44),
    (480.0, 39.50, 74.43, 3336.50),
    (555.0, 42.03, 79.47, 3486.33),
    (630.0, 43.50, 87.85, 3678.00),
    (705.0, 46.00, 98.32, 4171.02),
    (780.0, 45.74, 105.18, 4380.21),
    (855.0, 44.12, 79.40, 4654.13),
    (930.0, 48.74, 112.72, 4727.38),
    (1005.0, 47.90, 113.62, 4976.14),
    (1080.0, 52.34, 120.78, 5114.67),
    (1155.0, 55.10, 126.71, 5184.99),
    (1230.0, 62.35, 168.62, 5318.45),
    (1305.0, 63.90, 172.93, 5286.93),
    (1380.0, 67.73, 183.91, 5447.85),
];

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
}

impl Default for GpuPlant {
    /// A V100-class 250 W part at full load, idle at the sweep's 36 W.
    fn default() -> Self {
        Self {
            idle_watts: 36.0,
            peak_watts: 250.0,
            load: 1.0,
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

    /// Steady power at a locked clock, in watts.
    pub fn power(&self, clock_mhz: f64) -> f64 {
        self.idle_watts
            + self.load.clamp(0.0, 1.0)
                * (self.peak_watts - self.idle_watts)
                * dynamic_shape(clock_mhz)
    }

    /// Throughput at a locked clock relative to the maximum clock (0..=1),
    /// scaled by load (a half-loaded GPU serves half the tokens).
    pub fn throughput(&self, clock_mhz: f64) -> f64 {
        let max = SWEEP[SWEEP.len() - 1].3;
        self.load.clamp(0.0, 1.0) * interpolate(clock_mhz, |row| row.3) / max
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
            .unwrap_or(MIN_CLOCK_MHZ)
    }
}

/// The clocks a V100-class GPU can lock, ascending: 300–1380 MHz in 15 MHz
/// steps (real parts offer ~7.5 MHz steps; the sweep sampled every 75).
pub fn supported_clocks() -> Vec<i32> {
    (MIN_CLOCK_MHZ..=MAX_CLOCK_MHZ).step_by(15).collect()
}

/// Dynamic power at a clock as a fraction of dynamic power at the maximum
/// clock: (avg(f) - avg(min)) / (avg(max) - avg(min)), linear between the
/// measured clocks, clamped outside them.
pub fn dynamic_shape(clock_mhz: f64) -> f64 {
    let floor = SWEEP[0].1;
    let top = SWEEP[SWEEP.len() - 1].1;
    ((interpolate(clock_mhz, |row| row.1) - floor) / (top - floor)).max(0.0)
}

fn interpolate(clock_mhz: f64, column: impl Fn(&(f64, f64, f64, f64)) -> f64) -> f64 {
    let first = &SWEEP[0];
    let last = &SWEEP[SWEEP.len() - 1];
    if clock_mhz <= first.0 {
        return column(first);
    }
    if clock_mhz >= last.0 {
        return column(last);
    }
    for pair in SWEEP.windows(2) {
        let (lo, hi) = (&pair[0], &pair[1]);
        if clock_mhz <= hi.0 {
            let t = (clock_mhz - lo.0) / (hi.0 - lo.0);
            return column(lo) + t * (column(hi) - column(lo));
        }
    }
    column(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded table is the published CSVs, not a retyped approximation.
    #[test]
    fn table_matches_the_published_csvs() {
        let power = include_str!("../tests/data/power_summary_16.csv");
        let perf = include_str!("../tests/data/performance_summary_16.csv");
        let parse = |text: &str, col: usize| -> Vec<(f64, f64)> {
            text.lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    let cells: Vec<f64> = l
                        .split(',')
                        .map(|c| c.trim().parse().unwrap_or(f64::NAN))
                        .collect();
                    (cells[0], cells[col])
                })
                .collect()
        };
        let avg = parse(power, 1);
        let p99 = parse(power, 4);
        let tput = parse(perf, 2);
        assert_eq!(avg.len(), SWEEP.len());
        for row in SWEEP {
            assert!(avg.contains(&(row.0, row.1)), "avg {row:?}");
            assert!(p99.contains(&(row.0, row.2)), "p99 {row:?}");
            assert!(tput.contains(&(row.0, row.3)), "throughput {row:?}");
        }
    }

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
