//! The simulated node's `/metrics` GPU series: its readings as the
//! dcgm-exporter series that [`climatik_sim_gpu::dcgm`] renders (the pod
//! labels only on GPUs a container holds).

use climatik_sim_gpu::dcgm::{
    self, GPU_UTIL, Gpu, Metric, POWER_USAGE, SIM_TOKENS, SM_CLOCK, TOTAL_ENERGY,
};

use super::GpuReading;

/// The series a simulated node serves, in order.
const SERIES: [Metric; 5] = [SM_CLOCK, POWER_USAGE, TOTAL_ENERGY, GPU_UTIL, SIM_TOKENS];

/// Renders the readings of one node's GPUs.
pub fn render(readings: &[GpuReading], hostname: &str, driver_version: &str) -> String {
    let workloads: Vec<Vec<(&str, &str)>> = readings
        .iter()
        .map(|r| {
            r.owner.as_ref().map_or_else(Vec::new, |owner| {
                vec![
                    ("container", owner.container.as_str()),
                    ("namespace", owner.namespace.as_str()),
                    ("pod", owner.pod.as_str()),
                ]
            })
        })
        .collect();
    let values: Vec<[f64; 5]> = readings
        .iter()
        .map(|r| {
            [
                f64::from(r.clock_mhz),
                r.power_watts,
                r.energy_mj as f64,
                (r.utilization * 100.0).round(),
                r.tokens_per_second,
            ]
        })
        .collect();
    let gpus: Vec<Gpu<'_>> = readings
        .iter()
        .zip(&workloads)
        .zip(&values)
        .map(|((r, workload), values)| Gpu {
            index: u64::from(r.info.index),
            uuid: &r.info.uuid,
            pci_bus_id: &r.info.pci_bus_id,
            model: &r.info.model,
            hostname,
            driver_version: Some(driver_version),
            workload,
            values,
        })
        .collect();
    dcgm::render(&SERIES, &gpus)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Instant};

    use super::*;
    use crate::sim::tests::{busy_pod, world};
    use climatik_test_support::exposition::{Sample, parse};

    #[test]
    fn serves_dcgm_names_and_labels_that_parse() {
        let mut w = world(2);
        let t0 = Instant::now();
        w.set_pods(&[busy_pod("a", Some("0.8"))], t0);
        let text = render(&w.readings(t0), "gpu-node-7", "550.54.15");
        let parsed = parse(&text).expect("valid Prometheus text");

        for Metric { name, kind, .. } in SERIES {
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
}
