//! The agent loop: watches the NodeFrequencies named after the node, runs
//! the actuator on every change and every fast-loop tick (expiry and power
//! budgets are time-driven, not event-driven), hands the status (or the
//! missing object) to the status writer and the device failures that are
//! news to the Event publisher, and restores everything on the way out.
//! With `--entry-lease` it also watches the recommender's Lease, which
//! keeps `keptByLease` entries alive ([`crate::keepalive`]).
//! The loop never waits on the API server: the writer
//! ([`crate::status_writer`]) and the publisher ([`crate::events`]) do,
//! with a timeout, so a slow or unreachable API server cannot hold back
//! expiry, budgets or shutdown.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use climatik_api::{NodeFrequencies, NodeFrequenciesSpec};
use climatik_runtime::ReadyFlag;
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt, watcher},
};
use tokio::time::MissedTickBehavior;

use crate::{
    actuator::Actuator,
    error::Result,
    events::EventHandle,
    keepalive::{EntryLease, Liveness},
    metrics::Metrics,
    status_writer::{Draft, Intent, KubeStatusApi, StatusHandle, StatusWriter},
};

/// How long a stopping agent, its devices already restored, waits for the
/// last status to be written: short, as an unreachable API server must not
/// use up the pod's termination grace period.
const FINAL_WRITE_GRACE: Duration = Duration::from_secs(2);

/// How long the first pass waits for the entry Lease to be read: without
/// it, kept entries past their `expiresAt` would be restored and set again
/// a moment later. An agent that cannot read the Lease (no RBAC, no such
/// namespace) goes on without it and announces none, so the recommender
/// renews its entries instead.
const ENTRY_LEASE_WAIT: Duration = Duration::from_secs(10);

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub fast_loop_interval: Duration,
    pub status_interval: Duration,
    /// The bound on each status write (and on creating the object), and
    /// on each Event.
    pub status_write_timeout: Duration,
    /// The Lease that keeps `keptByLease` entries alive; `None`: only
    /// `expiresAt` counts.
    pub entry_lease: Option<EntryLease>,
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

/// The agent.
pub struct Agent {
    config: AgentConfig,
    api: Api<NodeFrequencies>,
    client: kube::Client,
    actuator: Actuator,
    metrics: Arc<Metrics>,
    heartbeat: Arc<Heartbeat>,
    /// The object as last seen; `None` when it does not exist.
    current: Option<NodeFrequencies>,
    /// Whether the watch has listed once, so `current` can be trusted.
    synced: bool,
    /// `/readyz`: set with `synced`.
    ready: ReadyFlag,
    /// What the agent saw of the entry Lease.
    liveness: Liveness,
    /// Whether the entry Lease's watch has listed once: from then on the
    /// agent announces the Lease in its status.
    lease_synced: bool,
}

impl Agent {
    pub fn new(
        client: kube::Client,
        config: AgentConfig,
        actuator: Actuator,
        metrics: Arc<Metrics>,
        heartbeat: Arc<Heartbeat>,
    ) -> Self {
        let grace = config
            .entry_lease
            .as_ref()
            .map_or(Duration::ZERO, |l| l.grace);
        Self {
            api: Api::all(client.clone()),
            client,
            config,
            actuator,
            metrics,
            heartbeat,
            liveness: Liveness::new(grace),
            lease_synced: false,
            current: None,
            synced: false,
            ready: ReadyFlag::default(),
        }
    }

    /// Sets `ready` once the NodeFrequencies watch has listed (`/readyz`).
    pub fn with_readiness(mut self, ready: ReadyFlag) -> Self {
        self.ready = ready;
        self
    }

