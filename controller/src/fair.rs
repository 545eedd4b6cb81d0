//! Reconcile slots handed out first come, first served.
//!
//! kube-runtime's controller, given a concurrency limit, parks the work that
//! falls due while every slot is busy in a hash set and takes from it in
//! hash order: under sustained overload the same policies win every time
//! and the rest starve (the scale bench saw two thirds of 1000 policies
//! never measured). So the controllers let kube-runtime start every
//! reconcile that falls due (in deadline order: its queue is ordered by
//! time) and bound the work here instead, with a FIFO semaphore: a policy
//! waits behind those that fell due before it, so an overloaded controller
//! slows every policy down evenly.
//!
//! Urgent work (a spec change the controller has not acted on: a cap cut)
//! does not queue: behind a backlog of routine measurements it would wait
//! for the whole backlog (the scale bench's cap probes waited over 30 s).
//! Spec changes are rare and made by people or the policy generator, so
//! letting them past the bound does not flood the API server.
//!
//! A waiter is asked again whether its work became urgent every
//! [`URGENCY_RECHECK`]: kube-runtime counts a reconcile waiting here as
//! running and starts no second one for the same policy, so a spec change
//! that arrives while its routine reconcile waits would otherwise wait
//! behind the whole backlog too.

use std::{future::Future, time::Duration};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;

/// At most this many reconciles work at once: a cold start with
/// thousands of policies does not flood the API server and Prometheus (the
/// scale bench saw 504s without a bound).
pub const RECONCILE_SLOTS: usize = 16;

/// How often a waiter asks whether its work became urgent: a small part of
/// the 2 s a spec change may take to reach the nodes, and cheap (a look
/// into the watch cache) even with a thousand waiting.
pub const URGENCY_RECHECK: Duration = Duration::from_millis(250);

/// A bounded number of reconciles at work, the rest waiting in order.
#[derive(Debug)]
pub(crate) struct Slots {
    permits: Semaphore,
    /// Reconciles waiting for a slot.
    waiting: Gauge,
}

impl Slots {
    /// `slots` slots; the number waiting is kept in `waiting`.
    pub(crate) fn new(slots: usize, waiting: Gauge) -> Self {
        Self {
            permits: Semaphore::new(slots),
            waiting,
        }
    }

    /// Runs the future `work` makes once a slot is free, after every call
    /// that was waiting before this one; work that is `urgent`, or becomes
    /// so while it waits, runs at once, beside the slots. The future is
    /// made only then: a waiter holds little.
    pub(crate) async fn run<F: Future>(
        &self,
        urgent: impl Fn() -> bool,
        work: impl FnOnce() -> F,
    ) -> F::Output {
        if urgent() {
            return Box::pin(work()).await;
        }
        let permit = {
            let _waiting = Waiting::start(&self.waiting);
            // One acquire for the whole wait: a new one would queue last.
            let acquire = self.permits.acquire();
            tokio::pin!(acquire);
            let mut recheck = tokio::time::interval(URGENCY_RECHECK);
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    permit = &mut acquire => break permit.ok(),
                    _ = recheck.tick() => if urgent() { break None },
                }
            }
        };
        // Boxed: inline, the work's state would make every waiter as
        // large as a running reconcile (about 4 KiB, a thousand waiting
        // at a cold start).
        let output = Box::pin(work()).await;
        drop(permit);
        output
    }
}

/// Counts one waiter in the gauge until dropped (a waiter cancelled while
/// it waits, at the end of leadership, stops counting too).
struct Waiting<'a>(&'a Gauge);

impl<'a> Waiting<'a> {
    fn start(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Routine work that takes every free slot of `slots` (one, in these
    /// tests) until `release` is sent.
    async fn occupy(
        slots: &Arc<Slots>,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let slots = slots.clone();
            async move {
                slots
                    .run(
                        || false,
                        || async {
                            let _ = hold.await;
                        },
                    )
                    .await
            }
        });
        while slots.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        (release, task)
    }

    #[tokio::test]
    async fn slots_are_handed_out_in_arrival_order() {
        let waiting = Gauge::default();
        let slots = Arc::new(Slots::new(1, waiting.clone()));
        let served = Arc::new(Mutex::new(Vec::new()));
        // The first takes the only slot and keeps it until released.
        let (release, first) = occupy(&slots).await;
        let mut queued = Vec::new();
        for i in 0..20 {
            let (slots, served) = (slots.clone(), served.clone());
            queued.push(tokio::spawn(async move {
                slots
                    .run(
                        || false,
                        || async move {
                            served.lock().unwrap_or_else(|p| p.into_inner()).push(i);
                        },
                    )
                    .await
            }));
            // Each one waits before the next arrives.
            while waiting.get() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(waiting.get(), 20);
        // Urgent work does not wait behind them.
        assert_eq!(slots.run(|| true, || async { "urgent" }).await, "urgent");
        let _ = release.send(());
        for task in std::iter::once(first).chain(queued) {
            assert!(task.await.is_ok());
        }
        let order = served.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(order, (0..20).collect::<Vec<_>>());
        assert_eq!(waiting.get(), 0);
    }

    #[tokio::test]
    async fn a_waiter_whose_work_becomes_urgent_stops_waiting() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let waiting = Gauge::default();
        let slots = Arc::new(Slots::new(1, waiting.clone()));
        let (release, busy) = occupy(&slots).await;
        let spec_changed = Arc::new(AtomicBool::new(false));
        let waiter = tokio::spawn({
            let (slots, spec_changed) = (slots.clone(), spec_changed.clone());
            async move {
                slots
                    .run(|| spec_changed.load(Ordering::Relaxed), || async { "ran" })
                    .await
            }
        });
        tokio::time::sleep(URGENCY_RECHECK * 4).await;
        assert_eq!(waiting.get(), 1, "routine work waits for the slot");
        assert!(!waiter.is_finished());
        // The spec changes while it waits: it runs although the slot is
        // still taken (the bound only keeps a broken recheck from hanging).
        spec_changed.store(true, Ordering::Relaxed);
        let ran = tokio::time::timeout(Duration::from_secs(30), waiter).await;
        assert_eq!(ran.ok().and_then(|r| r.ok()), Some("ran"));
        assert_eq!(waiting.get(), 0);
        let _ = release.send(());
        assert!(busy.await.is_ok());
    }
}
