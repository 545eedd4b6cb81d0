//! The policy generator: keeps the PowerCappingPolicy generated for each
//! annotated workload equal to what the stored workload's annotations say.
//!
//! It is the only writer of generated policies. The webhook validates and
//! labels but writes nothing, so a request forged straight to the webhook
//! changes no object: a policy follows the workload as the API server
//! stored it. The generator watches the workloads' metadata only (never
//! their pod templates) and generated policies, and acts on a workload when
//! its annotations change, when its generated policy is edited or deleted by
//! hand, when this replica becomes the leader, and once every resync period
//! (which costs no API call while everything matches).
//!
//! For each workload:
//! - valid cap annotations: apply the policy from [`DesiredPolicy`], owned
//!   by the workload (garbage collection deletes it with the workload);
//! - no cap annotation: delete the generated policy named after it;
//! - annotations that do not parse (stored while the webhook was off, or
//!   by an older version): leave the policy as it is and say why in a log;
//! - a policy of that name that a person wrote: never touched.

use std::{collections::BTreeSet, fmt::Debug, sync::Arc, time::Duration};

use climatik_api::{
    PowerCappingPolicy,
    annotations::{self, CapSettings},
    generated::{DesiredPolicy, WorkloadRef, belongs_to, is_generated},
    names::{
        ANNOTATION_POWER_CAP, ANNOTATION_WORKLOAD_KIND, ANNOTATION_WORKLOAD_NAME, LABEL_GENERATED,
        MANAGER_WEBHOOK, generated_policy_name,
    },
    workload::WorkloadKind,
};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{Deployment, StatefulSet},
        batch::v1::{CronJob, Job},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, PartialObjectMeta, Patch, PatchParams, Preconditions},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::{lease::Leadership, metrics::Metrics};

/// The field manager of generated policies. It keeps the name the webhook
/// used when it wrote them, so fields it set before an upgrade stay owned
/// by one manager and a later change (an algorithm removed) removes them.
pub const FIELD_MANAGER: &str = MANAGER_WEBHOOK;

/// Longest wait for one API call of the generator.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the generator does for one workload; decided by [`plan`] alone.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    Nothing,
    Apply(DesiredPolicy),
    /// Delete the generated policy of this name if it still has this UID.
    Delete {
        name: String,
        uid: Option<String>,
    },
    /// The annotations do not parse: the policy is left as it is.
    KeepInvalid(Vec<String>),
    /// A person wrote a policy of the generated name: not ours to change.
    KeepHandWritten(String),
}

/// Decides from the stored workload's metadata (`None` once it is gone)
/// and the stored policy of its generated name (if any).
pub fn plan(
    kind: WorkloadKind,
    namespace: &str,
    name: &str,
    workload: Option<&ObjectMeta>,
    existing: Option<&PowerCappingPolicy>,
) -> Plan {
    let policy_name = generated_policy_name(kind.kind(), name);
    let reference = |uid: &str| WorkloadRef {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
    };
    let remove = || match existing {
        Some(p) if is_generated(p) && belongs_to(p, &reference("")) => Plan::Delete {
            name: policy_name.clone(),
            uid: p.uid(),
        },
        _ => Plan::Nothing,
    };
    let Some(workload) = workload else {
        // Gone: garbage collection removes a policy it owns; this removes
        // one it never owned (written before its workload had a UID).
        return remove();
    };
    if workload.deletion_timestamp.is_some() {
        return Plan::Nothing;
    }
    let empty = Default::default();
    let settings: CapSettings =
        match annotations::from_annotations(workload.annotations.as_ref().unwrap_or(&empty)) {
            Ok(Some(settings)) => settings,
            Ok(None) => return remove(),
            Err(errors) => return Plan::KeepInvalid(errors),
        };
    let Some(uid) = workload.uid.as_deref().filter(|u| !u.is_empty()) else {
        return Plan::Nothing;
    };
    if existing.is_some_and(|p| !is_generated(p)) {
        return Plan::KeepHandWritten(policy_name);
    }
    let desired = DesiredPolicy {
        name: policy_name,
        settings,
        workload: reference(uid),
    };
    match existing {
        Some(existing) if desired.is_satisfied_by(existing) => Plan::Nothing,
        _ => Plan::Apply(desired),
    }
}

