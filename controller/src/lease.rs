//! Leader election through a coordination.k8s.io Lease, so two replicas
//! can run and only one acts.
//!
//! The holder renews the Lease every `duration / 3`; anyone may take it over
//! once it has not been renewed for `duration`. Updates carry the
//! resourceVersion they read, so two candidates cannot both win: the loser
//! gets a conflict and stays a follower. A leader that cannot renew for
//! `duration` steps down by itself; on shutdown it releases the Lease so a
//! successor does not have to wait for it to expire.

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Which Lease, and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Holder identity: hostname and pid by default.
    pub identity: String,
    pub duration: Duration,
}

/// `hostname-pid`: unique per process, readable in `kubectl get lease`.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    format!("{host}-{}", std::process::id())
}

/// Whether this process may act now.
#[derive(Clone)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// Holds the sender of [`Leadership::always`], whose value never changes.
    _fixed: Option<Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// Always the leader: leader election switched off.
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Self {
            rx,
            _fixed: Some(Arc::new(tx)),
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until this process leads.
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|leader| *leader).await;
    }
}

/// Runs the election until `shutdown` resolves, then releases the Lease if
/// held. Returns the leadership handle and the election task.
pub fn spawn(
    client: kube::Client,
    config: LeaseConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config,
    };
    let task = tokio::spawn(async move {
        tokio::pin!(shutdown);
        let retry = elector.config.duration / 3;
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            let leader = match elector.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewal = Some(tokio::time::Instant::now());
                    true
                }
                Ok(false) => false,
                Err(error) => {
                    tracing::warn!(%error, lease = %elector.config.name, "lease renewal failed");
                    // Keep leading only while the lease we hold is still valid.
                    last_renewal.is_some_and(|t| t.elapsed() < elector.config.duration)
                }
            };
            if !leader {
                last_renewal = None;
            }
            if *tx.borrow() != leader {
                tracing::info!(leader, identity = %elector.config.identity, "leadership changed");
            }
            tx.send_replace(leader);
            metrics.set_leader(leader);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(retry) => {}
            }
        }
        if *tx.borrow() {
            tx.send_replace(false);
            metrics.set_leader(false);
            if let Err(error) = elector.release().await {
                tracing::warn!(%error, "could not release the lease");
            }
        }
    });
    (Leadership { rx, _fixed: None }, task)
}

struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl Elector {
    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One round: `Ok(true)` if we hold the Lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let me = &self.config.identity;
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(me.as_str());
        let free = match (&spec.holder_identity, &spec.renew_time) {
            (None, _) | (_, None) => true,
            (Some(h), _) if h.is_empty() => true,
            (Some(_), Some(renewed)) => {
                let seconds = i64::from(
                    spec.lease_duration_seconds
                        .unwrap_or(self.duration_seconds()),
                );
                renewed.0.as_second() + seconds < Timestamp::now().as_second()
            }
        };
        if !mine && !free {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(me.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(self.duration_seconds());
        lease.spec = Some(spec);
        // replace() sends the resourceVersion we read: a concurrent
        // writer makes this fail with 409 instead of both winning.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up so a successor can take it at once.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}
