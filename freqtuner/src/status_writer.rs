//! The NodeFrequencies status (and the object itself when it is missing),
//! written off the agent loop. After every pass the loop publishes what it
//! wants written ([`Intent`]) into a `watch` channel, which holds only the
//! latest: an intent not yet sent is superseded by a newer one, never
//! queued. A writer task turns the latest intent into API calls, each
//! bounded by a timeout, so a slow or unreachable API server delays the
//! status and nothing else: expiry, power budgets and SIGTERM keep their
//! pace (see `docs/design.md`, agent safety).

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use climatik_api::{
    GpuInventory, NodeFrequencies, NodeFrequenciesSpec, NodeFrequenciesStatus, names,
};
use k8s_openapi::{
    api::core::v1::Node,
    apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    actuator::Report,
    metrics::{Metrics, ResultLabels},
};

/// How often a missing object is created at most.
const CREATE_RETRY: Duration = Duration::from_secs(5);

/// What the loop wants the API server to hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    /// The node's NodeFrequencies does not exist: create it.
    Create,
    /// The status of the object that exists.
    Status(Box<Draft>),
}

/// A status as a pass left it, before the writer stamps its times.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// The object it is for: a deleted and recreated object is written
    /// anew, however like the last status this one is.
    pub uid: Option<String>,
    /// Without `lastUpdated` and `conditions`, which the writer sets.
    pub status: NodeFrequenciesStatus,
    /// The `Ready` condition's status (`True`/`False`), reason and message.
    pub ready: (&'static str, &'static str, String),
}

impl Draft {
    /// The status of a pass over the object `uid` at `generation`, on a
    /// node with these GPUs and backends.
    pub fn new(
        uid: Option<String>,
        generation: Option<i64>,
        report: &Report,
        gpus: Vec<GpuInventory>,
        backend: Option<String>,
    ) -> Self {
        let failures = report.failures();
        let ready = if failures == 0 && report.invalid.is_empty() {
            ("True", "Applied", "every named device is handled".into())
        } else if failures == 0 {
            ("True", "InvalidEntries", report.invalid.join("; "))
        } else {
            (
                "False",
                "ActuationFailed",
                format!("{failures} device(s) failed; see their status"),
            )
        };
        Self {
            uid,
            status: NodeFrequenciesStatus {
                gpu_frequencies: report.gpus.clone(),
                cpu_frequencies: report.cpus.clone(),
                gpus,
                summary: Some(report.summary()),
                backend,
                entry_lease: None,
                observed_generation: generation,
                last_updated: None,
                conditions: Vec::new(),
            },
            ready,
        }
    }

    /// Announces the Lease that keeps this node's `keptByLease` entries
    /// alive (`namespace/name`), once the agent watches it.
    pub fn with_entry_lease(mut self, lease: Option<String>) -> Self {
        self.status.entry_lease = lease;
        self
    }
}

/// The API calls the writer makes; [`KubeStatusApi`] makes them against the
/// API server.
pub trait StatusApi: Send + Sync + 'static {
    /// Server-side applies `status` to the node's NodeFrequencies.
    fn apply_status(
        &self,
        status: NodeFrequenciesStatus,
    ) -> impl Future<Output = kube::Result<()>> + Send;

    /// Creates the node's NodeFrequencies; one that exists already is fine.
    fn create(&self) -> impl Future<Output = kube::Result<()>> + Send;
}

/// The last status written, to tell a change from a heartbeat.
#[derive(Debug, Clone)]
struct Written {
    uid: Option<String>,
    /// Without timestamps and power readings, which change every pass, and
    /// without `observedGeneration`: the recommender's renewals of entries
    /// bump the generation without changing any device, and writing each
    /// one would echo every renewal back as a status write.
    comparable: NodeFrequenciesStatus,
    at: Instant,
    ready: Condition,
}

fn comparable(status: &NodeFrequenciesStatus) -> NodeFrequenciesStatus {
    let mut s = status.clone();
    s.last_updated = None;
    s.observed_generation = None;
    s.conditions.clear();
    for g in &mut s.gpu_frequencies {
        g.power_watts = None;
    }
    s
}

/// Writes the latest [`Intent`]: a status when it changed or is due (every
/// `interval`), the object when it is missing (every few seconds at most).
pub struct StatusWriter<A> {
    api: A,
    /// The bound on each API call.
    timeout: Duration,
    interval: Duration,
    metrics: Arc<Metrics>,
    written: Option<Written>,
    last_create_attempt: Option<Instant>,
}

