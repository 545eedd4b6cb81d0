//! The thin layer that carries out a [`Decision`](crate::mutate::Decision)'s
//! policy action against the Kubernetes API: server-side apply of a
//! generated policy, its deletion, and the deferred ownerReference.

use std::{sync::Arc, time::Duration};

use climatik_api::{PowerCappingPolicy, names::MANAGER_WEBHOOK};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use tokio::{sync::Semaphore, time::Instant};
use tracing::{debug, info, warn};

use crate::{
    error::EffectError,
    metrics::Metrics,
    mutate::PolicyAction,
    policy::{DesiredPolicy, PolicyRef, WorkloadRef, belongs_to, is_generated},
};

/// Limits of the background tasks that wait for a new workload to exist.
#[derive(Clone, Debug)]
pub struct OwnerTaskLimits {
    /// Give up (and remove a policy whose workload never appeared) after this.
    pub deadline: Duration,
    /// At most this many tasks at once; beyond it the controller sets the
    /// ownerReference instead.
    pub max_tasks: usize,
}

impl Default for OwnerTaskLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            max_tasks: 256,
        }
    }
}

/// Executes policy actions with a Kubernetes client.
#[derive(Clone)]
pub struct Effects {
    client: Option<Client>,
    metrics: Metrics,
    limits: OwnerTaskLimits,
    permits: Arc<Semaphore>,
}

impl Effects {
    /// `client: None` serves only dry-run requests and denials (benchmarks,
    /// router tests); any write then fails with [`EffectError::NoClient`].
    pub fn new(client: Option<Client>, metrics: Metrics, limits: OwnerTaskLimits) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_tasks));
        Self {
            client,
            metrics,
            limits,
            permits,
        }
    }

    fn client(&self) -> Result<&Client, EffectError> {
        self.client.as_ref().ok_or(EffectError::NoClient)
    }

    /// Carries out `action`; returns warnings for the AdmissionResponse.
    pub async fn execute(&self, action: &PolicyAction) -> Result<Vec<String>, EffectError> {
        match action {
            PolicyAction::None => Ok(Vec::new()),
            PolicyAction::Apply(desired) => self.apply(desired).await,
            PolicyAction::Delete(target) => self.delete(target).await,
        }
    }

    async fn apply(&self, desired: &DesiredPolicy) -> Result<Vec<String>, EffectError> {
        let ns = &desired.workload.namespace;
        let api = Api::<PowerCappingPolicy>::namespaced(self.client()?.clone(), ns);
        let existing = api
            .get_opt(&desired.name)
            .await
            .map_err(|source| EffectError::Get {
                namespace: ns.clone(),
                name: desired.name.clone(),
                source,
            })?;
        if let Some(existing) = &existing {
            if !is_generated(existing) {
                warn!(namespace = %ns, policy = %desired.name, "not overwriting a hand-written PowerCappingPolicy");
                return Ok(vec![hand_written_warning(ns, &desired.name, "overwritten")]);
            }
            if desired.is_satisfied_by(existing) {
                debug!(namespace = %ns, policy = %desired.name, "generated policy already up to date");
                return Ok(Vec::new());
            }
        }
        // force: the annotation is the source of truth for generated
        // policies, so a hand edit of one is overridden rather than a conflict.
        let params = PatchParams::apply(MANAGER_WEBHOOK).force();
        api.patch(&desired.name, &params, &Patch::Apply(desired.to_object()))
            .await
            .map_err(|source| EffectError::Apply {
                namespace: ns.clone(),
                name: desired.name.clone(),
                source,
            })?;
        self.metrics.policy_write("apply");
        info!(namespace = %ns, policy = %desired.name, watts = desired.settings.watts, "applied generated policy");
        Ok(Vec::new())
    }

    async fn delete(&self, target: &PolicyRef) -> Result<Vec<String>, EffectError> {
        let api = Api::<PowerCappingPolicy>::namespaced(self.client()?.clone(), &target.namespace);
        let get_err = |source| EffectError::Get {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            source,
        };
        let Some(existing) = api.get_opt(&target.name).await.map_err(get_err)? else {
            return Ok(Vec::new());
        };
        if !is_generated(&existing) {
            warn!(namespace = %target.namespace, policy = %target.name, "not deleting a hand-written PowerCappingPolicy");
            return Ok(vec![hand_written_warning(
                &target.namespace,
                &target.name,
                "deleted",
            )]);
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: existing.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&target.name, &params).await {
            Ok(_) => {
                self.metrics.policy_write("delete");
                info!(namespace = %target.namespace, policy = %target.name, "deleted generated policy");
                Ok(Vec::new())
            }
            // Gone already, or replaced (uid precondition): nothing of ours left.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                Ok(Vec::new())
            }
            Err(source) => Err(EffectError::Delete {
                namespace: target.namespace.clone(),
                name: target.name.clone(),
                source,
            }),
        }
    }

    /// After a CREATE admission the workload has no UID yet: wait in the
    /// background until it exists, then make it the policy's owner. Bounded
    /// in number and time; returns whether a task was started.
    pub fn spawn_owner_follow_up(&self, desired: &DesiredPolicy) -> bool {
        let Some(client) = self.client.clone() else {
            return false;
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            warn!(policy = %desired.name, "too many pending ownerReference tasks; leaving it to the controller");
            self.metrics.error("owner_tasks_full");
            return false;
        };
        let metrics = self.metrics.clone();
        let deadline = self.limits.deadline;
        let desired = desired.clone();
        metrics.owner_tasks.inc();
        tokio::spawn(async move {
            set_owner_when_created(client, &metrics, &desired, deadline).await;
            metrics.owner_tasks.dec();
            drop(permit);
        });
        true
    }
}

