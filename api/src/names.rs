//! Annotation, label, finalizer and field-manager names shared by the
//! webhook, the controllers and the node agent. Kept in one place so the
//! parts cannot drift apart.

/// Workload annotation that opts a Deployment, StatefulSet, Job or CronJob
/// into capping: `"300"`, `"300W"`, `"1.5kW"`.
pub const ANNOTATION_POWER_CAP: &str = "climatik.io/power-cap";
/// Optional companion: capping threshold in percent of the cap (1–100).
pub const ANNOTATION_CAPPING_THRESHOLD: &str = "climatik.io/capping-threshold";
/// Optional companion: `"true"` observes and reports but never changes clocks.
pub const ANNOTATION_DRY_RUN: &str = "climatik.io/dry-run";
/// Optional companion: the generated policy's algorithm, one of [`ALGORITHMS`].
pub const ANNOTATION_ALGORITHM: &str = "climatik.io/algorithm";
/// Optional companion: the generated policy's priority in a shared
/// PowerBudget, a whole number within the bounds of `spec.priority`.
pub const ANNOTATION_PRIORITY: &str = "climatik.io/priority";
/// Optional companion: the generated policy's guarantee in a shared
/// PowerBudget (`spec.minWatts`), a power value no larger than the cap.
pub const ANNOTATION_MIN_POWER: &str = "climatik.io/min-power";
/// The algorithms the recommender implements; the first is the default.
pub const ALGORITHMS: [&str; 4] = [
    "feedback",
    "dynamic-frequency-scaler",
    "budget-allocator",
    "feedback-budget",
];
/// Written by the webhook on the pod template: the cap in watts, normalized.
pub const ANNOTATION_POWER_CAP_WATTS: &str = "climatik.io/power-cap-watts";
/// On a generated policy: the kind of the workload it was generated for.
pub const ANNOTATION_WORKLOAD_KIND: &str = "climatik.io/workload-kind";
/// On a generated policy: the name of the workload it was generated for.
pub const ANNOTATION_WORKLOAD_NAME: &str = "climatik.io/workload-name";
/// On a generated policy: the apiVersion of the workload it was generated for.
pub const ANNOTATION_WORKLOAD_API_VERSION: &str = "climatik.io/workload-api-version";

/// Pod label that a policy's selector matches; its value is the policy name.
pub const LABEL_POLICY: &str = "climatik.io/policy";
/// Marks a PowerCappingPolicy as generated from an annotation. Policies
/// without it were written by a user and are never modified by the webhook.
pub const LABEL_GENERATED: &str = "climatik.io/generated";
/// Namespace or object label that makes the webhook skip the object.
pub const LABEL_WEBHOOK_OPT_OUT: &str = "climatik.io/webhook";
/// Value of [`LABEL_WEBHOOK_OPT_OUT`] that disables the webhook.
pub const WEBHOOK_OPT_OUT_VALUE: &str = "disabled";

/// Finalizer that earlier versions of the recommender kept on every policy
/// until its frequency entries were removed. Policies carry no finalizer
/// now (deleting one must not wait for the recommender); the recommender
/// lifts this one wherever it still finds it.
pub const LEGACY_FINALIZER_POLICY: &str = "climatik.io/node-frequencies";

/// Field manager of the webhook's server-side applies.
pub const MANAGER_WEBHOOK: &str = "climatik-webhook";
/// Field manager of the power usage monitor's status writes.
pub const MANAGER_CONTROLLER: &str = "climatik-powercapping-controller";
/// Field manager of the node agent's status writes.
pub const MANAGER_FREQTUNER: &str = "climatik-freqtuner";
/// Field manager of the budget controller's allocations and budget
/// statuses, and prefix of its per-budget entry managers
/// ([`budget_entries_manager`]).
pub const MANAGER_BUDGET: &str = "climatik-budget-controller";
/// Prefix of the per-policy field managers of the recommender.
pub const MANAGER_RECOMMENDER_PREFIX: &str = "climatik-recommender";

/// Condition types on a PowerCappingPolicy and a PowerBudget
/// ([`METRICS_AVAILABLE`](conditions::METRICS_AVAILABLE) is on both).
pub mod conditions {
    /// The policy is observed and acted on.
    pub const READY: &str = "Ready";
    /// Power metrics for the matched devices could be read.
    pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
    /// Power is above the threshold and frequencies are being lowered.
    pub const CAPPING: &str = "Capping";
    /// The cap is within what the selected devices can be held to.
    pub const CAP_REACHABLE: &str = "CapReachable";
    /// The configured algorithm and parameters are valid.
    pub const ALGORITHM_VALID: &str = "AlgorithmValid";

    /// On a PowerCappingPolicy, written by the budget controller only when
    /// False: no PowerBudget arbitrates the policy although budgets cover
    /// its nodes (reason `SpansBudgets`: they are not nested in each
    /// other).
    pub const BUDGET_ASSIGNED: &str = "BudgetAssigned";

    /// On a PowerBudget: measured power is within the budget.
    pub const WITHIN_BUDGET: &str = "WithinBudget";
    /// On a PowerBudget: the guarantees (`minWatts`) of the covered
    /// policies alone exceed the watts available to them.
    pub const OVERCOMMITTED: &str = "Overcommitted";
    /// On a PowerBudget with `capUnmanaged`: the covered GPUs no policy
    /// selects draw no more than they would be allotted as the lowest
    /// priority (reported only: nothing caps them yet).
    pub const UNMANAGED_WITHIN_SHARE: &str = "UnmanagedWithinShare";
    /// On a PowerBudget: the budget is usable; False for a parent cycle, an
    /// unknown parent, or nodes outside the parent's.
    pub const VALID: &str = "Valid";
}

