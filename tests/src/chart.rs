//! Rendering the Helm chart, so tests apply the chart's own objects (its
//! RBAC, its admission policies) rather than copies that could drift.

use anyhow::Context;

use crate::cluster::{TestCluster, repo_root};

/// The Kubernetes version `helm template` renders for: the local control
/// plane's.
const KUBE_VERSION: &str = "1.34";

impl TestCluster {
    /// `helm template RELEASE charts/climatik --namespace NAMESPACE` with
    /// `args` appended (`--set`, `--show-only`, …); returns the YAML.
    pub async fn render_chart(
        &self,
        release: &str,
        namespace: &str,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let chart = repo_root().join("charts/climatik");
        let chart = chart.to_str().context("chart path is not UTF-8")?;
        let mut argv = vec![
            "template",
            release,
            chart,
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
        ];
        argv.extend_from_slice(args);
        self.helm(argv)
            .await
            .with_context(|| format!("rendering the chart for release {release}"))
    }
}
