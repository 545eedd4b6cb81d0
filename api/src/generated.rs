//! The PowerCappingPolicy generated for an annotated workload: what the
//! controller's policy generator applies, and how it recognises the
//! policies it may change or delete.

use std::collections::BTreeMap;

use crate::{
    CustomAlgorithm, PowerCappingPolicy, PowerCappingPolicySpec,
    names::{
        ANNOTATION_WORKLOAD_API_VERSION, ANNOTATION_WORKLOAD_KIND, ANNOTATION_WORKLOAD_NAME,
        LABEL_GENERATED, LABEL_POLICY,
    },
    policy::DeviceKind,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

use crate::{annotations::CapSettings, workload::WorkloadKind};

/// The workload a generated policy belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    /// The stored workload's UID: the policy's owner.
    pub uid: String,
}

impl WorkloadRef {
    /// The ownerReference that makes garbage collection delete the policy
    /// with its workload. `controller: true` marks the workload as the
    /// policy's managing owner; `blockOwnerDeletion: false` because the
    /// workload's deletion need not wait for the policy.
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.kind.api_version().to_string(),
            kind: self.kind.kind().to_string(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(false),
        }
    }
}

/// The policy that should exist for an annotated workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPolicy {
    pub name: String,
    pub settings: CapSettings,
    pub workload: WorkloadRef,
}

impl DesiredPolicy {
    /// The object to server-side apply: exactly the fields the generator owns.
    pub fn to_object(&self) -> PowerCappingPolicy {
        let labels = BTreeMap::from([(LABEL_GENERATED.to_string(), "true".to_string())]);
        let annotations = BTreeMap::from([
            (
                ANNOTATION_WORKLOAD_KIND.to_string(),
                self.workload.kind.kind().to_string(),
            ),
            (
                ANNOTATION_WORKLOAD_NAME.to_string(),
                self.workload.name.clone(),
            ),
            (
                ANNOTATION_WORKLOAD_API_VERSION.to_string(),
                self.workload.kind.api_version().to_string(),
            ),
        ]);
        let mut policy = PowerCappingPolicy::new(&self.name, self.spec());
        policy.metadata = ObjectMeta {
            name: Some(self.name.clone()),
            namespace: Some(self.workload.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![self.workload.owner_reference()]),
            ..Default::default()
        };
        policy
    }

    fn spec(&self) -> PowerCappingPolicySpec {
        PowerCappingPolicySpec {
            // parse_power caps values at 10 MW, far inside i64.
            power_cap_limit: i64::try_from(self.settings.watts).unwrap_or(i64::MAX),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    LABEL_POLICY.to_string(),
                    self.name.clone(),
                )])),
                ..Default::default()
            },
            capping_threshold: self.settings.threshold,
            custom_algorithms: self
                .settings
                .algorithm
                .iter()
                .map(|name| CustomAlgorithm {
                    name: name.clone(),
                    parameters: BTreeMap::new(),
                })
                .collect(),
            dry_run: self.settings.dry_run,
            devices: vec![DeviceKind::Gpu],
            priority: None,
            min_watts: None,
        }
    }

    /// Whether `existing` already says what an apply would say, so the
    /// apply can be skipped: re-admitting the same object writes nothing.
    pub fn is_satisfied_by(&self, existing: &PowerCappingPolicy) -> bool {
        let want = self.to_object();
        let spec_ok = existing.spec.power_cap_limit == want.spec.power_cap_limit
            && existing.spec.selector == want.spec.selector
            && existing.spec.capping_threshold == want.spec.capping_threshold
            && existing.spec.dry_run == want.spec.dry_run
            && existing.spec.custom_algorithms == want.spec.custom_algorithms
            && existing.spec.devices == want.spec.devices;
        let contains = |have: &Option<BTreeMap<String, String>>,
                        want: &Option<BTreeMap<String, String>>| {
            want.iter()
                .flatten()
                .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
        };
        // The workload always owns its generated policy.
        let owner = self.workload.owner_reference();
        let owner_ok = existing
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|e| *e == owner);
        spec_ok
            && owner_ok
            && contains(&existing.metadata.labels, &want.metadata.labels)
            && contains(&existing.metadata.annotations, &want.metadata.annotations)
    }
}

