//! Leader election through a coordination.k8s.io Lease, so two replicas
//! can run and only one acts, and never two at once.
//!
//! Every candidate tries to acquire or renew the Lease once per retry
//! period; each API call of a try has half a retry period before it is
//! abandoned. Updates carry the resourceVersion they read, so two
//! candidates cannot both win: the loser gets a conflict and stays a
//! follower.
//!
//! The guarantee rests on two clocks that never meet:
//!
//! - the leader leads until the renew deadline after the *start* of its last
//!   successful round (the clock is read before the request, so a slow
//!   write cannot stretch the term); past it, it steps down by itself,
//!   whether or not it can reach the API server;
//! - a follower takes the Lease over only once it has seen the same holder
//!   and renewTime, unchanged, for the whole lease duration, measured on its
//!   own monotonic clock from the moment it first saw them (not from the
//!   holder's wall-clock renewTime, so clock skew cannot let it in early).
//!
//! The renewal the follower saw happened after the leader's round started,
//! so the leader's term ends at least `lease duration - renew deadline`
//! before anyone else can begin: that gap is what a request the old leader
//! sent just before its deadline has to land in. [`Leadership::is_leader`]
//! reads the monotonic clock itself, so a process that was frozen (SIGSTOP,
//! a stalled VM) knows it no longer leads the moment it runs again, before
//! the election task has had a turn. On shutdown the leader releases the
//! Lease so a successor does not have to wait for it to expire.

use std::{
    future::{Future, poll_fn},
    pin::pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, time::Instant};

use crate::metrics::Metrics;

/// Which Lease, who we are, and the election's timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Holder identity: hostname and pid by default.
    pub identity: String,
    pub timing: Timing,
}

impl LeaseConfig {
    /// `namespace/name`, as node agents name the Lease in
    /// `NodeFrequencies.status.entryLease`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Lease duration, renew deadline and retry period, in the order
/// `retry period < renew deadline < lease duration` ([`Timing::new`]
/// checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

/// A [`Timing`] whose parts are out of order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error(
        "the lease renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({duration:?})"
    )]
    RenewDeadline {
        renew_deadline: Duration,
        duration: Duration,
    },
    #[error(
        "the lease retry period ({retry_period:?}) must be shorter than the renew deadline ({renew_deadline:?})"
    )]
    RetryPeriod {
        retry_period: Duration,
        renew_deadline: Duration,
    },
    #[error("the lease durations must be above zero")]
    Zero,
}

impl Timing {
    /// `renew_deadline` defaults to two thirds of `duration`, `retry_period`
    /// to a fifth of the renew deadline (15 s, 10 s and 2 s, as in
    /// Kubernetes' own components).
    pub fn new(
        duration: Duration,
        renew_deadline: Option<Duration>,
        retry_period: Option<Duration>,
    ) -> Result<Self, TimingError> {
        let renew_deadline = renew_deadline.unwrap_or(duration * 2 / 3);
        let retry_period = retry_period.unwrap_or(renew_deadline / 5);
        if retry_period.is_zero() {
            return Err(TimingError::Zero);
        }
        if renew_deadline >= duration {
            return Err(TimingError::RenewDeadline {
                renew_deadline,
                duration,
            });
        }
        if retry_period >= renew_deadline {
            return Err(TimingError::RetryPeriod {
                retry_period,
                renew_deadline,
            });
        }
        Ok(Self {
            duration,
            renew_deadline,
            retry_period,
        })
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    pub fn retry_period(&self) -> Duration {
        self.retry_period
    }

    /// How long one API call of a round may take: two calls fit in a
    /// retry period.
    fn call_timeout(&self) -> Duration {
        self.retry_period / 2
    }

    /// `leaseDurationSeconds` as written: rounded up, so a follower reading
    /// it never waits less than we lead.
    fn duration_seconds(&self) -> i32 {
        let seconds = self.duration.as_secs() + u64::from(self.duration.subsec_nanos() > 0);
        i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
    }
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

/// This process's standing in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    Follower,
    /// Leading until this instant unless a renewal extends it.
    Until(Instant),
    /// Leader election switched off.
    Always,
}

impl Term {
    fn leads_at(self, now: Instant) -> bool {
        match self {
            Term::Follower => false,
            Term::Until(until) => now < until,
            Term::Always => true,
        }
    }
}

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// We hold the Lease, renewed (or acquired) in this round.
    Held,
    /// Someone else holds it.
    NotHeld,
    /// The API server could not be asked, or did not answer in time.
    Failed,
}

