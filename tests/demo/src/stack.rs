//! Starting every component as a local process against the local control
//! plane: one `freqtuner --gpu-backend sim` per node, the webhook (reached by
//! URL with a dev CA), the powercapping-controller and the recommender.
//! Each runs with a token of the ServiceAccount the Helm chart gives it, so
//! the chart's RBAC is what the demo exercises.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use climatik_test_support::TestCluster;
use tokio::process::{Child, Command};

/// Namespace the chart installs into, and where our ServiceAccounts live.
pub const SYSTEM_NAMESPACE: &str = "climatik-project";

/// Label that selects the namespaces this stack's webhook serves.
pub const WEBHOOK_SCOPE_LABEL: &str = "climatik.io/demo-stack";

/// The binaries a [`Stack`] starts (tests build them with
/// `climatik_test_support::workspace_binaries`).
pub const BINARIES: [&str; 5] = [
    "freqtuner",
    "climatik-webhook",
    "climatik-certs",
    "powercapping-controller",
    "freqtuning-recommender",
];

/// Where a driver binary finds the component binaries: `given`, else its
/// own directory (cargo builds every binary of the workspace into one).
pub fn bin_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(dir) => Ok(dir.to_path_buf()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("binary has no directory")?
            .to_path_buf()),
    }
}

/// Where a driver binary writes: `out` as given when absolute, else under
/// the repository root (the driver may run from any directory).
pub fn out_dir(out: &Path) -> PathBuf {
    if out.is_absolute() {
        out.to_path_buf()
    } else {
        climatik_test_support::repo_root().join(out)
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Nodes that get a simulated freqtuner.
    pub nodes: Vec<String>,
    /// Where the component binaries are.
    pub bin_dir: PathBuf,
    /// Logs, certificates, kubeconfigs.
    pub work_dir: PathBuf,
    /// Controller and recommender period.
    pub interval: Duration,
    /// How long NodeFrequencies entries live unless renewed.
    pub entry_ttl: Duration,
    /// Value of [`WEBHOOK_SCOPE_LABEL`] on the namespaces this webhook serves.
    pub scope: String,
    /// Run the agents with `--gpu-power-limit`: budgeted GPUs also get
    /// their own power limit set (how budget-allocator holds bursty load).
    pub gpu_power_limit: bool,
}

impl StackConfig {
    /// The recommender's leader-election Lease (in [`SYSTEM_NAMESPACE`]),
    /// which the agents watch to keep its entries alive.
    pub fn recommender_lease(&self) -> String {
        format!("{}-recommender", self.scope)
    }
}

/// How a component is started, kept so it can be started again.
struct Launch {
    name: String,
    program: PathBuf,
    kubeconfig: PathBuf,
    args: Vec<String>,
    /// Its `/healthz` address and whether it serves TLS.
    health: (String, bool),
}

/// A running component.
struct Component {
    launch: Launch,
    child: Child,
}

/// Every running component; stop it with [`Stack::stop`].
pub struct Stack {
    components: Vec<Component>,
    prometheus_targets: Vec<String>,
    webhook_configuration: String,
    /// The chart RBAC this stack applied, removed again on stop.
    rbac_manifest: String,
    /// The chart ServiceAccount each component runs as.
    accounts: ChartAccounts,
    /// Namespaces made by [`Stack::namespace`], deleted again on stop: one
    /// left behind keeps its pods' simulated GPUs busy for later runs.
    namespaces: Vec<String>,
    /// `node name -> freqtuner metrics address`.
    pub freqtuners: BTreeMap<String, String>,
    /// The webhook's HTTPS address (`127.0.0.1:PORT`).
    pub webhook_addr: String,
    cluster: TestCluster,
    config: StackConfig,
}

/// The ServiceAccount of each component, from the rendered chart.
#[derive(Debug, Default, Clone)]
pub struct ChartAccounts {
    pub webhook: String,
    pub controller: String,
    pub recommender: String,
    pub freqtuner: String,
}

/// Picks an unused loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

/// Installs the chart's ServiceAccounts and RBAC (nothing that would need a
/// kubelet) and returns which account belongs to which component. The
/// agents' node-identity admission policy is left out: they run as local
/// processes with unbound tokens, which carry no node name
/// (`freqtuner/tests/node_identity.rs` tests the policy).
/// Objects are named after `release`, so stacks never collide with a real
/// `helm install` of the chart. Returns the accounts and the applied YAML
/// (to delete it again).
pub async fn install_chart_rbac(
    cluster: &TestCluster,
    release: &str,
    recommender_lease: &str,
) -> anyhow::Result<(ChartAccounts, String)> {
    // The demo's agents run the sim backend; its RBAC (pods) follows it.
    // They watch the recommender's Lease by its name in this stack.
    let lease = format!("recommender.leaderElection.leaseName={recommender_lease}");
    let rendered = cluster
        .render_chart(
            release,
            SYSTEM_NAMESPACE,
            &["--set", "freqtuner.gpuBackend=sim", "--set", &lease],
        )
        .await?;
    let mut keep = Vec::new();
    let mut accounts = ChartAccounts::default();
    for document in serde_yaml::Deserializer::from_str(&rendered) {
        let value = serde_yaml::Value::deserialize(document)?;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if !matches!(
            kind,
            "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            continue;
        }
        if kind == "ServiceAccount" {
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            let slot = if name.contains("webhook") {
                &mut accounts.webhook
            } else if name.contains("recommender") {
                &mut accounts.recommender
            } else if name.contains("freqtuner") {
                &mut accounts.freqtuner
            } else if name.contains("controller") {
                &mut accounts.controller
            } else {
                continue;
            };
            *slot = name;
        }
        keep.push(serde_yaml::to_string(&value)?);
    }
    for (component, account) in [
        ("webhook", &accounts.webhook),
        ("controller", &accounts.controller),
        ("recommender", &accounts.recommender),
        ("freqtuner", &accounts.freqtuner),
    ] {
        if account.is_empty() {
            bail!("the chart renders no ServiceAccount for the {component}");
        }
    }
    ensure_namespace(cluster, SYSTEM_NAMESPACE).await?;
    let manifest = keep.join("---\n");
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], &manifest)
        .await
        .context("applying the chart's RBAC")?;
    Ok((accounts, manifest))
}

