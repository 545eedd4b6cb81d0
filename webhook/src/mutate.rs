//! The admission decision as a pure function: request in, decision out.
//!
//! The webhook validates, normalises and labels; it writes nothing. The
//! generated PowerCappingPolicy comes from the controller's policy
//! generator, which reads the stored workload, so a forged AdmissionReview
//! sent straight to the webhook can change no object.

use climatik_api::{
    annotations::{self, CapSettings, USER_ANNOTATIONS},
    names::{
        ANNOTATION_POWER_CAP, ANNOTATION_POWER_CAP_WATTS, LABEL_POLICY, LABEL_WEBHOOK_OPT_OUT,
        WEBHOOK_OPT_OUT_VALUE, generated_policy_name,
    },
    workload::WorkloadKind,
};
use json_patch::{AddOperation, PatchOperation, RemoveOperation, jsonptr::PointerBuf};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, Operation},
};
use serde_json::Value;

use crate::floor::{Checks, unreachable_cap_warning};
use crate::patch::{MetaMap, template_metadata_ops, template_mutable, template_pointer};

/// Why a request was denied, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    InvalidAnnotation,
    MalformedObject,
    UnnamedWorkload,
}

impl DenyReason {
    pub fn metric_label(self) -> &'static str {
        match self {
            DenyReason::InvalidAnnotation => "invalid_annotation",
            DenyReason::MalformedObject => "malformed_object",
            DenyReason::UnnamedWorkload => "unnamed_workload",
        }
    }
}

/// The outcome of [`mutate`].
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Allow {
        /// JSON patch for the object; empty when nothing changes.
        patch: Vec<PatchOperation>,
        warnings: Vec<String>,
    },
    Deny {
        reason: DenyReason,
        message: String,
    },
}

impl Decision {
    fn unchanged() -> Self {
        Decision::Allow {
            patch: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn warn(warning: String) -> Self {
        Decision::Allow {
            patch: Vec::new(),
            warnings: vec![warning],
        }
    }

    fn deny(reason: DenyReason, message: impl Into<String>) -> Self {
        Decision::Deny {
            reason,
            message: message.into(),
        }
    }
}

/// Decides how to admit a workload: validate the cap annotations, label the
/// pod template for the generated policy (or unlabel it once the annotation
/// is gone), record the normalised cap on the workload and warn about a cap
/// its GPUs cannot reach (`checks`).
pub fn mutate(req: &AdmissionRequest<DynamicObject>, checks: &Checks) -> Decision {
    if !matches!(req.operation, Operation::Create | Operation::Update) || req.sub_resource.is_some()
    {
        return Decision::unchanged();
    }
    let Some(kind) = WorkloadKind::from_gvk(&req.kind) else {
        return Decision::unchanged();
    };
    let Some(object) = req.object.as_ref() else {
        return Decision::deny(
            DenyReason::MalformedObject,
            format!("the {} admission request carries no object", req.kind.kind),
        );
    };
    let meta = &object.metadata;
    let opted_out = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_WEBHOOK_OPT_OUT))
        .is_some_and(|v| v == WEBHOOK_OPT_OUT_VALUE);
    // Being deleted: labelling it now is pointless.
    if opted_out || meta.deletion_timestamp.is_some() {
        return Decision::unchanged();
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let settings = match annotations::from_annotations(&annotations) {
        Ok(settings) => settings,
        // An update that leaves bad annotations as they were (the garbage
        // collector removing a finalizer, `kubectl rollout restart`, a
        // scale) must pass: denying it would wedge the workload over a
        // value that was admitted before (by an older version, or while
        // the webhook was off). The generator leaves its policy alone.
        Err(errors) if cap_annotations_unchanged(req) => {
            return Decision::warn(format!(
                "left as it was: {}; fix the annotation to change the cap",
                errors.join("; ")
            ));
        }
        Err(errors) => {
            return Decision::deny(DenyReason::InvalidAnnotation, errors.join("; "));
        }
    };
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| req.name.clone());
    if name.is_empty() {
        if settings.is_some() {
            return Decision::deny(
                DenyReason::UnnamedWorkload,
                format!(
                    "annotation {ANNOTATION_POWER_CAP} needs a workload with a fixed metadata.name \
                     (generateName is not supported): the generated PowerCappingPolicy is named after it"
                ),
            );
        }
        return Decision::unchanged();
    }
    let policy_name = generated_policy_name(kind.kind(), &name);
    let template_ptr = template_pointer(kind);
    let template = object.data.pointer(&template_ptr.to_string());
    let current_label = template
        .and_then(|t| t.pointer("/metadata/labels"))
        .and_then(|l| l.get(LABEL_POLICY))
        .and_then(|v| v.as_str());

