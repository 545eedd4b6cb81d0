//! The node agent's budget re-split: one watt budget shared by a group of
//! GPUs on a node, divided every second by their measured demand. Kept in
//! this crate, next to the plant it is measured on, so the node agent and
//! the loop bench run this one copy: the bench measures the agent's rule.
//!
//! Each GPU gets its idle floor plus the same share `λ` of its demand above
//! that floor, clamped to its power-limit range, with the largest `λ` whose
//! sum fits the budget (demand-proportional: where no GPU is clamped, every
//! GPU gets the same fraction of what it would draw at full clock). Where
//! power above idle is the load times a function of the clock, an equal
//! share is an equal clock, which is where watts buy the most throughput
//! when the power curve is convex in it.

/// One GPU as the agent sees it at the start of a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// Power it would draw at full clock at its last measured load.
    pub full_watts: f64,
    /// Power it draws idle, whatever the clock.
    pub idle_watts: f64,
    /// Lowest limit the GPU can be held at (its lowest power limit).
    pub lowest_watts: f64,
    /// Highest limit worth giving it (its highest power limit).
    pub highest_watts: f64,
}

impl Demand {
    /// The range with garbage (NaN, negative, inverted) made harmless: a
    /// non-finite or negative bound reads as 0, and `highest` is never
    /// below `lowest`.
    fn range(&self) -> (f64, f64) {
        let sane = |w: f64| if w.is_finite() && w > 0.0 { w } else { 0.0 };
        let lowest = sane(self.lowest_watts);
        (lowest, sane(self.highest_watts).max(lowest))
    }

    /// The limit at share `λ`; a demand that is not a number counts as
    /// none above idle.
    fn limit(&self, share: f64) -> f64 {
        let finite = |w: f64| if w.is_finite() { w } else { 0.0 };
        let idle = finite(self.idle_watts);
        let above = (finite(self.full_watts) - idle).max(0.0);
        let (lowest, highest) = self.range();
        (idle + share * above).clamp(lowest, highest)
    }
}

/// What the agent read of a GPU in the last second: its power and the
/// clock it ran at then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub power_watts: f64,
    pub clock_mhz: u32,
}

impl Demand {
    /// The demand the node agent estimates for a GPU from its last
    /// `reading` alone (the agent knows no load or curve): what it would
    /// draw at `ceiling_mhz`, its entry's clock ceiling, within its power
    /// limit range `lowest_watts..=highest_watts`.
    ///
    /// Below the ceiling the GPU is held back by its budget, so its draw is
    /// scaled up with the clock: power above idle grows at least as fast as
    /// the clock, so this errs low for a loaded GPU, and an idle GPU sits at
    /// its ceiling (its budget loop climbs there) where its reading is its
    /// demand. With no reading yet, a GPU counts as wanting its highest
    /// limit, so a new group starts even. The idle draw is unknown to the
    /// agent: it is part of the reading.
    pub fn estimate(
        reading: Option<Reading>,
        ceiling_mhz: u32,
        lowest_watts: f64,
        highest_watts: f64,
    ) -> Self {
        let full_watts = match reading {
            Some(r) if r.clock_mhz > 0 && r.clock_mhz < ceiling_mhz => {
                r.power_watts * f64::from(ceiling_mhz) / f64::from(r.clock_mhz)
            }
            Some(r) => r.power_watts,
            None => highest_watts,
        };
        Demand {
            full_watts,
            idle_watts: 0.0,
            lowest_watts,
            highest_watts,
        }
    }
}

