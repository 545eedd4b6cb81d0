//! A policy's effective cap: the smaller of its own cap
//! (`spec.powerCapLimit`) and what its PowerBudget allocates to it
//! (`status.allocatedWatts`). The monitor's capping verdict and the
//! recommender's targets both read it here, so a budget lowers the one
//! they act on.

use climatik_api::PowerCappingPolicy;

/// The watts `policy`'s devices are held to.
pub fn effective_cap_watts(policy: &PowerCappingPolicy) -> i64 {
    let own = policy.spec.power_cap_limit;
    match policy.status.as_ref().and_then(|s| s.allocated_watts) {
        Some(allocated) => own.min(allocated),
        None => own,
    }
}
