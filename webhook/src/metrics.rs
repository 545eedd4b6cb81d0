//! The webhook's own Prometheus metrics (prometheus-client, served in the text format).

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Workload kind, or `other`.
    pub kind: &'static str,
    /// CREATE, UPDATE, ..., or `unknown` for unreadable reviews.
    pub operation: &'static str,
    /// allowed, denied or invalid.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

/// Every metric the webhook exports, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub denials: Family<ReasonLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub certificate_reloads: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("climatik_webhook");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews handled, by workload kind, operation and result",
            requests.clone(),
        );
        let denials = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "admission_denials",
            "Admission reviews denied, by reason",
            denials.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Requests that could not be answered: unreadable, too large, overload, deadline",
            errors.clone(),
        );
        // 100 µs .. ~6.5 s: in-process reviews take well under a millisecond;
        // the top buckets catch slow bodies and waits for room.
        let duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.0001, 2.0, 17,
        ));
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission review",
            duration.clone(),
        );
        let certificate_reloads = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads, by result (reloaded or an error label)",
            certificate_reloads.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            denials,
            errors,
            duration,
            certificate_reloads,
        }
    }

    pub fn error(&self, label: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { error: label })
            .inc();
    }

    /// A request that was not a readable AdmissionReview: counted as an
    /// error with `label` and as an `invalid` request.
    pub fn invalid_request(&self, label: &'static str) {
        self.error(label);
        self.requests
            .get_or_create(&RequestLabels {
                kind: "other",
                operation: "unknown",
                result: "invalid",
            })
            .inc();
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        climatik_runtime::admin::encode(&self.registry)
    }
}
