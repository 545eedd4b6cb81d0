//! Bringing the local cluster up (once per test binary) and talking to it.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::{io::AsyncWriteExt, process::Command, sync::OnceCell};

use crate::env::ClusterEnv;

/// The repository root: the checkout the process runs in (the nearest
/// directory at or above the working directory holding the chart), else
/// the one this crate was built from (`<repo>/tests`). The working
/// directory comes first because cargo reuses a build of this crate from
/// another checkout of the same repository with a shared target directory,
/// and the path compiled in would then name that other checkout.
pub fn repo_root() -> PathBuf {
    let is_root = |dir: &Path| dir.join("charts/climatik/Chart.yaml").is_file();
    if let Ok(cwd) = std::env::current_dir()
        && let Some(root) = cwd.ancestors().find(|dir| is_root(dir))
    {
        return root.to_path_buf();
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cluster's state directory, as `tests/cluster/lib.sh` computes it.
fn state_dir() -> PathBuf {
    match std::env::var_os("CLIMATIK_CLUSTER_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target").join("cluster"),
    }
}

/// up.sh runs once per test binary; later calls reuse what it reported.
/// (A `kube::Client` is not cached: it belongs to the runtime it was made
/// on, and every `#[tokio::test]` has its own.)
static UP: OnceCell<ClusterEnv> = OnceCell::const_new();

/// A handle on the running local cluster, with an admin client.
#[derive(Clone)]
pub struct TestCluster {
    /// A client with cluster-admin rights (O=system:masters).
    pub client: kube::Client,
    pub(crate) env: ClusterEnv,
}

/// Brings the local cluster up if it is not (`tests/cluster/up.sh`, which is
/// idempotent and serialised with flock, so parallel test binaries are
/// safe) and connects to it as admin.
pub async fn cluster() -> anyhow::Result<TestCluster> {
    // kube and reqwest both use rustls: one process-wide provider.
    climatik_runtime::crypto::install();

    let env = UP
        .get_or_try_init(|| async {
            run_up_script().await?;
            ClusterEnv::read(&state_dir())
        })
        .await?
        .clone();
    let client = client_for_kubeconfig(&env.kubeconfig).await?;
    Ok(TestCluster { client, env })
}

async fn run_up_script() -> anyhow::Result<()> {
    let script = repo_root().join("tests/cluster/up.sh");
    // Progress goes to stderr, which the test harness does not capture, so
    // a slow first start is visibly busy rather than hung. (spawn, not
    // output(): tokio's output() would pipe stderr regardless.)
    let child = Command::new(&script)
        .env("CLIMATIK_CLUSTER_DIR", state_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let output = child
        .wait_with_output()
        .await
        .with_context(|| format!("waiting for {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}); its messages are on stderr above, component logs in {}",
            script.display(),
            output.status,
            state_dir().join("logs").display()
        );
    }
    Ok(())
}

/// A client for any kubeconfig file (admin's, or a ServiceAccount's), the
/// same client the binaries use.
pub(crate) async fn client_for_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    climatik_runtime::kube_client::from_config(config)
}

impl TestCluster {
    /// The admin kubeconfig (self-contained: certificates are inlined).
    pub fn kubeconfig(&self) -> &Path {
        &self.env.kubeconfig
    }

    /// The API server's URL, e.g. `https://127.0.0.1:26443`.
    pub fn apiserver_url(&self) -> &str {
        &self.env.apiserver_url
    }

    /// The cluster CA certificate (PEM), which signs the API server's
    /// serving certificate.
    pub fn ca_file(&self) -> &Path {
        &self.env.ca_file
    }

    /// Prometheus' base URL, e.g. `http://127.0.0.1:29090`.
    pub fn prometheus_url(&self) -> &str {
        &self.env.prometheus_url
    }

    /// The directory of Prometheus' file service discovery (`*.json`).
    pub fn prometheus_sd_dir(&self) -> &Path {
        &self.env.prometheus_sd_dir
    }

    /// The cluster's state directory (logs, pids, certificates).
    pub fn state_dir(&self) -> &Path {
        &self.env.state_dir
    }

    /// The cached kubectl binary.
    pub fn kubectl_path(&self) -> &Path {
        &self.env.kubectl
    }

    /// The cached helm binary.
    pub fn helm_path(&self) -> &Path {
        &self.env.helm
    }

    /// A client that uses another kubeconfig, e.g. one from
    /// [`TestCluster::service_account_kubeconfig`].
    pub async fn client_for(&self, kubeconfig: &Path) -> anyhow::Result<kube::Client> {
        client_for_kubeconfig(kubeconfig).await
    }

    /// Runs kubectl as admin and returns its stdout; fails with its stderr.
    pub async fn kubectl<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_with_stdin(args, "").await
    }

    /// Runs kubectl as admin with `stdin` as its input (for `apply -f -`).
    pub async fn kubectl_with_stdin<I, S>(&self, args: I, stdin: &str) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.env.kubectl);
        cmd.arg("--kubeconfig").arg(&self.env.kubeconfig).args(args);
        run(cmd, stdin).await
    }

    /// Runs helm as admin and returns its stdout; fails with its stderr.
    /// Helm's caches go to the state directory, not the user's home.
    pub async fn helm<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let helm_home = self.env.state_dir.join("helm");
        let mut cmd = Command::new(&self.env.helm);
        cmd.env("KUBECONFIG", &self.env.kubeconfig)
            .env("HELM_CACHE_HOME", helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", helm_home.join("config"))
            .env("HELM_DATA_HOME", helm_home.join("data"))
            .args(args);
        run(cmd, "").await
    }
}

/// Runs a command to completion, feeding it `stdin`; describes the command
/// and its stderr when it fails.
async fn run(mut cmd: Command, stdin: &str) -> anyhow::Result<String> {
    let described = format!("{:?}", cmd.as_std());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {described}"))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .await
            .with_context(|| format!("writing stdin of {described}"))?;
        // Dropping it closes the pipe, so the command sees end of input.
    }
    let output = child
        .wait_with_output()
        .await
        .with_context(|| format!("waiting for {described}"))?;
    if !output.status.success() {
        bail!(
            "{described} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{described} printed non-UTF-8"))
}