/// The term after a round that started at `started`: holding the Lease
/// extends it to `started + renew_deadline`, losing it ends it, a failed
/// round keeps it, so it runs out by itself. A term already over by `now`
/// is no term.
fn next_term(
    current: Term,
    outcome: Outcome,
    started: Instant,
    renew_deadline: Duration,
    now: Instant,
) -> Term {
    let term = match outcome {
        Outcome::Held => Term::Until(started + renew_deadline),
        Outcome::NotHeld => Term::Follower,
        Outcome::Failed => current,
    };
    if term.leads_at(now) {
        term
    } else {
        Term::Follower
    }
}

/// What a follower last saw in the Lease, and when it first saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    /// Local monotonic time at which this holder and renewTime were first
    /// seen.
    since: Instant,
}

impl Observed {
    fn of(spec: &LeaseSpec, now: Instant) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            since: now,
        }
    }
}

/// Keeps `previous`'s first-seen time while the holder and renewTime are
/// unchanged; anything else starts the clock again at `now`.
fn observe(previous: Option<Observed>, seen: Observed) -> Observed {
    match previous {
        Some(previous)
            if previous.holder == seen.holder && previous.renew_time == seen.renew_time =>
        {
            previous
        }
        _ => seen,
    }
}

/// Whether the Lease may be taken over at `now`: it has no holder, or the
/// holder has not renewed it for `lease_duration` as we measure it.
fn free_to_take(observed: &Observed, lease_duration: Duration, now: Instant) -> bool {
    observed.holder.is_none() || now >= observed.since + lease_duration
}

/// Whether this process may act now.
#[derive(Clone)]
pub struct Leadership {
    rx: watch::Receiver<Term>,
    /// Holds the sender of [`Leadership::always`], whose value never changes.
    _fixed: Option<Arc<watch::Sender<Term>>>,
}

