//! DCGM-exporter-compatible series for the simulated GPUs, in the
//! Prometheus text format, with the names, help texts, types and labels
//! dcgm-exporter uses (`gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`,
//! `Hostname`, `DCGM_FI_DRIVER_VERSION`, and `container`, `namespace`,
//! `pod` for GPUs a pod holds), plus our own throughput gauge.
//!
//! Written by hand rather than with prometheus-client: dcgm-exporter's
//! energy counter has no `_total` suffix, and the pod labels are present
//! only on assigned GPUs.

use std::fmt::Write;

use super::GpuReading;

/// `(name, help, type)` of each series, as dcgm-exporter prints them.
const SERIES: [(&str, &str, &str); 5] = [
    (
        "DCGM_FI_DEV_SM_CLOCK",
        "SM clock frequency (in MHz).",
        "gauge",
    ),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "gauge"),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "Total energy consumption since boot (in mJ).",
        "counter",
    ),
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "gauge"),
    (
        "climatik_sim_tokens_per_second",
        "Simulated LLM-serving throughput of the GPU's workload (tokens/s).",
        "gauge",
    ),
];

/// Renders the readings of one node's GPUs.
pub fn render(readings: &[GpuReading], hostname: &str, driver_version: &str) -> String {
    let mut out = String::with_capacity(512 + readings.len() * 5 * 320);
    for (metric, (name, help, kind)) in SERIES.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for r in readings {
            let value = match metric {
                0 => f64::from(r.clock_mhz),
                1 => r.power_watts,
                2 => r.energy_mj as f64,
                3 => (r.utilization * 100.0).round(),
                _ => r.tokens_per_second,
            };
            let _ = write!(
                out,
                "{name}{{gpu=\"{}\",UUID=\"{}\",pci_bus_id=\"{}\",device=\"nvidia{}\",modelName=\"{}\",Hostname=\"{}\",DCGM_FI_DRIVER_VERSION=\"{}\"",
                r.info.index,
                escape(&r.info.uuid),
                escape(&r.info.pci_bus_id),
                r.info.index,
                escape(&r.info.model),
                escape(hostname),
                escape(driver_version),
            );
            if let Some(owner) = &r.owner {
                let _ = write!(
                    out,
                    ",container=\"{}\",namespace=\"{}\",pod=\"{}\"",
                    escape(&owner.container),
                    escape(&owner.namespace),
                    escape(&owner.pod)
                );
            }
            let _ = writeln!(out, "}} {}", format_value(value));
        }
    }
    out
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Instant};

    use super::*;
    use crate::sim::tests::{busy_pod, world};
    use crate::text_format::{Sample, parse};

    #[test]
    fn serves_dcgm_names_and_labels_that_parse() {
        let mut w = world(2);
        let t0 = Instant::now();
        w.set_pods(&[busy_pod("a", Some("0.8"))], t0);
        let text = render(&w.readings(t0), "gpu-node-7", "550.54.15");
        let parsed = parse(&text).expect("valid Prometheus text");

        for (name, _, kind) in SERIES {
            assert_eq!(parsed.types.get(name).map(String::as_str), Some(kind));
            assert_eq!(parsed.samples.iter().filter(|s| s.name == name).count(), 2);
        }
        let of = |name: &str, gpu: &str| -> &Sample {
            parsed
                .samples
                .iter()
                .find(|s| s.name == name && s.labels.get("gpu").map(String::as_str) == Some(gpu))
                .expect("sample")
        };
        let busy = of("DCGM_FI_DEV_POWER_USAGE", "0");
        let expected: BTreeMap<&str, &str> = [
            ("gpu", "0"),
            ("device", "nvidia0"),
            ("modelName", "NVIDIA H100 80GB HBM3"),
            ("Hostname", "gpu-node-7"),
            ("DCGM_FI_DRIVER_VERSION", "550.54.15"),
            ("pci_bus_id", "00000000:07:00.0"),
            ("pod", "vllm-a"),
            ("namespace", "team"),
            ("container", "vllm"),
        ]
        .into();
        for (k, v) in expected {
            assert_eq!(busy.labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(busy.labels["UUID"].starts_with("GPU-"));
        assert!((busy.value - (70.0 + 0.8 * 630.0)).abs() < 1e-3);
        assert_eq!(of("DCGM_FI_DEV_GPU_UTIL", "0").value, 80.0);
        assert_eq!(of("DCGM_FI_DEV_SM_CLOCK", "0").value, 1980.0);

        let idle = of("DCGM_FI_DEV_POWER_USAGE", "1");
        assert!(!idle.labels.contains_key("pod"));
        assert_eq!(idle.value, 70.0);
        assert_eq!(of("climatik_sim_tokens_per_second", "1").value, 0.0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
