//! How fast a shared budget reacts, measured on the budget bench's
//! per-second series: the issue's "watts freed by a falling workload return
//! to others within two periods", "a budget cut reaches the devices within
//! two periods", and how long an arriving high-priority workload waits for
//! its watts. Pure functions of the series, so each definition is tested
//! on a hand-made trace.
//!
//! Every figure is in control periods ([`PERIOD_S`]), counted from the
//! event to the second at which the devices (or the allocation) are where
//! they should be, so it includes the monitor's staleness, the wait for the
//! next period and the actuation delay.

use crate::budget::HELD_SHARE_OF_CAP;
use crate::closed_loop::PERIOD_S;

/// Freed watts below this share of the budget do not count: the loops'
/// own noise (a policy's power moves a few percent between its decisions).
pub const FREED_SLACK_SHARE: f64 = 0.03;

/// Share of its draw a policy may hold above it without counting as
/// holding freed watts: its loop's margin under its cap (3 %) and a small
/// probe kept at constant load. Fixed here, apart from the arbitration's
/// own probe, so that a larger probe is not measured with a larger
/// allowance.
pub const KEPT_SHARE_OF_DRAW: f64 = 0.1;

/// Seconds as periods.
fn periods(seconds: usize) -> f64 {
    seconds as f64 / PERIOD_S as f64
}

/// Watts freed and not yet taken at each second, under a strategy that
/// allocates the budget: the budget's watts that no policy draws, holds as
/// its guarantee, or keeps within [`KEPT_SHARE_OF_DRAW`] above its draw
/// (at most its allocation), as far as some policy wants them (draws less
/// than it would uncapped); 0 when they are under [`FREED_SLACK_SHARE`] of
/// the budget.
///
/// Per policy `p`: `power[p][t]`, `uncapped[p][t]` and `allocation[p][t]`
/// at second `t`, and its guarantee `guarantees[p]`.
pub fn stranded_watts(
    budget: &[f64],
    power: &[Vec<f64>],
    uncapped: &[Vec<f64>],
    allocation: &[Vec<f64>],
    guarantees: &[f64],
) -> Vec<f64> {
    (0..budget.len())
        .map(|t| {
            let held: f64 = power
                .iter()
                .zip(allocation)
                .zip(guarantees)
                .map(|((p, a), g)| (p[t] * (1.0 + KEPT_SHARE_OF_DRAW)).max(*g).min(a[t]))
                .sum();
            let wanted: f64 = power
                .iter()
                .zip(uncapped)
                .map(|(p, u)| (u[t] - p[t]).max(0.0))
                .sum();
            let stranded = (budget[t] - held).max(0.0).min(wanted);
            if stranded > FREED_SLACK_SHARE * budget[t] {
                stranded
            } else {
                0.0
            }
        })
        .collect()
}