/// Where the generator looks and how often it checks everything.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// Only workloads in this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Every workload is compared with its policy this often.
    pub resync: Duration,
}

/// One workload by kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct WorkloadKey {
    kind: WorkloadKind,
    namespace: String,
    name: String,
}

/// The workload a generated policy names.
fn key_of_policy(policy: &PowerCappingPolicy) -> Option<WorkloadKey> {
    let annotations = policy.annotations();
    let kind = annotations.get(ANNOTATION_WORKLOAD_KIND)?;
    let kind = WorkloadKind::ALL.into_iter().find(|k| k.kind() == kind)?;
    Some(WorkloadKey {
        kind,
        namespace: policy.namespace()?,
        name: annotations.get(ANNOTATION_WORKLOAD_NAME)?.clone(),
    })
}

type Workloads<K> = Store<PartialObjectMeta<K>>;

/// What the watches have seen: the four kinds' metadata and the generated
/// policies.
struct Stores {
    deployments: Workloads<Deployment>,
    statefulsets: Workloads<StatefulSet>,
    jobs: Workloads<Job>,
    cronjobs: Workloads<CronJob>,
    policies: Store<PowerCappingPolicy>,
}

fn metadata_of<K>(store: &Workloads<K>, key: &WorkloadKey) -> Option<ObjectMeta>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .get(&ObjectRef::new(&key.name).within(&key.namespace))
        .map(|meta| meta.metadata.clone())
}

fn annotated_keys<K>(store: &Workloads<K>, kind: WorkloadKind, keys: &mut BTreeSet<WorkloadKey>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    keys.extend(
        store
            .state()
            .iter()
            .filter(|meta| meta.annotations().contains_key(ANNOTATION_POWER_CAP))
            .map(|meta| WorkloadKey {
                kind,
                namespace: meta.namespace().unwrap_or_default(),
                name: meta.name_any(),
            }),
    );
}

impl Stores {
    fn workload(&self, key: &WorkloadKey) -> Option<ObjectMeta> {
        match key.kind {
            WorkloadKind::Deployment => metadata_of(&self.deployments, key),
            WorkloadKind::StatefulSet => metadata_of(&self.statefulsets, key),
            WorkloadKind::Job => metadata_of(&self.jobs, key),
            WorkloadKind::CronJob => metadata_of(&self.cronjobs, key),
        }
    }

    fn policy(&self, key: &WorkloadKey) -> Option<Arc<PowerCappingPolicy>> {
        let name = generated_policy_name(key.kind.kind(), &key.name);
        self.policies
            .get(&ObjectRef::new(&name).within(&key.namespace))
    }

    /// Every annotated workload, and every workload a generated policy names.
    fn all_keys(&self) -> BTreeSet<WorkloadKey> {
        let mut keys = BTreeSet::new();
        annotated_keys(&self.deployments, WorkloadKind::Deployment, &mut keys);
        annotated_keys(&self.statefulsets, WorkloadKind::StatefulSet, &mut keys);
        annotated_keys(&self.jobs, WorkloadKind::Job, &mut keys);
        annotated_keys(&self.cronjobs, WorkloadKind::CronJob, &mut keys);
        keys.extend(
            self.policies
                .state()
                .iter()
                .filter_map(|p| key_of_policy(p)),
        );
        keys
    }

    async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.deployments.wait_until_ready().await?;
        self.statefulsets.wait_until_ready().await?;
        self.jobs.wait_until_ready().await?;
        self.cronjobs.wait_until_ready().await?;
        self.policies.wait_until_ready().await
    }
}

/// Watches one workload kind's metadata into a store; yields the key of
/// every workload whose annotations, UID or deletion changed.
fn watch_kind<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    kind: WorkloadKind,
) -> (Workloads<K>, BoxStream<'static, WorkloadKey>)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    // An Api of PartialObjectMeta asks for metadata only: pod templates
    // never reach this process.
    let api: Api<PartialObjectMeta<K>> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let keys = watcher(api, watcher::Config::default().any_semantic())
        .backoff(crate::driver::WatchBackoff::default())
        .modify(crate::slim::slim)
        .reflect(writer)
        .touched_objects()
        .filter_map(move |event| async move {
            match event {
                Ok(meta) => Some(WorkloadKey {
                    kind,
                    namespace: meta.namespace().unwrap_or_default(),
                    name: meta.name_any(),
                }),
                Err(error) => {
                    tracing::debug!(%error, kind = kind.kind(), "workload watch error; retrying");
                    None
                }
            }
        })
        .boxed();
    (reader, keys)
}

