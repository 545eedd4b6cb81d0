//! What the controllers' watch caches keep of an object. Every cached
//! object (policies, NodeFrequencies, nodes, workloads) arrives with
//! `managedFields`: each writer's fields as a JSON tree, which for a
//! policy's status or a node's entries (one field manager per policy) is
//! larger than the object itself, and is held as parsed JSON. No reader of
//! ours looks at it, nor at kubectl's `last-applied-configuration` copy of
//! the whole object, so both are dropped before an object is stored: at
//! 1000 policies over 500 nodes they were most of each controller's memory.

use kube::Resource;

/// kubectl's copy of what was last applied client-side: the whole object
/// again, read by nobody here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops `managedFields` and the last-applied annotation from `object`
/// (a watcher's `.modify`, before the reflector stores it).
pub(crate) fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use climatik_api::PowerCappingPolicy;
    use serde_json::json;

    #[test]
    fn managed_fields_and_last_applied_go_and_everything_else_stays() {
        let mut policy: PowerCappingPolicy = serde_json::from_value(json!({
            "apiVersion": "climatik.io/v1alpha1",
            "kind": "PowerCappingPolicy",
            "metadata": {
                "name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "labels": { "climatik.io/generated": "true" },
                "annotations": {
                    LAST_APPLIED: "{\"spec\":{}}",
                    "climatik.io/note": "kept"
                },
                "managedFields": [{ "manager": "climatik-monitor", "operation": "Apply",
                                    "fieldsType": "FieldsV1",
                                    "fieldsV1": { "f:status": { "f:currentPower": {} } } }]
            },
            "spec": { "powerCapLimit": 300, "selector": { "matchLabels": { "app": "llm" } } },
            "status": { "currentPower": 250.0 }
        }))
        .expect("a valid policy");
        let before = policy.clone();
        slim(&mut policy);
        assert!(policy.metadata.managed_fields.is_none());
        let annotations = policy.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.len(), 1);
        assert_eq!(
            annotations.get("climatik.io/note").map(String::as_str),
            Some("kept")
        );
        assert_eq!(policy.metadata.labels, before.metadata.labels);
        assert_eq!(
            policy.metadata.resource_version,
            before.metadata.resource_version
        );
        assert_eq!(policy.spec, before.spec);
        assert_eq!(policy.status, before.status);
    }

    #[test]
    fn an_object_left_with_no_annotations_has_none() {
        let mut node = k8s_openapi::api::core::v1::Node::default();
        node.metadata.annotations = Some([(LAST_APPLIED.to_string(), "{}".to_string())].into());
        slim(&mut node);
        assert!(node.metadata.annotations.is_none());
    }
}
