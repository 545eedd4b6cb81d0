//! The faults, each injected by its `begin` and lifted by its `end`; the
//! caller removes a policy in between, while the fault is on.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use climatik_api::NodeFrequencies;
use climatik_demo::stack::Stack;
use climatik_test_support::{Forwarder, TestCluster, repo_root};
use kube::Api;
use tokio::process::{Child, Command};

use crate::forged::{self, Answers};

/// One fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// SIGKILL a component mid-period, restart it after the outage.
    Kill(String),
    /// Stop one process of the control plane (`kube-apiserver`, `etcd`)
    /// and start it again.
    RestartControlPlane(&'static str),
    /// Stop Prometheus for the Prometheus outage.
    StopPrometheus,
    /// Cut the agent of a node off from the API server.
    PartitionAgent(String),
    /// Delete a node's NodeFrequencies; the fault ends once it exists again.
    RecreateNodeFrequencies(String),
    /// Send forged and malformed AdmissionReviews to the webhook.
    ForgedReviews,
}

impl Fault {
    pub fn name(&self) -> String {
        match self {
            Fault::Kill(component) => format!("kill -9 {component}"),
            Fault::RestartControlPlane(process) => format!("restart {process}"),
            Fault::StopPrometheus => "stop Prometheus".into(),
            Fault::PartitionAgent(node) => format!("partition the agent of {node}"),
            Fault::RecreateNodeFrequencies(node) => {
                format!("delete and recreate NodeFrequencies {node}")
            }
            Fault::ForgedReviews => "forged AdmissionReviews".into(),
        }
    }
}

/// How long each fault lasts.
#[derive(Debug, Clone)]
pub struct Durations {
    /// A killed component stays down this long before its restart.
    pub killed: Duration,
    /// etcd or the API server stays stopped this long before up.sh.
    pub control_plane: Duration,
    pub prometheus: Duration,
    pub partition: Duration,
    /// How many forged reviews.
    pub forged: usize,
}

/// What runs the fault: the stack, the cluster, the agent's forwarder.
pub struct Target<'a> {
    pub cluster: &'a TestCluster,
    pub stack: &'a mut Stack,
    pub forwarder: &'a Forwarder,
    pub namespace: &'a str,
    pub log: &'a Path,
}

/// A fault in progress.
pub enum Active {
    Nothing,
    /// A cluster script still running (it returns when the fault is over).
    Script(Child),
}

/// Injects the fault.
pub async fn begin(
    target: &mut Target<'_>,
    fault: &Fault,
    durations: &Durations,
) -> anyhow::Result<Active> {
    Ok(match fault {
        Fault::Kill(component) => {
            target.stack.kill(component).await?;
            Active::Nothing
        }
        Fault::RestartControlPlane(process) => Active::Script(script(
            target,
            "restart.sh",
            &[process, &durations.control_plane.as_secs().to_string()],
        )?),
        Fault::StopPrometheus => {
            wait_script(script(target, "prometheus-down.sh", &[])?).await?;
            Active::Nothing
        }
        Fault::PartitionAgent(_) => {
            target.forwarder.cut();
            Active::Nothing
        }
        Fault::RecreateNodeFrequencies(node) => {
            Api::<NodeFrequencies>::all(target.cluster.client.clone())
                .delete(node, &Default::default())
                .await
                .with_context(|| format!("deleting NodeFrequencies {node}"))?;
            Active::Nothing
        }
        Fault::ForgedReviews => Active::Nothing,
    })
}

/// Lifts the fault after its duration; returns notes for the report and,
/// for forged reviews, how the webhook answered.
pub async fn end(
    target: &mut Target<'_>,
    fault: &Fault,
    active: Active,
    durations: &Durations,
) -> anyhow::Result<(Vec<String>, Option<Answers>)> {
    let mut notes = Vec::new();
    let mut answers = None;
    match (fault, active) {
        (Fault::Kill(component), _) => {
            tokio::time::sleep(durations.killed).await;
            target.stack.restart(component).await?;
        }
        (Fault::RestartControlPlane(_), Active::Script(child)) => wait_script(child).await?,
        (Fault::StopPrometheus, _) => {
            tokio::time::sleep(durations.prometheus).await;
            wait_script(script(target, "prometheus-up.sh", &[])?).await?;
        }
        (Fault::PartitionAgent(_), _) => {
            tokio::time::sleep(durations.partition).await;
            target.forwarder.restore();
        }
        (Fault::RecreateNodeFrequencies(node), _) => {
            let api = Api::<NodeFrequencies>::all(target.cluster.client.clone());
            climatik_test_support::eventually(
                "the agent to recreate its NodeFrequencies",
                Duration::from_secs(120),
                || async { Ok(api.get_opt(node).await?.map(|_| ())) },
            )
            .await?;
            notes.push(format!("NodeFrequencies {node} recreated by its agent"));
        }
        (Fault::ForgedReviews, _) => {
            let sent = forged::send(
                &target.stack.webhook_addr,
                target.namespace,
                durations.forged,
            )
            .await?;
            notes.push(format!(
                "{} forged reviews: {} decided, {} refused, {} server errors, {} unanswered",
                sent.sent, sent.decided, sent.refused, sent.server_errors, sent.unanswered
            ));
            answers = Some(sent);
        }
        (Fault::RestartControlPlane(_), Active::Nothing) => {
            bail!("the control-plane restart was not started")
        }
    }
    Ok((notes, answers))
}

/// Runs a `tests/cluster` script against this cluster, logging to `log`.
fn script(target: &Target<'_>, name: &str, args: &[&str]) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target.log)
        .with_context(|| format!("opening {}", target.log.display()))?;
    let path = repo_root().join("tests/cluster").join(name);
    Command::new(&path)
        .args(args)
        .env("CLIMATIK_CLUSTER_DIR", target.cluster.state_dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {}", path.display()))
}

async fn wait_script(mut child: Child) -> anyhow::Result<()> {
    let status = child.wait().await?;
    if !status.success() {
        bail!("a cluster script failed ({status}); see the chaos log");
    }
    Ok(())
}