impl<A: StatusApi> StatusWriter<A> {
    pub fn new(api: A, timeout: Duration, interval: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            api,
            timeout,
            interval,
            metrics,
            written: None,
            last_create_attempt: None,
        }
    }

    /// Serves intents until every sender is gone, then returns once the
    /// last one published is handled.
    pub async fn run(mut self, mut intents: watch::Receiver<Option<Intent>>) {
        // An intent published while a call is in flight is seen when it
        // ends; intermediate ones were overwritten in the channel.
        while intents.changed().await.is_ok() {
            let intent = intents.borrow_and_update().clone();
            match intent {
                None => {}
                Some(Intent::Create) => self.create().await,
                Some(Intent::Status(draft)) => self.write(*draft).await,
            }
        }
    }

    async fn write(&mut self, draft: Draft) {
        let now = Timestamp::now();
        let comparable = comparable(&draft.status);
        let (status, reason, message) = draft.ready;
        let mut ready = Condition {
            type_: names::conditions::READY.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: draft.status.observed_generation,
            last_transition_time: Time(now),
        };
        if let Some(w) = self.written.as_ref().filter(|w| w.uid == draft.uid) {
            if w.ready.status == ready.status {
                ready.last_transition_time = w.ready.last_transition_time.clone();
            }
            let same = w.comparable == comparable && w.ready.message == ready.message;
            if same && w.at.elapsed() < self.interval {
                return;
            }
        }
        let status = NodeFrequenciesStatus {
            last_updated: Some(Time(now)),
            conditions: vec![ready.clone()],
            ..draft.status
        };
        match tokio::time::timeout(self.timeout, self.api.apply_status(status)).await {
            Ok(Ok(())) => {
                self.count("ok");
                self.written = Some(Written {
                    uid: draft.uid,
                    comparable,
                    at: Instant::now(),
                    ready,
                });
            }
            Ok(Err(e)) => {
                self.count("error");
                tracing::warn!(error = %e, "writing NodeFrequencies status");
            }
            Err(_) => {
                self.count("timeout");
                tracing::warn!(timeout = ?self.timeout, "writing NodeFrequencies status timed out");
            }
        }
    }

    async fn create(&mut self) {
        // Whatever was written belonged to an object that is gone.
        self.written = None;
        if self
            .last_create_attempt
            .is_some_and(|t| t.elapsed() < CREATE_RETRY)
        {
            return;
        }
        self.last_create_attempt = Some(Instant::now());
        match tokio::time::timeout(self.timeout, self.api.create()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "creating the node's NodeFrequencies"),
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "creating the node's NodeFrequencies timed out")
            }
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .status_writes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
}

/// The loop's end of a running [`StatusWriter`].
pub struct StatusHandle {
    intents: watch::Sender<Option<Intent>>,
    task: JoinHandle<()>,
}

impl StatusHandle {
    /// Starts `writer` as a task.
    pub fn spawn<A: StatusApi>(writer: StatusWriter<A>) -> Self {
        let (intents, receiver) = watch::channel(None);
        Self {
            intents,
            task: tokio::spawn(writer.run(receiver)),
        }
    }

    /// Replaces whatever intent was not handled yet; never waits.
    pub fn publish(&self, intent: Intent) {
        self.intents.send_replace(Some(intent));
    }

    /// Lets the writer handle the last intent for at most `grace`, then
    /// stops it; true when it finished in time.
    pub async fn finish(self, grace: Duration) -> bool {
        let Self { intents, mut task } = self;
        drop(intents);
        if tokio::time::timeout(grace, &mut task).await.is_ok() {
            return true;
        }
        task.abort();
        false
    }
}

/// [`StatusApi`] against the API server, for the NodeFrequencies named
/// after `node`.
pub struct KubeStatusApi {
    node: String,
    nodefrequencies: Api<NodeFrequencies>,
    nodes: Api<Node>,
}

impl KubeStatusApi {
    pub fn new(client: kube::Client, node: String) -> Self {
        Self {
            node,
            nodefrequencies: Api::all(client.clone()),
            nodes: Api::all(client),
        }
    }
}

