//! Estimated watts shed: how much power a policy's throttling keeps off its
//! devices, per policy, from the recommender's own observation of them
//! (`climatik_policy_shed_watts`).
//!
//! The estimate scales each device running below its highest supported
//! clock up to that clock in proportion (power × highest / observed − power)
//! and adds it up. Dynamic power grows faster than the clock at high clocks
//! (voltage rises too) while idle power does not grow at all, so this is an
//! order of magnitude for dashboards ("what is the cap costing?"), not an
//! accounting figure. A device without an observed clock counts as
//! unthrottled.
//!
//! Series of deleted policies, and all of them on a replica that stops
//! leading, are removed by [`ShedMetrics::retain`].

use std::{
    collections::HashSet,
    sync::{Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{algorithm::Device, metrics::PolicyLabels};

/// Watts the devices would draw at their highest clocks beyond what they
/// draw now (never negative).
pub fn estimate_shed_watts(devices: &[Device]) -> f64 {
    devices
        .iter()
        .filter_map(|device| {
            let clock = device.clock_mhz.filter(|c| c.is_finite() && *c > 0.0)?;
            let highest = f64::from(device.clocks.max());
            let power = device.power_watts.max(0.0);
            (highest > clock).then(|| power * (highest / clock - 1.0))
        })
        .filter(|w| w.is_finite())
        .sum()
}

/// The per-policy gauge and which policies have a series.
#[derive(Default)]
pub struct ShedMetrics {
    shed: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    policies: Mutex<HashSet<PolicyLabels>>,
}

impl ShedMetrics {
    /// Registers the gauge in `registry` (prefixed `climatik_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "policy_shed_watts",
            "Estimated power a policy's throttling keeps off its devices: each device's power scaled to its highest clock, minus its power (recommender)",
            self.shed.clone(),
        );
    }

    /// Sets a policy's estimate.
    pub fn set(&self, policy: PolicyLabels, watts: f64) {
        self.shed.get_or_create(&policy).set(watts);
        self.lock().insert(policy);
    }

    /// Keeps the series of the policies `keep` accepts and removes the rest.
    pub fn retain(&self, keep: impl Fn(&PolicyLabels) -> bool) {
        self.lock().retain(|policy| {
            if keep(policy) {
                return true;
            }
            self.shed.remove(policy);
            false
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<PolicyLabels>> {
        self.policies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use climatik_api::DeviceKind;

    use super::*;
    use crate::algorithm::Clocks;

    fn gpu(power: f64, clock: Option<f64>) -> Device {
        Device {
            id: "gpu-0".into(),
            node: "n".into(),
            kind: DeviceKind::Gpu,
            power_watts: power,
            clock_mhz: clock,
            clocks: Clocks::range(500, 2000, 100).expect("clocks"),
            min_power_limit_watts: None,
            entry_mhz: None,
            entry_budget_watts: None,
        }
    }

    #[test]
    fn a_device_at_half_its_highest_clock_would_draw_twice_its_power() {
        assert_eq!(estimate_shed_watts(&[gpu(300.0, Some(1000.0))]), 300.0);
        let two = estimate_shed_watts(&[gpu(300.0, Some(1000.0)), gpu(200.0, Some(1500.0))]);
        assert!((two - (300.0 + 200.0 / 3.0)).abs() < 1e-9, "{two}");
    }

    #[test]
    fn unthrottled_or_unknown_devices_shed_nothing() {
        assert_eq!(estimate_shed_watts(&[gpu(700.0, Some(2000.0))]), 0.0);
        assert_eq!(estimate_shed_watts(&[gpu(700.0, None)]), 0.0);
        assert_eq!(estimate_shed_watts(&[gpu(700.0, Some(0.0))]), 0.0);
        assert_eq!(estimate_shed_watts(&[gpu(700.0, Some(f64::NAN))]), 0.0);
        assert_eq!(estimate_shed_watts(&[gpu(-5.0, Some(1000.0))]), 0.0);
        assert_eq!(estimate_shed_watts(&[]), 0.0);
    }

    fn page(metrics: &ShedMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text
    }

    fn labels(policy: &str) -> PolicyLabels {
        PolicyLabels {
            namespace: "ns".into(),
            policy: policy.into(),
        }
    }

    #[test]
    fn retain_removes_the_series_of_dropped_policies() {
        let metrics = ShedMetrics::default();
        metrics.set(labels("p"), 120.0);
        metrics.set(labels("q"), 30.0);
        metrics.retain(|l| l.policy == "q");
        let text = page(&metrics);
        assert!(!text.contains("policy=\"p\""), "{text}");
        assert!(
            text.contains("policy_shed_watts{namespace=\"ns\",policy=\"q\"} 30.0"),
            "{text}"
        );
        metrics.retain(|_| false);
        assert!(!page(&metrics).contains("policy=\"q\""));
    }
}
