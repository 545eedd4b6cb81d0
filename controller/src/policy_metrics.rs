//! The per-policy series of the power usage monitor: what each policy's
//! cap is, what its devices draw, the energy they used and how long the
//! policy was capping, so an alert can say "this workload is over its cap".
//!
//! Every series carries `namespace` and `policy`. The counters integrate
//! between two measurements in a row of the same policy: each interval
//! counts with the figures of its later measurement (power × seconds since
//! the previous one), and an interval longer than the caller's `max_gap`
//! (Prometheus or the API server was away, the replica was not leading)
//! is skipped rather than guessed. A measurement that failed (Prometheus
//! unreachable, the status holds the last readings) ends the run too.
//!
//! Series of a policy that no longer exists, and all of them on a replica
//! that is not leading (it measures nothing, so its figures would only get
//! stale), are removed by [`PolicyMetrics::retain`].

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::metrics::PolicyLabels;

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// What one reconciliation found about a policy: the figures of the status
/// it wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyReading {
    /// `spec.powerCapLimit`, watts.
    pub cap_watts: f64,
    /// The cap the devices are held to: the smaller of the policy's cap and
    /// its budget allocation (`status.effectiveCapWatts`).
    pub effective_cap_watts: f64,
    /// `status.currentPower`, watts, when the status has one.
    pub power_watts: Option<f64>,
    /// The power was measured now (or is 0 W because no pod matches), not
    /// held from an earlier measurement: only then do the counters move.
    pub fresh: bool,
    /// The MetricsAvailable condition is True.
    pub metrics_available: bool,
    /// The Capping condition is True (power above the capping threshold:
    /// the recommender lowers the policy's clocks).
    pub capping: bool,
    /// `status.matchedPodCount`.
    pub matched_pods: usize,
}

/// The per-policy families and, per policy, when it was last measured.
#[derive(Default)]
pub struct PolicyMetrics {
    cap: Family<PolicyLabels, FloatGauge>,
    effective_cap: Family<PolicyLabels, FloatGauge>,
    power: Family<PolicyLabels, FloatGauge>,
    energy: Family<PolicyLabels, FloatCounter>,
    capping: Family<PolicyLabels, FloatCounter>,
    metrics_available: Family<PolicyLabels, Gauge>,
    matched_pods: Family<PolicyLabels, Gauge>,
    /// Time of the last fresh measurement of each policy with series.
    measured_at: Mutex<HashMap<PolicyLabels, Option<Instant>>>,
}

