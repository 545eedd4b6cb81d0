//! What the GPUs do, read once a second straight from each simulated
//! agent's dcgm-exporter `/metrics` in a background task. Not through the
//! API server or Prometheus: both are faults here, and the measurement
//! must go on while they are down. An agent that is down gives no reading
//! for that second (a gap, not a zero).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use climatik_demo::samples::{GpuReading, parse_dcgm};

/// Every GPU's reading at one instant.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Seconds since the observer started.
    pub t: f64,
    pub gpus: Vec<GpuReading>,
}

impl Reading {
    /// The power of the GPUs held by pods of `namespace` whose names start
    /// with `pod_prefix` (a Deployment's pods), and how many there are.
    pub fn workload_power(&self, namespace: &str, pod_prefix: &str) -> (f64, usize) {
        self.gpus
            .iter()
            .filter(|g| is_of(g, namespace, pod_prefix))
            .fold((0.0, 0), |(w, n), g| (w + g.power_watts, n + 1))
    }
}

/// Whether a GPU is held by a pod of that workload.
pub fn is_of(gpu: &GpuReading, namespace: &str, pod_prefix: &str) -> bool {
    gpu.namespace.as_deref() == Some(namespace)
        && gpu
            .pod
            .as_deref()
            .is_some_and(|p| p.starts_with(pod_prefix))
}

/// The background sampler; dropping it stops the task.
pub struct Observer {
    readings: Arc<Mutex<Vec<Reading>>>,
    start: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Starts sampling the agents at `node -> metrics address`.
    pub fn start(freqtuners: BTreeMap<String, String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(900))
            .build()
            .context("building an HTTP client")?;
        let readings = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let sink = readings.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                let t = start.elapsed().as_secs_f64();
                let mut gpus = Vec::new();
                let mut complete = true;
                for (node, addr) in &freqtuners {
                    let page = match http.get(format!("http://{addr}/metrics")).send().await {
                        Ok(response) => response.text().await.ok(),
                        Err(_) => None,
                    };
                    match page {
                        Some(text) => gpus.extend(parse_dcgm(node, &text)),
                        None => complete = false,
                    }
                }
                if complete && let Ok(mut readings) = sink.lock() {
                    readings.push(Reading { t, gpus });
                }
            }
        });
        Ok(Self {
            readings,
            start,
            task,
        })
    }

    /// Seconds since the observer started (the clock of every reading).
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The readings taken at or after `t`.
    pub fn since(&self, t: f64) -> Vec<Reading> {
        self.readings
            .lock()
            .map(|r| r.iter().filter(|r| r.t >= t).cloned().collect())
            .unwrap_or_default()
    }

    /// The latest reading taken after `t`, waiting up to 10 s for one.
    pub async fn next_after(&self, t: f64) -> anyhow::Result<Reading> {
        climatik_test_support::eventually(
            "a reading from every agent",
            Duration::from_secs(10),
            || async { Ok(self.since(t).pop()) },
        )
        .await
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