    let mut warnings = Vec::new();
    let (set, unset): (Vec<_>, Vec<_>) = match &settings {
        Some(_) => {
            if let Some(other) = current_label.filter(|l| *l != policy_name) {
                warnings.push(format!(
                    "pod template label {LABEL_POLICY}={other} is replaced by {policy_name}, \
                     the policy generated from {ANNOTATION_POWER_CAP}"
                ));
            }
            (
                vec![(MetaMap::Labels, LABEL_POLICY, policy_name.clone())],
                Vec::new(),
            )
        }
        None => {
            let ours = current_label == Some(policy_name.as_str());
            let had_annotation = req
                .old_object
                .as_ref()
                .and_then(|o| o.metadata.annotations.as_ref())
                .is_some_and(|a| a.contains_key(ANNOTATION_POWER_CAP));
            if !ours && !had_annotation {
                return Decision::unchanged();
            }
            let unset = if ours {
                // Earlier versions recorded the cap on the template too.
                vec![
                    (MetaMap::Labels, LABEL_POLICY),
                    (MetaMap::Annotations, ANNOTATION_POWER_CAP_WATTS),
                ]
            } else {
                Vec::new()
            };
            (Vec::new(), unset)
        }
    };

    let Some(template) = template else {
        return Decision::deny(
            DenyReason::MalformedObject,
            format!("the {} has no pod template at {template_ptr}", kind.kind()),
        );
    };
    let set_refs: Vec<(MetaMap, &str, &str)> =
        set.iter().map(|(m, k, v)| (*m, *k, v.as_str())).collect();
    let mut patch = match template_metadata_ops(&template_ptr, template, &set_refs, &unset) {
        Ok(ops) => ops,
        Err(e) => {
            return Decision::deny(
                DenyReason::MalformedObject,
                format!("the {} does not parse: {e}", kind.kind()),
            );
        }
    };
    if !patch.is_empty() && !template_mutable(kind, &req.operation) {
        patch.clear();
        warnings.push(if settings.is_some() {
            format!(
                "a Job's pod template cannot change after creation, so its pods do not carry \
                 {LABEL_POLICY}={policy_name} and the policy matches none of them; \
                 recreate the Job to cap it"
            )
        } else {
            format!(
                "a Job's pod template cannot change after creation, so its pods keep \
                 {LABEL_POLICY}={policy_name}; the policy is deleted and nothing caps them"
            )
        });
    }
    if let Some(settings) = &settings {
        warnings.extend(unreachable_cap_warning(checks, settings.watts, template));
    }
    patch.extend(recorded_cap_ops(&annotations, settings.as_ref()));
    Decision::Allow { patch, warnings }
}

/// The normalised cap, recorded on the workload itself rather than on its
/// pod template (a cap change must not roll the workload's pods), or
/// removed with the cap annotation.
fn recorded_cap_ops(
    annotations: &std::collections::BTreeMap<String, String>,
    settings: Option<&CapSettings>,
) -> Vec<PatchOperation> {
    let recorded = annotations
        .get(ANNOTATION_POWER_CAP_WATTS)
        .map(String::as_str);
    let mut path = PointerBuf::from_tokens(["metadata", "annotations"]);
    path.push_back(ANNOTATION_POWER_CAP_WATTS);
    match settings {
        Some(settings) => {
            let watts = settings.watts.to_string();
            // Annotations exist: they hold the cap annotation itself.
            let unchanged = recorded == Some(watts.as_str());
            (!unchanged)
                .then_some(PatchOperation::Add(AddOperation {
                    path,
                    value: Value::String(watts),
                }))
                .into_iter()
                .collect()
        }
        None => recorded
            .map(|_| PatchOperation::Remove(RemoveOperation { path }))
            .into_iter()
            .collect(),
    }
}

