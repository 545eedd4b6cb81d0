//! The clairvoyant bound: the most tokens any controller could serve in a
//! second, knowing every GPU's load in that second, with the policy's power
//! under its cap.
//!
//! Each GPU offers its supported clocks, each with the watts it draws and
//! the tokens it serves at that second's load; exactly one clock per GPU
//! is chosen and the watts must sum to at most the cap. That is a
//! multiple-choice knapsack, solved exactly by dynamic programming over
//! watts counted in whole units of [`RESOLUTION_WATTS`], each point's watts
//! rounded **up**: any allocation it returns truly fits the cap, so its
//! tokens are a *lower* bound on the optimum, and it is the allocation
//! reported as "the bound". Its linear [`relaxation`] is an *upper* bound;
//! the gap between the two says how much the discretisation (and the
//! integrality) can hide. (A second DP with watts rounded down is also an
//! exact upper bound; on seed 42's scenarios it was no tighter than
//! the relaxation, within 0.05 points, and cost as much again.)
//! Only the clocks a real controller can lock are offered; power-limit
//! operating points of this plant are those same clocks
//! ([`GpuPlant::clock_for_budget`](climatik_sim_gpu::plant::GpuPlant::clock_for_budget)).

use std::collections::HashMap;

use climatik_sim_gpu::plant::MeasuredCurve;

/// Width of one unit of the knapsack's watt axis. A quarter watt keeps the
/// rounding gap to at most a quarter watt per GPU (2 W over 8 GPUs, well
/// under 0.1 % of any cap in the benchmark) at a cost the bench can afford.
pub const RESOLUTION_WATTS: f64 = 0.25;

/// One operating point of one GPU in one second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub clock_mhz: i32,
    pub watts: f64,
    pub tokens: f64,
}

/// The points worth choosing, ascending in watts and strictly ascending in
/// tokens: a point that draws at least as much as another and serves no
/// more is never part of an optimum (ties keep the lower-watt point).
pub fn frontier(mut points: Vec<Point>) -> Vec<Point> {
    points.sort_by(|a, b| {
        a.watts
            .total_cmp(&b.watts)
            .then(b.tokens.total_cmp(&a.tokens))
    });
    let mut out: Vec<Point> = Vec::with_capacity(points.len());
    for p in points {
        if out.last().is_none_or(|last| p.tokens > last.tokens) {
            out.push(p);
        }
    }
    out
}

/// A GPU of `model` at `load`: one point per supported clock, pruned to
/// its frontier.
pub fn plant_points(model: MeasuredCurve, load: f64) -> Vec<Point> {
    let gpu = model.plant(load);
    frontier(
        model
            .supported_clocks()
            .into_iter()
            .map(|clock_mhz| Point {
                clock_mhz,
                watts: gpu.power(f64::from(clock_mhz)),
                tokens: gpu.throughput(f64::from(clock_mhz)),
            })
            .collect(),
    )
}

/// The solution of one second.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Per GPU, the index of the chosen point in its frontier.
    pub chosen: Vec<usize>,
    /// True watts of the chosen points, summed.
    pub watts: f64,
    /// Tokens of the chosen points: a lower bound on the optimum.
    pub tokens: f64,
    /// No allocation can serve more than this.
    pub upper_tokens: f64,
    /// Whether any allocation fits the cap. When none does, the allocation
    /// is every GPU's lowest-power point, the closest the plant gets.
    pub feasible: bool,
}

/// The best allocation of `gpus` (each a [`frontier`], non-empty) under
/// `cap_watts`, on a watt axis of `resolution` watts per unit.
pub fn solve(gpus: &[Vec<Point>], cap_watts: f64, resolution: f64) -> Allocation {
    // Rounding up can refuse an allocation that truly fits only when the
    // lowest points are within a unit per GPU of the cap; they are then the
    // allocation, as they are when nothing fits.
    let chosen = knapsack(gpus, cap_watts, resolution).unwrap_or_else(|| vec![0; gpus.len()]);
    let (watts, tokens) = totals(gpus, &chosen);
    let upper_tokens = relaxation(gpus, cap_watts).map_or(tokens, |r| r.max(tokens));
    Allocation {
        chosen,
        watts,
        tokens,
        upper_tokens,
        feasible: watts <= cap_watts,
    }
}

/// The linear relaxation: each GPU may mix two neighbouring points of its
/// upper convex hull within the second (as a power limiter dithering
/// between clocks would), and the watts left after every GPU's lowest point
/// go to the steepest hull segments first. Tokens of that mix: an upper
/// bound on [`solve`]'s optimum, and what a controller could reach only
/// by time-sharing clocks within a second. `None` when the lowest points
/// exceed the cap.
pub fn relaxation(gpus: &[Vec<Point>], cap_watts: f64) -> Option<f64> {
    hull_greedy(gpus, cap_watts).map(|h| h.upper_tokens)
}

