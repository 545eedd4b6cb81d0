//! What both controllers do around their own reconcile: leader election
//! (or leading alone), the policy watch with the shared scheduling,
//! reconciles cut short when leadership ends, `/readyz` once that watch has
//! listed everything, and running until shutdown. Each controller brings
//! only its context, reconcile and error policy.

use std::{fmt::Debug, future::Future, sync::Arc, time::Duration};

use climatik_api::{NodeFrequencies, PowerCappingPolicy};
use climatik_runtime::{ReadyFlag, Shutdown};
use futures::StreamExt;
use kube::{
    Api,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef, Store},
        utils::Backoff,
        watcher,
    },
};

use crate::{
    fair::Slots,
    lease::{self, Leadership, LeaseConfig},
    metrics::Metrics,
    slim::slim,
};

/// How the controllers' watches wait before trying the API server again:
/// from 0.5 s, doubling, at most 5 s, back to the start after an event.
/// kube's default grows to 30 s, so a watch could come back up to half a
/// minute after a long API-server outage ended, and entries the recommender
/// renews could expire meanwhile (make chaos, restart of the API server).
/// Only the few controller replicas use it; the per-node agents keep
/// kube's gentler default.
#[derive(Debug, Clone)]
pub(crate) struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const LONGEST: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (wait * 2).min(Self::LONGEST);
        Some(wait)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Leadership for this replica: elected through `lease`, or always the
/// leader when election is off. The task, when there is one, ends after
/// `shutdown` (having released the Lease).
pub(crate) fn elect(
    client: &kube::Client,
    lease: Option<&LeaseConfig>,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
) -> (Leadership, Option<tokio::task::JoinHandle<()>>) {
    match lease {
        Some(lease) => {
            let (leadership, task) = lease::spawn(
                client.clone(),
                lease.clone(),
                metrics.clone(),
                shutdown.wait(),
            );
            (leadership, Some(task))
        }
        None => {
            metrics.set_leader(true);
            (Leadership::always(), None)
        }
    }
}

/// A controller's reconcile with the leadership it acts under.
pub(crate) struct Reconciler<R> {
    pub reconcile: R,
    pub leadership: Leadership,
    /// What a reconcile cut short by the end of leadership answers (the
    /// controller's period: a follower's reconciles only requeue).
    pub stepped_down: Action,
    /// Bounds the reconciles at work, first come first served.
    pub slots: Slots,
    /// Whether a policy's reconcile skips the queue (see [`crate::fair`]).
    pub urgent: fn(&PowerCappingPolicy) -> bool,
}

/// The watch of every PowerCappingPolicy (in `namespace`, or all) with
/// [`crate::controller_config`]'s scheduling, stopping at `shutdown`. Its
/// store is what the controller has seen of the policies.
pub(crate) fn policy_controller(
    client: kube::Client,
    namespace: Option<&str>,
    shutdown: &Shutdown,
) -> Controller<PowerCappingPolicy> {
    let (store, writer) = reflector::store();
    let policies = watcher(
        policies_api(client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .backoff(WatchBackoff::default())
    .modify(slim)
    .reflect(writer)
    .applied_objects();
    Controller::for_stream(policies, store)
        .with_config(crate::controller_config())
        .graceful_shutdown_on(shutdown.wait())
}

/// Reconciles the policies of `controller` (see [`policy_controller`])
/// until its shutdown; `ready` is set once the policy watch has synced.
///
/// Each reconcile races [`Leadership::lost`], which is polled first: once
/// the term is over the reconcile is dropped before it takes another step,
/// so a replica that stepped down sends no further request. A request sent
/// just before has the gap between renew deadline and lease duration to
/// land before another replica can lead (see [`crate::lease`]).
pub(crate) async fn run_policies<Ctx, Fut, E>(
    controller: Controller<PowerCappingPolicy>,
    reconciler: Reconciler<
        impl FnMut(Arc<PowerCappingPolicy>, Arc<Ctx>) -> Fut + Clone + Send + 'static,
    >,
    error_policy: impl Fn(Arc<PowerCappingPolicy>, &E, Arc<Ctx>) -> Action,
    context: Arc<Ctx>,
    ready: ReadyFlag,
) where
    Ctx: Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let Reconciler {
        reconcile,
        leadership,
        stepped_down,
        slots,
        urgent,
    } = reconciler;
    let slots = Arc::new(slots);
    let store = controller.store();
    let reconcile = move |policy: Arc<PowerCappingPolicy>, context| {
        // The policy as the watch holds it now: a reconcile that waited for
        // a slot works on what changed meanwhile (a cap cut), and asks
        // about that whether it may skip the queue.
        let latest = {
            let (store, key) = (store.clone(), ObjectRef::from_obj(&*policy));
            move || store.get(&key).unwrap_or_else(|| policy.clone())
        };
        let is_urgent = {
            let latest = latest.clone();
            move || urgent(&latest())
        };
        let mut reconcile = reconcile.clone();
        // Made only once a slot is free: a reconcile's state is large, and
        // under overload a thousand wait.
        let work = move || reconcile(latest(), context);
        let lost = leadership.lost();
        let stepped_down = stepped_down.clone();
        let slots = slots.clone();
        async move {
            tokio::select! {
                biased;
                _ = lost => Ok(stepped_down),
                result = slots.run(is_urgent, work) => result,
            }
        }
    };
    let readiness = spawn_ready_when_synced(controller.store(), ready);
    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconciliation did not complete");
            }
        })
        .await;
    readiness.abort();
}

