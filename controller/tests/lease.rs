//! Leader election between two real `powercapping-controller` processes on
//! the real API server, with a 4 s lease, a 2 s renew deadline and a 500 ms
//! retry period. Each candidate reaches the API server through its own
//! [`Forwarder`], so a test can cut one off.
//!
//! What "never two writers" means here, on the host's one wall clock: the
//! old leader's step-down (its "leadership changed" log line) comes before
//! the new leader's acquireTime when the old one is still running but cut
//! off; and when the old leader was frozen (SIGSTOP), the new one acquires
//! no earlier than a full lease duration after the old one's last renewal,
//! and the old one, continued but still cut off, steps down by its own
//! clock without an answer from the API server.

mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use climatik_test_support::{Forwarder, TestCluster, exposition};
use common::wait_for;
use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::Api;
use tokio::process::{Child, Command};

const LEASE: &str = "lease-test";
const LEASE_DURATION: Duration = Duration::from_secs(4);
const TIMEOUT: Duration = Duration::from_secs(60);

/// One candidate: the process, its admin address, its log, its path to
/// the API server.
struct Candidate {
    name: &'static str,
    /// Locked only to ask whether it is still running.
    child: std::sync::Mutex<Child>,
    metrics: String,
    log: PathBuf,
    forwarder: Forwarder,
}

impl Candidate {
    async fn start(
        cluster: &TestCluster,
        bin_dir: &std::path::Path,
        dir: &std::path::Path,
        namespace: &str,
        name: &'static str,
    ) -> anyhow::Result<Self> {
        let forwarder = Forwarder::start(cluster.apiserver_authority()?).await?;
        let kubeconfig = cluster.kubeconfig_via(forwarder.addr())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let metrics = format!("127.0.0.1:{port}");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin_dir.join("powercapping-controller"))
            .args(["--prometheus-url", cluster.prometheus_url()])
            .args(["--namespace", namespace])
            .args(["--lease-namespace", namespace, "--lease-name", LEASE])
            .args(["--lease-duration", "4s", "--lease-renew-deadline", "2s"])
            .args(["--lease-retry-period", "500ms"])
            .args(["--metrics-listen", &metrics, "--log-format", "json"])
            .env("KUBECONFIG", kubeconfig)
            // The identity is `<HOSTNAME>-<pid>`.
            .env("HOSTNAME", name)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("starting powercapping-controller")?;
        Ok(Self {
            name,
            child: std::sync::Mutex::new(child),
            metrics,
            log,
            forwarder,
        })
    }

    fn holds(&self, holder: Option<&str>) -> bool {
        holder.is_some_and(|h| h.starts_with(&format!("{}-", self.name)))
    }

    /// `climatik_leader` from its `/metrics`; `None` while it cannot answer.
    async fn leader_metric(&self, http: &reqwest::Client) -> Option<f64> {
        let text = http
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        exposition::samples(&text)
            .find(|s| s.name == "climatik_leader")
            .map(|s| s.value)
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .lock()
            .map_err(|_| anyhow::anyhow!("a poisoned lock"))?
            .id()
            .context("the candidate has exited")?;
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    fn check_running(&self) -> anyhow::Result<()> {
        let mut child = self
            .child
            .lock()
            .map_err(|_| anyhow::anyhow!("a poisoned lock"))?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); see {}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    /// When its log says it stepped down (`leadership changed`,
    /// `leader: false`), the last time if several.
    fn stepped_down_at(&self) -> anyhow::Result<Option<Timestamp>> {
        let text = std::fs::read_to_string(&self.log)?;
        let mut last = None;
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if event["message"] == "leadership changed" && event["leader"] == false {
                let at = event["timestamp"]
                    .as_str()
                    .context("a log line without timestamp")?;
                last = Some(at.parse::<Timestamp>()?);
            }
        }
        Ok(last)
    }
}

/// Holder, acquireTime and renewTime of the Lease.
async fn lease_state(
    leases: &Api<Lease>,
) -> anyhow::Result<(Option<String>, Option<Timestamp>, Option<Timestamp>)> {
    let spec = leases
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .unwrap_or_default();
    Ok((
        spec.holder_identity,
        spec.acquire_time.map(|t| t.0),
        spec.renew_time.map(|t| t.0),
    ))
}

/// Two candidates, and which of them leads once one does: both metrics
/// agree with the Lease.
struct Election {
    leader: Candidate,
    follower: Candidate,
    leases: Api<Lease>,
    http: reqwest::Client,
}

