//! Checks of an installed release, each a [`Finding`] with a message an
//! operator can act on: the CRDs are served, the webhook answers as the API
//! server would call it, and every node agent is Ready and reporting.
//!
//! Each check reads only; the test pod's RBAC (the chart's
//! `templates/test/`) grants reads and nothing else.

pub mod agents;
pub mod crds;
pub mod webhook;

use std::fmt;

/// The release's objects to check; the chart's test pod passes its names.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "climatik-check", version, about)]
pub struct Args {
    /// Namespace of the release (the webhook's Service, the agents).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The MutatingWebhookConfiguration; unset when the webhook is disabled.
    #[arg(long)]
    pub webhook_configuration: Option<String>,
    /// The node agents' DaemonSet; unset when the agents are disabled.
    #[arg(long)]
    pub agent_daemonset: Option<String>,
}

/// One check's result: what was found, or what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub outcome: Result<String, String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(found) => write!(f, "ok   {}: {found}", self.check),
            Err(problem) => write!(f, "FAIL {}: {problem}", self.check),
        }
    }
}

/// Runs every check that applies (in order, each independent of the others'
/// results, so one failure does not hide another).
pub async fn run(client: &kube::Client, args: &Args) -> Vec<Finding> {
    let mut findings = vec![Finding {
        check: "CRDs served",
        outcome: crds::check(client).await,
    }];
    if let Some(name) = &args.webhook_configuration {
        findings.push(Finding {
            check: "webhook reachable",
            outcome: webhook::check(client, name).await,
        });
    }
    if let Some(name) = &args.agent_daemonset {
        findings.push(Finding {
            check: "node agents Ready",
            outcome: agents::check(client, &args.namespace, name).await,
        });
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_reads_as_one_line() {
        let ok = Finding {
            check: "x",
            outcome: Ok("fine".into()),
        };
        let bad = Finding {
            check: "y",
            outcome: Err("broken".into()),
        };
        assert_eq!(ok.to_string(), "ok   x: fine");
        assert_eq!(bad.to_string(), "FAIL y: broken");
    }
}
