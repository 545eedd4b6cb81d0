//! A dcgm-exporter for every pod's GPU, in closed loop with the
//! NodeFrequencies targets.

use climatik_sim_gpu::dcgm as sim_dcgm;

use super::*;

struct Series {
    node: String,
    index: usize,
    uuid: String,
    pod: String,
    namespace: String,
    pci_bus_id: String,
    plant: GpuPlant,
}

pub struct Endpoint {
    pub addr: String,
}

impl Endpoint {
    pub async fn start(
        topology: &topology::Topology,
        store: Store<NodeFrequencies>,
    ) -> anyhow::Result<Self> {
        let series: Arc<Vec<Series>> = Arc::new(
            topology
                .policies
                .iter()
                .flat_map(|p| {
                    p.pods.iter().map(|pod| Series {
                        node: pod.node.clone(),
                        index: pod.gpu_index,
                        uuid: pod.gpu_uuid.clone(),
                        pod: pod.name.clone(),
                        namespace: p.namespace.clone(),
                        pci_bus_id: format!("00000000:{:02X}:00.0", pod.gpu_index),
                        plant: GpuPlant::with_load(pod.load),
                    })
                })
                .collect(),
        );
        let clocks = Arc::new(plant::supported_clocks());
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let series = series.clone();
                let store = store.clone();
                let clocks = clocks.clone();
                async move { render(&series, &store, &clocks) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "DCGM endpoint stopped");
            }
        });
        Ok(Self { addr })
    }
}

/// The clock a GPU runs at: the lowest target of its live entries (or the
/// clock under the lowest power budget), else the maximum.
fn clock(store: &Store<NodeFrequencies>, s: &Series, clocks: &[i32], now: Timestamp) -> i32 {
    let Some(nf) = store.get(&ObjectRef::new(&s.node)) else {
        return plant::MAX_CLOCK_MHZ;
    };
    let live = live_gpu_entries(&nf, now).filter(|e| e.gpu_id == s.uuid);
    let mut clock = plant::MAX_CLOCK_MHZ;
    for entry in live {
        let mut target = entry.target_frequency;
        if let Some(budget) = entry.power_budget_watts {
            target = target.min(s.plant.clock_for_budget(clocks, budget));
        }
        clock = clock.min(target);
    }
    // Snap down to a supported clock, as the agent does.
    clocks
        .iter()
        .copied()
        .filter(|c| *c <= clock)
        .max()
        .unwrap_or(plant::MIN_CLOCK_MHZ)
}

fn render(series: &[Series], store: &Store<NodeFrequencies>, clocks: &[i32]) -> String {
    let now = Timestamp::now();
    // In the order of the metrics rendered: power, then clock.
    let values: Vec<[f64; 2]> = series
        .iter()
        .map(|s| {
            let c = clock(store, s, clocks, now);
            [s.plant.power(f64::from(c)), f64::from(c)]
        })
        .collect();
    let workloads: Vec<[(&str, &str); 3]> = series
        .iter()
        .map(|s| {
            [
                ("container", "main"),
                ("namespace", s.namespace.as_str()),
                ("pod", s.pod.as_str()),
            ]
        })
        .collect();
    let gpus: Vec<sim_dcgm::Gpu<'_>> = series
        .iter()
        .zip(&values)
        .zip(&workloads)
        .map(|((s, values), workload)| sim_dcgm::Gpu {
            index: s.index as u64,
            uuid: &s.uuid,
            pci_bus_id: &s.pci_bus_id,
            model: "Tesla V100-SXM2-16GB",
            hostname: &s.node,
            driver_version: None,
            workload,
            values,
        })
        .collect();
    sim_dcgm::render(&[sim_dcgm::POWER_USAGE, sim_dcgm::SM_CLOCK], &gpus)
}

/// Adds the endpoint to Prometheus' file discovery (written whole, then
/// renamed, so Prometheus never reads half a file).
pub fn register(sd_dir: &Path, addr: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(sd_dir)?;
    // Under the DCGM exporter's default job, as in a standard install: the
    // monitor believes no other job's GPU series.
    let job = climatik_controller::observe::DEFAULT_DCGM_JOBS[0];
    let body = json!([{ "targets": [addr], "labels": { "exporter": "scale-bench", "job": job } }]);
    climatik_runtime::fs::write_atomic(&sd_dir.join(SD_FILE), &serde_json::to_vec(&body)?, 0o644)?;
    Ok(())
}

/// Waits until Prometheus has every pod's power series.
pub async fn wait_scraped(prometheus: &Prometheus, series: usize) -> anyhow::Result<()> {
    let query = "count(DCGM_FI_DEV_POWER_USAGE{exporter=\"scale-bench\"})";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(samples) = prometheus.instant(query).await
            && samples.first().map(|s| s.value as usize) == Some(series)
        {
            tracing::info!(series, "Prometheus scrapes the DCGM endpoint");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Prometheus did not scrape {series} DCGM series within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