/// The return time: the longest stretch of seconds from `from` on in which
/// freed watts wait for a taker ([`stranded_watts`] above zero), in
/// periods. A workload's load falls, its power with it, and the stretch
/// lasts until the others' allocations have grown into the freed watts and
/// their devices draw them (or until nobody wants them any more).
pub fn return_periods(stranded: &[f64], from: usize) -> f64 {
    let mut longest = 0;
    let mut run = 0;
    for w in stranded.iter().skip(from) {
        run = if *w > 0.0 { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    periods(longest)
}

/// How long a budget cut takes to reach the devices: from `window.0`, the
/// second the budget falls, to the first second from which the rack's
/// power stays at or under the budget until `window.1`, in periods. A rack
/// still over the budget at the end of the window counts the whole window.
pub fn cut_periods(budget: &[f64], rack_power: &[f64], window: (usize, usize)) -> f64 {
    let (start, end) = (window.0, window.1.min(budget.len()));
    let last_over = (start..end).rev().find(|&t| rack_power[t] > budget[t]);
    periods(last_over.map_or(0, |t| t + 1 - start))
}

/// How long an arriving workload waits for its watts: from `arrival` to
/// the first second that starts a whole period in which its allocation
/// covers what it draws uncapped (`allocation * HELD_SHARE_OF_CAP >=
/// uncapped`), in periods. A workload never covered for a whole period
/// counts until the end of the run.
pub fn covered_periods(allocation: &[f64], uncapped: &[f64], arrival: usize) -> f64 {
    let len = allocation.len().min(uncapped.len());
    let covered = |t: usize| allocation[t] * HELD_SHARE_OF_CAP >= uncapped[t];
    let first = (arrival..len.saturating_sub(PERIOD_S - 1))
        .find(|&t| (t..t + PERIOD_S).all(covered))
        .unwrap_or(len);
    periods(first.saturating_sub(arrival))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stranded_watts_are_freed_watts_someone_wants_beyond_the_slack() {
        let budget = [1000.0; 5];
        let allocation = vec![vec![600.0; 5], vec![400.0; 5]];
        // Second 0: the first draws 300 W of its 600 (keeps 330),
        // the second is short of 300 W: 270 W stranded.
        // Second 1: the second is short of only 100 W: 100 W.
        // Second 2: nobody short: 0.
        // Second 3: the first draws 530 W (keeps 583 W): 17 W are
        // under the slack: 0.
        // Second 4: 300 W unallocated, the second short of 500 W: 300 W.
        let power = vec![
            vec![300.0, 300.0, 300.0, 530.0, 300.0],
            vec![400.0, 400.0, 400.0, 400.0, 400.0],
        ];
        let uncapped = vec![
            vec![300.0, 300.0, 300.0, 530.0, 300.0],
            vec![700.0, 500.0, 400.0, 900.0, 900.0],
        ];
        let mut short = allocation.clone();
        short[0][4] = 300.0;
        assert_eq!(
            stranded_watts(&budget, &power, &uncapped, &short, &[0.0, 0.0]),
            [270.0, 100.0, 0.0, 0.0, 300.0]
        );
        // The first guaranteed 500 W: it holds 500 of its 600 W.
        let guaranteed = stranded_watts(&budget, &power, &uncapped, &allocation, &[500.0, 0.0]);
        assert_eq!(guaranteed, [100.0, 100.0, 0.0, 0.0, 100.0]);
    }

    #[test]
    fn the_return_time_is_the_longest_stretch_of_stranded_watts() {
        let mut stranded = vec![0.0; 100];
        stranded[10..25].fill(50.0); // one period
        stranded[40..85].fill(80.0); // three periods
        assert_eq!(return_periods(&stranded, 0), 3.0);
        // Only from `from` on.
        assert_eq!(return_periods(&stranded, 60), 25.0 / 15.0);
        assert_eq!(return_periods(&[0.0; 30], 0), 0.0);
    }

    #[test]
    fn a_cut_lands_when_the_rack_stays_under_the_new_budget() {
        let budget = [100.0; 60];
        let mut power = vec![90.0; 60];
        // Over for the cut's first 20 s, once more at second 24: landed at 25.
        power[10..30].fill(120.0);
        power[31..34].fill(95.0);
        power[34] = 101.0;
        assert_eq!(cut_periods(&budget, &power, (10, 50)), 25.0 / 15.0);
        // Never over: at once.
        assert_eq!(cut_periods(&budget, &[90.0; 60], (10, 50)), 0.0);
        // Over at the end of the window: the whole window.
        power[49] = 130.0;
        assert_eq!(cut_periods(&budget, &power, (10, 50)), 40.0 / 15.0);
    }

    #[test]
    fn an_arrival_is_covered_from_the_first_whole_period_with_enough_allocation() {
        let uncapped = vec![97.0; 120];
        let mut allocation = vec![50.0; 120];
        // Enough from second 40 on, but for a dip at 50: covered from 51.
        allocation[40..].fill(100.0);
        allocation[50] = 99.0;
        assert_eq!(covered_periods(&allocation, &uncapped, 10), 41.0 / 15.0);
        // Never covered for a whole period: until the end of the run.
        assert_eq!(covered_periods(&[50.0; 120], &uncapped, 30), 90.0 / 15.0);
        // Covered from the start.
        assert_eq!(covered_periods(&[200.0; 120], &uncapped, 30), 0.0);
    }
}