/// The relaxation and the allocation it rounds down to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HullGreedy {
    /// The relaxation's tokens: no allocation under the cap serves more.
    pub upper_tokens: f64,
    /// Tokens of the whole hull segments taken before the first one that
    /// only partly fits: every GPU on a hull point, under the cap, so a
    /// feasible allocation and a lower bound on the optimum.
    pub tokens: f64,
    /// Watts of that allocation.
    pub watts: f64,
}

/// [`relaxation`], and the feasible allocation it rounds down to: without
/// the [`solve`]'s table, so cheap enough for a rack of GPUs every second.
/// Its gap to the relaxation is at most one hull segment of one GPU.
pub fn hull_greedy(gpus: &[Vec<Point>], cap_watts: f64) -> Option<HullGreedy> {
    let mut left = cap_watts;
    let mut tokens = 0.0;
    // (watts, tokens) of every hull segment, over all GPUs.
    let mut segments: Vec<(f64, f64)> = Vec::new();
    for points in gpus {
        let first = points.first()?;
        left -= first.watts;
        tokens += first.tokens;
        let mut hull: Vec<Point> = Vec::with_capacity(points.len());
        for p in points {
            // Drop the last hull point while it lies on or under the chord
            // from the one before it to `p` (the frontier ascends in both).
            while hull.len() >= 2 {
                let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                let cross = (b.watts - a.watts) * (p.tokens - a.tokens)
                    - (b.tokens - a.tokens) * (p.watts - a.watts);
                if cross >= 0.0 {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(*p);
        }
        segments.extend(
            hull.windows(2)
                .map(|w| (w[1].watts - w[0].watts, w[1].tokens - w[0].tokens)),
        );
    }
    if left < 0.0 {
        return None;
    }
    // One GPU's hull segments fall in steepness, so in this order each GPU
    // takes its segments in turn: whole ones put it on a hull point.
    segments.sort_by(|a, b| (b.1 / b.0).total_cmp(&(a.1 / a.0)));
    let mut whole = None;
    for (watts, gain) in segments {
        if left <= 0.0 {
            break;
        }
        let share = (left / watts).min(1.0);
        if share < 1.0 && whole.is_none() {
            whole = Some((tokens, cap_watts - left));
        }
        tokens += share * gain;
        left -= share * watts;
    }
    let (whole_tokens, whole_watts) = whole.unwrap_or((tokens, cap_watts - left));
    Some(HullGreedy {
        upper_tokens: tokens,
        tokens: whole_tokens,
        watts: whole_watts,
    })
}

fn totals(gpus: &[Vec<Point>], chosen: &[usize]) -> (f64, f64) {
    gpus.iter()
        .zip(chosen)
        .fold((0.0, 0.0), |(w, t), (points, i)| {
            (w + points[*i].watts, t + points[*i].tokens)
        })
}

/// `watts` in whole units of `resolution`, rounded up (`up`) or down even
/// where the division itself lands on the wrong side of a whole number.
fn units(watts: f64, resolution: f64, up: bool) -> usize {
    let x = watts.max(0.0) / resolution;
    if up {
        let u = x.ceil();
        (if u * resolution < watts { u + 1.0 } else { u }) as usize
    } else {
        let u = x.floor();
        (if u * resolution > watts && u >= 1.0 {
            u - 1.0
        } else {
            u
        }) as usize
    }
}

/// The multiple-choice knapsack on watts rounded up to units of
/// `resolution` (so what fits there truly fits): the chosen point per GPU,
/// or `None` when even the lowest points exceed the cap in those units.
fn knapsack(gpus: &[Vec<Point>], cap_watts: f64, resolution: f64) -> Option<Vec<usize>> {
    if !(cap_watts >= 0.0 && cap_watts.is_finite()) {
        return None;
    }
    // The cap always goes down: the units it allows must truly fit under it.
    let capacity = units(cap_watts, resolution, false);
    // Every GPU must take one point, so its lowest is paid up front and the
    // table only spans the watts above the lowest points.
    let mut base = 0;
    let extra: Vec<Vec<usize>> = gpus
        .iter()
        .map(|points| {
            let units: Vec<usize> = points
                .iter()
                .map(|p| units(p.watts, resolution, true))
                .collect();
            let lowest = units.iter().copied().min().unwrap_or(0);
            base += lowest;
            units.into_iter().map(|u| u - lowest).collect()
        })
        .collect();
    let room = capacity.checked_sub(base)?;
    let reachable: usize = extra
        .iter()
        .map(|e| e.iter().copied().max().unwrap_or(0))
        .sum();
    let room = room.min(reachable);
    let width = room + 1;
    // best[r]: most tokens of the GPUs so far with at most r units above
    // their lowest points; choice[g * width + r]: GPU g's point there.
    let mut best = vec![0.0_f64; width];
    let mut next = vec![0.0_f64; width];
    let mut choice = vec![0_u16; gpus.len() * width];
    for (g, (points, extra)) in gpus.iter().zip(&extra).enumerate() {
        next.fill(f64::NEG_INFINITY);
        let row = &mut choice[g * width..(g + 1) * width];
        for (i, (p, d)) in points.iter().zip(extra).enumerate() {
            let d = *d;
            if d > room {
                continue;
            }
            for r in d..width {
                let v = best[r - d] + p.tokens;
                if v > next[r] {
                    next[r] = v;
                    row[r] = i as u16;
                }
            }
        }
        std::mem::swap(&mut best, &mut next);
    }
    let mut chosen = vec![0; gpus.len()];
    let mut r = room;
    for g in (0..gpus.len()).rev() {
        let i = usize::from(choice[g * width + r]);
        chosen[g] = i;
        r -= extra[g][i];
    }
    Some(chosen)
}

/// One second of the bound on the plant, as the bench needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Second {
    pub watts: f64,
    pub tokens: f64,
    pub upper_tokens: f64,
    pub feasible: bool,
}

/// The bound second by second, remembering solved seconds: loads repeat
/// within a scenario (plateaus) and across seeds (the seed-free scenarios),
/// so most seconds are looked up rather than solved.
#[derive(Debug, Default)]
pub struct Clairvoyant {
    // Keyed by the model's label (the model itself is not `Hash`), the cap's
    // and the loads' bits.
    solved: HashMap<(&'static str, u64, Vec<u64>), Second>,
}

impl Clairvoyant {
    /// The bound for GPUs of `model` at `loads` under `cap_watts`.
    pub fn second(&mut self, model: MeasuredCurve, loads: &[f64], cap_watts: f64) -> Second {
        let key = (
            model.label(),
            cap_watts.to_bits(),
            loads.iter().map(|l| l.to_bits()).collect(),
        );
        *self.solved.entry(key).or_insert_with(|| {
            let gpus: Vec<Vec<Point>> = loads.iter().map(|l| plant_points(model, *l)).collect();
            let a = solve(&gpus, cap_watts, RESOLUTION_WATTS);
            Second {
                watts: a.watts,
                tokens: a.tokens,
                upper_tokens: a.upper_tokens,
                feasible: a.feasible,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every combination, in true watts: the optimum the solver bounds.
    fn brute_force(gpus: &[Vec<Point>], cap: f64) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut index = vec![0usize; gpus.len()];
        loop {
            let (w, t) = totals(gpus, &index);
            if w <= cap && best.is_none_or(|b| t > b) {
                best = Some(t);
            }
            let mut g = 0;
            loop {
                if g == gpus.len() {
                    return best;
                }
                index[g] += 1;
                if index[g] < gpus[g].len() {
                    break;
                }
                index[g] = 0;
                g += 1;
            }
        }
    }

    fn instance(max_points: usize) -> impl Strategy<Value = (Vec<Vec<Point>>, f64)> {
        let gpu = prop::collection::vec((0.0..400.0_f64, 0.0..10.0_f64), 1..=max_points).prop_map(
            |raw| {
                frontier(
                    raw.into_iter()
                        .enumerate()
                        .map(|(i, (watts, tokens))| Point {
                            clock_mhz: i as i32,
                            watts,
                            tokens,
                        })
                        .collect(),
                )
            },
        );
        // The cap as a share of the most the GPUs can draw, so that most
        // instances bind somewhere between their lowest and highest points.
        (prop::collection::vec(gpu, 2..=4), 0.0..1.1_f64).prop_map(|(gpus, share)| {
            let most: f64 = gpus
                .iter()
                .map(|points| points.iter().map(|p| p.watts).fold(0.0, f64::max))
                .sum();
            (gpus, share * most)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// The returned allocation truly fits, and the optimum lies between
        /// its tokens and the upper bound.
        #[test]
        fn the_optimum_lies_between_the_two_roundings((gpus, cap) in instance(6), resolution in 0.1..5.0_f64) {
            let a = solve(&gpus, cap, resolution);
            let (w, t) = totals(&gpus, &a.chosen);
            prop_assert!((w - a.watts).abs() < 1e-9 && (t - a.tokens).abs() < 1e-9);
            match brute_force(&gpus, cap) {
                Some(optimum) => {
                    prop_assert!(a.feasible);
                    prop_assert!(a.watts <= cap, "{a:?} over {cap}");
                    prop_assert!(a.tokens <= optimum + 1e-9, "{a:?} above the optimum {optimum}");
                    prop_assert!(a.upper_tokens >= optimum - 1e-9, "{a:?} below the optimum {optimum}");
                    let relaxed = relaxation(&gpus, cap);
                    prop_assert!(relaxed.is_some_and(|r| r >= optimum - 1e-9), "relaxation {relaxed:?} below the optimum {optimum}");
                }
                None => {
                    prop_assert!(!a.feasible);
                    prop_assert_eq!(relaxation(&gpus, cap), None);
                    prop_assert_eq!(a.chosen.clone(), vec![0; gpus.len()]);
                }
            }
        }

        /// The hull's greedy allocation fits the cap and serves no more than
        /// the optimum; the relaxation serves no less.
        #[test]
        fn the_greedy_hull_allocation_is_feasible((gpus, cap) in instance(6)) {
            match (hull_greedy(&gpus, cap), brute_force(&gpus, cap)) {
                (Some(h), Some(optimum)) => {
                    prop_assert!(h.watts <= cap + 1e-9, "{h:?} over {cap}");
                    prop_assert!(h.tokens <= optimum + 1e-9, "{h:?} above the optimum {optimum}");
                    prop_assert!(h.upper_tokens >= optimum - 1e-9, "{h:?} below the optimum {optimum}");
                }
                (None, None) => {}
                (h, optimum) => prop_assert!(false, "{h:?} but optimum {optimum:?}"),
            }
        }

        /// On watts that are whole units there is nothing to round: the
        /// allocation is the optimum.
        #[test]
        fn whole_unit_watts_are_solved_exactly((gpus, cap) in instance(5)) {
            let gpus: Vec<Vec<Point>> = gpus
                .into_iter()
                .map(|points| frontier(points.into_iter().map(|p| Point { watts: p.watts.round(), ..p }).collect()))
                .collect();
            let a = solve(&gpus, cap, 1.0);
            if let Some(optimum) = brute_force(&gpus, cap) {
                prop_assert!((a.tokens - optimum).abs() < 1e-9, "{a:?} vs {optimum}");
            }
        }
    }

    #[test]
    fn the_frontier_drops_points_that_cost_more_and_serve_no_more() {
        let p = |watts, tokens| Point {
            clock_mhz: 0,
            watts,
            tokens,
        };
        let points = frontier(vec![p(30.0, 2.0), p(10.0, 1.0), p(20.0, 1.0), p(10.0, 0.5)]);
        assert_eq!(points, vec![p(10.0, 1.0), p(30.0, 2.0)]);
    }

    /// Two GPUs whose second step is half as steep as their first: the
    /// relaxation spends 15 W on the steep steps (10 W and half of the
    /// other), where one clock per GPU only gets one steep step.
    #[test]
    fn the_relaxation_mixes_the_steepest_segments_first() {
        let p = |watts, tokens| Point {
            clock_mhz: 0,
            watts,
            tokens,
        };
        let gpu = vec![p(0.0, 0.0), p(10.0, 10.0), p(20.0, 15.0)];
        let gpus = [gpu.clone(), gpu];
        assert_eq!(relaxation(&gpus, 15.0), Some(15.0));
        let a = solve(&gpus, 15.0, 1.0);
        assert_eq!((a.tokens, a.watts, a.upper_tokens), (10.0, 10.0, 15.0));
        assert_eq!(relaxation(&gpus, -1.0), None);
    }

    /// The bound on the plant: with a cap that fits every GPU at full clock
    /// it is the uncapped throughput; below that it gives up tokens, never
    /// watts.
    #[test]
    fn on_the_plant_the_bound_uses_the_cap_and_only_the_cap() {
        let model = MeasuredCurve::H200Compute;
        let loads = [1.0, 0.35, 1.0, 0.35];
        let mut bound = Clairvoyant::default();
        let uncapped: f64 = loads
            .iter()
            .map(|l| model.plant(*l).throughput(1980.0))
            .sum();
        let free = bound.second(model, &loads, 4.0 * model.peak_watts());
        assert!((free.tokens - uncapped).abs() < 1e-9, "{free:?}");
        let cap = 0.6 * 4.0 * model.peak_watts();
        let capped = bound.second(model, &loads, cap);
        assert!(capped.feasible && capped.watts <= cap, "{capped:?}");
        assert!(capped.tokens < uncapped && capped.upper_tokens >= capped.tokens);
        // Nothing is left for the rounding to hide beyond a few hundredths.
        assert!(
            capped.upper_tokens - capped.tokens < 0.01 * capped.tokens,
            "{capped:?}"
        );
    }
}
