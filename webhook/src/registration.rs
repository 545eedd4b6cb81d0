//! The MutatingWebhookConfiguration that routes workload admissions to the
//! webhook: what the Helm chart installs, and what tests and the benchmark
//! register when they run the webhook on 127.0.0.1 and reach it by URL.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
        WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
};

use climatik_api::names::{LABEL_WEBHOOK_OPT_OUT, WEBHOOK_OPT_OUT_VALUE};

/// The API server sends a workload to the webhook only when it carries, or
/// carried before this update, a `climatik.io/` annotation; everything else
/// is admitted without a call, so a webhook outage touches only workloads
/// that opted in. The chart's template holds the same string.
pub const MATCH_CONDITION: &str = "(has(object.metadata.annotations) && object.metadata.annotations.exists(k, k.startsWith('climatik.io/'))) || (oldObject != null && has(oldObject.metadata.annotations) && oldObject.metadata.annotations.exists(k, k.startsWith('climatik.io/')))";

/// Name of the single webhook inside the configuration.
pub const WEBHOOK_NAME: &str = "workloads.climatik.io";

/// A configuration sending CREATE and UPDATE of Deployments, StatefulSets,
/// Jobs and CronJobs to `url`, trusting `ca_bundle_pem`, for namespaces
/// matching `namespace_labels` (and not opted out).
pub fn webhook_configuration(
    name: &str,
    url: &str,
    ca_bundle_pem: &str,
    namespace_labels: BTreeMap<String, String>,
) -> MutatingWebhookConfiguration {
    let rule = |group: &str, resources: &[&str]| RuleWithOperations {
        api_groups: Some(vec![group.to_string()]),
        api_versions: Some(vec!["v1".to_string()]),
        operations: Some(vec!["CREATE".to_string(), "UPDATE".to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        scope: Some("Namespaced".to_string()),
    };
    let opted_out = LabelSelectorRequirement {
        key: LABEL_WEBHOOK_OPT_OUT.to_string(),
        operator: "NotIn".to_string(),
        values: Some(vec![WEBHOOK_OPT_OUT_VALUE.to_string()]),
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_NAME.to_string(),
            admission_review_versions: vec!["v1".to_string()],
            client_config: WebhookClientConfig {
                url: Some(url.to_string()),
                ca_bundle: Some(ByteString(ca_bundle_pem.as_bytes().to_vec())),
                service: None,
            },
            rules: Some(vec![
                rule("apps", &["deployments", "statefulsets"]),
                rule("batch", &["jobs", "cronjobs"]),
            ]),
            namespace_selector: Some(LabelSelector {
                match_labels: (!namespace_labels.is_empty()).then_some(namespace_labels),
                match_expressions: Some(vec![opted_out.clone()]),
            }),
            object_selector: Some(LabelSelector {
                match_expressions: Some(vec![opted_out]),
                ..Default::default()
            }),
            side_effects: "None".to_string(),
            failure_policy: Some("Fail".to_string()),
            match_policy: Some("Equivalent".to_string()),
            reinvocation_policy: Some("IfNeeded".to_string()),
            timeout_seconds: Some(10),
            match_conditions: Some(vec![MatchCondition {
                name: "climatik-annotations".to_string(),
                expression: MATCH_CONDITION.to_string(),
            }]),
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_sends_the_same_workloads() {
        let template = include_str!(
            "../../charts/climatik/templates/webhook/mutatingwebhookconfiguration.yaml"
        );
        assert!(
            template.contains(&format!("expression: \"{MATCH_CONDITION}\"")),
            "the chart's matchConditions expression differs from MATCH_CONDITION"
        );
    }
}
