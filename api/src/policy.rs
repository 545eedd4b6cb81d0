//! PowerCappingPolicy: a watt budget for the pods a selector matches.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    MAX_POWER_WATTS,
    bounds::{
        self, MAX_ALGORITHMS, MAX_CLOCK_MHZ, MAX_DEVICE_ID_LENGTH, MAX_DEVICE_WATTS,
        MAX_HOUR_JOULES, MAX_LABEL_LENGTH, MAX_LIFETIME_JOULES, MAX_MATCHED_POD_COUNT,
        MAX_MATCHED_PODS, MAX_MEASURED_WATTS, MAX_NAME_LENGTH, MAX_NODE_DEVICES, MAX_POLICY_NODES,
        MAX_PRIORITY, MIN_PRIORITY,
    },
};

/// Keeps the measured power of the selected pods' devices under a budget.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "climatik.io",
    version = "v1alpha1",
    kind = "PowerCappingPolicy",
    plural = "powercappingpolicies",
    singular = "powercappingpolicy",
    shortname = "pcp",
    category = "climatik",
    namespaced,
    doc = "A watt budget for the GPUs and CPUs of the pods a selector matches.",
    status = "PowerCappingPolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","description":"The policy is observed and acted on","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Algorithm","type":"string","description":"The algorithm asked for; empty means the default feedback controller","jsonPath":".spec.customAlgorithms[0].name"}"#,
    printcolumn = r#"{"name":"Cap","type":"integer","description":"Power cap in watts","jsonPath":".spec.powerCapLimit"}"#,
    printcolumn = r#"{"name":"Effective","type":"integer","description":"The cap the monitor enforces, in watts","jsonPath":".status.effectiveCapWatts"}"#,
    printcolumn = r#"{"name":"Power","type":"number","description":"Measured power in watts","jsonPath":".status.currentPower"}"#,
    printcolumn = r#"{"name":"Capping","type":"boolean","description":"Power is above the threshold","jsonPath":".status.cappingActionRequired"}"#,
    printcolumn = r#"{"name":"Allocated","type":"integer","priority":1,"description":"The watts a PowerBudget allocates to the policy","jsonPath":".status.allocatedWatts"}"#,
    printcolumn = r#"{"name":"Priority","type":"integer","priority":1,"description":"Priority in a shared PowerBudget: spec.priority, else the pods' PriorityClass value, else 0","jsonPath":".status.effectivePriority"}"#,
    printcolumn = r#"{"name":"DryRun","type":"boolean","priority":1,"jsonPath":".spec.dryRun"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","priority":1,"jsonPath":".status.matchedPodCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.minWatts) || self.minWatts <= self.powerCapLimit",
     "message": "minWatts must not exceed powerCapLimit"},
]))]
pub struct PowerCappingPolicySpec {
    /// Power budget in watts for all selected devices together.
    #[schemars(range(min = 1, max = MAX_POWER_WATTS))]
    pub power_cap_limit: i64,

    /// Pods in the policy's namespace whose devices count against the budget.
    #[schemars(schema_with = "bounds::selector_schema")]
    pub selector: LabelSelector,

    /// Percent of the cap above which capping starts (1–100).
    #[serde(default = "default_capping_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub capping_threshold: i32,

    /// Algorithms that turn observed power into frequencies; the first one
    /// is used. Empty means the default feedback controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ALGORITHMS))]
    pub custom_algorithms: Vec<CustomAlgorithm>,

    /// Observe and report, but never change any frequency.
    #[serde(default)]
    pub dry_run: bool,

    /// Which devices the policy measures and acts on.
    #[serde(default = "default_devices")]
    #[schemars(length(min = 1, max = 2))]
    pub devices: Vec<DeviceKind>,

    /// Priority among the policies sharing a PowerBudget: higher is served
    /// first and cut last. Absent means the highest priority of the pods
    /// the selector matches (their PriorityClass value, `status.podPriority`),
    /// else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_PRIORITY, max = MAX_PRIORITY))]
    pub priority: Option<i32>,

    /// Watts a shared PowerBudget guarantees the policy (never more than
    /// its cap): cut only when the guarantees together exceed the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_POWER_WATTS))]
    pub min_watts: Option<i64>,
}

/// Default capping threshold: start acting at 90 % of the cap, leaving room
/// for the few seconds of Prometheus staleness.
pub const DEFAULT_CAPPING_THRESHOLD: i32 = 90;

fn default_capping_threshold() -> i32 {
    DEFAULT_CAPPING_THRESHOLD
}

fn default_devices() -> Vec<DeviceKind> {
    vec![DeviceKind::Gpu]
}

/// A named algorithm with string parameters, as in the original design.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomAlgorithm {
    /// Algorithm name: `feedback`, `dynamic-frequency-scaler`,
    /// `budget-allocator` or `feedback-budget`.
    #[schemars(length(min = 1, max = MAX_LABEL_LENGTH))]
    pub name: String,
    /// Algorithm parameters; each algorithm documents its own keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "bounds::parameters_schema")]
    pub parameters: BTreeMap<String, String>,
}

/// A kind of device a policy can measure and tune.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DeviceKind {
    /// GPUs, through SM clock locking.
    #[serde(rename = "GPU")]
    Gpu,
    /// CPUs, through cpufreq's `scaling_max_freq`.
    #[serde(rename = "CPU")]
    Cpu,
}