impl PolicyMetrics {
    /// Registers the families in `registry` (prefixed `climatik_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "policy_cap_watts",
            "A policy's power cap (spec.powerCapLimit)",
            self.cap.clone(),
        );
        registry.register(
            "policy_effective_cap_watts",
            "The cap a policy's devices are held to: the smaller of its own cap and its PowerBudget allocation (status.effectiveCapWatts)",
            self.effective_cap.clone(),
        );
        registry.register(
            "policy_power_watts",
            "Measured power of a policy's devices, as its status reports it (status.currentPower)",
            self.power.clone(),
        );
        registry.register(
            "policy_energy_joules",
            "Energy used by a policy's devices: measured power times the seconds since the previous measurement",
            self.energy.clone(),
        );
        registry.register(
            "policy_capping_seconds",
            "Time a policy's Capping condition was True (power above its capping threshold), between measurements",
            self.capping.clone(),
        );
        registry.register(
            "policy_metrics_available",
            "1 while a policy's MetricsAvailable condition is True, else 0",
            self.metrics_available.clone(),
        );
        registry.register(
            "policy_matched_pods",
            "Running pods a policy's selector matches (status.matchedPodCount)",
            self.matched_pods.clone(),
        );
    }

    /// Records `reading` of `policy` taken at `at`; an interval since the
    /// previous fresh measurement longer than `max_gap` is not counted.
    pub fn record(
        &self,
        policy: &PolicyLabels,
        reading: &PolicyReading,
        at: Instant,
        max_gap: Duration,
    ) {
        let mut measured_at = self
            .measured_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous = measured_at.insert(policy.clone(), reading.fresh.then_some(at));
        self.cap.get_or_create(policy).set(reading.cap_watts);
        self.effective_cap
            .get_or_create(policy)
            .set(reading.effective_cap_watts);
        match reading.power_watts {
            Some(watts) => {
                self.power.get_or_create(policy).set(watts);
            }
            None => {
                self.power.remove(policy);
            }
        }
        self.metrics_available
            .get_or_create(policy)
            .set(i64::from(reading.metrics_available));
        self.matched_pods
            .get_or_create(policy)
            .set(i64::try_from(reading.matched_pods).unwrap_or(i64::MAX));
        // Created at 0 so a policy that never capped still has the series.
        let energy = self.energy.get_or_create(policy);
        let capping = self.capping.get_or_create(policy);
        let since = previous.flatten().map(|p| at.saturating_duration_since(p));
        let (Some(elapsed), Some(watts), true) = (since, reading.power_watts, reading.fresh) else {
            return;
        };
        if elapsed > max_gap {
            return;
        }
        let seconds = elapsed.as_secs_f64();
        energy.inc_by(watts * seconds);
        if reading.capping {
            capping.inc_by(seconds);
        }
    }

    /// Removes the series of every policy for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&PolicyLabels) -> bool) {
        let mut measured_at = self
            .measured_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        measured_at.retain(|policy, _| {
            if keep(policy) {
                return true;
            }
            self.cap.remove(policy);
            self.effective_cap.remove(policy);
            self.power.remove(policy);
            self.energy.remove(policy);
            self.capping.remove(policy);
            self.metrics_available.remove(policy);
            self.matched_pods.remove(policy);
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(policy: &str) -> PolicyLabels {
        PolicyLabels {
            namespace: "ns".into(),
            policy: policy.into(),
        }
    }

    fn reading(watts: f64, fresh: bool, capping: bool) -> PolicyReading {
        PolicyReading {
            cap_watts: 300.0,
            effective_cap_watts: 250.0,
            power_watts: Some(watts),
            fresh,
            metrics_available: fresh,
            capping,
            matched_pods: 1,
        }
    }

    fn page(metrics: &PolicyMetrics) -> String {
        let mut registry = Registry::with_prefix("climatik");
        metrics.register(&mut registry);
        climatik_runtime::admin::encode(&registry)
    }

    fn value(page: &str, series: &str) -> Option<f64> {
        page.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|rest| rest.trim().parse().ok())
    }

    const P: &str = "{namespace=\"ns\",policy=\"p\"}";
    const GAP: Duration = Duration::from_secs(3);

    #[test]
    fn energy_and_capping_time_integrate_between_measurements_in_a_row() {
        let metrics = PolicyMetrics::default();
        let p = labels("p");
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // The first measurement has no interval before it.
        metrics.record(&p, &reading(200.0, true, false), at(0), GAP);
        // 2 s at 200 W, not capping; 1 s at 400 W, capping.
        metrics.record(&p, &reading(200.0, true, false), at(2), GAP);
        metrics.record(&p, &reading(400.0, true, true), at(3), GAP);
        // Prometheus away: the held figure counts nothing, and the interval
        // after it starts from the held reading, which ended the run.
        metrics.record(&p, &reading(400.0, false, true), at(4), GAP);
        metrics.record(&p, &reading(400.0, true, true), at(5), GAP);
        // A gap longer than allowed is skipped.
        metrics.record(&p, &reading(400.0, true, true), at(10), GAP);
        let text = page(&metrics);
        assert_eq!(
            value(&text, &format!("climatik_policy_energy_joules_total{P}")),
            Some(800.0)
        );
        assert_eq!(
            value(&text, &format!("climatik_policy_capping_seconds_total{P}")),
            Some(1.0)
        );
        assert_eq!(
            value(&text, &format!("climatik_policy_power_watts{P}")),
            Some(400.0)
        );
        assert_eq!(
            value(&text, &format!("climatik_policy_cap_watts{P}")),
            Some(300.0)
        );
        assert_eq!(
            value(&text, &format!("climatik_policy_effective_cap_watts{P}")),
            Some(250.0)
        );
    }

    #[test]
    fn retain_removes_every_series_of_the_policies_it_drops() {
        let metrics = PolicyMetrics::default();
        let now = Instant::now();
        metrics.record(&labels("p"), &reading(1.0, true, true), now, GAP);
        metrics.record(&labels("q"), &reading(1.0, true, true), now, GAP);
        metrics.retain(|l| l.policy == "q");
        let text = page(&metrics);
        assert!(!text.contains("policy=\"p\""), "{text}");
        assert_eq!(text.matches("policy=\"q\"").count(), 7, "{text}");
    }
}
