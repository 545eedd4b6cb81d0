//! The agent loop: watches the NodeFrequencies named after the node, runs
//! the actuator on every change and every fast-loop tick (expiry and power
//! budgets are time-driven, not event-driven), creates the object when it is
//! missing, writes the status, and restores everything on the way out.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use climatik_api::{NodeFrequencies, NodeFrequenciesSpec, NodeFrequenciesStatus, names};
use climatik_runtime::ReadyFlag;
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::Node,
    apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio::time::MissedTickBehavior;

use crate::{
    actuator::{Actuator, Report},
    error::Result,
    metrics::{Metrics, ResultLabels},
};

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub fast_loop_interval: Duration,
    pub status_interval: Duration,
}

/// Liveness of the loop, for `/healthz`: the time of the last pass.
#[derive(Debug, Default)]
pub struct Heartbeat(AtomicI64);

impl Heartbeat {
    pub fn beat(&self) {
        self.0
            .store(Timestamp::now().as_millisecond(), Ordering::Relaxed);
    }

    /// Whether the loop ran within `max_age`.
    pub fn fresh(&self, max_age: Duration) -> bool {
        let last = self.0.load(Ordering::Relaxed);
        let age = Timestamp::now().as_millisecond() - last;
        last > 0 && u128::try_from(age).is_ok_and(|a| a <= max_age.as_millis())
    }
}

/// The last status written, without its timestamps and readings, to tell a
/// change from a heartbeat.
#[derive(Debug, Clone, PartialEq)]
struct Written {
    comparable: NodeFrequenciesStatus,
    at: Instant,
    ready: Condition,
}

fn comparable(status: &NodeFrequenciesStatus) -> NodeFrequenciesStatus {
    let mut s = status.clone();
    s.last_updated = None;
    s.conditions.clear();
    for g in &mut s.gpu_frequencies {
        g.power_watts = None;
    }
    s
}

/// The agent.
pub struct Agent {
    config: AgentConfig,
    api: Api<NodeFrequencies>,
    nodes: Api<Node>,
    actuator: Actuator,
    metrics: Arc<Metrics>,
    heartbeat: Arc<Heartbeat>,
    /// The object as last seen; `None` when it does not exist.
    current: Option<NodeFrequencies>,
    /// Whether the watch has listed once, so `current` can be trusted.
    synced: bool,
    /// `/readyz`: set with `synced`.
    ready: ReadyFlag,
    written: Option<Written>,
    last_create_attempt: Option<Instant>,
}

impl Agent {
    pub fn new(
        client: kube::Client,
        config: AgentConfig,
        actuator: Actuator,
        metrics: Arc<Metrics>,
        heartbeat: Arc<Heartbeat>,
    ) -> Self {
        Self {
            api: Api::all(client.clone()),
            nodes: Api::all(client),
            config,
            actuator,
            metrics,
            heartbeat,
            current: None,
            synced: false,
            ready: ReadyFlag::default(),
            written: None,
            last_create_attempt: None,
        }
    }

    /// Sets `ready` once the NodeFrequencies watch has listed (`/readyz`).
    pub fn with_readiness(mut self, ready: ReadyFlag) -> Self {
        self.ready = ready;
        self
    }

