//! A policy's effective cap: the smaller of its own cap
//! (`spec.powerCapLimit`) and what its PowerBudget allocates to it
//! (`status.allocatedWatts`). The monitor's capping verdict and the
//! recommender's targets both read it here, so a budget lowers the one
//! they act on.

use climatik_api::PowerCappingPolicy;

/// The watts `policy`'s devices are held to. A budget may allocate a
/// policy nothing (the lowest priority of a deep cut); its cap is then
/// 1 W, the least `status.effectiveCapWatts` accepts: at 0 W the monitor's
/// status write would be refused and the recommender would keep planning
/// on the allocation before the cut.
pub fn effective_cap_watts(policy: &PowerCappingPolicy) -> i64 {
    let own = policy.spec.power_cap_limit;
    match policy.status.as_ref().and_then(|s| s.allocated_watts) {
        Some(allocated) => own.min(allocated).max(1),
        None => own,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use climatik_api::PowerCappingPolicyStatus;

    fn policy(cap: i64, allocated: Option<i64>) -> PowerCappingPolicy {
        let mut policy: PowerCappingPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "PowerCappingPolicy",
            "metadata": { "name": "p", "namespace": "ns" },
            "spec": { "powerCapLimit": cap, "selector": {} },
        }))
        .expect("a valid policy");
        policy.status = Some(PowerCappingPolicyStatus {
            allocated_watts: allocated,
            ..Default::default()
        });
        policy
    }

    #[test]
    fn the_smaller_of_cap_and_allocation_and_never_below_one_watt() {
        assert_eq!(effective_cap_watts(&policy(500, None)), 500);
        assert_eq!(effective_cap_watts(&policy(500, Some(300))), 300);
        assert_eq!(effective_cap_watts(&policy(500, Some(800))), 500);
        // Allocated nothing: the least the status schema accepts.
        assert_eq!(effective_cap_watts(&policy(500, Some(0))), 1);
    }
}