/// Longest label value Kubernetes accepts.
const MAX_LABEL_VALUE: usize = 63;

/// Name of the policy generated for a workload: `<kind>-<name>`, lower case.
///
/// The name doubles as a label value, so it is kept within 63 characters;
/// longer names are cut and suffixed with a stable hash so two long names
/// that share a prefix still differ.
pub fn generated_policy_name(kind: &str, name: &str) -> String {
    let full = format!("{}-{}", kind.to_ascii_lowercase(), name);
    if full.len() <= MAX_LABEL_VALUE {
        return full;
    }
    let hash = format!("{:08x}", fnv1a32(full.as_bytes()));
    let keep = MAX_LABEL_VALUE - hash.len() - 1;
    let mut prefix: String = full.chars().take(keep).collect();
    // A label value must end with an alphanumeric character.
    while prefix.ends_with(['-', '.', '_']) {
        prefix.pop();
    }
    format!("{prefix}-{hash}")
}

/// Field manager the recommender uses for one policy's NodeFrequencies
/// entries, so each policy owns exactly its own entries under server-side
/// apply.
pub fn recommender_manager(namespace: &str, policy: &str) -> String {
    // Field manager names are limited to 128 characters.
    let full = format!("{MANAGER_RECOMMENDER_PREFIX}/{namespace}/{policy}");
    if full.len() <= 128 {
        full
    } else {
        format!(
            "{MANAGER_RECOMMENDER_PREFIX}/{:08x}",
            fnv1a32(full.as_bytes())
        )
    }
}

/// The `policy` key of NodeFrequencies entries written for a policy.
pub fn policy_key(namespace: &str, policy: &str) -> String {
    format!("{namespace}/{policy}")
}

/// The `(namespace, name)` of a policy from its [`policy_key`]; `None` for
/// keys no policy has, such as `manual`.
pub fn parse_policy_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('/').filter(|(namespace, name)| {
        !namespace.is_empty() && !name.is_empty() && !name.contains('/')
    })
}

/// Prefix of the `policy` key of the NodeFrequencies entries a PowerBudget
/// with `capUnmanaged` writes for the GPUs no policy selects. A policy's
/// key is `namespace/name`, and neither part may hold a `:`, so no policy
/// key starts with it; [`parse_policy_key`] rejects it (no slash), so the
/// recommender never takes such entries for a deleted policy's.
pub const BUDGET_KEY_PREFIX: &str = "powerbudget:";

/// The `policy` key of the entries PowerBudget `budget` writes.
pub fn budget_key(budget: &str) -> String {
    format!("{BUDGET_KEY_PREFIX}{budget}")
}

/// The PowerBudget a [`budget_key`] belongs to; `None` for other keys.
pub fn parse_budget_key(key: &str) -> Option<&str> {
    key.strip_prefix(BUDGET_KEY_PREFIX)
        .filter(|name| !name.is_empty())
}

/// Field manager of PowerBudget `budget`'s entries: one per budget, so
/// applying one budget's entries never removes another's, nor a policy's.
pub fn budget_entries_manager(budget: &str) -> String {
    let full = format!("{MANAGER_BUDGET}/{budget}");
    if full.len() <= 128 {
        full
    } else {
        format!("{MANAGER_BUDGET}/{:08x}", fnv1a32(full.as_bytes()))
    }
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kind_dash_name() {
        assert_eq!(
            generated_policy_name("Deployment", "vllm"),
            "deployment-vllm"
        );
        assert_eq!(generated_policy_name("Job", "train"), "job-train");
    }

    #[test]
    fn long_names_fit_a_label_value_and_stay_distinct() {
        let a = generated_policy_name("StatefulSet", &"a".repeat(80));
        let b = generated_policy_name("StatefulSet", &format!("{}b", "a".repeat(79)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert_eq!(a, generated_policy_name("StatefulSet", &"a".repeat(80)));
    }

    #[test]
    fn policy_keys_round_trip_and_manual_has_no_policy() {
        assert_eq!(
            parse_policy_key(&policy_key("inference", "llm")),
            Some(("inference", "llm"))
        );
        for key in ["manual", "", "/x", "ns/", "a/b/c"] {
            assert_eq!(parse_policy_key(key), None, "{key}");
        }
    }

    #[test]
    fn budget_keys_round_trip_and_are_no_policy_keys() {
        assert_eq!(parse_budget_key(&budget_key("rack-1")), Some("rack-1"));
        assert_eq!(parse_policy_key(&budget_key("rack-1")), None);
        for key in ["ns/p", "manual", "powerbudget:"] {
            assert_eq!(parse_budget_key(key), None, "{key}");
        }
        assert!(budget_entries_manager(&"b".repeat(253)).len() <= 128);
        assert_ne!(budget_entries_manager("a"), budget_entries_manager("b"));
    }

    #[test]
    fn cut_names_end_alphanumeric_before_hash() {
        let name = format!("{}-{}", "x".repeat(41), "y".repeat(40));
        let generated = generated_policy_name("Deployment", &name);
        assert!(!generated.contains("--"), "{generated}");
    }
}