use serde::Deserialize;

async fn ensure_namespace(cluster: &TestCluster, name: &str) -> anyhow::Result<()> {
    let manifest = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], &manifest)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

impl Stack {
    /// Starts every component and waits until each answers `/healthz`.
    pub async fn start(cluster: &TestCluster, config: StackConfig) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(config.work_dir.join("logs"))?;
        cluster
            .install_crds()
            .await
            .context("installing the CRDs")?;
        let (accounts, rbac_manifest) = install_chart_rbac(
            cluster,
            &format!("climatik-{}", config.scope),
            &config.recommender_lease(),
        )
        .await?;
        let mut stack = Stack {
            components: Vec::new(),
            prometheus_targets: Vec::new(),
            webhook_configuration: format!("climatik-{}", config.scope),
            rbac_manifest,
            accounts: accounts.clone(),
            namespaces: Vec::new(),
            freqtuners: BTreeMap::new(),
            webhook_addr: String::new(),
            cluster: cluster.clone(),
            config: config.clone(),
        };
        // From here on a failure must still stop what was started.
        if let Err(err) = stack.start_all(&accounts).await {
            stack.stop().await;
            return Err(err);
        }
        Ok(stack)
    }

    async fn start_all(&mut self, accounts: &ChartAccounts) -> anyhow::Result<()> {
        let cluster = self.cluster.clone();
        let freqtuner_kubeconfig = cluster
            .service_account_kubeconfig(SYSTEM_NAMESPACE, &accounts.freqtuner)
            .await?;
        for node in self.config.nodes.clone() {
            let port = free_port()?;
            let addr = format!("127.0.0.1:{port}");
            let state_dir = self.config.work_dir.join("state").join(&node);
            std::fs::create_dir_all(&state_dir)?;
            let entry_lease = format!("{SYSTEM_NAMESPACE}/{}", self.config.recommender_lease());
            let grace = format!("{}s", self.config.entry_ttl.as_secs().max(1));
            let mut args = vec![
                "--node-name",
                &node,
                // The recommender's Lease keeps its entries alive, as in a
                // chart install.
                "--entry-lease",
                &entry_lease,
                "--entry-lease-grace",
                &grace,
                "--gpu-backend",
                "sim",
                "--cpu-backend",
                "none",
                "--metrics-listen",
                &addr,
                "--state-dir",
                path_str(&state_dir)?,
            ];
            if self.config.gpu_power_limit {
                args.push("--gpu-power-limit");
            }
            self.spawn(
                &format!("freqtuner-{node}"),
                "freqtuner",
                &freqtuner_kubeconfig,
                &args,
                (&addr, false),
            )?;
            let target = format!("{}-freqtuner-{node}", self.config.scope);
            cluster.register_prometheus_target(&target, &addr, &[])?;
            self.prometheus_targets.push(target);
            self.freqtuners.insert(node.clone(), addr.clone());
            wait_healthy(&addr, false).await?;
        }

        let tls_dir = self.config.work_dir.join("tls");
        self.run_to_completion(
            "climatik-certs",
            &[
                "dev-ca",
                "--out-dir",
                path_str(&tls_dir)?,
                "--dns-name",
                "localhost",
                "--ip-address",
                "127.0.0.1",
            ],
        )
        .await?;
        let webhook_port = free_port()?;
        let webhook_addr = format!("127.0.0.1:{webhook_port}");
        let webhook_kubeconfig = cluster
            .service_account_kubeconfig(SYSTEM_NAMESPACE, &accounts.webhook)
            .await?;
        self.spawn(
            "webhook",
            "climatik-webhook",
            &webhook_kubeconfig,
            &[
                "--listen",
                &webhook_addr,
                "--tls-cert-file",
                path_str(&tls_dir.join("tls.crt"))?,
                "--tls-key-file",
                path_str(&tls_dir.join("tls.key"))?,
            ],
            (&webhook_addr, true),
        )?;
        wait_healthy(&webhook_addr, true).await?;
        self.webhook_addr = webhook_addr.clone();
        self.register_webhook(&webhook_addr, &tls_dir.join("ca.crt"))
            .await?;

        let prometheus_url = cluster.prometheus_url().to_string();
        let interval = format!("{}s", self.config.interval.as_secs().max(1));
        let controller_addr = format!("127.0.0.1:{}", free_port()?);
        let controller_kubeconfig = cluster
            .service_account_kubeconfig(SYSTEM_NAMESPACE, &accounts.controller)
            .await?;
        self.spawn(
            "powercapping-controller",
            "powercapping-controller",
            &controller_kubeconfig,
            &[
                "--prometheus-url",
                &prometheus_url,
                // The local Prometheus scrapes every target, the agents'
                // DCGM series and any Kepler series included, under this
                // one job.
                "--dcgm-jobs",
                "climatik",
                "--kepler-jobs",
                "climatik",
                "--interval",
                &interval,
                "--metrics-listen",
                &controller_addr,
                "--lease-namespace",
                SYSTEM_NAMESPACE,
                "--lease-name",
                &format!("{}-controller", self.config.scope),
                // CPU policies are measured from Kepler's series (GPU-only
                // ones never query it), as a chart install with
                // controller.kepler would.
                "--kepler",
            ],
            (&controller_addr, false),
        )?;
        wait_healthy(&controller_addr, false).await?;
        // Its per-policy series (climatik_policy_*) are what the chart's
        // dashboard and alerts read, as the chart's ServiceMonitor scrapes.
        let target = format!("{}-powercapping-controller", self.config.scope);
        cluster.register_prometheus_target(&target, &controller_addr, &[])?;
        self.prometheus_targets.push(target);

        let recommender_addr = format!("127.0.0.1:{}", free_port()?);
        let recommender_kubeconfig = cluster
            .service_account_kubeconfig(SYSTEM_NAMESPACE, &accounts.recommender)
            .await?;
        let ttl = format!("{}s", self.config.entry_ttl.as_secs().max(1));
        self.spawn(
            "freqtuning-recommender",
            "freqtuning-recommender",
            &recommender_kubeconfig,
            &[
                "--interval",
                &interval,
                "--entry-ttl",
                &ttl,
                "--metrics-listen",
                &recommender_addr,
                "--lease-namespace",
                SYSTEM_NAMESPACE,
                "--lease-name",
                &self.config.recommender_lease(),
            ],
            (&recommender_addr, false),
        )?;
        wait_healthy(&recommender_addr, false).await?;
        Ok(())
    }

    fn spawn(
        &mut self,
        name: &str,
        binary: &str,
        kubeconfig: &Path,
        args: &[&str],
        health: (&str, bool),
    ) -> anyhow::Result<()> {
        let launch = Launch {
            name: name.to_string(),
            program: self.config.bin_dir.join(binary),
            kubeconfig: kubeconfig.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            health: (health.0.to_string(), health.1),
        };
        let child = self.launch(&launch, false)?;
        self.components.push(Component { launch, child });
        Ok(())
    }

    /// Starts `component`'s process; a restart appends to its log.
    fn launch(&self, launch: &Launch, append: bool) -> anyhow::Result<Child> {
        let log_path = self.log_path(&launch.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        Command::new(&launch.program)
            .args(&launch.args)
            .env("KUBECONFIG", &launch.kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", launch.program.display()))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        log_path(&self.config.work_dir, name)
    }

    fn component_mut(&mut self, name: &str) -> anyhow::Result<&mut Component> {
        self.components
            .iter_mut()
            .find(|c| c.launch.name == name)
            .with_context(|| format!("no component named {name}"))
    }

    /// The names of the running components, in start order: one
    /// `freqtuner-<node>` per node, `webhook`, `powercapping-controller`,
    /// `freqtuning-recommender`.
    pub fn component_names(&self) -> Vec<String> {
        self.components
            .iter()
            .map(|c| c.launch.name.clone())
            .collect()
    }

    /// The process id of component `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.components
            .iter()
            .find(|c| c.launch.name == name)
            .and_then(|c| c.child.id())
    }

    /// Kills component `name` with SIGKILL (no chance to restore or hand
    /// over anything) and reaps it.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let component = self.component_mut(name)?;
        component
            .child
            .kill()
            .await
            .with_context(|| format!("killing {name}"))
    }

    /// Starts component `name` again with the arguments it first had, as a
    /// kubelet restarts a crashed container, and waits until it is healthy.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self
            .components
            .iter()
            .position(|c| c.launch.name == name)
            .with_context(|| format!("no component named {name}"))?;
        let child = self.launch(&self.components[index].launch, true)?;
        let component = &mut self.components[index];
        component.child = child;
        let (addr, tls) = component.launch.health.clone();
        wait_healthy(&addr, tls).await
    }

    /// Stops component `name` with SIGTERM and starts it again talking to
    /// the API server at `addr` (a [`climatik_test_support::Forwarder`]'s),
    /// so a test can partition it from the API server.
    pub async fn restart_via(&mut self, name: &str, addr: SocketAddr) -> anyhow::Result<()> {
        let cluster = self.cluster.clone();
        let component = self.component_mut(name)?;
        terminate(&mut component.child).await;
        component.launch.kubeconfig =
            cluster.kubeconfig_with_server(&component.launch.kubeconfig, addr)?;
        self.restart(name).await
    }

    async fn run_to_completion(&self, binary: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.config.bin_dir.join(binary);
        let output = Command::new(&program)
            .args(args)
            .output()
            .await
            .with_context(|| format!("running {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed: {}",
                program.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// A MutatingWebhookConfiguration by URL, scoped to the namespaces
    /// labelled for this stack, with the same rules as the chart's.
    async fn register_webhook(&self, addr: &str, ca_file: &Path) -> anyhow::Result<()> {
        let ca =
            std::fs::read(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
        let configuration = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": self.webhook_configuration},
            "webhooks": [{
                "name": "workloads.climatik.io",
                "clientConfig": {
                    "url": format!("https://{addr}/mutate"),
                    "caBundle": k8s_openapi::ByteString(ca),
                },
                "rules": [
                    {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                     "resources": ["deployments", "statefulsets"]},
                    {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                     "resources": ["jobs", "cronjobs"]}
                ],
                "namespaceSelector": {"matchLabels": {WEBHOOK_SCOPE_LABEL: self.config.scope}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "admissionReviewVersions": ["v1"]
            }]
        });
        self.cluster
            .kubectl_with_stdin(["apply", "-f", "-"], &configuration.to_string())
            .await
            .context("registering the webhook")?;
        Ok(())
    }

    /// The chart RBAC this stack applied (YAML) and the ServiceAccount each
    /// component runs as, all in [`SYSTEM_NAMESPACE`].
    pub fn chart_rbac(&self) -> (&str, &ChartAccounts) {
        (&self.rbac_manifest, &self.accounts)
    }

    /// Creates a namespace the webhook serves.
    pub async fn namespace(&mut self, name: &str) -> anyhow::Result<()> {
        self.namespaces.push(name.to_string());
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {WEBHOOK_SCOPE_LABEL: self.config.scope}}
        });
        self.cluster
            .kubectl_with_stdin(["apply", "-f", "-"], &manifest.to_string())
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(())
    }

    /// Whether every component is still running; names the first that died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for component in &mut self.components {
            if let Some(status) = component.child.try_wait()? {
                bail!(
                    "{} exited ({status}); see {}",
                    component.launch.name,
                    log_path(&self.config.work_dir, &component.launch.name).display()
                );
            }
        }
        Ok(())
    }

    /// Stops every component with SIGTERM (so agents restore clocks), then
    /// SIGKILL after a grace period; removes its namespaces, the webhook
    /// and the scrape targets.
    pub async fn stop(mut self) {
        for namespace in &self.namespaces {
            let _ = self
                .cluster
                .kubectl([
                    "delete",
                    "namespace",
                    namespace,
                    "--ignore-not-found",
                    "--wait=false",
                ])
                .await;
        }
        let _ = self
            .cluster
            .kubectl([
                "delete",
                "mutatingwebhookconfiguration",
                &self.webhook_configuration,
                "--ignore-not-found",
            ])
            .await;
        // Controllers first, so nothing re-applies targets while agents restore.
        for component in self.components.iter_mut().rev() {
            terminate(&mut component.child).await;
        }
        for target in &self.prometheus_targets {
            let _ = self.cluster.remove_prometheus_target(target);
        }
        self.components.clear();
        let _ = self
            .cluster
            .kubectl_with_stdin(
                ["delete", "--ignore-not-found", "-f", "-"],
                &self.rbac_manifest,
            )
            .await;
    }
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Where component `name` logs.
fn log_path(work_dir: &Path, name: &str) -> PathBuf {
    work_dir.join("logs").join(format!("{name}.log"))
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Polls `/healthz` until it answers 200 (30 s at most).
async fn wait_healthy(addr: &str, tls: bool) -> anyhow::Result<()> {
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{addr}/healthz");
    let client = reqwest_client(tls)?;
    for _ in 0..150 {
        if let Ok(response) = client.get(&url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{url} did not become healthy within 30 s")
}

fn reqwest_client(_tls: bool) -> anyhow::Result<reqwest::Client> {
    // The webhook's dev certificate is checked by the API server, which is
    // what matters; here only liveness is probed.
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(2))
        .build()
        .context("building an HTTP client")
}
