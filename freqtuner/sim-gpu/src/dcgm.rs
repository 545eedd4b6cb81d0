//! DCGM-exporter-compatible series in the Prometheus text format, with the
//! names, help texts, types and labels dcgm-exporter uses (`gpu`, `UUID`,
//! `pci_bus_id`, `device`, `modelName`, `Hostname`, optionally
//! `DCGM_FI_DRIVER_VERSION`, and the labels of the container that holds the
//! GPU), plus the simulation's own throughput gauge. The one renderer of
//! the project: the simulated nodes, the scale benchmark and the
//! controller's integration tests serve what it writes.
//!
//! Written by hand rather than with prometheus-client: dcgm-exporter's
//! energy counter has no `_total` suffix, and the pod labels are present
//! only on assigned GPUs.

use std::fmt::Write;

/// A series family as dcgm-exporter prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
}

pub const SM_CLOCK: Metric = Metric {
    name: "DCGM_FI_DEV_SM_CLOCK",
    help: "SM clock frequency (in MHz).",
    kind: "gauge",
};
pub const POWER_USAGE: Metric = Metric {
    name: "DCGM_FI_DEV_POWER_USAGE",
    help: "Power draw (in W).",
    kind: "gauge",
};
pub const TOTAL_ENERGY: Metric = Metric {
    name: "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    help: "Total energy consumption since boot (in mJ).",
    kind: "counter",
};
pub const GPU_UTIL: Metric = Metric {
    name: "DCGM_FI_DEV_GPU_UTIL",
    help: "GPU utilization (in %).",
    kind: "gauge",
};
pub const SIM_TOKENS: Metric = Metric {
    name: "climatik_sim_tokens_per_second",
    help: "Simulated LLM-serving throughput of the GPU's workload (tokens/s).",
    kind: "gauge",
};

/// One GPU's labels and values.
#[derive(Debug, Clone, Copy)]
pub struct Gpu<'a> {
    pub index: u64,
    pub uuid: &'a str,
    pub pci_bus_id: &'a str,
    pub model: &'a str,
    pub hostname: &'a str,
    pub driver_version: Option<&'a str>,
    /// The labels of the container holding the GPU, in order (dcgm-exporter
    /// writes `container`, `namespace`, `pod`; a relabelled exporter other
    /// names); empty when no container holds it.
    pub workload: &'a [(&'a str, &'a str)],
    /// One value per metric rendered, in the same order.
    pub values: &'a [f64],
}

/// Renders `metrics` (each with its HELP and TYPE lines) for every GPU.
pub fn render(metrics: &[Metric], gpus: &[Gpu<'_>]) -> String {
    let mut out = String::with_capacity(256 + gpus.len() * metrics.len() * 320);
    for (i, metric) in metrics.iter().enumerate() {
        let name = metric.name;
        let _ = writeln!(out, "# HELP {name} {}", metric.help);
        let _ = writeln!(out, "# TYPE {name} {}", metric.kind);
        for g in gpus {
            let _ = write!(
                out,
                "{name}{{gpu=\"{}\",UUID=\"{}\",pci_bus_id=\"{}\",device=\"nvidia{}\",modelName=\"{}\",Hostname=\"{}\"",
                g.index,
                escape(g.uuid),
                escape(g.pci_bus_id),
                g.index,
                escape(g.model),
                escape(g.hostname),
            );
            if let Some(version) = g.driver_version {
                let _ = write!(out, ",DCGM_FI_DRIVER_VERSION=\"{}\"", escape(version));
            }
            for (label, value) in g.workload {
                let _ = write!(out, ",{label}=\"{}\"", escape(value));
            }
            let value = g.values.get(i).copied().unwrap_or(f64::NAN);
            let _ = writeln!(out, "}} {}", format_value(value));
        }
    }
    out
}

/// Whole numbers without decimals, others to the milliunit.
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
    use climatik_test_support::exposition::parse;

    use super::*;

    #[test]
    fn renders_families_labels_and_values_that_parse() {
        let workload = [("container", "vllm"), ("namespace", "team"), ("pod", "p")];
        let gpus = [
            Gpu {
                index: 0,
                uuid: "GPU-a",
                pci_bus_id: "00000000:07:00.0",
                model: "NVIDIA H100 80GB HBM3",
                hostname: "n0",
                driver_version: Some("550.54.15"),
                workload: &workload,
                values: &[1980.0, 574.1234],
            },
            Gpu {
                index: 1,
                uuid: "GPU-b",
                pci_bus_id: "00000000:17:00.0",
                model: "NVIDIA H100 80GB HBM3",
                hostname: "n0",
                driver_version: None,
                workload: &[],
                values: &[345.0, 70.0],
            },
        ];
        let text = render(&[SM_CLOCK, POWER_USAGE], &gpus);
        let parsed = parse(&text).expect("valid Prometheus text");
        assert_eq!(parsed.types["DCGM_FI_DEV_SM_CLOCK"], "gauge");
        let busy = parsed.find("DCGM_FI_DEV_POWER_USAGE", &[("gpu", "0")]);
        assert_eq!(busy[0].value, 574.123);
        assert_eq!(busy[0].labels["pod"], "p");
        assert_eq!(busy[0].labels["DCGM_FI_DRIVER_VERSION"], "550.54.15");
        assert_eq!(busy[0].labels["device"], "nvidia0");
        let idle = parsed.find("DCGM_FI_DEV_POWER_USAGE", &[("gpu", "1")]);
        assert!(!idle[0].labels.contains_key("pod"));
        assert!(text.contains("DCGM_FI_DEV_SM_CLOCK{gpu=\"1\",UUID=\"GPU-b\",pci_bus_id=\"00000000:17:00.0\",device=\"nvidia1\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"n0\"} 345\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