impl Leadership {
    /// Always the leader: leader election switched off.
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(Term::Always);
        Self {
            rx,
            _fixed: Some(Arc::new(tx)),
        }
    }

    /// Whether this process leads at this instant: the term is checked
    /// against the clock here, not only when the election task runs.
    pub fn is_leader(&self) -> bool {
        self.rx.borrow().leads_at(Instant::now())
    }

    /// Resolves once this process does not lead (at once if it does not
    /// now). Every poll checks the clock first, so work raced against it
    /// with a biased `select!` never takes another step past the end of a
    /// term, even the first step after the process was frozen.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + use<> {
        let this = self.clone();
        async move {
            let mut ended = pin!(this.clone().term_ends());
            poll_fn(|cx| {
                if this.is_leader() {
                    ended.as_mut().poll(cx)
                } else {
                    Poll::Ready(())
                }
            })
            .await
        }
    }

    /// Wakes when the current term runs out or the term changes, until
    /// this process does not lead.
    async fn term_ends(mut self) {
        loop {
            let term = *self.rx.borrow_and_update();
            match term {
                Term::Follower => return,
                Term::Until(until) => tokio::select! {
                    _ = tokio::time::sleep_until(until) => return,
                    changed = self.rx.changed() => {
                        if changed.is_err() {
                            // The election is over; the term still ends.
                            tokio::time::sleep_until(until).await;
                            return;
                        }
                    }
                },
                Term::Always => {
                    if self.rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
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
    let (tx, rx) = watch::channel(Term::Follower);
    let elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config,
    };
    let task = tokio::spawn(async move {
        let mut shutdown = pin!(shutdown);
        let timing = elector.config.timing;
        let mut term = Term::Follower;
        let mut observed = None;
        'run: loop {
            let started = Instant::now();
            let round = elector.try_acquire_or_renew(&mut observed);
            // A leader's round ends at its deadline at the latest.
            let result = match term {
                Term::Until(until) => tokio::time::timeout_at(until, round)
                    .await
                    .unwrap_or(Err(RoundError::Deadline)),
                _ => round.await,
            };
            let outcome = match result {
                Ok(true) => Outcome::Held,
                Ok(false) => Outcome::NotHeld,
                Err(error) => {
                    tracing::warn!(%error, lease = %elector.config.name, "lease renewal failed");
                    Outcome::Failed
                }
            };
            term = next_term(
                term,
                outcome,
                started,
                timing.renew_deadline,
                Instant::now(),
            );
            elector.publish(&tx, &metrics, term);
            // Sleep until the next round, waking at the end of the term to
            // step down on time.
            let next_round = started + timing.retry_period;
            loop {
                let wake = match term {
                    Term::Until(until) => until.min(next_round),
                    _ => next_round,
                };
                tokio::select! {
                    _ = &mut shutdown => break 'run,
                    _ = tokio::time::sleep_until(wake) => {}
                }
                let now = Instant::now();
                if !term.leads_at(now) {
                    term = Term::Follower;
                    elector.publish(&tx, &metrics, term);
                }
                if now >= next_round {
                    break;
                }
            }
        }
        elector.publish(&tx, &metrics, Term::Follower);
        if let Err(error) = elector.release().await {
            tracing::warn!(%error, "could not release the lease");
        }
    });
    (Leadership { rx, _fixed: None }, task)
}

/// Why a round did not decide.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the renew deadline passed during the round")]
    Deadline,
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
    /// Logs and counts a change of leadership, and hands the term to
    /// [`Leadership`].
    fn publish(&self, tx: &watch::Sender<Term>, metrics: &Metrics, term: Term) {
        let leader = !matches!(term, Term::Follower);
        let was = !matches!(*tx.borrow(), Term::Follower);
        if was != leader {
            tracing::info!(leader, identity = %self.config.identity, lease = %self.config.name, "leadership changed");
        }
        tx.send_replace(term);
        metrics.set_leader(leader);
    }

    /// One API call, abandoned after the timing's call timeout.
    async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, RoundError> {
        let limit = self.config.timing.call_timeout();
        Ok(tokio::time::timeout(limit, request)
            .await
            .map_err(|_| RoundError::Timeout(limit))??)
    }

    /// One round: `Ok(true)` if we hold the Lease afterwards. `observed`
    /// is what this candidate saw of the Lease in earlier rounds.
    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<Observed>,
    ) -> Result<bool, RoundError> {
        let me = &self.config.identity;
        let timing = &self.config.timing;
        let Some(mut lease) = self.call(self.api.get_opt(&self.config.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(timing.duration_seconds()),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self
                .call(self.api.create(&PostParams::default(), &lease))
                .await
            {
                Ok(_) => Ok(true),
                Err(RoundError::Api(e)) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        // Seen after the answer came: never earlier than the write it shows.
        let seen_at = Instant::now();
        let seen = observe(observed.take(), Observed::of(&spec, seen_at));
        let mine = seen.holder.as_deref() == Some(me.as_str());
        // The holder's own duration, or ours if that is longer.
        let holder_duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or_default()
            .max(timing.duration);
        let free = free_to_take(&seen, holder_duration, seen_at);
        *observed = Some(seen);
        if !mine && !free {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(me.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(timing.duration_seconds());
        lease.spec = Some(spec);
        // replace() sends the resourceVersion we read: a concurrent
        // writer makes this fail with 409 instead of both winning.
        match self
            .call(
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(RoundError::Api(e)) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up, if we hold it, so a successor can take it at
    /// once.
    async fn release(&self) -> Result<(), RoundError> {
        let Some(mut lease) = self.call(self.api.get_opt(&self.config.name)).await? else {
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
        self.call(
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn timing_defaults_follow_the_lease_duration() {
        let timing = Timing::new(15 * S, None, None).unwrap();
        assert_eq!(timing.renew_deadline(), 10 * S);
        assert_eq!(timing.retry_period(), 2 * S);
        assert_eq!(timing.call_timeout(), S);
        assert_eq!(timing.duration_seconds(), 15);
    }

    #[test]
    fn timing_refuses_a_deadline_or_retry_out_of_order() {
        assert_eq!(
            Timing::new(4 * S, Some(4 * S), None),
            Err(TimingError::RenewDeadline {
                renew_deadline: 4 * S,
                duration: 4 * S
            })
        );
        assert_eq!(
            Timing::new(4 * S, Some(2 * S), Some(2 * S)),
            Err(TimingError::RetryPeriod {
                retry_period: 2 * S,
                renew_deadline: 2 * S
            })
        );
        assert_eq!(
            Timing::new(Duration::from_nanos(3), None, None),
            Err(TimingError::Zero)
        );
        let message = Timing::new(4 * S, Some(5 * S), None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("renew deadline (5s)"), "{message}");
    }

    #[test]
    fn lease_duration_seconds_round_up() {
        let timing = Timing::new(Duration::from_millis(4500), None, None).unwrap();
        assert_eq!(timing.duration_seconds(), 5);
    }

    #[test]
    fn a_renewal_extends_the_term_from_the_start_of_its_round() {
        let t0 = Instant::now();
        let deadline = 10 * S;
        // The round took 3 s: the term still counts from its start.
        let term = next_term(Term::Follower, Outcome::Held, t0, deadline, t0 + 3 * S);
        assert_eq!(term, Term::Until(t0 + deadline));
        // A round so slow that the deadline passed during it gives no term.
        let late = next_term(Term::Follower, Outcome::Held, t0, deadline, t0 + 10 * S);
        assert_eq!(late, Term::Follower);
    }

    #[test]
    fn a_failed_round_keeps_the_term_until_its_deadline() {
        let t0 = Instant::now();
        let term = Term::Until(t0 + 10 * S);
        let kept = next_term(term, Outcome::Failed, t0 + 4 * S, 10 * S, t0 + 9 * S);
        assert_eq!(kept, term);
        let over = next_term(term, Outcome::Failed, t0 + 8 * S, 10 * S, t0 + 10 * S);
        assert_eq!(over, Term::Follower);
        let lost = next_term(term, Outcome::NotHeld, t0 + 2 * S, 10 * S, t0 + 3 * S);
        assert_eq!(lost, Term::Follower);
    }

    fn seen(holder: Option<&str>, renewed_second: i64, since: Instant) -> Observed {
        Observed {
            holder: holder.map(str::to_string),
            renew_time: Timestamp::from_second(renewed_second).ok(),
            since,
        }
    }

    #[test]
    fn a_follower_counts_the_lease_duration_from_when_it_first_saw_the_renewal() {
        let t0 = Instant::now();
        let first = observe(None, seen(Some("a"), 100, t0));
        // The same record seen later keeps the first sighting.
        let again = observe(Some(first.clone()), seen(Some("a"), 100, t0 + 3 * S));
        assert_eq!(again.since, t0);
        assert!(!free_to_take(&again, 4 * S, t0 + 3 * S));
        assert!(free_to_take(&again, 4 * S, t0 + 4 * S));
        // A renewal starts the clock again.
        let renewed = observe(Some(again), seen(Some("a"), 102, t0 + 3 * S));
        assert_eq!(renewed.since, t0 + 3 * S);
        assert!(!free_to_take(&renewed, 4 * S, t0 + 4 * S));
        // So does a new holder.
        let moved = observe(Some(renewed), seen(Some("b"), 102, t0 + 5 * S));
        assert_eq!(moved.since, t0 + 5 * S);
    }

    #[test]
    fn the_holders_wall_clock_does_not_matter() {
        let t0 = Instant::now();
        // A renewTime far in the past (a holder whose clock is behind) is
        // still fresh when first seen.
        let skewed = observe(None, seen(Some("a"), 0, t0));
        assert!(!free_to_take(&skewed, 4 * S, t0 + S));
    }

    #[test]
    fn a_released_lease_is_free_at_once() {
        let t0 = Instant::now();
        let released = observe(None, seen(None, 100, t0));
        assert!(free_to_take(&released, 4 * S, t0));
    }

    fn leadership(term: Term) -> (watch::Sender<Term>, Leadership) {
        let (tx, rx) = watch::channel(term);
        (tx, Leadership { rx, _fixed: None })
    }

    /// Whether `lost()` is ready on its first poll.
    fn lost_at_once(leadership: &Leadership) -> bool {
        let mut lost = pin!(leadership.lost());
        let waker = std::task::Waker::noop();
        lost.as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    #[tokio::test]
    async fn leadership_ends_with_the_term_without_the_election_task() {
        let hour = 3600 * S;
        let (_tx, leading) = leadership(Term::Until(Instant::now() + hour));
        assert!(leading.is_leader());
        assert!(!lost_at_once(&leading));
        // A term that has run out while nobody published a step-down (a
        // frozen process): the clock alone ends it, on the first poll.
        let (_tx, over) = leadership(Term::Until(Instant::now()));
        assert!(!over.is_leader());
        assert!(lost_at_once(&over));
        let (_tx, follower) = leadership(Term::Follower);
        assert!(lost_at_once(&follower));
        assert!(Leadership::always().is_leader());
        assert!(!lost_at_once(&Leadership::always()));
    }

    #[tokio::test]
    async fn lost_follows_renewals_and_step_downs() {
        let hour = 3600 * S;
        let (tx, leadership) = leadership(Term::Until(Instant::now() + hour));
        let mut lost = tokio::spawn(leadership.lost());
        tx.send_replace(Term::Until(Instant::now() + 2 * hour));
        tokio::task::yield_now().await;
        assert!(
            futures::poll!(&mut lost).is_pending(),
            "a renewal extends the term"
        );
        tx.send_replace(Term::Follower);
        lost.await.unwrap();
    }

    #[tokio::test]
    async fn lost_resolves_when_the_term_runs_out() {
        let (_tx, leadership) = leadership(Term::Until(Instant::now() + Duration::from_millis(20)));
        leadership.lost().await;
        assert!(!leadership.is_leader());
    }
}