/// Runs the generator until `shutdown` resolves. Acts only while `leadership`
/// says so; a new leader goes through every workload first.
pub async fn run(
    client: kube::Client,
    config: GeneratorConfig,
    leadership: Leadership,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let namespace = config.namespace.as_deref();
    let (deployments, d) = watch_kind::<Deployment>(&client, namespace, WorkloadKind::Deployment);
    let (statefulsets, s) =
        watch_kind::<StatefulSet>(&client, namespace, WorkloadKind::StatefulSet);
    let (jobs, j) = watch_kind::<Job>(&client, namespace, WorkloadKind::Job);
    let (cronjobs, c) = watch_kind::<CronJob>(&client, namespace, WorkloadKind::CronJob);
    let policies_api = crate::driver::policies_api(client.clone(), namespace);
    let (policies, writer) = reflector::store();
    let policy_keys = watcher(
        policies_api,
        watcher::Config::default()
            .labels(&format!("{LABEL_GENERATED}=true"))
            .any_semantic(),
    )
    .backoff(crate::driver::WatchBackoff::default())
    .modify(crate::slim::slim)
    .reflect(writer)
    .filter_map(|event| async move {
        // A generated policy edited or deleted by hand: put it back.
        match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p)) => key_of_policy(&p),
            _ => None,
        }
    })
    .boxed();
    let stores = Stores {
        deployments,
        statefulsets,
        jobs,
        cronjobs,
        policies,
    };

    // The watches feed one queue; one worker drains it, so writes for a
    // workload never race each other.
    let (tx, mut rx) = mpsc::unbounded_channel::<WorkloadKey>();
    let mut events = futures::stream::select_all([d, s, j, c, policy_keys]);
    let feed = tokio::spawn(async move {
        while let Some(key) = events.next().await {
            if tx.send(key).is_err() {
                return;
            }
        }
    });
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => { feed.abort(); return; }
        ready = stores.wait_until_ready() => if ready.is_err() { feed.abort(); return; }
    }
    tracing::info!("policy generator synced");

    let mut was_leader = false;
    let mut resync = tokio::time::interval(config.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Leadership is looked at once a second: a new leader starts with a
    // full pass within a second of winning.
    let mut leader_check = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut due = BTreeSet::new();
        tokio::select! {
            () = &mut shutdown => break,
            _ = resync.tick() => due = stores.all_keys(),
            _ = leader_check.tick() => {}
            key = rx.recv() => match key {
                Some(key) => { due.insert(key); }
                None => break,
            },
        }
        // Fold the burst of events that usually arrives together.
        while let Ok(key) = rx.try_recv() {
            due.insert(key);
        }
        let leader = leadership.is_leader();
        if leader && !was_leader {
            due = stores.all_keys();
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        for key in due {
            // A leader that stepped down mid-pass writes nothing more.
            if !leadership.is_leader() {
                break;
            }
            reconcile(&client, &stores, &metrics, &key).await;
        }
    }
    feed.abort();
}

