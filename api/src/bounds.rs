//! The bounds every list, string and number of the CRDs carries, in one
//! place: the schemas put them in front of the API server, and the
//! consumers (recommender, node agent) check them again for objects stored
//! before the schema had them.
//!
//! Every limit is generous for real hardware and finite on purpose: an
//! unbounded list or number lets one bad write (a bug, or anyone with write
//! access to a status) make a consumer allocate without limit, and the API
//! server refuses CEL rules whose worst-case cost it cannot bound.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// Highest clock of any GPU or CPU, in MHz. Today's parts top out near
/// 3 GHz (GPU SM clocks) and 6 GHz (CPU boost); 10 GHz leaves room and
/// still makes a range of all clocks small.
pub const MAX_CLOCK_MHZ: i32 = 10_000;

/// Most clocks one GPU can list as supported. NVML lists a few hundred at
/// most (an H100 lists 111).
pub const MAX_SUPPORTED_CLOCKS: usize = 1024;

/// Most GPUs on one node. Today's largest boxes hold 16; 64 leaves room.
pub const MAX_GPUS_PER_NODE: usize = 64;
/// Highest GPU index on a node.
pub const MAX_GPU_INDEX: i32 = MAX_GPUS_PER_NODE as i32 - 1;

/// Most GPU entries in one NodeFrequencies: every GPU of the largest node
/// targeted by 16 policies at once.
pub const MAX_GPU_ENTRIES: usize = MAX_GPUS_PER_NODE * 16;

/// Most logical CPUs on one node: Linux's largest `NR_CPUS` (x86-64
/// `MAXSMP`). CPU numbers run from 0 to this minus one.
pub const MAX_CPUS_PER_NODE: usize = 8192;
/// Highest logical CPU number.
pub const MAX_CPU_ID: i32 = MAX_CPUS_PER_NODE as i32 - 1;

/// Most CPU entries in one NodeFrequencies: one per CPU of the largest node
/// (the recommender writes one entry per CPU and policy).
pub const MAX_CPU_ENTRIES: usize = MAX_CPUS_PER_NODE;

/// Highest power of one device (power budget, reading, limit), in watts:
/// a GPU draws about 1 kW today.
pub const MAX_DEVICE_WATTS: f64 = 100_000.0;

/// Highest power a policy's status reports for a node or for all its
/// devices, in watts (1 GW: the cap itself stops at 10 MW, but a reading
/// may overshoot it).
pub const MAX_MEASURED_WATTS: f64 = 1e9;

/// Most joules a policy's status reports for the last hour: the highest
/// reading for a whole hour.
pub const MAX_HOUR_JOULES: f64 = MAX_MEASURED_WATTS * 3600.0;

/// Most joules a policy's status reports over its life: the highest
/// reading for about 30 years, so no real policy reaches it. Not more: the
/// API server reads a schema's `maximum` as an int64 when it is whole, and
/// 1e19 overflows it.
pub const MAX_LIFETIME_JOULES: f64 = 1e18;

/// Most nodes a policy's status lists: Kubernetes' largest supported
/// cluster.
pub const MAX_POLICY_NODES: usize = 5000;

/// Most devices listed per node in a policy's status: every GPU plus the
/// node's CPUs.
pub const MAX_NODE_DEVICES: usize = MAX_GPUS_PER_NODE + 1;

/// Most pod names in a policy's `status.matchedPods` (the count is exact).
pub const MAX_MATCHED_PODS: usize = 100;

/// Highest `matchedPodCount`: Kubernetes supports 150 000 pods per
/// cluster.
pub const MAX_MATCHED_POD_COUNT: i32 = 1_000_000;

/// Most algorithms a policy lists (only the first is used).
pub const MAX_ALGORITHMS: usize = 8;

/// Most parameters of one algorithm, and the longest key and value.
pub const MAX_PARAMETERS: usize = 32;
pub const MAX_PARAMETER_KEY_LENGTH: usize = 64;
pub const MAX_PARAMETER_VALUE_LENGTH: usize = 256;

/// Most conditions in a status (each names a distinct type; we write four).
pub const MAX_CONDITIONS: usize = 16;

/// Longest Kubernetes object name (a DNS subdomain): nodes, pods.
pub const MAX_NAME_LENGTH: usize = 253;

/// Longest device id: a GPU UUID (`GPU-` and 36 characters) or `cpu`, with
/// room for other vendors' formats.
pub const MAX_DEVICE_ID_LENGTH: usize = 128;

