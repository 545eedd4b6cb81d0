//! The cluster's Prometheus: scrape targets (file service discovery),
//! instant queries, and stopping/starting it to simulate an outage.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::process::Command;

use crate::cluster::{TestCluster, repo_root};

/// One series of an instant query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl TestCluster {
    /// Makes Prometheus scrape `http://<addr>/metrics` every second, with
    /// `labels` attached to every series (unless the target's own metrics
    /// carry the same labels: the job honours them). Replaces a target of
    /// the same name. Prometheus scrapes it within 5–7 s (its discovery
    /// manager passes changes on at most every 5 s).
    pub fn register_prometheus_target(
        &self,
        name: &str,
        addr: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<PathBuf> {
        let path = self.target_file(name)?;
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let body = serde_json::json!([{ "targets": [addr], "labels": labels }]);
        // Written beside and renamed: Prometheus must never read half a
        // file. The temporary name does not end in `.json`, so discovery
        // ignores it.
        climatik_runtime::fs::write_atomic(&path, &serde_json::to_vec_pretty(&body)?, 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Stops scraping the target registered as `name` (no error if absent).
    pub fn remove_prometheus_target(&self, name: &str) -> anyhow::Result<()> {
        let path = self.target_file(name)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    fn target_file(&self, name: &str) -> anyhow::Result<PathBuf> {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !name.starts_with('.');
        if !ok {
            bail!("target name {name:?} must be [A-Za-z0-9_.-]+ and not start with '.'");
        }
        let dir = self.prometheus_sd_dir();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir.join(format!("{name}.json")))
    }

    /// Runs an instant PromQL query; fails if Prometheus is unreachable or
    /// answers with an error.
    pub async fn prometheus_query(&self, query: &str) -> anyhow::Result<Vec<Sample>> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building an HTTP client")?;
        let base = format!("{}/api/v1/query", self.prometheus_url());
        let url = reqwest::Url::parse_with_params(&base, &[("query", query)])
            .with_context(|| format!("building a query URL from {base}"))?;
        let response: QueryResponse = http
            .get(url.clone())
            .send()
            .await
            .with_context(|| format!("querying {url}"))?
            .json()
            .await
            .with_context(|| format!("decoding the answer of {url}"))?;
        if response.status != "success" {
            bail!(
                "Prometheus query {query:?} failed: {}",
                response.error.unwrap_or_default()
            );
        }
        let data = response.data.context("Prometheus answered without data")?;
        if data.result_type != "vector" {
            bail!(
                "query {query:?} gave a {}, not an instant vector",
                data.result_type
            );
        }
        let series: Vec<VectorSample> =
            serde_json::from_value(data.result).context("decoding an instant vector")?;
        series
            .into_iter()
            .map(|s| {
                let value = s
                    .value
                    .1
                    .parse::<f64>()
                    .with_context(|| format!("sample value {:?} is not a number", s.value.1))?;
                Ok(Sample {
                    labels: s.metric,
                    value,
                })
            })
            .collect()
    }

    /// Polls `query` until it returns at least one sample, or fails after
    /// `timeout` (a new target's first scrape comes 5–7 s after registering).
    pub async fn wait_for_prometheus(
        &self,
        query: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Sample>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = self.prometheus_query(query).await;
            if let Ok(samples) = &last
                && !samples.is_empty()
            {
                return last;
            }
            if tokio::time::Instant::now() >= deadline {
                return match last {
                    Ok(_) => bail!("{query:?} returned nothing within {timeout:?}"),
                    Err(e) => {
                        Err(e).context(format!("{query:?} did not succeed within {timeout:?}"))
                    }
                };
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops Prometheus (keeping its data), to test behaviour during an
    /// outage. Restart it with [`TestCluster::start_prometheus`].
    pub async fn stop_prometheus(&self) -> anyhow::Result<()> {
        self.run_script("prometheus-down.sh").await
    }

    /// Starts Prometheus again (idempotent) and waits until it is ready.
    pub async fn start_prometheus(&self) -> anyhow::Result<()> {
        self.run_script("prometheus-up.sh").await
    }

    async fn run_script(&self, name: &str) -> anyhow::Result<()> {
        let script = repo_root().join("tests/cluster").join(name);
        let output = Command::new(&script)
            .env("CLIMATIK_CLUSTER_DIR", self.state_dir())
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}): {}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct QueryResponse {
    status: String,
    data: Option<QueryData>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct QueryData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorSample {
    metric: BTreeMap<String, String>,
    /// `[unix time, "value"]`: Prometheus sends the value as a string.
    value: (f64, String),
}
