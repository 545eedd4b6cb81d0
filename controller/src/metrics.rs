//! Our own `/metrics`: reconciliations, errors, leadership and (monitor)
//! the per-policy series of [`crate::policy_metrics`].

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{budget_metrics::BudgetMetrics, policy_metrics::PolicyMetrics, shed::ShedMetrics};

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
pub struct ActionLabels {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// What was asked: `power` (see [`crate::power_cache`]).
    pub query: &'static str,
    /// `ok` or `error` (Prometheus down, timed out, or a bad answer).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// The resource written, with its subresource:
    /// `powercappingpolicies/status`, `nodefrequencies`.
    pub resource: &'static str,
    /// `apply` (server-side apply), `patch`.
    pub verb: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub resource: &'static str,
    /// `write` or `skip`.
    pub decision: &'static str,
    /// Why (see [`crate::due`]); `unchanged` for a skip.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub policy: String,
}

impl PolicyLabels {
    /// The labels of a policy's series.
    pub fn of(policy: &climatik_api::PowerCappingPolicy) -> Self {
        use kube::ResourceExt;
        Self {
            namespace: policy.namespace().unwrap_or_default(),
            policy: policy.name_any(),
        }
    }
}

/// Observes the time since it was made into `reconcile_duration_seconds`
/// when dropped, so a reconciliation that returns early with an error (or
/// is cancelled) is measured like one that succeeds.
#[must_use = "the reconciliation is timed until this is dropped"]
pub struct ReconcileTimer {
    started: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// Every metric of one process, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    controller: String,
    reconciliations: Family<ControllerLabels, Counter>,
    failures: Family<ErrorLabels, Counter>,
    duration: Family<ControllerLabels, Histogram>,
    leader: Family<ControllerLabels, Gauge>,
    /// Reconciles waiting for a slot (see [`crate::fair`]).
    waiting: Family<ControllerLabels, Gauge>,
    /// Cap, power, energy and capping time per policy (monitor).
    pub policies: PolicyMetrics,
    /// Estimated watts shed per policy (recommender).
    pub shed: ShedMetrics,
    /// Watts, measured power and allocations per PowerBudget (monitor's
    /// budget controller).
    pub budgets: BudgetMetrics,
    /// NodeFrequencies server-side applies (recommender).
    pub node_frequency_applies: Family<ControllerLabels, Counter>,
    /// Writes of generated policies (monitor's policy generator).
    generated_policy_writes: Family<ActionLabels, Counter>,
    /// Workloads whose generated policy was left as it is, by reason.
    generator_skips: Family<ActionLabels, Counter>,
    /// GPU series about a policy's pods that were not believed (monitor).
    ignored_series: Family<ReasonLabels, Counter>,
    /// Time of each Prometheus query, by query and result (monitor).
    prometheus_queries: Family<QueryLabels, Histogram>,
    /// Every write to the API server, by resource, verb and result.
    api_writes: Family<WriteLabels, Counter>,
    /// Each period's decision to write a status or entries, or not.
    write_decisions: Family<DecisionLabels, Counter>,
    /// Policies due for a measurement that have not had it (monitor).
    due_policies: Gauge,
    /// Seconds since the least recently measured policy was measured
    /// (monitor).
    oldest_measurement_age: Gauge<f64, AtomicU64>,
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
        let policies = PolicyMetrics::default();
        let shed = ShedMetrics::default();
        let budgets = BudgetMetrics::default();
        let node_frequency_applies = Family::<ControllerLabels, Counter>::default();
        let generated_policy_writes = Family::<ActionLabels, Counter>::default();
        let generator_skips = Family::<ActionLabels, Counter>::default();
        let ignored_series = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "generated_policy_writes",
            "Generated PowerCappingPolicies applied or deleted, by action",
            generated_policy_writes.clone(),
        );
        registry.register(
            "generator_skips",
            "Workloads whose generated policy was left as it is: invalid_annotation, hand_written, write_failed",
            generator_skips.clone(),
        );
        registry.register(
            "ignored_gpu_series",
            "DCGM power series about a policy's pods that were not counted, by reason: unscheduled_pod, no_inventory, unknown_gpu",
            ignored_series.clone(),
        );
        registry.register("reconcile", "Reconciliations", reconciliations.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation, failed ones included",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader",
            leader.clone(),
        );
        let waiting = Family::<ControllerLabels, Gauge>::default();
        registry.register(
            "reconcile_waiting",
            "Reconciles that fell due and wait for a free slot, served first come first served",
            waiting.clone(),
        );
        policies.register(&mut registry);
        shed.register(&mut registry);
        budgets.register(&mut registry);
        let prometheus_queries = Family::<QueryLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
        });
        registry.register(
            "prometheus_query_duration_seconds",
            "Time of each Prometheus query, by query (power: the one query a period for every policy) and result (ok, error)",
            prometheus_queries.clone(),
        );
        let api_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "api_writes",
            "Writes to the API server, by resource, verb (apply, patch) and result (ok, error)",
            api_writes.clone(),
        );
        let write_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "write_decisions",
            "Policy statuses and NodeFrequencies entries written or skipped, by resource, decision (write, skip) and reason",
            write_decisions.clone(),
        );
        let due_policies = Gauge::default();
        registry.register(
            "monitor_due_policies",
            "Policies whose last measurement is a period or more ago: the monitor's queue depth",
            due_policies.clone(),
        );
        let oldest_measurement_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "monitor_oldest_measurement_age_seconds",
            "Seconds since the least recently measured policy was measured (a policy never measured: since it was first seen)",
            oldest_measurement_age.clone(),
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
            waiting,
            policies,
            shed,
            budgets,
            node_frequency_applies,
            generated_policy_writes,
            generator_skips,
            ignored_series,
            prometheus_queries,
            api_writes,
            write_decisions,
            due_policies,
            oldest_measurement_age,
        })
    }

    pub fn labels(&self) -> ControllerLabels {
        ControllerLabels {
            controller: self.controller.clone(),
        }
    }

    /// Counts a reconciliation that succeeded (its time is taken by the
    /// [`ReconcileTimer`]).
    pub fn reconciled(&self) {
        self.reconciliations.get_or_create(&self.labels()).inc();
    }

    /// Starts timing one reconciliation; see [`ReconcileTimer`].
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        ReconcileTimer {
            started: Instant::now(),
            histogram: self.duration.get_or_create(&self.labels()).clone(),
        }
    }

    pub fn failed(&self, error: &crate::Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                controller: self.controller.clone(),
                error: error.metric_label().to_string(),
            })
            .inc();
    }

    pub fn generated_policy_write(&self, action: &'static str) {
        self.generated_policy_writes
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    pub fn generator_skip(&self, reason: &'static str) {
        self.generator_skips
            .get_or_create(&ActionLabels { action: reason })
            .inc();
    }

    /// Counts `count` GPU series ignored for `reason` (an
    /// [`crate::observe::IgnoredReason::metric_label`]).
    pub fn ignored_series(&self, reason: &'static str, count: u64) {
        self.ignored_series
            .get_or_create(&ReasonLabels { reason })
            .inc_by(count);
    }

    /// Records one Prometheus query named `query` that took `seconds`.
    pub fn prometheus_query(&self, query: &'static str, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.prometheus_queries
            .get_or_create(&QueryLabels { query, result })
            .observe(seconds);
    }

    /// Counts one write of `resource` by `verb`.
    pub fn api_write(&self, resource: &'static str, verb: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.api_writes
            .get_or_create(&WriteLabels {
                resource,
                verb,
                result,
            })
            .inc();
    }

    /// Counts one decision to write `resource` (or not), for `reason`.
    pub fn write_decision(&self, resource: &'static str, write: bool, reason: &'static str) {
        let decision = if write { "write" } else { "skip" };
        self.write_decisions
            .get_or_create(&DecisionLabels {
                resource,
                decision,
                reason,
            })
            .inc();
    }

    /// Sets the monitor's backlog: `due` policies waiting for a
    /// measurement, the oldest for `oldest`.
    pub fn set_backlog(&self, due: usize, oldest: Duration) {
        self.due_policies
            .set(i64::try_from(due).unwrap_or(i64::MAX));
        self.oldest_measurement_age.set(oldest.as_secs_f64());
    }

    /// The gauge of reconciles waiting for a slot.
    pub fn reconcile_waiting(&self) -> Gauge {
        self.waiting.get_or_create(&self.labels()).clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &Metrics, series: &str) -> Option<String> {
        let text = metrics.encode();
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    }

    #[test]
    fn a_failed_reconciliation_is_timed_but_not_counted_as_done() {
        let metrics = Metrics::new("test");
        let failing = || -> Result<(), crate::Error> {
            let _timer = metrics.reconcile_timer();
            Err(crate::Error::MissingNamespace)
        };
        assert!(failing().is_err());
        {
            let _timer = metrics.reconcile_timer();
            metrics.reconciled();
        }
        let series = "climatik_reconcile_duration_seconds_count{controller=\"test\"}";
        assert_eq!(count(&metrics, series).as_deref(), Some("2"));
        let done = "climatik_reconcile_total{controller=\"test\"}";
        assert_eq!(count(&metrics, done).as_deref(), Some("1"));
    }

    #[test]
    fn prometheus_queries_are_timed_by_query_and_result() {
        let metrics = Metrics::new("test");
        metrics.prometheus_query("power", true, 0.02);
        metrics.prometheus_query("power", false, 3.0);
        metrics.prometheus_query("power", false, 3.0);
        let ok = "climatik_prometheus_query_duration_seconds_count{query=\"power\",result=\"ok\"}";
        let failed =
            "climatik_prometheus_query_duration_seconds_count{query=\"power\",result=\"error\"}";
        assert_eq!(count(&metrics, ok).as_deref(), Some("1"));
        assert_eq!(count(&metrics, failed).as_deref(), Some("2"));
    }
}
