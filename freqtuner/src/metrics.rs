//! The agent's own metrics: per-device targets, settings in force and
//! power readings, actuation errors, restores, entries that expired
//! without renewal, drift re-applied, quarantined state files and status
//! writes.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub gpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CpuLabels {
    pub cpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `gpu` or `cpu`.
    pub device: String,
    /// [`crate::error::Error::metric_label`].
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    /// `gpu` or `cpu`.
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Every metric the agent exports (besides the simulated DCGM series).
pub struct Metrics {
    registry: Registry,
    pub gpu_locked_mhz: Family<GpuLabels, Gauge>,
    pub gpu_budget_watts: Family<GpuLabels, Gauge<f64, AtomicU64>>,
    pub gpu_target_mhz: Family<GpuLabels, Gauge>,
    pub gpu_power_limit_watts: Family<GpuLabels, Gauge<f64, AtomicU64>>,
    pub gpu_power_watts: Family<GpuLabels, Gauge<f64, AtomicU64>>,
    pub entries_expired: Family<DeviceLabels, Counter>,
    pub cpu_max_mhz: Family<CpuLabels, Gauge>,
    pub actuation_errors: Family<ErrorLabels, Counter>,
    pub restores: Counter,
    pub reconciles: Counter,
    pub drift: Family<DeviceLabels, Counter>,
    pub state_quarantined: Counter,
    pub status_writes: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("climatik_freqtuner");
        let gpu_locked_mhz = Family::<GpuLabels, Gauge>::default();
        registry.register(
            "gpu_locked_clock_mhz",
            "SM clock the agent has locked, by GPU UUID (absent when unlocked)",
            gpu_locked_mhz.clone(),
        );
        let gpu_budget_watts = Family::<GpuLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "gpu_power_budget_watts",
            "Power budget the fast loop holds, by GPU UUID",
            gpu_budget_watts.clone(),
        );
        let gpu_target_mhz = Family::<GpuLabels, Gauge>::default();
        registry.register(
            "gpu_target_mhz",
            "Merged SM clock target after snapping to a supported clock, by GPU UUID (absent when no live entry)",
            gpu_target_mhz.clone(),
        );
        let gpu_power_limit_watts = Family::<GpuLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "gpu_power_limit_watts",
            "Power limit the agent has set and the GPU took, by GPU UUID (absent when the agent set none)",
            gpu_power_limit_watts.clone(),
        );
        let gpu_power_watts = Family::<GpuLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "gpu_power_watts",
            "Last power reading of a GPU the agent holds a target on, by GPU UUID",
            gpu_power_watts.clone(),
        );
        let entries_expired = Family::<DeviceLabels, Counter>::default();
        registry.register(
            "entries_expired",
            "Live entries whose deadline passed while still in the spec, i.e. nobody renewed them",
            entries_expired.clone(),
        );
        let cpu_max_mhz = Family::<CpuLabels, Gauge>::default();
        registry.register(
            "cpu_max_frequency_mhz",
            "CPU frequency ceiling the agent has set (absent when restored)",
            cpu_max_mhz.clone(),
        );
        let actuation_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "actuation_errors",
            "Failed attempts to set or restore a device",
            actuation_errors.clone(),
        );
        let restores = Counter::default();
        registry.register(
            "restores",
            "Devices put back to their defaults",
            restores.clone(),
        );
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Passes comparing targets with what is in force",
            reconciles.clone(),
        );
        let drift = Family::<DeviceLabels, Counter>::default();
        registry.register(
            "drift_reapplied",
            "Devices found changed by someone else (nvidia-smi, a GPU reset) and set again",
            drift.clone(),
        );
        let state_quarantined = Counter::default();
        registry.register(
            "state_quarantined",
            "Corrupt restore-state files moved aside at start-up",
            state_quarantined.clone(),
        );
        let status_writes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "status_writes",
            "NodeFrequencies status writes, by result",
            status_writes.clone(),
        );
        Self {
            registry,
            gpu_locked_mhz,
            gpu_budget_watts,
            gpu_target_mhz,
            gpu_power_limit_watts,
            gpu_power_watts,
            entries_expired,
            cpu_max_mhz,
            actuation_errors,
            restores,
            reconciles,
            drift,
            state_quarantined,
            status_writes,
        }
    }
}

impl Metrics {
    /// Counts a device found changed by someone else.
    pub fn drifted(&self, device: &str) {
        self.drift
            .get_or_create(&DeviceLabels {
                device: device.to_string(),
            })
            .inc();
    }

    /// Counts `n` entries for `device` that expired without renewal.
    pub fn expired(&self, device: &str, n: u64) {
        self.entries_expired
            .get_or_create(&DeviceLabels {
                device: device.to_string(),
            })
            .inc_by(n);
    }

    /// Removes every series of a GPU the agent no longer holds.
    pub fn forget_gpu(&self, uuid: &str) {
        let labels = GpuLabels {
            gpu: uuid.to_string(),
        };
        self.gpu_locked_mhz.remove(&labels);
        self.gpu_budget_watts.remove(&labels);
        self.gpu_target_mhz.remove(&labels);
        self.gpu_power_limit_watts.remove(&labels);
        self.gpu_power_watts.remove(&labels);
    }

    pub fn error(&self, device: &str, error: &crate::error::Error) {
        self.actuation_errors
            .get_or_create(&ErrorLabels {
                device: device.to_string(),
                error: error.metric_label().to_string(),
            })
            .inc();
    }

    /// The registry in the Prometheus text format, without OpenMetrics'
    /// closing `# EOF`, so more series can follow.
    pub fn encode(&self) -> String {
        climatik_runtime::admin::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use climatik_test_support::exposition::parse;

    #[test]
    fn encodes_valid_text() {
        let m = Metrics::default();
        m.gpu_locked_mhz
            .get_or_create(&GpuLabels {
                gpu: "GPU-a".into(),
            })
            .set(990);
        m.error("cpu", &crate::error::Error::ReadOnly("x".into()));
        let parsed = parse(&m.encode()).expect("valid");
        assert_eq!(
            parsed.find(
                "climatik_freqtuner_gpu_locked_clock_mhz",
                &[("gpu", "GPU-a")]
            )[0]
            .value,
            990.0
        );
        assert_eq!(
            parsed.find(
                "climatik_freqtuner_actuation_errors_total",
                &[("device", "cpu"), ("error", "read_only")]
            )[0]
            .value,
            1.0
        );
    }
}