    /// Runs until `shutdown` completes, then restores every device it
    /// changed. Leftovers of a killed predecessor are restored first.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let restored = self.actuator.restore_leftovers();
        if restored > 0 {
            tracing::info!(restored, "restored devices a previous agent left changed");
        }
        let watch_config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.config.node));
        let mut events = watcher(self.api.clone(), watch_config)
            .default_backoff()
            .boxed();
        let mut tick = tokio::time::interval(self.config.fast_loop_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pending: Option<Option<NodeFrequencies>> = None;
        tokio::pin!(shutdown);
        tracing::info!(node = %self.config.node, backend = %self.actuator.backend_name(), "agent started");

        loop {
            tokio::select! {
                () = &mut shutdown => break,
                event = events.next() => {
                    match event {
                        Some(Ok(event)) => {
                            if self.on_event(event, &mut pending) {
                                self.pass(false).await;
                            }
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "watching NodeFrequencies"),
                        None => break,
                    }
                }
                _ = tick.tick() => {
                    if self.synced {
                        if self.current.is_none() {
                            self.create_if_missing().await;
                        }
                        self.pass(true).await;
                    }
                    self.heartbeat.beat();
                }
            }
        }

        tracing::info!("shutting down: restoring defaults");
        let failures = self.actuator.restore_all();
        if failures > 0 {
            tracing::error!(failures, "some devices could not be restored");
        }
        Ok(())
    }

    /// Applies a watch event to `current`; true when a pass is due.
    fn on_event(
        &mut self,
        event: watcher::Event<NodeFrequencies>,
        pending: &mut Option<Option<NodeFrequencies>>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                *pending = Some(None);
                false
            }
            watcher::Event::InitApply(obj) => {
                *pending = Some(Some(obj));
                false
            }
            watcher::Event::InitDone => {
                self.current = pending.take().flatten();
                self.synced = true;
                self.ready.set(true);
                true
            }
            watcher::Event::Apply(obj) => {
                self.current = Some(obj);
                true
            }
            watcher::Event::Delete(_) => {
                tracing::info!("NodeFrequencies deleted: restoring defaults");
                self.current = None;
                self.written = None;
                true
            }
        }
    }

    /// One actuator pass, then the status if it changed or is due; one
    /// span per pass, named after the node's NodeFrequencies.
    #[tracing::instrument(
        name = "reconcile",
        skip_all,
        fields(
            nodefrequencies = %self.config.node,
            generation = self.current.as_ref().and_then(|o| o.metadata.generation),
            step_budget,
        )
    )]
    async fn pass(&mut self, step_budget: bool) {
        let spec: Option<NodeFrequenciesSpec> = self.current.as_ref().map(|o| o.spec.clone());
        let report = self
            .actuator
            .reconcile(spec.as_ref(), Timestamp::now(), step_budget);
        if let Some(obj) = &self.current {
            let generation = obj.metadata.generation;
            self.write_status(&report, generation).await;
        }
    }

    async fn write_status(&mut self, report: &Report, generation: Option<i64>) {
        let now = Timestamp::now();
        let mut status = NodeFrequenciesStatus {
            gpu_frequencies: report.gpus.clone(),
            cpu_frequencies: report.cpus.clone(),
            gpus: self.actuator.inventory(),
            backend: Some(self.actuator.backend_name()).filter(|b| !b.is_empty()),
            observed_generation: generation,
            last_updated: Some(Time(now)),
            conditions: Vec::new(),
        };
        let comparable = comparable(&status);
        let failures = report.failures();
        let (cond_status, reason, message) = if failures == 0 && report.invalid.is_empty() {
            (
                "True",
                "Applied",
                "every named device is handled".to_string(),
            )
        } else if failures == 0 {
            ("True", "InvalidEntries", report.invalid.join("; "))
        } else {
            (
                "False",
                "ActuationFailed",
                format!("{failures} device(s) failed; see their status"),
            )
        };
        let mut ready = Condition {
            type_: "Ready".into(),
            status: cond_status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        };
        if let Some(w) = &self.written {
            if w.ready.status == ready.status {
                ready.last_transition_time = w.ready.last_transition_time.clone();
            }
            let same = w.comparable == comparable && w.ready.message == ready.message;
            if same && w.at.elapsed() < self.config.status_interval {
                return;
            }
        }
        status.conditions = vec![ready.clone()];

        let body = serde_json::json!({
            "apiVersion": NodeFrequencies::api_version(&()),
            "kind": NodeFrequencies::kind(&()),
            "metadata": { "name": self.config.node },
            "status": status,
        });
        let params = PatchParams::apply(names::MANAGER_FREQTUNER).force();
        match self
            .api
            .patch_status(&self.config.node, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                self.count_write("ok");
                self.written = Some(Written {
                    comparable,
                    at: Instant::now(),
                    ready,
                });
            }
            Err(e) => {
                self.count_write("error");
                tracing::warn!(error = %e, "writing NodeFrequencies status");
            }
        }
    }

    fn count_write(&self, result: &str) {
        self.metrics
            .status_writes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// Creates the node's NodeFrequencies (empty spec, owned by the Node so
    /// it goes with it), at most every few seconds.
    async fn create_if_missing(&mut self) {
        if self
            .last_create_attempt
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        self.last_create_attempt = Some(Instant::now());
        let owner = match self.nodes.get_opt(&self.config.node).await {
            Ok(Some(node)) => node.metadata.uid.map(|uid| OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: self.config.node.clone(),
                uid,
                ..OwnerReference::default()
            }),
            Ok(None) => {
                tracing::warn!(node = %self.config.node, "no Node of this name; creating NodeFrequencies without an owner");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the Node");
                return;
            }
        };
        let object = NodeFrequencies {
            metadata: ObjectMeta {
                name: Some(self.config.node.clone()),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: NodeFrequenciesSpec {
                node_name: self.config.node.clone(),
                gpu_frequencies: Vec::new(),
                cpu_frequencies: Vec::new(),
            },
            status: None,
        };
        let params = PostParams {
            field_manager: Some(names::MANAGER_FREQTUNER.into()),
            ..PostParams::default()
        };
        match self.api.create(&params, &object).await {
            Ok(_) => tracing::info!(node = %self.config.node, "created the node's NodeFrequencies"),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => tracing::warn!(error = %e, "creating the node's NodeFrequencies"),
        }
    }
}
