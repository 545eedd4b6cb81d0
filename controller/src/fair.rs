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

use std::future::Future;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;

/// At most this many reconciles work at once: a cold start with
/// thousands of policies does not flood the API server and Prometheus (the
/// scale bench saw 504s without a bound).
pub const RECONCILE_SLOTS: usize = 16;

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
    /// that was waiting before this one; `urgent` work runs at once, beside
    /// the slots. The future is made only then: a waiter holds little.
    pub(crate) async fn run<F: Future>(&self, urgent: bool, work: impl FnOnce() -> F) -> F::Output {
        if urgent {
            return work().await;
        }
        let permit = {
            let _waiting = Waiting::start(&self.waiting);
            self.permits.acquire().await
        };
        let output = work().await;
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

    #[tokio::test]
    async fn slots_are_handed_out_in_arrival_order() {
        let waiting = Gauge::default();
        let slots = Arc::new(Slots::new(1, waiting.clone()));
        let served = Arc::new(Mutex::new(Vec::new()));
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        // The first takes the only slot and keeps it until released.
        let first = tokio::spawn({
            let slots = slots.clone();
            async move {
                slots
                    .run(false, || async {
                        let _ = hold.await;
                    })
                    .await
            }
        });
        while slots.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let mut queued = Vec::new();
        for i in 0..20 {
            let (slots, served) = (slots.clone(), served.clone());
            queued.push(tokio::spawn(async move {
                slots
                    .run(false, || async move {
                        served.lock().unwrap_or_else(|p| p.into_inner()).push(i);
                    })
                    .await
            }));
            // Each one waits before the next arrives.
            while waiting.get() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(waiting.get(), 20);
        // Urgent work does not wait behind them.
        assert_eq!(slots.run(true, || async { "urgent" }).await, "urgent");
        let _ = release.send(());
        for task in std::iter::once(first).chain(queued) {
            assert!(task.await.is_ok());
        }
        let order = served.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(order, (0..20).collect::<Vec<_>>());
        assert_eq!(waiting.get(), 0);
    }
}