async fn elect(
    cluster: &TestCluster,
    namespace: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Election> {
    cluster.install_crds().await?;
    let bin_dir = climatik_test_support::workspace_binaries(&["powercapping-controller"])?;
    let a = Candidate::start(cluster, &bin_dir, dir, namespace, "candidate-a").await?;
    let b = Candidate::start(cluster, &bin_dir, dir, namespace, "candidate-b").await?;
    let leases = Api::<Lease>::namespaced(cluster.client.clone(), namespace);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let a_leads = wait_for("one candidate leading", TIMEOUT, || async {
        let (holder, _, _) = lease_state(&leases).await?;
        let metrics = (a.leader_metric(&http).await, b.leader_metric(&http).await);
        Ok(match metrics {
            (Some(1.0), Some(0.0)) if a.holds(holder.as_deref()) => Some(true),
            (Some(0.0), Some(1.0)) if b.holds(holder.as_deref()) => Some(false),
            _ => None,
        })
    })
    .await?;
    let (leader, follower) = if a_leads { (a, b) } else { (b, a) };
    Ok(Election {
        leader,
        follower,
        leases,
        http,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_api_server_steps_down_before_anyone_takes_over()
-> anyhow::Result<()> {
    let cluster = climatik_test_support::cluster().await?;
    let ns = cluster.namespace("ctrl-lease-cut").await?;
    let dir = tempfile::tempdir()?;
    let result = async {
        let election = elect(&cluster, ns.name(), dir.path()).await?;
        election.leader.forwarder.cut();
        let Election {
            leader,
            follower,
            leases,
            http,
        } = &election;

        // Still running, cut off: it must step down by itself.
        wait_for("the cut-off leader to step down", TIMEOUT, || async {
            leader.check_running()?;
            Ok((leader.leader_metric(http).await == Some(0.0)).then_some(()))
        })
        .await?;
        let acquired = wait_for("the follower to take over", TIMEOUT, || async {
            let (holder, acquired, _) = lease_state(leases).await?;
            Ok(acquired.filter(|_| follower.holds(holder.as_deref())))
        })
        .await?;
        wait_for("the new leader's metric", TIMEOUT, || async {
            Ok((follower.leader_metric(http).await == Some(1.0)).then_some(()))
        })
        .await?;
        let stepped_down = leader
            .stepped_down_at()?
            .context("the old leader logged no step-down")?;
        assert!(
            stepped_down < acquired,
            "two leaders: the old one stepped down at {stepped_down}, the new one acquired at {acquired}"
        );
        leader.check_running()
    }
    .await;
    ns.cleanup().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_leader_is_replaced_after_the_lease_duration_and_steps_down_by_its_own_clock()
-> anyhow::Result<()> {
    let cluster = climatik_test_support::cluster().await?;
    let ns = cluster.namespace("ctrl-lease-stop").await?;
    let dir = tempfile::tempdir()?;
    let result = async {
        let election = elect(&cluster, ns.name(), dir.path()).await?;
        election.leader.signal("-STOP")?;
        // Continued, it will find no answer either: it has only its clock.
        election.leader.forwarder.cut();
        let Election {
            leader,
            follower,
            leases,
            http,
        } = &election;

        // The frozen leader's last renewal stays in the Lease for a lease
        // duration before anyone may take over: polling sees it.
        let last_renewal = std::cell::Cell::new(None);
        let acquired = wait_for("the follower to take over", TIMEOUT, || async {
            let (holder, acquired, renewed) = lease_state(leases).await?;
            if leader.holds(holder.as_deref()) {
                last_renewal.set(renewed);
            }
            Ok(acquired.filter(|_| follower.holds(holder.as_deref())))
        })
        .await?;
        let last_renewal = last_renewal.get().context("never saw the frozen leader's renewal")?;
        let waited = acquired.duration_since(last_renewal);
        assert!(
            waited >= LEASE_DURATION.try_into()?,
            "taken over {waited:?} after the frozen leader's last renewal, within the lease duration"
        );
        wait_for("the new leader's metric", TIMEOUT, || async {
            Ok((follower.leader_metric(http).await == Some(1.0)).then_some(()))
        })
        .await?;

        leader.signal("-CONT")?;
        wait_for("the continued leader to step down", TIMEOUT, || async {
            leader.check_running()?;
            Ok((leader.leader_metric(http).await == Some(0.0)).then_some(()))
        })
        .await?;
        leader
            .stepped_down_at()?
            .context("the continued leader logged no step-down")?;
        leader.check_running()
    }
    .await;
    ns.cleanup().await?;
    result
}
