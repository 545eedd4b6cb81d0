//! PowerBudget: a watt budget for a group of nodes (a rack, a row, a room)
//! that the PowerCappingPolicies on those nodes share by priority.
//!
//! The budget covers the nodes its `nodeSelector` matches. What no policy
//! selects still draws power: GPUs on covered nodes outside every policy
//! are measured and counted as unmanaged, and `reservedWatts` stands for
//! what Climatik cannot measure (CPUs, fans, NICs). The rest is divided
//! among the policies as `docs/design.md` ("PowerBudget") describes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    MAX_POWER_WATTS,
    bounds::{
        self, MAX_BUDGET_ALLOCATIONS, MAX_BUDGET_CHILDREN, MAX_MEASURED_WATTS, MAX_NAME_LENGTH,
        MAX_NAMESPACE_LENGTH, MAX_PRIORITY, MIN_PRIORITY,
    },
};

/// Shares a watt budget among the policies on the nodes it covers.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "climatik.io",
    version = "v1alpha1",
    kind = "PowerBudget",
    plural = "powerbudgets",
    singular = "powerbudget",
    shortname = "pb",
    category = "climatik",
    doc = "A watt budget for the nodes a selector matches, shared by the policies on them by priority.",
    status = "PowerBudgetStatus",
    printcolumn = r#"{"name":"Watts","type":"integer","description":"The budget in watts","jsonPath":".spec.watts"}"#,
    printcolumn = r#"{"name":"Measured","type":"number","description":"Measured power of everything covered, in watts","jsonPath":".status.measuredWatts"}"#,
    printcolumn = r#"{"name":"Headroom","type":"number","description":"Watts of the budget not allocated","jsonPath":".status.headroomWatts"}"#,
    printcolumn = r#"{"name":"WithinBudget","type":"string","description":"Measured power is within the budget","jsonPath":".status.conditions[?(@.type==\"WithinBudget\")].status"}"#,
    printcolumn = r#"{"name":"Parent","type":"string","priority":1,"jsonPath":".spec.parent"}"#,
    printcolumn = r#"{"name":"Granted","type":"number","priority":1,"description":"Watts its parent grants it","jsonPath":".status.grantedWatts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PowerBudgetSpec {
    /// The budget in watts for everything on the covered nodes.
    #[schemars(range(min = 1, max = MAX_POWER_WATTS))]
    pub watts: i64,

    /// The nodes the budget covers, by node label (a rack, a row, a zone).
    #[schemars(schema_with = "bounds::selector_schema")]
    pub node_selector: LabelSelector,

    /// Name of a larger budget this one draws from. Its nodes must be
    /// inside the parent's; a cycle or an unknown parent makes the budget
    /// invalid (condition `Valid`). The budget then has the smaller of its
    /// `watts` and what the parent grants it, and the parent's tree is
    /// arbitrated as one: a cut of the parent reaches the policies of
    /// every child, lowest priority first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_NAME_LENGTH))]
    pub parent: Option<String>,

    /// Watts set aside for what Climatik cannot measure on the covered
    /// nodes (CPUs, fans, NICs).
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_POWER_WATTS))]
    pub reserved_watts: i64,

    /// Also cap the GPUs on covered nodes that no policy selects, as one
    /// claim of the lowest priority: NodeFrequencies entries (policy key
    /// `powerbudget:NAME`) hold them to that claim's share, at their
    /// highest clock. The condition `UnmanagedWithinShare` says whether
    /// the share covers what they want. Off: their measured draw comes off
    /// the top of the budget and nothing caps them.
    #[serde(default)]
    pub cap_unmanaged: bool,
}

/// What the budget controller observed and decided.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PowerBudgetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The watts its parent grants it: the smaller of `spec.watts` and
    /// what its subtree is allocated plus what the parent leaves
    /// unallocated. Absent on a budget without a parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub granted_watts: Option<f64>,

    /// Measured power of every GPU on the covered nodes (its children's
    /// included), plus the `reservedWatts` of it and its children, in
    /// watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub measured_watts: Option<f64>,

    /// Measured power of the covered GPUs no policy selects, in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub unmanaged_watts: Option<f64>,

    /// Watts its own policies share: the budget (or the watts granted to
    /// it, when fewer) less its reserved and unmanaged power and what its
    /// children take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub available_watts: Option<f64>,

    /// Watts of the budget not allocated to any policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub headroom_watts: Option<f64>,

    /// Each covered policy's share, highest priority first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_BUDGET_ALLOCATIONS))]
    pub allocations: Vec<BudgetAllocation>,

    /// Each child budget's share of this one, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_BUDGET_CHILDREN))]
    pub children: Vec<BudgetChild>,

    /// WithinBudget, Overcommitted, MetricsAvailable, Valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "bounds::conditions_schema")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One policy's share of a budget.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetAllocation {
    /// The policy's namespace.
    #[schemars(length(min = 1, max = MAX_NAMESPACE_LENGTH))]
    pub namespace: String,
    /// The policy's name.
    #[schemars(length(min = 1, max = MAX_NAME_LENGTH))]
    pub name: String,
    /// The priority the policy was arbitrated at.
    #[schemars(range(min = MIN_PRIORITY, max = MAX_PRIORITY))]
    pub priority: i32,
    /// The policy's guarantee, in watts.
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub min_watts: f64,
    /// The policy's estimated demand, in watts.
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub demand_watts: f64,
    /// The watts allocated to the policy.
    #[schemars(range(min = 0, max = MAX_POWER_WATTS))]
    pub allocated_watts: i64,
}

/// One child budget's share of its parent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetChild {
    /// The child budget's name.
    #[schemars(length(min = 1, max = MAX_NAME_LENGTH))]
    pub name: String,
    /// The child's `spec.watts`.
    #[schemars(range(min = 0, max = MAX_POWER_WATTS))]
    pub watts: i64,
    /// What its subtree asks for, in watts: its policies' estimated demand
    /// plus its reserved and unmanaged power.
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub demand_watts: f64,
    /// What its subtree takes of this budget, in watts: its policies'
    /// allocations plus its reserved and unmanaged power.
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub allocated_watts: f64,
}