/// Whether a policy was generated from annotations (and so may be changed or
/// deleted by the generator). Policies users wrote are never touched.
pub fn is_generated(policy: &PowerCappingPolicy) -> bool {
    policy
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_GENERATED))
        .is_some_and(|v| v == "true")
}

/// Whether a generated policy was generated for this workload (and not a
/// same-named one of another kind).
pub fn belongs_to(policy: &PowerCappingPolicy, workload: &WorkloadRef) -> bool {
    let annotations = policy.metadata.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    get(ANNOTATION_WORKLOAD_KIND) == Some(workload.kind.kind())
        && get(ANNOTATION_WORKLOAD_NAME) == Some(workload.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(uid: &str) -> DesiredPolicy {
        DesiredPolicy {
            name: "deployment-vllm".to_string(),
            settings: CapSettings {
                watts: 300,
                threshold: 90,
                dry_run: false,
                algorithm: None,
            },
            workload: WorkloadRef {
                kind: WorkloadKind::Deployment,
                namespace: "team-a".to_string(),
                name: "vllm".to_string(),
                uid: uid.to_string(),
            },
        }
    }

    #[test]
    fn generated_policy_selects_the_label_and_marks_itself() {
        let policy = desired("u-1").to_object();
        let json = serde_json::to_value(&policy).unwrap_or_default();
        assert_eq!(json["apiVersion"], "climatik.io/v1alpha1");
        assert_eq!(json["kind"], "PowerCappingPolicy");
        assert_eq!(json["metadata"]["namespace"], "team-a");
        assert_eq!(json["metadata"]["labels"][LABEL_GENERATED], "true");
        assert_eq!(
            json["metadata"]["annotations"][ANNOTATION_WORKLOAD_KIND],
            "Deployment"
        );
        assert_eq!(json["spec"]["powerCapLimit"], 300);
        assert_eq!(
            json["spec"]["selector"]["matchLabels"][LABEL_POLICY],
            "deployment-vllm"
        );
        assert!(json.get("status").is_none());
        assert!(is_generated(&policy));
        assert!(belongs_to(&policy, &desired("u-1").workload));
    }

    #[test]
    fn the_workload_owns_its_policy() {
        let policy = desired("u-1").to_object();
        let refs = policy.metadata.owner_references.unwrap_or_default();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].uid, "u-1");
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(refs[0].block_owner_deletion, Some(false));
    }

    #[test]
    fn satisfied_only_when_every_owned_field_matches() {
        let want = desired("u-1");
        let mut existing = want.to_object();
        assert!(want.is_satisfied_by(&existing));
        // Fields others own do not matter.
        existing
            .metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "a".into());
        assert!(want.is_satisfied_by(&existing));
        existing.spec.power_cap_limit = 400;
        assert!(!want.is_satisfied_by(&existing));
        let mut no_owner = want.to_object();
        no_owner.metadata.owner_references = None;
        assert!(!want.is_satisfied_by(&no_owner));
        // A workload re-created under the same name is a new owner.
        assert!(!desired("u-2").is_satisfied_by(&want.to_object()));
    }

    #[test]
    fn the_algorithm_annotation_names_the_policy_algorithm() {
        assert!(desired("u-1").to_object().spec.custom_algorithms.is_empty());
        let mut want = desired("u-1");
        want.settings.algorithm = Some("budget-allocator".to_string());
        let policy = want.to_object();
        let names: Vec<&str> = policy
            .spec
            .custom_algorithms
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["budget-allocator"]);
        // Changing the algorithm is a change to apply.
        assert!(!want.is_satisfied_by(&desired("u-1").to_object()));
        assert!(want.is_satisfied_by(&policy));
    }
}
