//! Finishing ownership of generated policies: once the workload a policy
//! was generated for exists, the policy gets an ownerReference to it so
//! Kubernetes garbage collection removes the policy with the workload. The
//! webhook may have done it already; both sides apply the same reference,
//! so doing it twice changes nothing.

use climatik_api::{
    PowerCappingPolicy,
    names::{
        ANNOTATION_WORKLOAD_API_VERSION, ANNOTATION_WORKLOAD_KIND, ANNOTATION_WORKLOAD_NAME,
        LABEL_GENERATED, MANAGER_CONTROLLER,
    },
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::json;

use crate::{Error, Result};

/// The workload kinds the webhook generates policies for, and their plurals.
const KINDS: [(&str, &str); 4] = [
    ("Deployment", "deployments"),
    ("StatefulSet", "statefulsets"),
    ("Job", "jobs"),
    ("CronJob", "cronjobs"),
];

/// The workload a generated policy names: (apiVersion, kind, name).
pub fn workload_of(policy: &PowerCappingPolicy) -> Option<(String, String, String)> {
    if policy.labels().get(LABEL_GENERATED).map(String::as_str) != Some("true") {
        return None;
    }
    let annotations = policy.annotations();
    let kind = annotations.get(ANNOTATION_WORKLOAD_KIND)?;
    let name = annotations.get(ANNOTATION_WORKLOAD_NAME)?;
    let api_version = annotations.get(ANNOTATION_WORKLOAD_API_VERSION)?;
    KINDS
        .iter()
        .any(|(k, _)| k == kind)
        .then(|| (api_version.clone(), kind.clone(), name.clone()))
}

/// Sets the ownerReference if the policy is generated, lacks it, and its
/// workload exists. Returns whether it wrote one.
pub async fn adopt(client: &kube::Client, policy: &PowerCappingPolicy) -> Result<bool> {
    let Some((api_version, kind, name)) = workload_of(policy) else {
        return Ok(false);
    };
    let owned = policy
        .owner_references()
        .iter()
        .any(|o| o.kind == kind && o.name == name);
    if owned {
        return Ok(false);
    }
    let namespace = policy.namespace().ok_or(Error::MissingNamespace)?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.clone()),
    };
    let plural = KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, p)| *p)
        .unwrap_or_default();
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, &version, &kind), plural);
    let workloads: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
    let workload = match workloads.get_opt(&name).await {
        Ok(Some(w)) => w,
        Ok(None) => return Ok(false),
        // An apiVersion the server does not serve: nothing to own it.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let Some(uid) = workload.uid() else {
        return Ok(false);
    };
    let patch = json!({
        "apiVersion": PowerCappingPolicy::api_version(&()),
        "kind": PowerCappingPolicy::kind(&()),
        "metadata": {
            "name": policy.name_any(),
            "namespace": namespace,
            "ownerReferences": [{
                "apiVersion": api_version,
                "kind": kind,
                "name": name,
                "uid": uid,
            }],
        },
    });
    Api::<PowerCappingPolicy>::namespaced(client.clone(), &namespace)
        .patch(
            &policy.name_any(),
            &PatchParams::apply(MANAGER_CONTROLLER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    tracing::info!(policy = %policy.name_any(), %namespace, %kind, workload = %name, "policy now owned by its workload");
    Ok(true)
}
