//! Workload objects the webhook's tests and its benchmark send through
//! admission, written once so both exercise the same shape.

/// A one-replica Deployment named `name` (pods labelled `app=<name>`),
/// opted into power capping with `climatik.io/power-cap: <cap>` when a cap
/// is given.
pub fn deployment(name: &str, cap: Option<&str>) -> serde_json::Value {
    let annotations = cap_annotations(cap);
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "main", "image": "vllm/vllm-openai:latest" }] }
            }
        }
    })
}

/// `metadata.annotations` that opt a workload in with `cap`, or none.
pub fn cap_annotations(cap: Option<&str>) -> serde_json::Value {
    match cap {
        Some(cap) => serde_json::json!({ "climatik.io/power-cap": cap }),
        None => serde_json::json!({}),
    }
}