/// What the power usage monitor observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PowerCappingPolicyStatus {
    /// Power is above `cappingThreshold` percent of the cap.
    #[serde(default)]
    pub capping_action_required: bool,

    /// Measured power of all selected devices, in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub current_power: Option<f64>,

    /// Measured GPU power, in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub gpu_power: Option<f64>,

    /// Measured CPU power (Kepler, package zone), in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub cpu_power: Option<f64>,

    /// The cap in force when the status was written, in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_POWER_WATTS))]
    pub power_cap_limit: Option<i64>,

    /// The cap the monitor enforces, in watts: the policy's own cap, or
    /// its PowerBudget allocation when that is smaller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_POWER_WATTS))]
    pub effective_cap_watts: Option<i64>,

    /// The watts the PowerBudget covering the policy allocates to it;
    /// absent when no budget covers the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_POWER_WATTS))]
    pub allocated_watts: Option<i64>,

    /// The highest `spec.priority` of the matched pods (the value of their
    /// PriorityClass, which the API server fills in), within the policy
    /// priority range; absent when no matched pod has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_PRIORITY, max = MAX_PRIORITY))]
    pub pod_priority: Option<i32>,

    /// The priority a shared PowerBudget arbitrates the policy at:
    /// `spec.priority`, else `podPriority`, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_PRIORITY, max = MAX_PRIORITY))]
    pub effective_priority: Option<i32>,

    /// Energy the selected devices used and time the policy was capping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<PolicyEnergy>,

    /// Power per node and device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_POLICY_NODES))]
    pub nodes: Vec<NodePower>,

    /// Names of the pods the selector matched (at most 100;
    /// `matchedPodCount` is exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_MATCHED_PODS), inner(length(max = MAX_NAME_LENGTH)))]
    pub matched_pods: Vec<String>,

    /// Number of pods the selector matched.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_MATCHED_POD_COUNT))]
    pub matched_pod_count: i32,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// When the status was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Time>,

    /// Ready, MetricsAvailable, Capping, CapReachable, AlgorithmValid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "bounds::conditions_schema")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Energy of a policy's devices: measured power times the time between
/// two measurements in a row (an interval longer than three periods is
/// left out: the power in between is unknown).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEnergy {
    /// Joules over the policy's life. Kept across controller restarts and
    /// leader changes: each measurement adds to the stored value.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = MAX_LIFETIME_JOULES))]
    pub lifetime_joules: f64,
    /// Joules over the last hour, in one-minute steps. Held in the
    /// controller's memory; a controller that starts (or becomes the
    /// leader) takes the stored value as the hour so far, which ages out
    /// an hour after it was written.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = MAX_HOUR_JOULES))]
    pub last_hour_joules: f64,
    /// Share of the last hour (0–1) the Capping condition was True; time
    /// not measured counts as not capping.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub throttled_fraction: f64,
}

/// Power observed on one node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePower {
    /// Node name.
    #[schemars(length(min = 1, max = MAX_NAME_LENGTH))]
    pub node_name: String,
    /// Power of the selected devices on this node, in watts.
    #[schemars(range(min = 0.0, max = MAX_MEASURED_WATTS))]
    pub power_watts: f64,
    /// Per-device readings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_NODE_DEVICES))]
    pub devices: Vec<DevicePower>,
}

/// Power observed on one device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicePower {
    /// GPU UUID, or `cpu` for the node's CPU packages.
    #[schemars(length(min = 1, max = MAX_DEVICE_ID_LENGTH))]
    pub device_id: String,
    /// Power in watts (all packages for `cpu`).
    #[schemars(range(min = 0.0, max = MAX_DEVICE_WATTS))]
    pub power_watts: f64,
    /// SM clock (GPU) in MHz, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = MAX_CLOCK_MHZ))]
    pub frequency_mhz: Option<f64>,
}

impl PowerCappingPolicyStatus {
    /// `(node, device, watts)` of every device measured, ordered by node
    /// and device.
    pub fn device_powers(&self) -> Vec<(&str, &str, f64)> {
        let mut all: Vec<(&str, &str, f64)> = self
            .nodes
            .iter()
            .flat_map(|n| {
                n.devices
                    .iter()
                    .map(|d| (n.node_name.as_str(), d.device_id.as_str(), d.power_watts))
            })
            .collect();
        all.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        all
    }
}

/// The priority a policy with `spec` is arbitrated at in a shared
/// PowerBudget when its pods' highest priority is `pod_priority`: its own
/// `spec.priority`, else its pods', else 0.
pub fn effective_priority(spec: &PowerCappingPolicySpec, pod_priority: Option<i32>) -> i32 {
    spec.priority.or(pod_priority).unwrap_or(0)
}

impl PowerCappingPolicy {
    /// The priority a shared PowerBudget arbitrates the policy at, from its
    /// spec and the pod priority its status last recorded
    /// ([`effective_priority`]).
    pub fn effective_priority(&self) -> i32 {
        effective_priority(
            &self.spec,
            self.status.as_ref().and_then(|s| s.pod_priority),
        )
    }

    /// The first configured algorithm, if any.
    pub fn algorithm(&self) -> Option<&CustomAlgorithm> {
        self.spec.custom_algorithms.first()
    }

    /// Whether the policy acts on devices of this kind.
    pub fn acts_on(&self, kind: DeviceKind) -> bool {
        self.spec.devices.contains(&kind)
    }
}
