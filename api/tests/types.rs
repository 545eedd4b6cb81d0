//! The types read what users write and keep the original field names.

use climatik_api::{DeviceKind, DeviceState, NodeFrequencies, PowerBudget, PowerCappingPolicy};

#[test]
fn a_minimal_policy_gets_the_defaults() {
    let policy: PowerCappingPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerCappingPolicy",
        "metadata": {"name": "llm", "namespace": "default"},
        "spec": {"powerCapLimit": 300, "selector": {"matchLabels": {"app": "vllm"}}}
    }))
    .expect("policy parses");
    assert_eq!(policy.spec.power_cap_limit, 300);
    assert_eq!(policy.spec.capping_threshold, 90);
    assert!(!policy.spec.dry_run);
    assert!(policy.acts_on(DeviceKind::Gpu));
    assert!(!policy.acts_on(DeviceKind::Cpu));
    assert!(policy.algorithm().is_none());
}

#[test]
fn the_original_fields_keep_their_names() {
    let policy: PowerCappingPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerCappingPolicy",
        "metadata": {"name": "llm", "namespace": "default"},
        "spec": {
            "powerCapLimit": 500,
            "selector": {"matchLabels": {"app": "vllm"}},
            "cappingThreshold": 80,
            "customAlgorithms": [{"name": "dynamic-frequency-scaler",
                                  "parameters": {"scaling-factor": "0.8", "min-frequency": "800"}}]
        },
        "status": {"cappingActionRequired": true, "lastUpdated": "2026-11-28T10:00:00Z"}
    }))
    .expect("policy parses");
    let algorithm = policy.algorithm().expect("algorithm");
    assert_eq!(algorithm.parameters["scaling-factor"], "0.8");
    let status = policy.status.expect("status");
    assert!(status.capping_action_required);
    assert!(status.last_updated.is_some());

    let nf: NodeFrequencies = serde_json::from_value(serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "NodeFrequencies",
        "metadata": {"name": "gpu-node-0"},
        "spec": {
            "nodeName": "gpu-node-0",
            "gpuFrequencies": [{"gpuId": "GPU-1", "targetFrequency": 1200,
                                "expiresAt": "2026-11-28T10:02:00Z"}],
            "cpuFrequencies": [{"cpuId": 0, "targetFrequency": 2000,
                                "expiresAt": "2026-11-28T10:02:00Z"}]
        },
        "status": {"gpuFrequencies": [{"gpuId": "GPU-1", "currentFrequency": 1200,
                                       "targetFrequency": 1200, "state": "Applied"}]}
    }))
    .expect("node frequencies parse");
    assert_eq!(nf.spec.gpu_frequencies[0].policy, "manual");
    assert_eq!(nf.spec.cpu_frequencies[0].target_frequency, 2000);
    assert_eq!(
        nf.status.expect("status").gpu_frequencies[0].state,
        DeviceState::Applied
    );
}

#[test]
fn an_entry_without_an_expiry_is_refused() {
    for entry in [
        serde_json::json!({"gpuFrequencies": [{"gpuId": "GPU-1", "targetFrequency": 1200}]}),
        serde_json::json!({"cpuFrequencies": [{"cpuId": 0, "targetFrequency": 2000}]}),
    ] {
        let mut spec = entry;
        spec["nodeName"] = "gpu-node-0".into();
        let parsed = serde_json::from_value::<climatik_api::NodeFrequenciesSpec>(spec.clone());
        let err = parsed.expect_err("an entry must say when it expires");
        assert!(err.to_string().contains("expiresAt"), "{spec}: {err}");
    }
}

#[test]
fn a_policy_without_priority_or_guarantee_writes_neither() {
    let policy: PowerCappingPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerCappingPolicy",
        "metadata": {"name": "llm", "namespace": "default"},
        "spec": {"powerCapLimit": 300, "selector": {}}
    }))
    .expect("policy parses");
    assert_eq!(policy.spec.priority, None);
    assert_eq!(policy.spec.min_watts, None);
    let written = serde_json::to_value(&policy.spec).expect("serializes");
    assert!(written.get("priority").is_none() && written.get("minWatts").is_none());
}

#[test]
fn a_minimal_budget_gets_the_defaults() {
    let budget: PowerBudget = serde_json::from_value(serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": "rack-a"},
        "spec": {"watts": 20000, "nodeSelector": {"matchLabels": {"rack": "a"}}}
    }))
    .expect("budget parses");
    assert_eq!(budget.spec.watts, 20_000);
    assert_eq!(budget.spec.reserved_watts, 0);
    assert!(!budget.spec.cap_unmanaged);
    assert_eq!(budget.spec.parent, None);
}
