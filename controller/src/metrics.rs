//! Our own `/metrics`: reconciliations, errors, leadership and (monitor)
//! the power each policy draws.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub policy: String,
}

/// Every metric of one process, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    controller: String,
    reconciliations: Family<ControllerLabels, Counter>,
    failures: Family<ErrorLabels, Counter>,
    duration: Family<ControllerLabels, Histogram>,
    leader: Family<ControllerLabels, Gauge>,
    /// Measured power per policy, in watts (monitor).
    pub policy_power: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    /// NodeFrequencies server-side applies (recommender).
    pub node_frequency_applies: Family<ControllerLabels, Counter>,
}

impl Metrics {
    pub fn new(controller: &str) -> Arc<Self> {
        let mut registry = Registry::with_prefix("climatik");
        let reconciliations = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        let leader = Family::<ControllerLabels, Gauge>::default();
        let policy_power = Family::<PolicyLabels, Gauge<f64, AtomicU64>>::default();
        let node_frequency_applies = Family::<ControllerLabels, Counter>::default();
        registry.register("reconcile", "Reconciliations", reconciliations.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader",
            leader.clone(),
        );
        registry.register(
            "policy_power_watts",
            "Measured power of a policy's devices",
            policy_power.clone(),
        );
        registry.register(
            "nodefrequencies_applies",
            "Server-side applies of NodeFrequencies entries",
            node_frequency_applies.clone(),
        );
        Arc::new(Self {
            registry,
            controller: controller.to_string(),
            reconciliations,
            failures,
            duration,
            leader,
            policy_power,
            node_frequency_applies,
        })
    }

    pub fn labels(&self) -> ControllerLabels {
        ControllerLabels {
            controller: self.controller.clone(),
        }
    }

    pub fn reconciled(&self, seconds: f64) {
        self.reconciliations.get_or_create(&self.labels()).inc();
        self.duration.get_or_create(&self.labels()).observe(seconds);
    }

    pub fn failed(&self, error: &crate::Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                controller: self.controller.clone(),
                error: error.metric_label().to_string(),
            })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader
            .get_or_create(&self.labels())
            .set(i64::from(leader));
    }

    /// The Prometheus text format (`climatik-runtime`'s one `/metrics`
    /// body).
    pub fn encode(&self) -> String {
        climatik_runtime::admin::encode(&self.registry)
    }
}