    /// Runs until `shutdown` completes, then restores every device it
    /// changed. What a killed predecessor left changed is kept until the
    /// first pass (which sets what the entries want and restores the rest)
    /// or until the time the predecessor recorded ([`crate::hold`]),
    /// whichever is first; without such a time it is restored at once.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut held = self.actuator.leftovers_held_until(Timestamp::now());
        match held {
            Some(until) => tracing::info!(
                %until,
                "keeping what a previous agent left set until this node's entries are read, or until their recorded end"
            ),
            None => self.restore_leftovers(),
        }
        let watch_config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.config.node));
        let mut events = watcher(self.api.clone(), watch_config)
            .default_backoff()
            .boxed();
        let mut lease_events = self.lease_events();
        let lease_wait = tokio::time::Instant::now() + ENTRY_LEASE_WAIT;
        let mut tick = tokio::time::interval(self.config.fast_loop_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pending: Option<Option<NodeFrequencies>> = None;
        let status = StatusHandle::spawn(StatusWriter::new(
            KubeStatusApi::new(self.client.clone(), self.config.node.clone()),
            self.config.status_write_timeout,
            self.config.status_interval,
            self.metrics.clone(),
        ));
        let notices = EventHandle::spawn(
            self.client.clone(),
            &self.config.node,
            self.config.status_write_timeout,
        );
        tokio::pin!(shutdown);
        tracing::info!(node = %self.config.node, backend = %self.actuator.backend_name(), "agent started");

        loop {
            tokio::select! {
                () = &mut shutdown => break,
                event = events.next() => {
                    match event {
                        Some(Ok(event)) => {
                            if self.on_event(event, &mut pending) && self.lease_read(lease_wait) {
                                self.pass(&status, &notices, false);
                            }
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "watching NodeFrequencies"),
                        None => break,
                    }
                }
                event = lease_events.next() => {
                    match event {
                        Some(Ok(event)) => {
                            // The first read of the Lease lets a waiting
                            // first pass run at once.
                            if self.on_lease_event(event) && self.synced {
                                self.pass(&status, &notices, false);
                            }
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "watching the entry Lease"),
                        // Never ends (the watcher retries with backoff).
                        None => lease_events = futures::stream::pending().boxed(),
                    }
                }
                _ = tick.tick() => {
                    if self.synced && self.lease_read(lease_wait) {
                        self.pass(&status, &notices, true);
                    } else if held.is_some_and(|until| Timestamp::now() >= until) {
                        tracing::warn!("the entries behind what a previous agent left set have ended before they could be read");
                        self.restore_leftovers();
                        held = None;
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
        // Devices first; then the status, for as long as a stop can wait.
        if !status.finish(FINAL_WRITE_GRACE).await {
            tracing::warn!(grace = ?FINAL_WRITE_GRACE, "the last status was not written in time");
        }
        Ok(())
    }

    /// The entry Lease's watch; a stream that never yields without one.
    fn lease_events(&self) -> BoxStream<'static, watcher::Result<watcher::Event<Lease>>> {
        match &self.config.entry_lease {
            Some(entry_lease) => {
                let api: Api<Lease> =
                    Api::namespaced(self.client.clone(), &entry_lease.lease.namespace);
                let config = watcher::Config::default()
                    .fields(&format!("metadata.name={}", entry_lease.lease.name));
                watcher(api, config).default_backoff().boxed()
            }
            None => futures::stream::pending().boxed(),
        }
    }

    /// Whether passes may run as far as the entry Lease goes: it has been
    /// read, there is none, or the wait for it (until `wait_until`) is over.
    /// Before that a pass would restore kept entries for a moment (on every
    /// agent restart, a rolling update included).
    fn lease_read(&self, wait_until: tokio::time::Instant) -> bool {
        self.lease_synced
            || self.config.entry_lease.is_none()
            || tokio::time::Instant::now() >= wait_until
    }

    /// Takes a renewal of the entry Lease in; the next pass uses it.
    /// True when this is the first time the Lease was read.
    fn on_lease_event(&mut self, event: watcher::Event<Lease>) -> bool {
        match event {
            watcher::Event::Apply(lease) | watcher::Event::InitApply(lease) => {
                self.liveness.observe(&lease, Timestamp::now());
                self.actuator.keep_alive_until(self.liveness.kept_until());
                false
            }
            watcher::Event::InitDone => {
                let first = !self.lease_synced;
                if first {
                    tracing::info!(
                        lease = %self.config.entry_lease.as_ref().map(|l| l.lease.to_string()).unwrap_or_default(),
                        kept_until = ?self.liveness.kept_until(),
                        "watching the entry Lease: entries kept by it count while it is renewed"
                    );
                }
                self.lease_synced = true;
                first
            }
            // A deleted Lease renews nothing: what it kept lapses after the
            // grace, measured from its last renewal.
            watcher::Event::Init | watcher::Event::Delete(_) => false,
        }
    }

    fn restore_leftovers(&mut self) {
        let restored = self.actuator.restore_leftovers();
        if restored > 0 {
            tracing::info!(restored, "restored devices a previous agent left changed");
        }
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
                true
            }
        }
    }

    /// The entry Lease as the status announces it: only once its watch
    /// has listed, so an agent that cannot read it never has the
    /// recommender stop renewing.
    fn announced_lease(&self) -> Option<String> {
        self.config
            .entry_lease
            .as_ref()
            .filter(|_| self.lease_synced)
            .map(|l| l.lease.to_string())
    }

    /// One actuator pass, then its status (or the missing object) handed
    /// to the writer, which decides whether it is worth a write, and its
    /// news to the Event publisher; one span
    /// per pass, named after the node's NodeFrequencies.
    #[tracing::instrument(
        name = "reconcile",
        skip_all,
        fields(
            nodefrequencies = %self.config.node,
            generation = self.current.as_ref().and_then(|o| o.metadata.generation),
            step_budget,
        )
    )]
    fn pass(&mut self, status: &StatusHandle, notices: &EventHandle, step_budget: bool) {
        let spec: Option<NodeFrequenciesSpec> = self.current.as_ref().map(|o| o.spec.clone());
        let report = self
            .actuator
            .reconcile(spec.as_ref(), Timestamp::now(), step_budget);
        // Without an object there is nothing to attach an Event to; the
        // log has the failure.
        if let Some(obj) = &self.current {
            let mut regarding = obj.object_ref(&());
            // The Recorder tells a repeat from news by the whole reference:
            // without the version, an Event that recurs after a spec change
            // is patched rather than created anew.
            regarding.resource_version = None;
            for notice in report.notices.iter().cloned() {
                notices.publish(&regarding, notice);
            }
        }
        let intent = match &self.current {
            Some(obj) => Intent::Status(Box::new(
                Draft::new(
                    obj.metadata.uid.clone(),
                    obj.metadata.generation,
                    &report,
                    self.actuator.inventory(),
                    Some(self.actuator.backend_name()).filter(|b| !b.is_empty()),
                )
                .with_entry_lease(self.announced_lease()),
            )),
            None => Intent::Create,
        };
        status.publish(intent);
    }
}
