//! NodeFrequencies: the frequency targets for one node, written by the
//! recommender (one field manager per policy) and applied by the node agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::bounds::{
    self, MAX_CLOCK_MHZ, MAX_CPU_ENTRIES, MAX_CPU_ID, MAX_CPUS_PER_NODE, MAX_DEVICE_ID_LENGTH,
    MAX_DEVICE_WATTS, MAX_GPU_ENTRIES, MAX_GPU_INDEX, MAX_GPUS_PER_NODE, MAX_LABEL_LENGTH,
    MAX_MESSAGE_LENGTH, MAX_NAME_LENGTH, MAX_POLICY_KEY_LENGTH, MAX_SUPPORTED_CLOCKS,
};

/// Frequency targets for the devices of one node. Named after the node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "climatik.io",
    version = "v1alpha1",
    kind = "NodeFrequencies",
    plural = "nodefrequencies",
    singular = "nodefrequencies",
    shortname = "nf",
    category = "climatik",
    doc = "Frequency targets for the devices of one node, applied by the node agent.",
    status = "NodeFrequenciesStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".status.backend"}"#,
    printcolumn = r#"{"name":"GPU Entries","type":"integer","jsonPath":".status.summary.gpuEntries"}"#,
    printcolumn = r#"{"name":"Applied","type":"integer","jsonPath":".status.summary.applied"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.summary.failed"}"#,
    printcolumn = r#"{"name":"Updated","type":"date","jsonPath":".status.lastUpdated","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeFrequenciesSpec {
    /// The node these targets are for; equal to the object's name.
    #[schemars(length(min = 1, max = MAX_NAME_LENGTH))]
    pub node_name: String,

    /// GPU clock targets. Several entries for one GPU (from different
    /// policies) merge: the lowest target and the lowest budget win.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_GPU_ENTRIES))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["gpuId", "policy"]))]
    pub gpu_frequencies: Vec<GpuFrequency>,

    /// CPU frequency ceilings. Entries for one CPU merge like GPU entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CPU_ENTRIES))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cpuId", "policy"]))]
    pub cpu_frequencies: Vec<CpuFrequency>,
}

/// Entry key used when a person writes an entry by hand.
pub const MANUAL_POLICY: &str = "manual";

fn manual_policy() -> String {
    MANUAL_POLICY.to_string()
}

/// Target for one GPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuFrequency {
    /// GPU UUID as NVML and DCGM report it (`GPU-…`).
    #[schemars(length(min = 1, max = MAX_DEVICE_ID_LENGTH))]
    pub gpu_id: String,
    /// Locked SM clock in MHz; snapped to a supported clock by the agent.
    #[schemars(range(min = 1, max = MAX_CLOCK_MHZ))]
    pub target_frequency: i32,
    /// Optional watt budget the agent holds with its own ~1 Hz loop,
    /// at or below `targetFrequency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = MAX_DEVICE_WATTS))]
    pub power_budget_watts: Option<f64>,
    /// Optional budget group: this node's entries of the same policy with
    /// the same group share the sum of their `powerBudgetWatts`, which the
    /// agent re-splits across their GPUs about once a second by measured
    /// demand (each within its power-limit range, never above its
    /// `targetFrequency`). Without it the budget is this GPU's alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_POLICY_KEY_LENGTH))]
    pub budget_group: Option<String>,
    /// `namespace/name` of the policy that wants this entry, or `manual`.
    #[serde(default = "manual_policy")]
    #[schemars(length(min = 1, max = MAX_POLICY_KEY_LENGTH))]
    pub policy: String,
    /// When the agent restores defaults unless the entry was renewed;
    /// required, so no entry holds a device forever. The agent also caps
    /// the lifetime it grants at its `--max-entry-ttl`.
    pub expires_at: Time,
    /// The entry also counts past `expiresAt` while the Lease the agent
    /// names in `status.entryLease` is renewed, and for the agent's
    /// `--entry-lease-grace` after it last saw a renewal. The recommender
    /// sets it only on nodes whose agent announces its own Lease there, so
    /// one renewed Lease keeps all its entries alive instead of a write per
    /// entry. Ignored by an agent that announces no Lease.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept_by_lease: bool,
}

/// Ceiling for one CPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuFrequency {
    /// Logical CPU number, as in `/sys/devices/system/cpu/cpuN`.
    #[schemars(range(min = 0, max = MAX_CPU_ID))]
    pub cpu_id: i32,
    /// Maximum frequency in MHz; clamped to the CPU's limits by the agent.
    #[schemars(range(min = 1, max = MAX_CLOCK_MHZ))]
    pub target_frequency: i32,
    /// `namespace/name` of the policy that wants this entry, or `manual`.
    #[serde(default = "manual_policy")]
    #[schemars(length(min = 1, max = MAX_POLICY_KEY_LENGTH))]
    pub policy: String,
    /// When the agent restores defaults unless the entry was renewed;
    /// required, as for GPU entries.
    pub expires_at: Time,
    /// As for GPU entries: also counts while the agent's `entryLease` is
    /// renewed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept_by_lease: bool,
}

