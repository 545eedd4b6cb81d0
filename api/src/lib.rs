//! Climatik's API: the custom resources, the annotation and label names that
//! tie workloads to policies, the parser for human-written power values, and
//! what a workload's cap annotations mean (the webhook validates them, the
//! controller's policy generator turns them into a PowerCappingPolicy).
//!
//! Every other crate depends on this one, so it stays free of runtime
//! concerns (no clients, no I/O beyond CRD rendering).

pub mod annotations;
pub mod bounds;
pub mod budget;
pub mod crd;
pub mod generated;
pub mod names;
pub mod nodefrequencies;
pub mod policy;
pub mod power;
pub mod workload;

pub use budget::{BudgetAllocation, BudgetChild, PowerBudget, PowerBudgetSpec, PowerBudgetStatus};
pub use nodefrequencies::{
    CpuFrequency, CpuFrequencyStatus, DeviceState, GpuFrequency, GpuFrequencyStatus, GpuInventory,
    NodeFrequencies, NodeFrequenciesSpec, NodeFrequenciesStatus, NodeFrequenciesSummary,
};
pub use policy::{
    CustomAlgorithm, DeviceKind, DevicePower, NodePower, PolicyEnergy, PowerCappingPolicy,
    PowerCappingPolicySpec, PowerCappingPolicyStatus,
};
pub use power::{MAX_POWER_WATTS, PowerParseError, parse_power};

/// API group of every Climatik resource.
pub const GROUP: &str = "climatik.io";
/// The single served and stored version.
pub const VERSION: &str = "v1alpha1";
