//! Every policy's power from one Prometheus query a period: the first
//! reconcile that finds the last answer older than half a period asks
//! again ([`crate::observe::power_query`]), the others wait for that
//! answer or read it. Policies requeue a period after their measurement,
//! so the ones measured from one answer come due together and share the
//! next: one query a period for all policies instead of two or three per
//! policy. Half a period (not a whole one) keeps a reading from being more
//! than half a period older than the measurement it goes into.
//!
//! A failed query is remembered like an answer, so an unreachable
//! Prometheus is asked once per half period, not once per policy; every
//! policy measured meanwhile holds its last readings, as before.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Mutex;

use crate::{metrics::Metrics, observe::PowerSeries, prom::Prometheus};

/// The `query` label of the shared query in
/// `climatik_prometheus_query_duration_seconds`.
pub const QUERY_NAME: &str = "power";

/// The last answer of the shared query, and when it was asked.
pub(crate) struct PowerCache {
    prometheus: Prometheus,
    query: String,
    max_age: Duration,
    metrics: Arc<Metrics>,
    /// Held while a query runs, so concurrent reconciles wait for it
    /// instead of asking too.
    last: Mutex<Option<(Instant, Answer)>>,
}

/// The series, or why Prometheus could not be asked.
pub(crate) type Answer = Result<Arc<PowerSeries>, String>;

impl PowerCache {
    /// A cache of `query` on `prometheus` for a monitor measuring every
    /// `interval`.
    pub(crate) fn new(
        prometheus: Prometheus,
        query: String,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            prometheus,
            query,
            max_age: interval / 2,
            metrics,
            last: Mutex::new(None),
        }
    }

    /// The last answer, asked again first when it is older than half a
    /// period (or there is none).
    pub(crate) async fn latest(&self) -> Answer {
        let mut last = self.last.lock().await;
        if let Some((asked, answer)) = last.as_ref()
            && asked.elapsed() < self.max_age
        {
            return answer.clone();
        }
        let asked = Instant::now();
        let answer = self.prometheus.instant(&self.query).await;
        self.metrics
            .prometheus_query(QUERY_NAME, answer.is_ok(), asked.elapsed().as_secs_f64());
        let answer = answer
            .map(|samples| Arc::new(PowerSeries::split(samples)))
            .map_err(|e| e.to_string());
        *last = Some((asked, answer.clone()));
        answer
    }
}