/// Longest entry key: `namespace/name` (63 + 1 + 253).
pub const MAX_POLICY_KEY_LENGTH: usize = 317;

/// Longest short label: an algorithm name, a backend, a GPU model.
pub const MAX_LABEL_LENGTH: usize = 256;

/// Longest per-device status message.
pub const MAX_MESSAGE_LENGTH: usize = 1024;

/// Lowest and highest policy priority: the range of a Kubernetes
/// PriorityClass value that users may set (system classes sit above it),
/// so a policy can take its pods' PriorityClass value as its own.
pub const MIN_PRIORITY: i32 = -1_000_000_000;
pub const MAX_PRIORITY: i32 = 1_000_000_000;

/// Most policies one PowerBudget's status lists: with about 200 bytes per
/// entry this keeps the object far below the API server's size limit.
pub const MAX_BUDGET_ALLOCATIONS: usize = 1000;

/// Most child budgets one PowerBudget's status lists: a row of racks or a
/// room of rows, with room to spare, at about 300 bytes per entry.
pub const MAX_BUDGET_CHILDREN: usize = 1000;

/// Longest namespace name (a DNS label).
pub const MAX_NAMESPACE_LENGTH: usize = 63;

/// Most label-selector terms and values, and the longest label key and
/// value, in a policy's selector (Kubernetes bounds labels to 317 and 63
/// characters; it bounds the selector only by the object's size).
const MAX_SELECTOR_TERMS: usize = 64;
const MAX_SELECTOR_VALUES: usize = 256;
const MAX_LABEL_KEY_LENGTH: usize = 317;
const MAX_LABEL_VALUE_LENGTH: usize = 63;

/// `parameters` of an algorithm: a string map with bounded size, keys and
/// values. Keys are bounded with a CEL rule (a structural schema cannot
/// say anything about map keys); its cost is bounded by `maxProperties`.
pub fn parameters_schema(_: &mut SchemaGenerator) -> Schema {
    let rule = format!("self.all(k, size(k) <= {MAX_PARAMETER_KEY_LENGTH})");
    json_schema!({
        "type": "object",
        "maxProperties": MAX_PARAMETERS,
        "additionalProperties": {"type": "string", "maxLength": MAX_PARAMETER_VALUE_LENGTH},
        "x-kubernetes-validations": [{
            "rule": rule,
            "message": format!("parameter names are at most {MAX_PARAMETER_KEY_LENGTH} characters"),
        }],
    })
}

/// A status's conditions: Kubernetes' own `Condition` schema with the
/// bounds upstream's Go type carries (type 316, reason 1024, message 32768
/// characters), and at most [`MAX_CONDITIONS`] of them.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("maxItems".into(), MAX_CONDITIONS.into());
    for (field, max) in [
        ("type", 316),
        ("reason", 1024),
        ("message", 32768),
        ("status", 16),
    ] {
        if let Some(property) = schema
            .pointer_mut(&format!("/items/properties/{field}"))
            .and_then(|p| p.as_object_mut())
        {
            property.insert("maxLength".into(), max.into());
        }
    }
    schema
}

/// A label selector with every list, map and string bounded.
pub fn selector_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = LabelSelector::json_schema(generator);
    let bounds: [(&str, &str, usize); 6] = [
        (
            "/properties/matchLabels",
            "maxProperties",
            MAX_SELECTOR_TERMS,
        ),
        (
            "/properties/matchLabels/additionalProperties",
            "maxLength",
            MAX_LABEL_VALUE_LENGTH,
        ),
        (
            "/properties/matchExpressions",
            "maxItems",
            MAX_SELECTOR_TERMS,
        ),
        (
            "/properties/matchExpressions/items/properties/key",
            "maxLength",
            MAX_LABEL_KEY_LENGTH,
        ),
        (
            "/properties/matchExpressions/items/properties/values",
            "maxItems",
            MAX_SELECTOR_VALUES,
        ),
        (
            "/properties/matchExpressions/items/properties/values/items",
            "maxLength",
            MAX_LABEL_VALUE_LENGTH,
        ),
    ];
    for (pointer, keyword, max) in bounds {
        if let Some(node) = schema.pointer_mut(pointer).and_then(|p| p.as_object_mut()) {
            node.insert(keyword.into(), max.into());
        }
    }
    if let Some(node) = schema
        .pointer_mut("/properties/matchExpressions/items/properties/operator")
        .and_then(|p| p.as_object_mut())
    {
        node.insert("maxLength".into(), 16.into());
    }
    schema
}
