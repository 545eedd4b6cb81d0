//! `feedback-budget`: feedback's clocks, with budget-allocator's per-GPU
//! budgets as a hard ceiling under them.
//!
//! Feedback moves every GPU of a policy by the same clock step, which keeps
//! lightly loaded GPUs from running at clocks where they waste watts (power
//! grows faster than throughput near the top of the range), but it reacts
//! only once per period, so a burst between periods runs over the cap.
//! budget-allocator's budgets add up to the cap and, with the agent in
//! power-limit mode, each GPU holds its own within milliseconds. Together:
//! the clocks decide where the watts go, the budgets stop the bursts.
//! The budgets add up to `budget-target` percent of the cap (default 100),
//! above feedback's `target` (default 97), so in steady state the clocks
//! bind and the budgets only catch what arrives between periods. Other
//! parameters are those of both, `node-resplit` included.

use super::{Algorithm, AlgorithmError, BudgetAllocator, Feedback, Observation, Params, Target};

#[derive(Debug, Clone)]
pub struct FeedbackBudget {
    clocks: Feedback,
    budgets: BudgetAllocator,
}

impl FeedbackBudget {
    pub(crate) fn new(params: &Params<'_>) -> Result<Self, AlgorithmError> {
        Ok(Self {
            clocks: Feedback::new(params)?,
            budgets: BudgetAllocator::with_target(params, "budget-target", 100.0)?,
        })
    }
}

impl Algorithm for FeedbackBudget {
    fn name(&self) -> &'static str {
        super::FEEDBACK_BUDGET
    }

    fn pools_node_budgets(&self) -> bool {
        self.budgets.pools_node_budgets()
    }

    fn plan(&mut self, observation: &Observation) -> Vec<Target> {
        let budgets = self.budgets.plan(observation);
        if self.budgets.pools_node_budgets() {
            // The node agents re-split the budgets every second, which
            // already sets equal clocks where the watts buy the most. Clock
            // ceilings stepped each period to hold the total at `target`
            // (below `budget-target`) would only fight that: while the
            // budgets hold the GPUs below their ceilings, feedback keeps
            // lowering them until they bind, a few percent under the cap.
            return budgets;
        }
        let mut targets = self.clocks.plan(observation);
        // Both plan one target per observed device, in the same order.
        for (target, budgeted) in targets.iter_mut().zip(budgets) {
            debug_assert_eq!(target.id, budgeted.id);
            target.power_budget_watts = budgeted.power_budget_watts;
        }
        targets
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FEEDBACK_BUDGET, sim::Rig};

    fn rig(loads: &[f64], cap: f64) -> Rig {
        Rig::for_algorithm(FEEDBACK_BUDGET, &[], loads, cap)
    }

    /// With `node-resplit` the budgets alone hold the cap: the clocks
    /// stay at the maximum instead of being stepped under the budgets
    /// until they bind below the cap.
    #[test]
    fn pooled_budgets_leave_the_clocks_at_the_maximum() {
        let mut rig = Rig::for_algorithm(
            FEEDBACK_BUDGET,
            &[("node-resplit", "true")],
            &[1.0, 0.9, 0.5, 0.2],
            500.0,
        );
        let trace = rig.run(10);
        let max = climatik_sim_gpu::plant::MAX_CLOCK_MHZ;
        assert!(
            rig.entries.iter().all(|e| *e == Some(max)),
            "{:?}",
            rig.entries
        );
        let budgets: f64 = rig.budgets.iter().flatten().sum();
        assert!(budgets <= 500.0 + 1e-6, "{:?}", rig.budgets);
        assert!(trace.iter().all(|p| *p <= 500.0), "{trace:?}");
    }

    #[test]
    fn settles_under_the_cap_with_budgets_that_add_up_to_it() {
        let mut rig = rig(&[1.0, 0.9, 0.5, 0.2], 500.0);
        assert!(rig.power() > 500.0);
        let trace = rig.run(10);
        let tail = &trace[trace.len() - 3..];
        assert!(tail.iter().all(|p| *p <= 500.0 && *p >= 450.0), "{trace:?}");
        let budgets: f64 = rig.budgets.iter().flatten().sum();
        assert!(budgets <= 500.0 + 1e-6, "{:?}", rig.budgets);
        assert!(rig.budgets.iter().all(Option::is_some));
    }
}