fn hand_written_warning(namespace: &str, name: &str, verb: &str) -> String {
    format!(
        "PowerCappingPolicy {namespace}/{name} was not written by the webhook \
         (no climatik.io/generated label), so it is not {verb}"
    )
}

fn workload_api(client: Client, workload: &WorkloadRef) -> Api<DynamicObject> {
    let kind = workload.kind;
    let gvk = GroupVersionKind::gvk(kind.group(), "v1", kind.kind());
    let resource = ApiResource::from_gvk_with_plural(&gvk, kind.plural());
    Api::namespaced_with(client, &workload.namespace, &resource)
}

async fn set_owner_when_created(
    client: Client,
    metrics: &Metrics,
    desired: &DesiredPolicy,
    deadline: Duration,
) {
    let workload = &desired.workload;
    let workloads = workload_api(client.clone(), workload);
    let policies = Api::<PowerCappingPolicy>::namespaced(client, &workload.namespace);
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match workloads.get_opt(&workload.name).await {
            Ok(Some(found)) => {
                if let Some(uid) = found.metadata.uid.as_deref() {
                    match set_owner(&policies, workload, &desired.name, uid).await {
                        Ok(changed) => {
                            if changed {
                                metrics.policy_write("owner_reference");
                                info!(namespace = %workload.namespace, policy = %desired.name, owner = %workload.name, "set ownerReference");
                            }
                            return;
                        }
                        // A concurrent write moved the resourceVersion: retry.
                        Err(kube::Error::Api(status)) if status.code == 409 => {}
                        Err(e) => {
                            metrics.error("policy_owner");
                            warn!(namespace = %workload.namespace, policy = %desired.name, error = %e, "setting ownerReference failed");
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                metrics.error("workload_get");
                debug!(namespace = %workload.namespace, workload = %workload.name, error = %e, "waiting for workload");
            }
        }
        if started.elapsed() >= deadline {
            remove_if_orphaned(&policies, metrics, desired).await;
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Makes `uid` an owner of the policy (merge patch guarded by the
/// resourceVersion), dropping references to earlier workloads of the same
/// kind and name. Returns whether anything changed.
async fn set_owner(
    policies: &Api<PowerCappingPolicy>,
    workload: &WorkloadRef,
    policy_name: &str,
    uid: &str,
) -> Result<bool, kube::Error> {
    let Some(policy) = policies.get_opt(policy_name).await? else {
        return Ok(false);
    };
    if !is_generated(&policy) || !belongs_to(&policy, workload) {
        return Ok(false);
    }
    let mut refs = policy.metadata.owner_references.clone().unwrap_or_default();
    if refs.iter().any(|r| r.uid == uid) {
        return Ok(false);
    }
    refs.retain(|r| !(r.kind == workload.kind.kind() && r.name == workload.name));
    let mut owner = workload.owner_reference(uid);
    // Only one owner may be the controller.
    if refs.iter().any(|r| r.controller == Some(true)) {
        owner.controller = Some(false);
    }
    refs.push(owner);
    let patch = serde_json::json!({
        "metadata": {
            "ownerReferences": refs,
            "resourceVersion": policy.metadata.resource_version,
        }
    });
    let params = PatchParams {
        field_manager: Some(MANAGER_WEBHOOK.to_string()),
        ..Default::default()
    };
    policies
        .patch(policy_name, &params, &Patch::Merge(patch))
        .await?;
    Ok(true)
}

/// The workload never appeared (its creation failed after admission, e.g.
/// a later webhook denied it): delete the policy generated for it, unless
/// someone has given it an owner since.
async fn remove_if_orphaned(
    policies: &Api<PowerCappingPolicy>,
    metrics: &Metrics,
    desired: &DesiredPolicy,
) {
    let Ok(Some(policy)) = policies.get_opt(&desired.name).await else {
        return;
    };
    let owned = policy
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|r| !r.is_empty());
    if owned || !is_generated(&policy) || !belongs_to(&policy, &desired.workload) {
        return;
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: policy.metadata.uid.clone(),
            resource_version: policy.metadata.resource_version.clone(),
        }),
        ..DeleteParams::background()
    };
    match policies.delete(&desired.name, &params).await {
        Ok(_) => {
            metrics.policy_write("orphan_cleanup");
            warn!(namespace = %desired.workload.namespace, policy = %desired.name, "workload never appeared; deleted its generated policy");
        }
        Err(e) => debug!(policy = %desired.name, error = %e, "orphan cleanup skipped"),
    }
}
