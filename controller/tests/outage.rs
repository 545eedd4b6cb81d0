//! Prometheus stops mid-run: the monitor reports it and keeps the last
//! readings, the recommender holds its targets (no renewal) until they
//! expire, nothing crashes. Uses a private Prometheus so stopping it does
//! not disturb other tests.

mod common;

use std::{process::Stdio, time::Duration};

use anyhow::Context;
use climatik_api::{NodeFrequencies, PowerCappingPolicy};
use common::*;
use kube::{Api, api::PostParams};
use serde_json::json;
use tokio::process::Command;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A Prometheus of our own on an ephemeral port, scraping `target` every second.
async fn private_prometheus(
    dir: &std::path::Path,
    target: &str,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: {DCGM_JOB}\n    honor_labels: true\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n"
    );
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, config)?;
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting prometheus (installed by `make setup`)")?;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    wait_for("private Prometheus ready", TIMEOUT, || async {
        let ready = http.get(format!("{url}/-/ready")).send().await;
        Ok(ready.ok().filter(|r| r.status().is_success()).map(|_| ()))
    })
    .await?;
    Ok((child, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_outage_holds_targets_and_reports_it() -> anyhow::Result<()> {
    let cluster = climatik_test_support::cluster().await?;
    cluster.install_crds().await?;
    let ns = cluster.namespace("ctrl-outage").await?;
    let ns_name = ns.name().to_string();
    let admin = cluster.client.clone();
    let node = format!("{ns_name}-node-0");
    create_node(&admin, &node, 4).await?;
    let dir = tempfile::tempdir()?;
    let result = async {
        let dcgm = DcgmServer::start().await?;
        create_pod(&admin, &ns_name, "o0", &node, "o").await?;
        dcgm.set(vec![gpu("GPU-O0", "pod", "o0", &ns_name, &node, 250.0)]);
        report_inventory(&admin, &node, &["GPU-O0"]).await?;
        let (mut prometheus, url) = private_prometheus(dir.path(), dcgm.addr()).await?;

        let running = InProcessLoop::start(
            &admin,
            &url,
            Duration::from_secs(2),
            Duration::from_secs(300),
            &ns_name,
        );
        let policies = Api::<PowerCappingPolicy>::namespaced(admin.clone(), &ns_name);
        policies
            .create(&PostParams::default(), &policy("o", "o", 150, json!({}))?)
            .await?;
        let nfs = Api::<NodeFrequencies>::all(admin.clone());
        wait_for("targets written", TIMEOUT, || async {
            Ok(nfs
                .get_opt(&node)
                .await?
                .filter(|nf| !nf.spec.gpu_frequencies.is_empty())
                .map(|_| ()))
        })
        .await?;

        prometheus.kill().await?;
        let p = wait_for("MetricsAvailable=False", TIMEOUT, || async {
            let p = policies.get("o").await?;
            Ok(
                (condition(&p, "MetricsAvailable").map(|c| c.0).as_deref() == Some("False"))
                    .then_some(p),
            )
        })
        .await?;
        assert_eq!(
            condition(&p, "MetricsAvailable"),
            Some(("False".to_string(), "PrometheusUnavailable".to_string()))
        );
        assert_eq!(
            condition(&p, "Ready").map(|c| c.0).as_deref(),
            Some("False")
        );
        let status = p.status.clone().unwrap_or_default();
        // The last readings are held, and so is the capping decision.
        assert_eq!(status.current_power, Some(250.0));
        assert!(status.capping_action_required);
        assert_eq!(status.nodes.len(), 1);
        let message = p
            .status
            .iter()
            .flat_map(|s| s.conditions.iter())
            .find(|c| c.type_ == "MetricsAvailable")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(!message.is_empty());

        // Held, not renewed: the entries stay with their old expiry.
        let before = nfs.get(&node).await?.spec.gpu_frequencies;
        assert_eq!(before.len(), 1);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let after = nfs.get(&node).await?.spec.gpu_frequencies;
        assert_eq!(before, after);
        // Both loops are still running.
        assert!(running.is_running());
        let p = policies.get("o").await?;
        let later = p.status.and_then(|s| s.last_updated);
        assert!(later > status.last_updated, "the monitor keeps reporting");

        running.stop().await?;
        anyhow::Ok(())
    }
    .await;
    delete_all_pods(&admin, &ns_name).await;
    delete_nodes(&admin, std::slice::from_ref(&node)).await;
    if result.is_ok() {
        ns.cleanup().await?;
    }
    result
}
