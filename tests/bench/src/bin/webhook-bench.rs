//! `cargo run --release -p climatik-bench --bin webhook-bench`
//!
//! Admission latency, twice:
//! - in-process: annotated-Deployment reviews through the router,
//!   thousands of them;
//! - through the API server of the local control plane
//!   (`target/cluster/kubeconfig`): server-side dry-run creates of annotated
//!   Deployments at a steady rate, with the webhook registered by URL, and
//!   the same creates in a namespace the webhook does not cover as a
//!   baseline. Skipped with a message when no cluster is up.
//!
//! Writes p50/p99 (milliseconds) to `target/bench/webhook.json`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use axum::{body::Body, http::Request};
use clap::Parser;
use climatik_certs::{CertFiles, ReloadingCertResolver, write_dev_ca};
use climatik_test_support::fixtures;
use climatik_webhook::{
    metrics::Metrics,
    registration::webhook_configuration,
    server::{AppState, Limits, router, start},
};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration, apps::v1::Deployment,
    core::v1::Namespace,
};
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use tower::ServiceExt;

const REVIEW: &str = include_str!("../../../../webhook/tests/data/deployment-create.json");

#[derive(Parser, Debug)]
#[command(
    name = "webhook-bench",
    about = "Admission latency of the Climatik webhook"
)]
struct Args {
    /// In-process reviews.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Dry-run creates through the API server (each, with and without the webhook).
    #[arg(long, default_value_t = 300)]
    api_requests: usize,
    /// Creates per second through the API server.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Kubeconfig of the local cluster (default: target/cluster/kubeconfig).
    #[arg(long, env = "BENCH_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Output file (default: target/bench/webhook.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// p50 / p99 / max in milliseconds.
fn summary(mut samples: Vec<Duration>) -> serde_json::Value {
    samples.sort();
    let pick = |q: f64| {
        let idx = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
        samples.get(idx).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    json!({
        "count": samples.len(),
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "max_ms": pick(1.0),
    })
}

async fn in_process(requests: usize) -> anyhow::Result<serde_json::Value> {
    let app = router(AppState::new(Metrics::new(), Limits::default(), None));
    let body = REVIEW.as_bytes().to_vec();
    let mut samples = Vec::with_capacity(requests);
    for i in 0..requests + 200 {
        let request = Request::post("/mutate")
            .header("content-type", "application/json")
            .body(Body::from(body.clone()))?;
        let started = Instant::now();
        let response = app.clone().oneshot(request).await?;
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        let elapsed = started.elapsed();
        if !bytes.windows(14).any(|w| w == b"\"allowed\":true") {
            bail!("unexpected response: {}", String::from_utf8_lossy(&bytes));
        }
        // The first 200 warm up caches and allocators.
        if i >= 200 {
            samples.push(elapsed);
        }
    }
    Ok(summary(samples))
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(fixtures::deployment(name, Some("300W"))).unwrap_or_default()
}

/// Server-side dry-run creates at `rate` per second, one at a time.
async fn dry_run_creates(
    api: &Api<Deployment>,
    count: usize,
    rate: u32,
    expect_label: bool,
) -> anyhow::Result<Vec<Duration>> {
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        ticker.tick().await;
        let started = Instant::now();
        let created = api
            .create(&params, &deployment(&format!("bench-{i}")))
            .await?;
        samples.push(started.elapsed());
        let labelled = created
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.labels)
            .is_some_and(|l| l.contains_key("climatik.io/policy"));
        if labelled != expect_label {
            bail!(
                "dry-run create {i}: pod template labelled = {labelled}, expected {expect_label}"
            );
        }
    }
    Ok(samples)
}

