//! The per-budget series of the budget controller: each PowerBudget's
//! watts, what it measured, what it allocated to each policy and whether
//! its guarantees overcommit it, so an alert can say "this rack is over its
//! budget" or "serving was cut".
//!
//! Series of a budget that no longer exists, of a policy it no longer
//! allocates to, and all of them on a replica that is not leading, are
//! removed by [`BudgetMetrics::retain`] and [`BudgetMetrics::record`].

use std::{
    collections::BTreeMap,
    sync::{Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub budget: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetPolicyLabels {
    pub budget: String,
    pub namespace: String,
    pub policy: String,
}

/// What one reconciliation decided about a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetReading {
    /// `spec.watts`.
    pub watts: f64,
    /// `status.measuredWatts`, when measured.
    pub measured_watts: Option<f64>,
    /// `(namespace, policy, watts)` of each allocation.
    pub allocations: Vec<(String, String, f64)>,
    pub overcommitted: bool,
}

#[derive(Default)]
pub struct BudgetMetrics {
    watts: Family<BudgetLabels, FloatGauge>,
    measured: Family<BudgetLabels, FloatGauge>,
    allocated: Family<BudgetPolicyLabels, FloatGauge>,
    overcommitted: Family<BudgetLabels, Gauge>,
    /// The allocation series of each budget with series.
    budgets: Mutex<BTreeMap<String, Vec<BudgetPolicyLabels>>>,
}

impl BudgetMetrics {
    /// Registers the families in `registry` (prefixed `climatik_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "budget_watts",
            "A PowerBudget's watts (spec.watts)",
            self.watts.clone(),
        );
        registry.register(
            "budget_measured_watts",
            "Measured power under a PowerBudget: its policies, unmanaged GPUs and reserved watts (status.measuredWatts)",
            self.measured.clone(),
        );
        registry.register(
            "budget_allocated_watts",
            "Watts a PowerBudget allocates to a policy (the policy's status.allocatedWatts)",
            self.allocated.clone(),
        );
        registry.register(
            "budget_overcommitted",
            "1 while a PowerBudget's guarantees (minWatts) exceed what it shares, else 0",
            self.overcommitted.clone(),
        );
    }

    /// Records `reading` of `budget`; its allocations to policies left out
    /// of `reading` lose their series.
    pub fn record(&self, budget: &str, reading: &BudgetReading) {
        let labels = BudgetLabels {
            budget: budget.to_string(),
        };
        self.watts.get_or_create(&labels).set(reading.watts);
        match reading.measured_watts {
            Some(w) => {
                self.measured.get_or_create(&labels).set(w);
            }
            None => {
                self.measured.remove(&labels);
            }
        }
        self.overcommitted
            .get_or_create(&labels)
            .set(i64::from(reading.overcommitted));
        let current: Vec<BudgetPolicyLabels> = reading
            .allocations
            .iter()
            .map(|(namespace, policy, watts)| {
                let key = BudgetPolicyLabels {
                    budget: budget.to_string(),
                    namespace: namespace.clone(),
                    policy: policy.clone(),
                };
                self.allocated.get_or_create(&key).set(*watts);
                key
            })
            .collect();
        let mut budgets = self
            .budgets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for gone in budgets
            .get(budget)
            .into_iter()
            .flatten()
            .filter(|key| !current.contains(key))
        {
            self.allocated.remove(gone);
        }
        budgets.insert(budget.to_string(), current);
    }

    /// Removes every series of the budgets for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut budgets = self
            .budgets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        budgets.retain(|budget, allocations| {
            if keep(budget) {
                return true;
            }
            let labels = BudgetLabels {
                budget: budget.clone(),
            };
            self.watts.remove(&labels);
            self.measured.remove(&labels);
            self.overcommitted.remove(&labels);
            for key in allocations.iter() {
                self.allocated.remove(key);
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(metrics: &BudgetMetrics) -> String {
        let mut registry = Registry::with_prefix("climatik");
        metrics.register(&mut registry);
        climatik_runtime::admin::encode(&registry)
    }

    #[test]
    fn allocations_a_budget_no_longer_makes_and_gone_budgets_lose_their_series() {
        let metrics = BudgetMetrics::default();
        let reading = |allocations: Vec<(&str, f64)>| BudgetReading {
            watts: 1000.0,
            measured_watts: Some(800.0),
            allocations: allocations
                .into_iter()
                .map(|(p, w)| ("ns".to_string(), p.to_string(), w))
                .collect(),
            overcommitted: false,
        };
        metrics.record(
            "rack",
            &reading(vec![("serving", 600.0), ("training", 300.0)]),
        );
        metrics.record("row", &reading(vec![("batch", 100.0)]));
        let text = page(&metrics);
        assert!(text.contains(
            "climatik_budget_allocated_watts{budget=\"rack\",namespace=\"ns\",policy=\"training\"} 300.0"
        ), "{text}");
        metrics.record("rack", &reading(vec![("serving", 900.0)]));
        let text = page(&metrics);
        assert!(!text.contains("policy=\"training\""), "{text}");
        assert!(text.contains("policy=\"batch\""), "{text}");
        metrics.retain(|b| b != "row");
        let text = page(&metrics);
        assert!(!text.contains("budget=\"row\""), "{text}");
        assert!(
            text.contains("climatik_budget_watts{budget=\"rack\"} 1000.0"),
            "{text}"
        );
    }
}