/// Limits for `gpus` summing to at most `budget_watts`, each within its
/// range. When even every GPU at its lowest limit exceeds the budget (or
/// the budget is not a number), every GPU gets its lowest limit:
/// no GPU accepts less, and the caller holds the rest with clocks. An
/// empty group gets nothing.
pub fn split(budget_watts: f64, gpus: &[Demand]) -> Vec<f64> {
    let limits = |share: f64| -> Vec<f64> { gpus.iter().map(|g| g.limit(share)).collect() };
    let total = |share: f64| gpus.iter().map(|g| g.limit(share)).sum::<f64>();
    let floors: Vec<f64> = gpus.iter().map(|g| g.range().0).collect();
    let floor: f64 = floors.iter().sum();
    if !budget_watts.is_finite() || floor >= budget_watts {
        return floors;
    }
    let idle = total(0.0);
    if idle >= budget_watts {
        // Not even every GPU's idle draw fits: the same fraction of the
        // way from each GPU's lowest limit to its idle draw.
        let t = (budget_watts - floor) / (idle - floor);
        return floors
            .iter()
            .zip(limits(0.0))
            .map(|(low, at_idle)| low + t * (at_idle - low))
            .collect();
    }
    // Enough for every GPU's full demand: what is left costs nothing, as a
    // GPU only draws what its load needs, so let it be used up to the
    // highest limits.
    let mut high = 1.0;
    while total(high) <= budget_watts {
        if high > 1e6 {
            return limits(high);
        }
        high *= 2.0;
    }
    // total(low) <= budget < total(high), and total grows with the share.
    let mut low = 0.0;
    for _ in 0..60 {
        let mid = 0.5 * (low + high);
        if total(mid) <= budget_watts {
            low = mid;
        } else {
            high = mid;
        }
    }
    limits(low)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn demand(full_watts: f64) -> Demand {
        Demand {
            full_watts,
            idle_watts: 78.0,
            lowest_watts: 200.0,
            highest_watts: 700.0,
        }
    }

    #[test]
    fn the_budget_goes_to_demand_above_idle_in_equal_shares() {
        let gpus = [demand(691.0), demand(691.0), demand(292.5), demand(292.5)];
        let limits = split(1382.0, &gpus);
        let total: f64 = limits.iter().sum();
        assert!(total <= 1382.0 && total > 1381.9, "{limits:?}");
        // The same share above idle for every GPU: an equal clock.
        let share = |i: usize| (limits[i] - 78.0) / (gpus[i].full_watts - 78.0);
        assert!((share(0) - share(2)).abs() < 1e-6, "{limits:?}");
        assert!(limits[0] > limits[2]);
    }

    #[test]
    fn the_agent_estimates_demand_at_the_ceiling_from_its_reading() {
        let read = |power_watts, clock_mhz| {
            Some(Reading {
                power_watts,
                clock_mhz,
            })
        };
        // Held at half its ceiling: its draw scaled up with the clock.
        let held = Demand::estimate(read(300.0, 900), 1800, 200.0, 700.0);
        assert_eq!(held.full_watts, 600.0);
        assert_eq!((held.lowest_watts, held.highest_watts), (200.0, 700.0));
        // At (or above) its ceiling, and a clock of 0: the reading itself.
        assert_eq!(
            Demand::estimate(read(150.0, 1800), 1800, 200.0, 700.0).full_watts,
            150.0
        );
        assert_eq!(
            Demand::estimate(read(150.0, 0), 1800, 200.0, 700.0).full_watts,
            150.0
        );
        // Nothing read yet: its highest limit.
        assert_eq!(Demand::estimate(None, 1800, 200.0, 700.0).full_watts, 700.0);
    }

    #[test]
    fn limits_stay_in_the_power_limit_range() {
        // A GPU at no load still gets the lowest limit the GPU accepts.
        let gpus = [demand(691.0), demand(78.0)];
        let limits = split(600.0, &gpus);
        assert_eq!(limits[1], 200.0);
        assert!((limits[0] - 400.0).abs() < 1e-6, "{limits:?}");
        // Too little for the lowest limits: each at the lowest.
        assert_eq!(split(300.0, &gpus), vec![200.0, 200.0]);
        // More than the demand: every GPU may draw what it needs, up to the
        // highest limit.
        let plenty = split(5000.0, &gpus);
        assert!(plenty.iter().sum::<f64>() <= 5000.0, "{plenty:?}");
        assert!(plenty[0] >= 691.0, "{plenty:?}");
    }

    #[test]
    fn garbage_in_gives_floors_not_nan() {
        assert!(split(500.0, &[]).is_empty());
        let nan = Demand {
            full_watts: f64::NAN,
            idle_watts: f64::NAN,
            lowest_watts: f64::NAN,
            highest_watts: -3.0,
        };
        assert_eq!(split(500.0, &[nan]), vec![0.0]);
        assert_eq!(split(f64::NAN, &[demand(500.0)]), vec![200.0]);
        assert_eq!(split(-1.0, &[demand(500.0)]), vec![200.0]);
        // A NaN demand is no demand: the other GPU gets the watts.
        let limits = split(600.0, &[demand(f64::NAN), demand(691.0)]);
        assert_eq!(limits[0], 200.0);
        assert!((limits[1] - 400.0).abs() < 1e-6, "{limits:?}");
    }

    fn any_gpu() -> impl Strategy<Value = Demand> {
        (
            0.0..800.0_f64,
            0.0..150.0_f64,
            0.0..300.0_f64,
            0.0..800.0_f64,
        )
            .prop_map(|(full, idle, lowest, span)| Demand {
                full_watts: full,
                idle_watts: idle,
                lowest_watts: lowest,
                highest_watts: lowest + span,
            })
    }

    proptest! {
        #[test]
        fn never_above_the_budget_and_each_in_its_range(
            budget in 0.0..5000.0_f64,
            gpus in prop::collection::vec(any_gpu(), 0..8),
        ) {
            let limits = split(budget, &gpus);
            prop_assert_eq!(limits.len(), gpus.len());
            let floors: f64 = gpus.iter().map(|g| g.lowest_watts).sum();
            let total: f64 = limits.iter().sum();
            // Above the budget only when the floors alone are.
            prop_assert!(total <= budget.max(floors) + 1e-6, "{} > {}", total, budget);
            for (l, g) in limits.iter().zip(&gpus) {
                prop_assert!(*l >= g.lowest_watts - 1e-9 && *l <= g.highest_watts + 1e-9);
            }
        }

        #[test]
        fn more_demand_never_gets_less(
            budget in 0.0..3000.0_f64,
            gpus in prop::collection::vec(any_gpu(), 2..6),
        ) {
            // Same range and idle, more demand: at least as large a limit.
            let mut gpus = gpus;
            gpus[1] = Demand { full_watts: gpus[0].full_watts + 100.0, ..gpus[0] };
            let limits = split(budget, &gpus);
            prop_assert!(limits[1] >= limits[0] - 1e-9, "{:?}", limits);
        }

        #[test]
        fn the_whole_budget_is_used_while_some_gpu_could_take_more(
            budget in 0.0..3000.0_f64,
            gpus in prop::collection::vec(any_gpu(), 1..6),
        ) {
            let limits = split(budget, &gpus);
            let floors: f64 = gpus.iter().map(|g| g.lowest_watts).sum();
            let ceilings: f64 = gpus.iter().map(|g| g.highest_watts).sum();
            let total: f64 = limits.iter().sum();
            let room = gpus.iter().zip(&limits)
                .any(|(g, l)| *l < g.highest_watts - 1e-6 && g.full_watts > g.idle_watts);
            if budget > floors && budget < ceilings && room {
                prop_assert!(total >= budget - 1e-3, "{} < {}", total, budget);
            }
        }
    }
}