impl StatusApi for KubeStatusApi {
    async fn apply_status(&self, status: NodeFrequenciesStatus) -> kube::Result<()> {
        let body = serde_json::json!({
            "apiVersion": NodeFrequencies::api_version(&()),
            "kind": NodeFrequencies::kind(&()),
            "metadata": { "name": self.node },
            "status": status,
        });
        let params = PatchParams::apply(names::MANAGER_FREQTUNER).force();
        self.nodefrequencies
            .patch_status(&self.node, &params, &Patch::Apply(&body))
            .await
            .map(|_| ())
    }

    /// Empty spec, owned by the Node so it goes with it.
    async fn create(&self) -> kube::Result<()> {
        let owner = match self.nodes.get_opt(&self.node).await? {
            Some(node) => node.metadata.uid.map(|uid| OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: self.node.clone(),
                uid,
                ..OwnerReference::default()
            }),
            None => {
                tracing::warn!(node = %self.node, "no Node of this name; creating NodeFrequencies without an owner");
                None
            }
        };
        let object = NodeFrequencies {
            metadata: ObjectMeta {
                name: Some(self.node.clone()),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: NodeFrequenciesSpec {
                node_name: self.node.clone(),
                gpu_frequencies: Vec::new(),
                cpu_frequencies: Vec::new(),
            },
            status: None,
        };
        let params = PostParams {
            field_manager: Some(names::MANAGER_FREQTUNER.into()),
            ..PostParams::default()
        };
        match self.nodefrequencies.create(&params, &object).await {
            Ok(_) => {
                tracing::info!(node = %self.node, "created the node's NodeFrequencies");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use climatik_api::{CpuFrequencyStatus, DeviceState};
    use tokio::sync::{Semaphore, mpsc};

    use super::*;

    /// Records every status it is asked to apply and tells the test a call
    /// began; each call then waits for a permit of `gate`, or forever
    /// without one.
    #[derive(Clone)]
    struct FakeApi {
        applied: Arc<Mutex<Vec<NodeFrequenciesStatus>>>,
        began: mpsc::UnboundedSender<()>,
        gate: Option<Arc<Semaphore>>,
    }

    impl FakeApi {
        fn new(gate: Option<Arc<Semaphore>>) -> (Self, mpsc::UnboundedReceiver<()>) {
            let (began, calls) = mpsc::unbounded_channel();
            let api = Self {
                applied: Arc::default(),
                began,
                gate,
            };
            (api, calls)
        }

        /// The CPU ceiling (MHz) of each status applied, in order.
        fn applied_mhz(&self) -> Vec<Option<i32>> {
            self.applied
                .lock()
                .expect("not poisoned")
                .iter()
                .map(|s| s.cpu_frequencies[0].current_frequency)
                .collect()
        }
    }

    impl StatusApi for FakeApi {
        async fn apply_status(&self, status: NodeFrequenciesStatus) -> kube::Result<()> {
            self.applied.lock().expect("not poisoned").push(status);
            let _ = self.began.send(());
            match &self.gate {
                Some(gate) => {
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                }
                None => std::future::pending().await,
            }
            Ok(())
        }

        async fn create(&self) -> kube::Result<()> {
            Ok(())
        }
    }

    fn intent(uid: &str, mhz: i32) -> Option<Intent> {
        intent_at(uid, 1, mhz)
    }

    /// [`intent`] for a pass over generation `generation` of the object.
    fn intent_at(uid: &str, generation: i64, mhz: i32) -> Option<Intent> {
        let report = Report {
            cpus: vec![CpuFrequencyStatus {
                cpu_id: 0,
                current_frequency: Some(mhz),
                target_frequency: Some(mhz),
                state: DeviceState::Applied,
                message: String::new(),
            }],
            ..Report::default()
        };
        let draft = Draft::new(
            Some(uid.into()),
            Some(generation),
            &report,
            Vec::new(),
            None,
        );
        Some(Intent::Status(Box::new(draft)))
    }

    fn writes(metrics: &Metrics, result: &str) -> u64 {
        metrics
            .status_writes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .get()
    }

    /// A writer for `api` (statuses due only hourly), running as a task.
    fn start(
        api: &FakeApi,
        timeout: Duration,
    ) -> (watch::Sender<Option<Intent>>, JoinHandle<()>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let interval = Duration::from_secs(3600);
        let writer = StatusWriter::new(api.clone(), timeout, interval, metrics.clone());
        let (intents, receiver) = watch::channel(None);
        (intents, tokio::spawn(writer.run(receiver)), metrics)
    }

    #[tokio::test]
    async fn statuses_published_during_a_write_are_superseded_not_queued() {
        let gate = Arc::new(Semaphore::new(0));
        let (api, mut began) = FakeApi::new(Some(gate.clone()));
        let (intents, task, metrics) = start(&api, Duration::from_secs(3600));

        intents.send_replace(intent("a", 1000));
        began.recv().await.expect("the first write began");
        // The first write hangs: these pile up behind it.
        intents.send_replace(intent("a", 1100));
        intents.send_replace(intent("a", 1200));
        gate.add_permits(2);
        drop(intents);
        task.await.expect("writer ended");

        assert_eq!(api.applied_mhz(), vec![Some(1000), Some(1200)]);
        assert_eq!(writes(&metrics, "ok"), 2);
    }

    #[tokio::test]
    async fn an_unchanged_status_is_written_again_only_for_a_new_object() {
        let gate = Arc::new(Semaphore::new(10));
        let (api, mut began) = FakeApi::new(Some(gate));
        let (intents, task, metrics) = start(&api, Duration::from_secs(3600));

        intents.send_replace(intent("a", 1000));
        began.recv().await.expect("the first write began");
        intents.send_replace(intent("a", 1000));
        intents.send_replace(intent("b", 1000));
        drop(intents);
        task.await.expect("writer ended");

        // The repeat is skipped (written and not yet due); "b" was
        // recreated under the same name and has no status yet.
        assert_eq!(api.applied_mhz(), vec![Some(1000), Some(1000)]);
        assert_eq!(writes(&metrics, "ok"), 2);
    }

    #[tokio::test]
    async fn a_new_generation_alone_is_not_written_a_device_change_is() {
        // Each second intent is published while the first write is in
        // flight, so the writer sees it once that write is done.
        let run = async |second: Option<Intent>| {
            let gate = Arc::new(Semaphore::new(10));
            let (api, mut began) = FakeApi::new(Some(gate));
            let (intents, task, metrics) = start(&api, Duration::from_secs(3600));
            intents.send_replace(intent_at("a", 1, 1000));
            began.recv().await.expect("the first write began");
            intents.send_replace(second);
            drop(intents);
            task.await.expect("writer ended");
            let generations: Vec<Option<i64>> = api
                .applied
                .lock()
                .expect("not poisoned")
                .iter()
                .map(|s| s.observed_generation)
                .collect();
            (api.applied_mhz(), generations, writes(&metrics, "ok"))
        };
        // Renewed entries: a new generation, every device as it was.
        assert_eq!(
            run(intent_at("a", 2, 1000)).await,
            (vec![Some(1000)], vec![Some(1)], 1)
        );
        // A device changed: written, with the generation it was seen at.
        assert_eq!(
            run(intent_at("a", 2, 1100)).await,
            (vec![Some(1000), Some(1100)], vec![Some(1), Some(2)], 2)
        );
    }

    #[tokio::test]
    async fn a_write_that_times_out_is_counted_and_retried() {
        // Calls never answer, as through a black-holed connection.
        let (api, mut began) = FakeApi::new(None);
        let (intents, task, metrics) = start(&api, Duration::from_millis(10));

        intents.send_replace(intent("a", 1000));
        began.recv().await.expect("the first write began");
        // The same status again: a timed-out write is not a written one.
        intents.send_replace(intent("a", 1000));
        drop(intents);
        task.await.expect("writer ended");

        assert_eq!(api.applied_mhz(), vec![Some(1000), Some(1000)]);
        assert_eq!(writes(&metrics, "timeout"), 2);
        assert_eq!(writes(&metrics, "ok"), 0);
    }

    #[tokio::test]
    async fn finish_gives_up_on_a_hung_writer() {
        let (api, mut began) = FakeApi::new(None);
        let metrics = Arc::new(Metrics::default());
        let interval = Duration::from_secs(3600);
        let writer = StatusWriter::new(api.clone(), interval, interval, metrics.clone());
        let handle = StatusHandle::spawn(writer);
        handle.publish(intent("a", 1000).expect("an intent"));
        began.recv().await.expect("the write began");

        assert!(!handle.finish(Duration::from_millis(10)).await);
        assert_eq!(writes(&metrics, "ok") + writes(&metrics, "timeout"), 0);
    }
}