/// Every NodeFrequencies (targets and the node agents' reports), kept by a
/// watch that runs until `shutdown`; wait for the store to be ready before
/// reading it.
pub(crate) fn node_frequencies(
    client: &kube::Client,
    shutdown: &Shutdown,
) -> (Store<NodeFrequencies>, tokio::task::JoinHandle<()>) {
    let (store, writer) = reflector::store::<NodeFrequencies>();
    let watch = reflector::reflector(
        writer,
        watcher(
            Api::<NodeFrequencies>::all(client.clone()),
            watcher::Config::default(),
        )
        .backoff(WatchBackoff::default())
        .modify(slim),
    )
    .for_each(|_| async {});
    let stop = shutdown.wait();
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = watch => {}
            _ = stop => {}
        }
    });
    (store, task)
}

/// Policies in one namespace, or in all.
pub(crate) fn policies_api(
    client: kube::Client,
    namespace: Option<&str>,
) -> Api<PowerCappingPolicy> {
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Sets `ready` once `store` has been filled by a complete list.
fn spawn_ready_when_synced<K>(store: Store<K>, ready: ReadyFlag) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Debug + Send + Sync,
{
    tokio::spawn(async move {
        if synced(&store).await {
            ready.set(true);
        }
    })
}

/// Waits until `store` has been filled by a complete list: `true` then,
/// `false` if its writer (the watch) went away first. Until then an empty
/// store says nothing about what exists.
pub(crate) async fn synced<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // The store's readiness is a one-shot channel with room for one waker,
    // and the controller's own runner waits on it too: a waiter here can
    // miss the wake-up. Asking again each second is cheap and sees the
    // remembered result once the list is done.
    loop {
        match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => return false,
            Err(_) => {}
        }
    }
}

/// Waits for `shutdown` to finish an election task, if there is one.
pub(crate) async fn stop_election(election: Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = election {
        let _ = task.await;
    }
}

/// The resource a policy's status write is counted under.
pub(crate) const POLICY_STATUS: &str = "powercappingpolicies/status";

/// Server-side applies `status` to `policy`'s status as `manager` (every
/// field that manager owns and `status` lacks is removed), counted in
/// `climatik_api_writes_total`. The monitor and the budget controller each
/// own their fields of the same status.
pub(crate) async fn apply_policy_status(
    client: &kube::Client,
    metrics: &Metrics,
    policy: &PowerCappingPolicy,
    manager: &str,
    status: impl serde::Serialize,
) -> crate::Result<()> {
    use kube::{
        Resource, ResourceExt,
        api::{Patch, PatchParams},
    };
    let namespace = policy.namespace().ok_or(crate::Error::MissingNamespace)?;
    let patch = serde_json::json!({
        "apiVersion": PowerCappingPolicy::api_version(&()),
        "kind": PowerCappingPolicy::kind(&()),
        "status": status,
    });
    let written = Api::<PowerCappingPolicy>::namespaced(client.clone(), &namespace)
        .patch_status(
            &policy.name_any(),
            &PatchParams::apply(manager).force(),
            &Patch::Apply(patch),
        )
        .await;
    metrics.api_write(POLICY_STATUS, "apply", written.is_ok());
    written?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_doubles_to_five_seconds_and_starts_over_after_a_reset() {
        let mut backoff = WatchBackoff::default();
        let waits: Vec<u128> = backoff.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(500)));
    }
}