async fn namespace(
    client: &kube::Client,
    name: &str,
    labels: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

async fn through_api_server(args: &Args, kubeconfig: &Path) -> anyhow::Result<serde_json::Value> {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    client
        .apiserver_version()
        .await
        .context("the API server does not answer")?;

    let id = format!("{:08x}", rand::random::<u32>());
    let tls_dir = std::env::temp_dir().join(format!("climatik-webhook-bench-{id}"));
    let written = write_dev_ca(
        &tls_dir,
        &["localhost".to_string()],
        &[IpAddr::from([127, 0, 0, 1])],
    )?;
    let ca_pem = std::fs::read_to_string(&written.ca_cert)?;
    let resolver = Arc::new(ReloadingCertResolver::new(CertFiles {
        cert: written.tls_cert.clone(),
        key: written.tls_key.clone(),
    })?);
    let state = AppState::new(Metrics::new(), Limits::default(), Some(resolver.clone()));
    let server = start(
        std::net::TcpListener::bind("127.0.0.1:0")?,
        resolver,
        state,
        Duration::from_secs(5),
    )?;

    let covered = format!("webhook-bench-{id}");
    let baseline = format!("webhook-bench-base-{id}");
    let config_name = format!("climatik-webhook-bench-{id}");
    let label = ("climatik.io/webhook-bench".to_string(), id.clone());
    let result = async {
        namespace(&client, &covered, BTreeMap::from([label.clone()])).await?;
        namespace(&client, &baseline, BTreeMap::new()).await?;
        let url = format!("https://127.0.0.1:{}/mutate", server.addr.port());
        let config = webhook_configuration(&config_name, &url, &ca_pem, BTreeMap::from([label]));
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .patch(
                &config_name,
                &PatchParams::apply("webhook-bench").force(),
                &Patch::Apply(config),
            )
            .await?;
        let with_webhook = Api::<Deployment>::namespaced(client.clone(), &covered);
        let without = Api::<Deployment>::namespaced(client.clone(), &baseline);
        // The API server loads webhook configurations asynchronously.
        let deadline = Instant::now() + Duration::from_secs(30);
        while dry_run_creates(&with_webhook, 1, 10, true).await.is_err() {
            if Instant::now() > deadline {
                bail!("the webhook configuration did not take effect within 30s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        dry_run_creates(&with_webhook, 50, args.rate, true).await?; // warm-up
        let webhook = dry_run_creates(&with_webhook, args.api_requests, args.rate, true).await?;
        dry_run_creates(&without, 50, args.rate, false).await?;
        let base = dry_run_creates(&without, args.api_requests, args.rate, false).await?;
        Ok(json!({
            "rate_per_second": args.rate,
            "with_webhook": summary(webhook),
            "baseline_without_webhook": summary(base),
        }))
    }
    .await;

    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&config_name, &DeleteParams::default())
        .await;
    for ns in [&covered, &baseline] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::background())
            .await;
    }
    let _ = server.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&tls_dir);
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    climatik_runtime::crypto::install();
    let args = Args::parse();
    let root = climatik_test_support::repo_root();

    let local = in_process(args.requests).await?;
    println!("in-process: {local}");

    let kubeconfig = args.kubeconfig.clone().unwrap_or_else(|| {
        let dir = std::env::var_os("CLIMATIK_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/cluster"));
        dir.join("kubeconfig")
    });
    let api = if kubeconfig.exists() {
        match through_api_server(&args, &kubeconfig).await {
            Ok(result) => result,
            Err(e) => {
                eprintln!("skipping the API server part: {e:#} (start it with `make cluster-up`)");
                json!({ "skipped": format!("{e:#}") })
            }
        }
    } else {
        eprintln!(
            "skipping the API server part: no cluster kubeconfig at {} (start it with `make cluster-up`)",
            kubeconfig.display()
        );
        json!({ "skipped": "no local cluster" })
    };
    println!("through the API server: {api}");

    let report = json!({
        "benchmark": "climatik-webhook admission latency",
        "in_process": local,
        "through_api_server": api,
        "targets_ms": { "in_process_p99": 2.0, "through_api_server_p99": 20.0 },
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/bench/webhook.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