/// Whether an UPDATE leaves every annotation a user writes for Climatik as
/// the stored object has it.
fn cap_annotations_unchanged(req: &AdmissionRequest<DynamicObject>) -> bool {
    let (Operation::Update, Some(new), Some(old)) =
        (&req.operation, req.object.as_ref(), req.old_object.as_ref())
    else {
        return false;
    };
    let get = |o: &DynamicObject, key: &str| {
        o.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    USER_ANNOTATIONS
        .iter()
        .all(|key| get(new, key) == get(old, key))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The decision with the default checks.
    fn mutate(req: &AdmissionRequest<DynamicObject>) -> Decision {
        super::mutate(req, &Checks::default())
    }

    fn request(
        operation: &str,
        object: Value,
        old: Option<Value>,
    ) -> AdmissionRequest<DynamicObject> {
        let kind = object["kind"].as_str().unwrap_or("Deployment").to_string();
        let (group, resource) = match kind.as_str() {
            "Job" => ("batch", "jobs"),
            "CronJob" => ("batch", "cronjobs"),
            "StatefulSet" => ("apps", "statefulsets"),
            _ => ("apps", "deployments"),
        };
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "3b0c2f7e-0000-4000-8000-000000000001",
                "kind": { "group": group, "version": "v1", "kind": kind },
                "resource": { "group": group, "version": "v1", "resource": resource },
                "name": object["metadata"]["name"].as_str().unwrap_or(""),
                "namespace": "team-a",
                "operation": operation,
                "userInfo": { "username": "alice" },
                "object": object,
                "oldObject": old,
                "dryRun": false
            }
        });
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_value(review).unwrap_or_else(|e| panic!("fixture: {e}"));
        review.try_into().unwrap_or_else(|e| panic!("fixture: {e}"))
    }

    fn deployment(annotations: Value, template_meta: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "vllm", "namespace": "team-a", "annotations": annotations },
            "spec": {
                "selector": { "matchLabels": { "app": "vllm" } },
                "template": { "metadata": template_meta, "spec": { "containers": [] } }
            }
        })
    }

    fn apply_patch(object: &Value, patch: &[PatchOperation]) -> Value {
        let mut doc = object.clone();
        assert!(json_patch::patch(&mut doc, patch).is_ok());
        doc
    }

    #[test]
    fn annotated_deployment_is_labelled_and_records_its_cap() {
        let object = deployment(
            json!({ ANNOTATION_POWER_CAP: "1.5kW" }),
            json!({ "labels": { "app": "vllm" } }),
        );
        let Decision::Allow { patch, warnings } = mutate(&request("CREATE", object.clone(), None))
        else {
            panic!("denied");
        };
        assert!(warnings.is_empty());
        let patched = apply_patch(&object, &patch);
        let meta = &patched["spec"]["template"]["metadata"];
        assert_eq!(meta["labels"][LABEL_POLICY], "deployment-vllm");
        assert_eq!(meta["labels"]["app"], "vllm");
        assert_eq!(
            patched["metadata"]["annotations"][ANNOTATION_POWER_CAP_WATTS],
            "1500"
        );
        assert!(
            meta.get("annotations").is_none(),
            "template untouched: {meta}"
        );

        // Re-admitting the patched object: no patch.
        let again = mutate(&request("UPDATE", patched.clone(), Some(patched)));
        assert_eq!(again, Decision::unchanged());
    }

    #[test]
    fn bad_annotation_is_denied_naming_it() {
        let object = deployment(json!({ ANNOTATION_POWER_CAP: "lots" }), json!({}));
        let Decision::Deny { reason, message } = mutate(&request("CREATE", object, None)) else {
            panic!("allowed");
        };
        assert_eq!(reason, DenyReason::InvalidAnnotation);
        assert!(message.contains(ANNOTATION_POWER_CAP) && message.contains("\"lots\""));
        assert!(message.contains("1.5kW"), "{message}");
    }

    #[test]
    fn removing_the_annotation_unlabels_the_template() {
        let old = deployment(
            json!({ ANNOTATION_POWER_CAP: "300" }),
            json!({ "labels": { "app": "vllm", LABEL_POLICY: "deployment-vllm" },
                    "annotations": { ANNOTATION_POWER_CAP_WATTS: "300" } }),
        );
        let new = deployment(
            json!({}),
            json!({ "labels": { "app": "vllm", LABEL_POLICY: "deployment-vllm" },
                    "annotations": { ANNOTATION_POWER_CAP_WATTS: "300" } }),
        );
        let Decision::Allow { patch, .. } = mutate(&request("UPDATE", new.clone(), Some(old)))
        else {
            panic!("denied");
        };
        let patched = apply_patch(&new, &patch);
        assert_eq!(
            patched["spec"]["template"]["metadata"]["labels"],
            json!({ "app": "vllm" })
        );
        assert_eq!(
            patched["spec"]["template"]["metadata"]["annotations"],
            json!({})
        );
    }

    #[test]
    fn an_update_that_keeps_a_bad_annotation_passes_with_a_warning() {
        let stored = deployment(json!({ ANNOTATION_POWER_CAP: "lots" }), json!({}));
        let mut restarted = stored.clone();
        restarted["spec"]["template"]["metadata"] =
            json!({ "annotations": { "kubectl.kubernetes.io/restartedAt": "now" } });
        let Decision::Allow { patch, warnings } =
            mutate(&request("UPDATE", restarted, Some(stored.clone())))
        else {
            panic!("an update that leaves the annotations alone was denied");
        };
        assert!(patch.is_empty(), "{patch:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("\"lots\""), "{warnings:?}");

        // Changing it to another bad value, or creating with one, is denied.
        let worse = deployment(json!({ ANNOTATION_POWER_CAP: "more" }), json!({}));
        assert!(matches!(
            mutate(&request("UPDATE", worse, Some(stored.clone()))),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            mutate(&request("CREATE", stored, None)),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn a_hand_set_label_for_another_policy_is_left_alone() {
        let object = deployment(
            json!({}),
            json!({ "labels": { LABEL_POLICY: "my-policy" } }),
        );
        assert_eq!(
            mutate(&request("UPDATE", object.clone(), Some(object))),
            Decision::unchanged()
        );
    }

    #[test]
    fn cronjob_template_is_nested() {
        let mut object = json!({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": { "name": "nightly", "uid": "u-9", "annotations": { ANNOTATION_POWER_CAP: "500W" } },
            "spec": { "schedule": "* * * * *", "jobTemplate": { "spec": { "template": { "spec": {} } } } }
        });
        let Decision::Allow { patch, .. } =
            mutate(&request("UPDATE", object.clone(), Some(object.clone())))
        else {
            panic!("denied");
        };
        object = apply_patch(&object, &patch);
        assert_eq!(
            object["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"][LABEL_POLICY],
            "cronjob-nightly"
        );
    }

    #[test]
    fn job_update_does_not_touch_the_immutable_template() {
        let object = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": { "name": "train", "annotations": { ANNOTATION_POWER_CAP: "300" } },
            "spec": { "template": { "metadata": { "labels": { "a": "b" } }, "spec": {} } }
        });
        let Decision::Allow { patch, warnings } =
            mutate(&request("UPDATE", object.clone(), Some(object.clone())))
        else {
            panic!("denied");
        };
        // Only the Job's own metadata (the recorded cap), never its template.
        let patched = apply_patch(&object, &patch);
        assert_eq!(patched["spec"], object["spec"]);
        assert_eq!(
            patched["metadata"]["annotations"][ANNOTATION_POWER_CAP_WATTS],
            "300"
        );
        assert_eq!(warnings.len(), 1);
        let Decision::Allow { patch, .. } = mutate(&request("CREATE", object, None)) else {
            panic!("denied");
        };
        assert_eq!(patch.len(), 2);
    }

    #[test]
    fn opted_out_unannotated_and_deleting_objects_are_untouched() {
        let mut object = deployment(json!({ ANNOTATION_POWER_CAP: "300" }), json!({}));
        object["metadata"]["labels"] = json!({ LABEL_WEBHOOK_OPT_OUT: WEBHOOK_OPT_OUT_VALUE });
        assert_eq!(
            mutate(&request("CREATE", object, None)),
            Decision::unchanged()
        );
        let plain = deployment(json!({}), json!({}));
        assert_eq!(
            mutate(&request("CREATE", plain, None)),
            Decision::unchanged()
        );
        let mut deleting = deployment(json!({ ANNOTATION_POWER_CAP: "300" }), json!({}));
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(
            mutate(&request("UPDATE", deleting, None)),
            Decision::unchanged()
        );
    }

    #[test]
    fn generate_name_cannot_name_a_policy() {
        let mut object = deployment(json!({ ANNOTATION_POWER_CAP: "300" }), json!({}));
        object["metadata"] =
            json!({ "generateName": "vllm-", "annotations": { ANNOTATION_POWER_CAP: "300" } });
        let Decision::Deny { reason, .. } = mutate(&request("CREATE", object, None)) else {
            panic!("allowed");
        };
        assert_eq!(reason, DenyReason::UnnamedWorkload);
    }
}
