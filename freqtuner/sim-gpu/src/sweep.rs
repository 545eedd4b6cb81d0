//! The measured clock sweeps every simulated GPU follows, and the one
//! interpolation between their rows.
//!
//! - [`SWEEP`]: the public vLLM SM-clock sweep (opt-125m) on a V100-class
//!   1380 MHz GPU, 16 locked clocks; the CSVs it was copied from are in
//!   `data/reference/` and a unit test holds the table to them.
//! - [`H200_SWEEP`]: this project's own sweep on an NVIDIA H200 under bf16
//!   matrix products (`docs/hardware/h200.md`).

/// One row of the sweep: locked clock (MHz), average power (W), p99 power
/// (W), output throughput (tokens/s), total token throughput (prompt and
/// output, tokens/s). Source: public vLLM SM-clock sweep
/// (opt-125m), `power_summary_16.csv` and `performance_summary_16.csv`.
pub const SWEEP: [(f64, f64, f64, f64, f64); 16] = [
    (300.0, 35.88, 53.00, 2259.99, 11563.27),
    (330.0, 35.91, 53.31, 2266.24, 11595.26),
    (405.0, 35.90, 53.47, 2253.44, 11529.75),
    (480.0, 39.50, 74.43, 3336.50, 17072.82),
    (555.0, 42.03, 79.47, 3486.33, 17830.73),
    (630.0, 43.50, 87.85, 3678.00, 18818.56),
    (705.0, 46.00, 98.32, 4171.02, 21341.09),
    (780.0, 45.74, 105.18, 4380.21, 22411.42),
    (855.0, 44.12, 79.40, 4654.13, 23812.95),
    (930.0, 48.74, 112.72, 4727.38, 24187.72),
    (1005.0, 47.90, 113.62, 4976.14, 25460.52),
    (1080.0, 52.34, 120.78, 5114.67, 26169.48),
    (1155.0, 55.10, 126.71, 5184.99, 26529.09),
    (1230.0, 62.35, 168.62, 5318.45, 27211.91),
    (1305.0, 63.90, 172.93, 5286.93, 27050.65),
    (1380.0, 67.73, 183.91, 5447.85, 27874.00),
];

/// One row of the H200 sweep (`docs/hardware/h200-2026-11-28`, compute-bound
/// load): locked clock (MHz), mean power (W), work (TFLOP/s). The last row
/// is the unlocked GPU, where the 700 W limit holds it at about 1485 MHz;
/// higher locks change nothing, so the models hold that row above it.
pub const H200_SWEEP: [(f64, f64, f64); 8] = [
    (345.0, 202.0, 163.0),
    (525.0, 255.0, 239.0),
    (705.0, 302.0, 304.0),
    (885.0, 364.0, 384.0),
    (1065.0, 441.0, 489.0),
    (1245.0, 534.0, 571.0),
    (1425.0, 647.0, 637.0),
    (1485.0, 691.0, 661.0),
];

/// The raw 1 Hz power log of the reference run at 1380 MHz (the `trace`
/// load profile replays its shape).
pub const RAW_TRACE_CSV: &str = include_str!("../data/reference/raw_power_1380mhz.csv");

/// `point` (x, value) of `table`'s rows, at `x`: linear between the rows,
/// held at the first and last row outside them. Rows are ascending in x.
pub fn interpolate<R>(table: &[R], x: f64, point: impl Fn(&R) -> (f64, f64)) -> f64 {
    let (Some(first), Some(last)) = (table.first().map(&point), table.last().map(&point)) else {
        return 0.0;
    };
    if x <= first.0 {
        return first.1;
    }
    if x >= last.0 {
        return last.1;
    }
    for pair in table.windows(2) {
        let (lo, hi) = (point(&pair[0]), point(&pair[1]));
        // Reached only with lo.0 < x <= hi.0, so the span is never zero.
        if x <= hi.0 {
            let t = (x - lo.0) / (hi.0 - lo.0);
            return lo.1 + t * (hi.1 - lo.1);
        }
    }
    last.1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(frequency, column)` pairs of a CSV with a header line.
    fn column(csv: &str, name: &str) -> Vec<(f64, f64)> {
        let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .map(|h| h.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let freq = header.iter().position(|h| *h == "frequency");
        let col = header.iter().position(|h| *h == name);
        let (Some(freq), Some(col)) = (freq, col) else {
            panic!("the CSV lacks frequency or {name}");
        };
        lines
            .map(|line| {
                let cells: Vec<f64> = line
                    .split(',')
                    .map(|c| c.trim().parse().unwrap_or(f64::NAN))
                    .collect();
                (cells[freq], cells[col])
            })
            .collect()
    }

    /// The embedded table is the published CSVs, not a retyped approximation.
    #[test]
    fn table_matches_the_published_csvs() {
        let power = include_str!("../data/reference/power_summary_16.csv");
        let perf = include_str!("../data/reference/performance_summary_16.csv");
        let avg = column(power, "average_power");
        let p99 = column(power, "p99_power");
        let output = column(perf, "output_throughput");
        let total = column(perf, "total_token_throughput");
        assert_eq!(avg.len(), SWEEP.len());
        for row in SWEEP {
            assert!(avg.contains(&(row.0, row.1)), "avg {row:?}");
            assert!(p99.contains(&(row.0, row.2)), "p99 {row:?}");
            assert!(output.contains(&(row.0, row.3)), "output {row:?}");
            assert!(total.contains(&(row.0, row.4)), "total {row:?}");
        }
    }

    #[test]
    fn h200_table_matches_the_checked_in_samples() {
        // Means over each lock of docs/hardware/h200-2026-11-28, dropping
        // the first second, rounded to whole watts (see summarize.py).
        let samples = include_str!("../../../docs/hardware/h200-2026-11-28/sweep-compute.jsonl");
        let mut sums: std::collections::BTreeMap<i64, (f64, f64, f64)> = Default::default();
        for line in samples.lines() {
            let Ok(row) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(locked) = row["phase"]["locked_mhz"].as_i64() else {
                continue;
            };
            let entry = sums.entry(locked).or_insert((f64::NAN, 0.0, 0.0));
            let t = row["t"].as_f64().unwrap_or_default();
            if entry.0.is_nan() {
                entry.0 = t;
            }
            if t - entry.0 >= 1.0 {
                entry.1 += row["power_w"].as_f64().unwrap_or_default();
                entry.2 += 1.0;
            }
        }
        for (mhz, watts, _) in &H200_SWEEP[..H200_SWEEP.len() - 1] {
            let (_, sum, n) = sums.get(&(*mhz as i64)).copied().unwrap_or_default();
            assert!(n > 0.0, "no samples at {mhz} MHz");
            assert!((sum / n - watts).abs() < 0.5, "{mhz} MHz: {} W", sum / n);
        }
    }

    #[test]
    fn interpolation_is_linear_inside_and_held_outside() {
        let table = [(1.0, 10.0), (3.0, 30.0), (4.0, 0.0)];
        let at = |x| interpolate(&table, x, |r| *r);
        assert_eq!(at(0.0), 10.0);
        assert_eq!(at(2.0), 20.0);
        assert_eq!(at(3.5), 15.0);
        assert_eq!(at(4.0), 0.0);
        assert_eq!(at(9.0), 0.0);
        assert_eq!(interpolate(&[] as &[(f64, f64)], 1.0, |r| *r), 0.0);
    }
}