/// What the node agent did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFrequenciesStatus {
    /// Per-GPU result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_GPUS_PER_NODE))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["gpuId"]))]
    pub gpu_frequencies: Vec<GpuFrequencyStatus>,
    /// Per-CPU result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CPUS_PER_NODE))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cpuId"]))]
    pub cpu_frequencies: Vec<CpuFrequencyStatus>,
    /// The node's GPUs as the agent found them, so the recommender can plan
    /// within real clock ranges before it ever writes a target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_GPUS_PER_NODE))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["gpuId"]))]
    pub gpus: Vec<GpuInventory>,
    /// How many entries and device results the lists above hold, for
    /// `kubectl get nodefrequencies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<NodeFrequenciesSummary>,
    /// `namespace/name` of the Lease whose renewals keep this node's
    /// `keptByLease` entries alive: the agent watches it and says so here
    /// once it has read it. Absent: only `expiresAt` counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_POLICY_KEY_LENGTH))]
    pub entry_lease: Option<String>,
    /// Backend in use: `nvml`, `cpufreq`, `sim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_LABEL_LENGTH))]
    pub backend: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the agent last wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Time>,
    /// Agent conditions, e.g. Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "bounds::conditions_schema")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Counts over one status, so `kubectl get` shows at a glance whether a
/// node's targets are in force.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFrequenciesSummary {
    /// GPU entries in the spec, live or not.
    #[schemars(range(min = 0, max = MAX_GPU_ENTRIES))]
    pub gpu_entries: i32,
    /// Devices (GPUs and CPUs) with a live target whose state is
    /// `Applied`; a device restored after its entries ended is not counted.
    #[schemars(range(min = 0, max = MAX_GPUS_PER_NODE + MAX_CPUS_PER_NODE))]
    pub applied: i32,
    /// Devices (GPUs and CPUs) whose state is `Failed`.
    #[schemars(range(min = 0, max = MAX_GPUS_PER_NODE + MAX_CPUS_PER_NODE))]
    pub failed: i32,
}

/// One GPU of the node and the clocks it supports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minFrequency <= self.maxFrequency",
     "message": "minFrequency must not exceed maxFrequency"},
    {"rule": "!has(self.supportedFrequencies) || self.supportedFrequencies.all(f, f >= self.minFrequency && f <= self.maxFrequency)",
     "message": "supportedFrequencies must lie within minFrequency..maxFrequency"},
]))]
pub struct GpuInventory {
    /// GPU UUID.
    #[schemars(length(min = 1, max = MAX_DEVICE_ID_LENGTH))]
    pub gpu_id: String,
    /// Index on the node (`nvidia0` is 0).
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_GPU_INDEX))]
    pub index: i32,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = MAX_LABEL_LENGTH))]
    pub model: String,
    /// Lowest supported SM clock, in MHz.
    #[schemars(range(min = 1, max = MAX_CLOCK_MHZ))]
    pub min_frequency: i32,
    /// Highest supported SM clock, in MHz (the default when unlocked).
    #[schemars(range(min = 1, max = MAX_CLOCK_MHZ))]
    pub max_frequency: i32,
    /// Every supported SM clock, in MHz, ascending (may be omitted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SUPPORTED_CLOCKS), inner(range(min = 1, max = MAX_CLOCK_MHZ)))]
    pub supported_frequencies: Vec<i32>,
    /// Power limit the GPU enforces by itself, in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_DEVICE_WATTS))]
    pub power_limit_watts: Option<f64>,
    /// Lowest power limit the GPU accepts, in watts. A budget below it can
    /// only be held by the agent's slower clock loop, so budget-allocator
    /// never hands out less.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_DEVICE_WATTS))]
    pub min_power_limit_watts: Option<f64>,
}

/// Outcome for one device.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DeviceState {
    /// The target is in force (possibly clamped; see the message).
    Applied,
    /// Not yet applied.
    Pending,
    /// The device refused the setting; see the message.
    Failed,
    /// The device or node cannot do this (no such GPU, no cpufreq).
    Unsupported,
}

/// Result for one GPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuFrequencyStatus {
    /// GPU UUID.
    #[schemars(length(min = 1, max = MAX_DEVICE_ID_LENGTH))]
    pub gpu_id: String,
    /// SM clock now in force, in MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_CLOCK_MHZ))]
    pub current_frequency: Option<i32>,
    /// The merged target after clamping, in MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_CLOCK_MHZ))]
    pub target_frequency: Option<i32>,
    /// The merged power budget, in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_DEVICE_WATTS))]
    pub power_budget_watts: Option<f64>,
    /// Last power reading, in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_DEVICE_WATTS))]
    pub power_watts: Option<f64>,
    /// Outcome.
    pub state: DeviceState,
    /// Human-readable detail, e.g. `clamped 250 -> 300 MHz`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = MAX_MESSAGE_LENGTH))]
    pub message: String,
}

/// Result for one CPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuFrequencyStatus {
    /// Logical CPU number.
    #[schemars(range(min = 0, max = MAX_CPU_ID))]
    pub cpu_id: i32,
    /// `scaling_max_freq` now in force, in MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_CLOCK_MHZ))]
    pub current_frequency: Option<i32>,
    /// The merged target after clamping, in MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_CLOCK_MHZ))]
    pub target_frequency: Option<i32>,
    /// Outcome.
    pub state: DeviceState,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = MAX_MESSAGE_LENGTH))]
    pub message: String,
}
