//! A **model** of the node-level re-split proposed in issue 19, for the
//! loop bench only: the agent and the API do not do this (yet).
//!
//! The recommender would hand a node one budget for a policy's GPUs there
//! (here: the sum of the budgets its algorithm gave those GPUs each
//! period), and the node agent's 1 Hz loop would re-split it across them
//! every second by their measured demand, each within its power-limit
//! range. Demand is the power a GPU would draw at full clock at the
//! utilisation it reported in the last second; the split gives every GPU
//! its idle floor plus the same share `λ` of its demand above that floor.
//! On this plant a GPU's power above idle is its utilisation times a
//! function of the clock, so an equal share is an equal clock: where no
//! GPU is clamped to its range, every GPU of the node runs the same clock,
//! which is where watts buy the most tokens when the power curve is
//! convex in the throughput (see `bound.rs` for the exact optimum).

/// One GPU as the agent sees it at the start of a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// Power it would draw at full clock at its last reported utilisation.
    pub full_watts: f64,
    /// Power it draws idle, whatever the clock.
    pub idle_watts: f64,
}

/// Power limits for `gpus` summing to at most `budget_watts`, each within
/// `lowest..=highest` (the GPU's power-limit range): `idle + λ·(full −
/// idle)` clamped, with the largest `λ` that fits. When even every GPU at
/// `lowest` exceeds the budget, every GPU gets `lowest`: the GPU accepts no
/// lower limit (as in the power-limit mode today).
pub fn split(budget_watts: f64, gpus: &[Demand], lowest: f64, highest: f64) -> Vec<f64> {
    let limits = |share: f64| -> Vec<f64> {
        gpus.iter()
            .map(|g| {
                (g.idle_watts + share * (g.full_watts - g.idle_watts).max(0.0))
                    .clamp(lowest, highest)
            })
            .collect()
    };
    let total = |share: f64| limits(share).iter().sum::<f64>();
    if total(0.0) >= budget_watts {
        return limits(0.0);
    }
    // Enough for every GPU's full demand: what is left costs nothing, as a
    // GPU only draws what its load needs, so let it be used.
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
    use super::*;

    fn demand(full_watts: f64) -> Demand {
        Demand {
            full_watts,
            idle_watts: 78.0,
        }
    }

    #[test]
    fn the_budget_goes_to_demand_above_idle_in_equal_shares() {
        let gpus = [demand(691.0), demand(691.0), demand(292.5), demand(292.5)];
        let limits = split(1382.0, &gpus, 200.0, 700.0);
        let total: f64 = limits.iter().sum();
        assert!(total <= 1382.0 && total > 1381.9, "{limits:?}");
        // The same share above idle for every GPU: an equal clock.
        let share = |i: usize| (limits[i] - 78.0) / (gpus[i].full_watts - 78.0);
        assert!((share(0) - share(2)).abs() < 1e-6, "{limits:?}");
        assert!(limits[0] > limits[2]);
    }

    #[test]
    fn limits_stay_in_the_power_limit_range() {
        // A GPU at no load still gets the lowest limit the GPU accepts.
        let gpus = [demand(691.0), demand(78.0)];
        let limits = split(600.0, &gpus, 200.0, 700.0);
        assert_eq!(limits[1], 200.0);
        assert!((limits[0] - 400.0).abs() < 1e-6, "{limits:?}");
        // Too little for the lowest limits: each at the lowest.
        assert_eq!(split(300.0, &gpus, 200.0, 700.0), vec![200.0, 200.0]);
        // More than the demand: every GPU may draw what it needs, up to the
        // highest limit.
        let plenty = split(5000.0, &gpus, 200.0, 700.0);
        assert!(plenty.iter().sum::<f64>() <= 5000.0, "{plenty:?}");
        assert!(plenty[0] >= 691.0, "{plenty:?}");
    }
}