/// Brings one workload's generated policy in line with the stores.
#[tracing::instrument(
    name = "generate",
    skip_all,
    fields(kind = key.kind.kind(), namespace = %key.namespace, workload = %key.name)
)]
async fn reconcile(client: &kube::Client, stores: &Stores, metrics: &Metrics, key: &WorkloadKey) {
    let workload = stores.workload(key);
    let api = Api::<PowerCappingPolicy>::namespaced(client.clone(), &key.namespace);
    let plan_with = |existing: Option<&PowerCappingPolicy>| {
        plan(
            key.kind,
            &key.namespace,
            &key.name,
            workload.as_ref(),
            existing,
        )
    };
    let mut decided = plan_with(stores.policy(key).as_deref());
    if matches!(decided, Plan::Apply(_)) {
        // The store holds generated policies only: before writing, look at
        // what has the name now, so a policy a person wrote is never
        // overwritten.
        let name = generated_policy_name(key.kind.kind(), &key.name);
        match tokio::time::timeout(CALL_TIMEOUT, api.get_opt(&name)).await {
            Ok(Ok(live)) => decided = plan_with(live.as_ref()),
            Ok(Err(error)) => {
                tracing::warn!(%error, policy = %name, "reading the policy before writing it failed");
                metrics.generator_skip("write_failed");
                return;
            }
            Err(_) => {
                tracing::warn!(policy = %name, "reading the policy before writing it timed out");
                metrics.generator_skip("write_failed");
                return;
            }
        }
    }
    let outcome = match decided {
        Plan::Nothing => return,
        Plan::KeepInvalid(errors) => {
            tracing::warn!(errors = %errors.join("; "), "cap annotations do not parse; policy left as it is");
            metrics.generator_skip("invalid_annotation");
            return;
        }
        Plan::KeepHandWritten(policy) => {
            tracing::warn!(%policy, "a PowerCappingPolicy of the generated name was written by hand; not changing it");
            metrics.generator_skip("hand_written");
            return;
        }
        Plan::Apply(desired) => {
            // force: the annotation is the source of truth for generated
            // policies, so a hand edit of one is overridden.
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let body = Patch::Apply(desired.to_object());
            let write = api.patch(&desired.name, &params, &body);
            match tokio::time::timeout(CALL_TIMEOUT, write).await {
                Ok(Ok(_)) => {
                    tracing::info!(policy = %desired.name, watts = desired.settings.watts, "applied generated policy");
                    Ok("apply")
                }
                Ok(Err(e)) => Err(("apply", e.to_string())),
                Err(_) => Err(("apply", "timed out".to_string())),
            }
        }
        Plan::Delete { name, uid } => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match tokio::time::timeout(CALL_TIMEOUT, api.delete(&name, &params)).await {
                Ok(Ok(_)) => {
                    tracing::info!(policy = %name, "deleted generated policy");
                    Ok("delete")
                }
                // Gone already, or replaced (UID precondition).
                Ok(Err(kube::Error::Api(status))) if status.code == 404 || status.code == 409 => {
                    return;
                }
                Ok(Err(e)) => Err(("delete", e.to_string())),
                Err(_) => Err(("delete", "timed out".to_string())),
            }
        }
    };
    match outcome {
        Ok(action) => metrics.generated_policy_write(action),
        Err((action, error)) => {
            // The next resync tries again.
            tracing::warn!(action, %error, "generated policy write failed");
            metrics.generator_skip("write_failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use climatik_api::names::{
        ANNOTATION_CAPPING_THRESHOLD, ANNOTATION_MIN_POWER, ANNOTATION_PRIORITY,
    };

    use super::*;

    fn meta(annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("vllm".into()),
            namespace: Some("team-a".into()),
            uid: Some("u-1".into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    fn plan_for(workload: Option<&ObjectMeta>, existing: Option<&PowerCappingPolicy>) -> Plan {
        plan(
            WorkloadKind::Deployment,
            "team-a",
            "vllm",
            workload,
            existing,
        )
    }

    fn generated(watts: &str) -> PowerCappingPolicy {
        let Plan::Apply(desired) = plan_for(Some(&meta(&[(ANNOTATION_POWER_CAP, watts)])), None)
        else {
            panic!("no policy for {watts}");
        };
        desired.to_object()
    }

    #[test]
    fn an_annotated_workload_gets_its_policy_once() {
        let Plan::Apply(desired) = plan_for(Some(&meta(&[(ANNOTATION_POWER_CAP, "1.5kW")])), None)
        else {
            panic!("no apply");
        };
        assert_eq!(desired.name, "deployment-vllm");
        assert_eq!(desired.settings.watts, 1500);
        assert_eq!(desired.workload.uid, "u-1");
        let applied = desired.to_object();
        assert_eq!(
            plan_for(
                Some(&meta(&[(ANNOTATION_POWER_CAP, "1.5kW")])),
                Some(&applied)
            ),
            Plan::Nothing
        );
        // A changed annotation is a change to apply.
        assert!(matches!(
            plan_for(
                Some(&meta(&[(ANNOTATION_POWER_CAP, "1.5kW"), (ANNOTATION_CAPPING_THRESHOLD, "80")])),
                Some(&applied)
            ),
            Plan::Apply(d) if d.settings.threshold == 80
        ));
    }

    #[test]
    fn priority_and_guarantee_annotations_set_the_policy() {
        let annotated = meta(&[
            (ANNOTATION_POWER_CAP, "1kW"),
            (ANNOTATION_PRIORITY, "100"),
            (ANNOTATION_MIN_POWER, "400W"),
        ]);
        let Plan::Apply(desired) = plan_for(Some(&annotated), None) else {
            panic!("no apply");
        };
        let applied = desired.to_object();
        assert_eq!(applied.spec.priority, Some(100));
        assert_eq!(applied.spec.min_watts, Some(400));
        assert_eq!(plan_for(Some(&annotated), Some(&applied)), Plan::Nothing);
        // Dropping them is a change to apply.
        assert!(matches!(
            plan_for(Some(&meta(&[(ANNOTATION_POWER_CAP, "1kW")])), Some(&applied)),
            Plan::Apply(d) if d.settings.priority.is_none() && d.settings.min_watts.is_none()
        ));
        // A guarantee above the cap leaves the policy as it is.
        assert!(matches!(
            plan_for(
                Some(&meta(&[(ANNOTATION_POWER_CAP, "1kW"), (ANNOTATION_MIN_POWER, "2kW")])),
                Some(&applied)
            ),
            Plan::KeepInvalid(errors) if errors.len() == 1
        ));
    }

    #[test]
    fn the_policy_goes_with_the_annotation_or_the_workload() {
        let mut existing = generated("300");
        existing.metadata.uid = Some("p-1".into());
        let delete = Plan::Delete {
            name: "deployment-vllm".into(),
            uid: Some("p-1".into()),
        };
        assert_eq!(plan_for(Some(&meta(&[])), Some(&existing)), delete);
        assert_eq!(plan_for(None, Some(&existing)), delete);
        assert_eq!(plan_for(Some(&meta(&[])), None), Plan::Nothing);
        // Being deleted: garbage collection takes the owned policy.
        let mut deleting = meta(&[(ANNOTATION_POWER_CAP, "300")]);
        deleting.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(plan_for(Some(&deleting), Some(&existing)), Plan::Nothing);
    }

    #[test]
    fn bad_annotations_and_hand_written_policies_are_left_alone() {
        let existing = generated("300");
        assert!(matches!(
            plan_for(Some(&meta(&[(ANNOTATION_POWER_CAP, "lots")])), Some(&existing)),
            Plan::KeepInvalid(errors) if errors.len() == 1
        ));
        let mut hand = existing.clone();
        hand.metadata.labels = None;
        assert_eq!(
            plan_for(Some(&meta(&[(ANNOTATION_POWER_CAP, "500")])), Some(&hand)),
            Plan::KeepHandWritten("deployment-vllm".into())
        );
        assert_eq!(plan_for(Some(&meta(&[])), Some(&hand)), Plan::Nothing);
        assert_eq!(plan_for(None, Some(&hand)), Plan::Nothing);
    }

    #[test]
    fn a_policy_generated_for_another_kind_of_the_same_name_is_not_deleted() {
        // A StatefulSet "vllm" has policy statefulset-vllm, never deployment-vllm;
        // but a policy of the deployment name that names another workload is not ours.
        let mut other = generated("300");
        other
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_WORKLOAD_NAME.into(), "someone-else".into());
        assert_eq!(plan_for(None, Some(&other)), Plan::Nothing);
    }

    #[test]
    fn policies_name_their_workload() {
        let policy = generated("300");
        assert_eq!(
            key_of_policy(&PowerCappingPolicy {
                metadata: ObjectMeta {
                    namespace: Some("team-a".into()),
                    ..policy.metadata.clone()
                },
                ..policy
            }),
            Some(WorkloadKey {
                kind: WorkloadKind::Deployment,
                namespace: "team-a".into(),
                name: "vllm".into()
            })
        );
    }
}
