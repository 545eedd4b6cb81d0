//! The `freqtuner` binary against the real local API server: a simulated
//! GPU node with a fake cpufreq sysfs tree, running with the permissions the
//! component contract grants it. Each test owns a Node object no other test
//! uses, so NodeFrequencies (named after nodes) never collide.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use climatik_api::{DeviceState, NodeFrequencies, NodeFrequenciesSummary};
use climatik_test_support::{
    Forwarder, TestCluster, TestNamespace, cluster,
    exposition::{self, Exposition},
    fake_sysfs::{FakeCpu, FakeDriver, FakeSysfs},
};
use k8s_openapi::{
    api::{
        core::v1::{Node, Pod, ServiceAccount},
        events::v1::Event,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

const TEST_MANAGER: &str = "freqtuner-test";
/// intel_pstate's cpuinfo_max_freq in the fake tree: the default ceiling.
const DEFAULT_KHZ: u64 = 4_800_000;

use climatik_test_support::eventually;

/// A node of our own, a namespace with the agent's ServiceAccount bound to
/// the contract's ClusterRole, a fake sysfs and a state directory.
struct Fixture {
    cluster: TestCluster,
    ns: Option<TestNamespace>,
    node: String,
    kubeconfig: PathBuf,
    sysfs: FakeSysfs,
    _sysfs_dir: tempfile::TempDir,
    state_dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        let cluster = cluster().await?;
        cluster.install_crds().await?;
        let ns = cluster.namespace(prefix).await?;
        let node = format!("{}-node", ns.name());
        let client = cluster.client.clone();

        let node_obj: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": node, "labels": {"climatik.io/test": "true"}},
        }))?;
        let created = Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node_obj)
            .await
            .with_context(|| format!("creating Node {node}"))?;
        let node_uid = created.metadata.uid.context("Node without uid")?;

        // The freqtuner's permissions, exactly as docs/components.md lists them.
        let role: ClusterRole = serde_json::from_value(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "climatik-freqtuner-test"},
            "rules": [
                {"apiGroups": ["climatik.io"], "resources": ["nodefrequencies"],
                 "verbs": ["get", "list", "watch", "create"]},
                {"apiGroups": ["climatik.io"], "resources": ["nodefrequencies/status"],
                 "verbs": ["patch"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"],
                 "verbs": ["create", "patch"]},
                // gpuBackend sim: the pods on the node.
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
            ],
        }))?;
        Api::<ClusterRole>::all(client.clone())
            .patch(
                "climatik-freqtuner-test",
                &PatchParams::apply(TEST_MANAGER).force(),
                &Patch::Apply(&role),
            )
            .await?;
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "freqtuner"},
        }))?;
        Api::<ServiceAccount>::namespaced(client.clone(), ns.name())
            .create(&PostParams::default(), &sa)
            .await?;
        // Owned by our Node, so deleting the Node removes the binding too.
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": node, "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "climatik-freqtuner-test"},
            "subjects": [{"kind": "ServiceAccount", "name": "freqtuner", "namespace": ns.name()}],
        }))?;
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await?;
        let kubeconfig = cluster
            .service_account_kubeconfig(ns.name(), "freqtuner")
            .await?;

        let sysfs_dir = tempfile::tempdir()?;
        let sysfs = FakeSysfs::create(
            sysfs_dir.path(),
            &FakeDriver::IntelPstate,
            &FakeCpu::uniform(4),
        )?;
        Ok(Self {
            cluster,
            ns: Some(ns),
            node,
            kubeconfig,
            sysfs,
            _sysfs_dir: sysfs_dir,
            state_dir: tempfile::tempdir()?,
        })
    }

    fn nf_api(&self) -> Api<NodeFrequencies> {
        Api::all(self.cluster.client.clone())
    }

    async fn nf(&self) -> anyhow::Result<Option<NodeFrequencies>> {
        Ok(self.nf_api().get_opt(&self.node).await?)
    }

    /// `kubectl apply --server-side` of a NodeFrequencies with these entries.
    async fn apply(&self, gpus: &str, cpus: &str) -> anyhow::Result<()> {
        let yaml = format!(
            "apiVersion: climatik.io/v1alpha1\nkind: NodeFrequencies\nmetadata:\n  name: {node}\nspec:\n  nodeName: {node}\n  gpuFrequencies: [{gpus}]\n  cpuFrequencies: [{cpus}]\n",
            node = self.node
        );
        self.cluster
            .kubectl_with_stdin(
                [
                    "apply",
                    "--server-side",
                    "--field-manager",
                    TEST_MANAGER,
                    "-f",
                    "-",
                ],
                &yaml,
            )
            .await?;
        Ok(())
    }

    /// Waits until the agent created the node's NodeFrequencies and listed
    /// its GPUs; returns their UUIDs.
    async fn gpu_uuids(&self) -> anyhow::Result<Vec<String>> {
        eventually(
            "NodeFrequencies created with status.gpus",
            Duration::from_secs(30),
            || async {
                let Some(nf) = self.nf().await? else {
                    return Ok(None);
                };
                let gpus = nf.status.map(|s| s.gpus).unwrap_or_default();
                Ok((gpus.len() == 2).then(|| gpus.into_iter().map(|g| g.gpu_id).collect()))
            },
        )
        .await
    }

    async fn wait_khz(&self, cpu: u32, khz: u64, what: &str) -> anyhow::Result<()> {
        self.wait_khz_within(cpu, khz, Duration::from_secs(20), what)
            .await
    }

    async fn wait_khz_within(
        &self,
        cpu: u32,
        khz: u64,
        timeout: Duration,
        what: &str,
    ) -> anyhow::Result<()> {
        eventually(what, timeout, || async {
            // The fake sysfs is a plain file the agent truncates and then
            // writes (a kernel attribute changes at once): a read in between
            // sees it empty, which means "not yet", not a failure.
            let now = self.sysfs.scaling_max_khz(cpu).ok();
            Ok((now == Some(khz)).then_some(()))
        })
        .await
    }

    /// Waits until the status says CPU `cpu` has no live entry left.
    async fn wait_cpu_entry_expired(&self, cpu: i32) -> anyhow::Result<NodeFrequencies> {
        eventually(
            "status says the entry expired",
            Duration::from_secs(30),
            || async {
                let Some(nf) = self.nf().await? else {
                    return Ok(None);
                };
                Ok(cpu_status(&nf, cpu)
                    .is_some_and(|c| c.message.contains("no live entry"))
                    .then_some(nf))
            },
        )
        .await
    }

    async fn spawn(&self) -> anyhow::Result<AgentProcess> {
        AgentProcess::spawn(self, &self.kubeconfig, &[]).await
    }

    async fn cleanup(mut self) -> anyhow::Result<()> {
        Api::<Node>::all(self.cluster.client.clone())
            .delete(&self.node, &DeleteParams::background())
            .await?;
        if let Some(ns) = self.ns.take() {
            ns.cleanup().await?;
        }
        Ok(())
    }
}

impl Drop for Fixture {
    /// A failed test still removes its Node (and with it, by ownership, the
    /// NodeFrequencies and the ClusterRoleBinding).
    fn drop(&mut self) {
        if self.ns.is_none() {
            return;
        }
        let _ = std::process::Command::new(self.cluster.kubectl_path())
            .arg("--kubeconfig")
            .arg(self.cluster.kubeconfig())
            .args([
                "delete",
                "node",
                &self.node,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A running `freqtuner` child process.
struct AgentProcess {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl AgentProcess {
    /// The agent's command line for `fx`'s node: the usual flags, then
    /// `extra`.
    fn command(fx: &Fixture, kubeconfig: &Path, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_freqtuner"));
        command
            .args([
                "--node-name",
                &fx.node,
                "--gpu-backend",
                "sim",
                "--cpu-backend",
                "cpufreq",
            ])
            .arg("--sysfs-root")
            .arg(fx.sysfs.root())
            .arg("--state-dir")
            .arg(fx.state_dir.path())
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--sim-gpus",
                "2",
                "--fast-loop-interval",
                "500ms",
                "--status-interval",
                "5s",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs the agent for `fx`'s node, reaching the API server as
    /// `kubeconfig` says, with `extra` flags after the usual ones.
    async fn spawn(fx: &Fixture, kubeconfig: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = Self::command(fx, kubeconfig, extra)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting freqtuner")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        // Drains stderr for the whole run, so the child never blocks on it.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"] == "serving metrics"
                    && let Some(addr) = json["addr"].as_str().and_then(|a| a.parse().ok())
                {
                    let _ = addr_tx.send(addr);
                }
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let mut addr = None;
        for _ in 0..300 {
            if let Ok(a) = addr_rx.try_recv() {
                addr = Some(a);
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "freqtuner exited early ({status}): {}",
                    logs.lock().map(|l| l.join("\n")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let addr = addr.context("freqtuner did not report its metrics address within 30s")?;
        Ok(Self { child, addr, logs })
    }

    fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status code")?;
        Ok((code, body.to_string()))
    }

    async fn metrics(&self) -> anyhow::Result<Exposition> {
        let (code, body) = self.get("/metrics").await?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        exposition::parse(&body).map_err(|e| anyhow::anyhow!("/metrics is not valid: {e}"))
    }

    /// `DCGM_FI_DEV_SM_CLOCK` of simulated GPU `gpu`.
    async fn sm_clock(&self, gpu: &str) -> anyhow::Result<f64> {
        let m = self.metrics().await?;
        let s = m.find("DCGM_FI_DEV_SM_CLOCK", &[("gpu", gpu)]);
        Ok(s.first().context("no DCGM_FI_DEV_SM_CLOCK")?.value)
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("already exited")?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    async fn wait_exit(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Ok(
            tokio::time::timeout(Duration::from_secs(15), self.child.wait())
                .await
                .context("freqtuner did not exit within 15s")??,
        )
    }
}

/// A hand-written entry, as docs/design.md shows one: it expires in five
/// minutes, longer than any of these tests and within the agent's default
/// lifetime cap.
fn manual_gpu(uuid: &str, mhz: u32) -> String {
    format!(
        "{{gpuId: {uuid}, targetFrequency: {mhz}, policy: manual, expiresAt: \"{}\"}}",
        in_five_minutes()
    )
}

fn manual_cpu(cpu: u32, mhz: u32) -> String {
    format!(
        "{{cpuId: {cpu}, targetFrequency: {mhz}, policy: manual, expiresAt: \"{}\"}}",
        in_five_minutes()
    )
}

fn in_five_minutes() -> Timestamp {
    Timestamp::now() + Duration::from_secs(300)
}

fn gpu_status<'a>(
    nf: &'a NodeFrequencies,
    uuid: &str,
) -> Option<&'a climatik_api::GpuFrequencyStatus> {
    nf.status
        .as_ref()?
        .gpu_frequencies
        .iter()
        .find(|g| g.gpu_id == uuid)
}

fn cpu_status(nf: &NodeFrequencies, cpu: i32) -> Option<&climatik_api::CpuFrequencyStatus> {
    nf.status
        .as_ref()?
        .cpu_frequencies
        .iter()
        .find(|c| c.cpu_id == cpu)
}

#[tokio::test]
async fn applies_a_kubectl_applied_target_reports_it_and_restores_on_delete() -> anyhow::Result<()>
{
    let fx = Fixture::new("ft-apply").await?;
    let mut agent = fx.spawn().await?;
    let uuids = fx.gpu_uuids().await.with_context(|| agent.logs())?;

    // The agent created the object for its node, owned by the Node.
    let nf = fx.nf().await?.context("NodeFrequencies")?;
    let owner = nf.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        owner.first().map(|o| (o.kind.as_str(), o.name.as_str())),
        Some(("Node", fx.node.as_str()))
    );
    let status = nf.status.context("status")?;
    assert_eq!(status.gpus[0].min_frequency, 345);
    assert_eq!(status.gpus[0].max_frequency, 1980);
    assert!(uuids[0].starts_with("GPU-"));

    // A busy pod on GPU 0: the simulated GPU runs at full clock and TDP.
    let pods = Api::<Pod>::namespaced(
        fx.cluster.client.clone(),
        fx.ns.as_ref().map_or("", |n| n.name()),
    );
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "vllm", "annotations": {"climatik.io/sim-load": "1.0"}},
        "spec": {"nodeName": fx.node, "containers": [{"name": "vllm", "image": "vllm/vllm-openai:latest",
                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let full = eventually(
        "the pod's load on GPU 0",
        Duration::from_secs(20),
        || async {
            let m = agent.metrics().await?;
            let power = m.find(
                "DCGM_FI_DEV_POWER_USAGE",
                &[("gpu", "0"), ("pod", "vllm"), ("container", "vllm")],
            );
            Ok(power.first().filter(|s| s.value > 600.0).map(|s| s.value))
        },
    )
    .await?;
    let m = agent.metrics().await?;
    let sample = &m.find("DCGM_FI_DEV_POWER_USAGE", &[("gpu", "0")])[0];
    for label in [
        "UUID",
        "pci_bus_id",
        "device",
        "modelName",
        "Hostname",
        "DCGM_FI_DRIVER_VERSION",
        "namespace",
    ] {
        assert!(
            sample.labels.contains_key(label),
            "missing {label}: {sample:?}"
        );
    }
    assert_eq!(sample.labels["UUID"], uuids[0]);
    assert_eq!(sample.labels["Hostname"], fx.node);
    assert_eq!(agent.sm_clock("0").await?, 1980.0);

    fx.apply(&manual_gpu(&uuids[0], 1000), &manual_cpu(1, 2000))
        .await?;
    let nf = eventually(
        "status Applied for GPU 0 and CPU 1",
        Duration::from_secs(20),
        || async {
            let Some(nf) = fx.nf().await? else {
                return Ok(None);
            };
            let gpu_ok =
                gpu_status(&nf, &uuids[0]).is_some_and(|g| g.state == DeviceState::Applied);
            let cpu_ok = cpu_status(&nf, 1).is_some_and(|c| c.state == DeviceState::Applied);
            let current =
                nf.status.as_ref().and_then(|s| s.observed_generation) == nf.metadata.generation;
            Ok((gpu_ok && cpu_ok && current).then_some(nf))
        },
    )
    .await
    .with_context(|| agent.logs())?;
    let gpu = gpu_status(&nf, &uuids[0]).context("gpu status")?;
    assert_eq!(gpu.target_frequency, Some(990));
    assert_eq!(gpu.current_frequency, Some(990));
    assert!(gpu.message.contains("snapped 1000 -> 990 MHz"), "{gpu:?}");
    let cpu = cpu_status(&nf, 1).context("cpu status")?;
    assert_eq!(
        (cpu.current_frequency, cpu.target_frequency),
        (Some(2000), Some(2000))
    );
    let status = nf.status.as_ref().context("status")?;
    assert!(status.last_updated.is_some());
    assert_eq!(status.backend.as_deref(), Some("sim,cpufreq"));
    // The status is the agent's (server-side apply, its own field manager).
    let managers: Vec<String> = nf
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f.subresource.as_deref() == Some("status"))
        .filter_map(|f| f.manager)
        .collect();
    assert_eq!(managers, vec!["climatik-freqtuner".to_string()]);

    assert_eq!(fx.sysfs.scaling_max_khz(1)?, 2_000_000);
    assert_eq!(
        fx.sysfs.scaling_max_khz(0)?,
        DEFAULT_KHZ,
        "an unnamed CPU was touched"
    );
    assert_eq!(fx.sysfs.governor(1)?, "powersave");
    assert_eq!(agent.sm_clock("0").await?, 990.0);
    let capped = agent
        .metrics()
        .await?
        .find("DCGM_FI_DEV_POWER_USAGE", &[("gpu", "0")])[0]
        .value;
    assert!(
        capped < full * 0.75,
        "power {capped} W at 990 MHz vs {full} W at 1980 MHz"
    );
    assert_eq!(
        agent.sm_clock("1").await?,
        345.0,
        "an unnamed GPU was touched"
    );
    let own = agent.metrics().await?;
    assert_eq!(
        own.find(
            "climatik_freqtuner_gpu_locked_clock_mhz",
            &[("gpu", &uuids[0])]
        )[0]
        .value,
        990.0
    );
    assert_eq!(agent.get("/healthz").await?.0, 200);

    // Deleting the object restores defaults; the agent then recreates it.
    fx.cluster
        .kubectl(["delete", "nodefrequencies", &fx.node])
        .await?;
    fx.wait_khz(1, DEFAULT_KHZ, "CPU 1 restored after delete")
        .await?;
    eventually(
        "GPU 0 unlocked after delete",
        Duration::from_secs(20),
        || async { Ok((agent.sm_clock("0").await? == 1980.0).then_some(())) },
    )
    .await?;
    eventually(
        "NodeFrequencies recreated",
        Duration::from_secs(20),
        || async {
            Ok(fx
                .nf()
                .await?
                .filter(|nf| nf.spec.gpu_frequencies.is_empty())
                .map(|_| ()))
        },
    )
    .await?;

    agent.signal("-TERM").await?;
    assert!(agent.wait_exit().await?.success(), "{}", agent.logs());
    pods.delete(
        "vllm",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await?;
    fx.cleanup().await
}

/// The Events about the NodeFrequencies of `fx`'s node. A cluster-scoped
/// object's Events live in `default`.
async fn events_on(fx: &Fixture) -> anyhow::Result<Vec<Event>> {
    let events = Api::<Event>::namespaced(fx.cluster.client.clone(), "default");
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("NodeFrequencies") && r.name.as_deref() == Some(&fx.node)
            })
        })
        .collect())
}

#[tokio::test]
async fn a_device_failure_is_one_event_on_the_nodefrequencies_and_counted_in_its_summary()
-> anyhow::Result<()> {
    let fx = Fixture::new("ft-events").await?;
    let agent = fx.spawn().await?;
    let uuids = fx.gpu_uuids().await.with_context(|| agent.logs())?;
    // The fake node has CPUs 0-3: CPU 9 cannot be capped.
    fx.apply(
        &manual_gpu(&uuids[0], 1200),
        &format!("{}, {}", manual_cpu(9, 1500), manual_cpu(11, 1500)),
    )
    .await?;

    let found = eventually(
        "an Event about the NodeFrequencies",
        Duration::from_secs(30),
        || async {
            Ok(events_on(&fx)
                .await?
                .into_iter()
                .find(|e| e.note.as_deref().is_some_and(|n| n.starts_with("cpu 9: "))))
        },
    )
    .await
    .with_context(|| agent.logs())?;
    assert_eq!(found.type_.as_deref(), Some("Warning"));
    assert_eq!(found.reason.as_deref(), Some("DeviceUnsupported"));
    assert_eq!(
        found.reporting_controller.as_deref(),
        Some(climatik_api::names::MANAGER_FREQTUNER)
    );
    assert_eq!(found.action.as_deref(), Some("Set cpu 9"));
    let note = found.note.clone().unwrap_or_default();
    assert!(
        note.starts_with("cpu 9: ") && note.contains("no CPU 9"),
        "{note}"
    );

    let nf = eventually("the status summary", Duration::from_secs(30), || async {
        Ok(fx.nf().await?.filter(|nf| {
            nf.status.as_ref().and_then(|s| s.summary.as_ref())
                == Some(&NodeFrequenciesSummary {
                    gpu_entries: 1,
                    applied: 1,
                    failed: 0,
                })
        }))
    })
    .await
    .with_context(|| agent.logs())?;
    assert_eq!(
        nf.status.and_then(|s| s.backend).as_deref(),
        Some("sim,cpufreq")
    );
    let table = fx
        .cluster
        .kubectl(["get", "nodefrequencies", fx.node.as_str()])
        .await?;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "NODE", "BACKEND", "GPU", "ENTRIES", "APPLIED", "FAILED", "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[2..6], ["sim,cpufreq", "1", "1", "0"], "{table}");

    // Passes go on failing the same way: one Event per device (CPU 11's
    // its own, not a repeat of CPU 9's), never repeated.
    let reconciles = |m: &Exposition| {
        m.find("climatik_freqtuner_reconciles_total", &[])
            .first()
            .map_or(0.0, |s| s.value)
    };
    let start = reconciles(&agent.metrics().await?);
    eventually("ten more passes", Duration::from_secs(30), || async {
        Ok((reconciles(&agent.metrics().await?) >= start + 10.0).then_some(()))
    })
    .await?;
    let events = events_on(&fx).await?;
    let mut notes: Vec<&str> = events.iter().filter_map(|e| e.note.as_deref()).collect();
    notes.sort_unstable();
    assert_eq!(notes.len(), 2, "{events:?}");
    assert!(
        notes[0].starts_with("cpu 11: ") && notes[1].starts_with("cpu 9: "),
        "{notes:?}"
    );
    assert!(events.iter().all(|e| e.series.is_none()), "{events:?}");
    fx.cleanup().await
}

#[tokio::test]
async fn an_expired_entry_is_restored_without_any_api_change() -> anyhow::Result<()> {
    let fx = Fixture::new("ft-expiry").await?;
    let agent = fx.spawn().await?;
    let uuids = fx.gpu_uuids().await.with_context(|| agent.logs())?;

    let expires = Timestamp::now() + Duration::from_secs(8);
    fx.apply(
        &format!(
            "{{gpuId: {}, targetFrequency: 1200, policy: ns/p, expiresAt: \"{expires}\"}}",
            uuids[1]
        ),
        &format!("{{cpuId: 2, targetFrequency: 1500, policy: ns/p, expiresAt: \"{expires}\"}}"),
    )
    .await?;
    fx.wait_khz(2, 1_500_000, "CPU 2 capped")
        .await
        .with_context(|| agent.logs())?;
    assert_eq!(agent.sm_clock("1").await?, 1200.0);

    fx.wait_khz(2, DEFAULT_KHZ, "CPU 2 restored after expiry")
        .await?;
    assert!(
        Timestamp::now() >= expires,
        "restored before the entry expired"
    );
    assert_eq!(agent.sm_clock("1").await?, 345.0);
    let nf = fx.wait_cpu_entry_expired(2).await?;
    let gpu = gpu_status(&nf, &uuids[1]).context("gpu status")?;
    assert_eq!(gpu.target_frequency, None);
    assert!(gpu.message.contains("defaults restored"), "{gpu:?}");
    fx.cleanup().await
}

#[tokio::test]
async fn a_far_future_entry_is_released_after_the_max_entry_ttl() -> anyhow::Result<()> {
    let fx = Fixture::new("ft-max-ttl").await?;
    let agent = AgentProcess::spawn(&fx, &fx.kubeconfig, &["--max-entry-ttl", "6s"]).await?;
    fx.gpu_uuids().await.with_context(|| agent.logs())?;

    // A forgotten hand-written entry that claims the CPU until 2099. The
    // agent cannot see it before the apply starts.
    let applied_at = Timestamp::now();
    fx.apply(
        "",
        "{cpuId: 2, targetFrequency: 1500, policy: manual, expiresAt: \"2099-01-01T00:00:00Z\"}",
    )
    .await?;
    fx.wait_khz(2, 1_500_000, "CPU 2 capped")
        .await
        .with_context(|| agent.logs())?;
    eventually(
        "status says how long the entry is held",
        Duration::from_secs(20),
        || async {
            let Some(nf) = fx.nf().await? else {
                return Ok(None);
            };
            Ok(cpu_status(&nf, 2)
                .is_some_and(|c| c.message.contains("held until"))
                .then_some(()))
        },
    )
    .await?;

    // Nobody renews or removes it: the agent lets go after the cap.
    fx.wait_khz(2, DEFAULT_KHZ, "CPU 2 restored after the max TTL")
        .await
        .with_context(|| agent.logs())?;
    assert!(
        Timestamp::now() >= applied_at + Duration::from_secs(6),
        "restored before the cap was reached"
    );
    let nf = fx.nf().await?.context("NodeFrequencies")?;
    assert_eq!(nf.spec.cpu_frequencies.len(), 1, "the entry is still there");
    fx.cleanup().await
}

#[tokio::test]
async fn a_restarted_agent_restores_what_a_killed_one_left() -> anyhow::Result<()> {
    let fx = Fixture::new("ft-kill").await?;
    let mut first = fx.spawn().await?;
    fx.gpu_uuids().await.with_context(|| first.logs())?;
    fx.apply(
        "",
        &format!("{}, {}", manual_cpu(0, 1200), manual_cpu(3, 800)),
    )
    .await?;
    fx.wait_khz(0, 1_200_000, "CPU 0 capped")
        .await
        .with_context(|| first.logs())?;
    fx.wait_khz(3, 800_000, "CPU 3 capped").await?;

    // SIGKILL: no chance to restore.
    first.signal("-KILL").await?;
    first.wait_exit().await?;
    assert_eq!(fx.sysfs.scaling_max_khz(0)?, 1_200_000);
    assert_eq!(fx.sysfs.scaling_max_khz(3)?, 800_000);

    // The entries go away while no agent runs; only the state file
    // remembers what to put back. The successor keeps the caps until it
    // has read that they are gone, then restores them.
    fx.apply("", "").await?;
    let second = fx.spawn().await?;
    fx.wait_khz(0, DEFAULT_KHZ, "CPU 0 restored at start-up")
        .await
        .with_context(|| second.logs())?;
    fx.wait_khz(3, DEFAULT_KHZ, "CPU 3 restored at start-up")
        .await?;
    assert!(
        second
            .logs()
            .contains("keeping what a previous agent left set")
    );
    drop(second);
    fx.cleanup().await
}

#[tokio::test]
async fn a_restarted_agent_keeps_what_a_killed_one_set_only_while_its_entries_last()
-> anyhow::Result<()> {
    let fx = Fixture::new("ft-hold").await?;
    let forwarder = Forwarder::start(fx.cluster.apiserver_authority()?).await?;
    let kubeconfig = fx.cluster.kubeconfig_via(forwarder.addr())?;
    let mut first = AgentProcess::spawn(&fx, &kubeconfig, &[]).await?;
    fx.gpu_uuids().await.with_context(|| first.logs())?;
    // CPU 1 capped for a short while, CPU 3 for longer than the test.
    let expires = Timestamp::now() + Duration::from_secs(25);
    fx.apply(
        "",
        &format!(
            "{{cpuId: 1, targetFrequency: 2000, policy: ns/p, expiresAt: \"{expires}\"}}, {}",
            manual_cpu(3, 1000)
        ),
    )
    .await?;
    fx.wait_khz(1, 2_000_000, "CPU 1 capped")
        .await
        .with_context(|| first.logs())?;
    fx.wait_khz(3, 1_000_000, "CPU 3 capped").await?;
    first.signal("-KILL").await?;
    first.wait_exit().await?;

    // The successor cannot reach the API server: it keeps both caps
    // (restoring them would lift them until it can read its entries)...
    forwarder.cut();
    let second = AgentProcess::spawn(&fx, &kubeconfig, &[]).await?;
    eventually("the successor holds", Duration::from_secs(30), || {
        let held = second
            .logs()
            .contains("keeping what a previous agent left set");
        async move { Ok(held.then_some(())) }
    })
    .await
    .with_context(|| second.logs())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    anyhow::ensure!(
        Timestamp::now() < expires,
        "the entry expired before the check: nothing would be tested"
    );
    assert_eq!(
        fx.sysfs.scaling_max_khz(1)?,
        2_000_000,
        "CPU 1 lost its cap"
    );
    assert_eq!(
        fx.sysfs.scaling_max_khz(3)?,
        1_000_000,
        "CPU 3 lost its cap"
    );

    // ...but no longer than the first of their entries lasts.
    fx.wait_khz_within(
        1,
        DEFAULT_KHZ,
        Duration::from_secs(60),
        "CPU 1 restored once its entry ended, the API server unreachable",
    )
    .await
    .with_context(|| second.logs())?;
    assert!(
        Timestamp::now() >= expires,
        "restored before the entry expired"
    );
    // Everything left is restored together (CPU 3 just after CPU 1).
    fx.wait_khz_within(
        3,
        DEFAULT_KHZ,
        Duration::from_secs(10),
        "CPU 3 restored with CPU 1",
    )
    .await
    .with_context(|| second.logs())?;

    // Back online: what is still wanted is set again.
    forwarder.restore();
    fx.wait_khz(3, 1_000_000, "CPU 3 capped again once the entries are read")
        .await
        .with_context(|| second.logs())?;
    drop(second);
    drop(forwarder);
    fx.cleanup().await
}

#[tokio::test]
async fn sigterm_restores_defaults_and_exits_cleanly() -> anyhow::Result<()> {
    let fx = Fixture::new("ft-term").await?;
    let mut agent = fx.spawn().await?;
    let uuids = fx.gpu_uuids().await.with_context(|| agent.logs())?;
    fx.apply(&manual_gpu(&uuids[0], 700), &manual_cpu(2, 1000))
        .await?;
    fx.wait_khz(2, 1_000_000, "CPU 2 capped")
        .await
        .with_context(|| agent.logs())?;
    agent.signal("-TERM").await?;
    let status = agent.wait_exit().await?;
    assert!(status.success(), "{status}: {}", agent.logs());
    assert_eq!(fx.sysfs.scaling_max_khz(2)?, DEFAULT_KHZ);
    assert!(agent.logs().contains("restoring defaults"));
    // Nothing is left for a successor to restore.
    let state = std::fs::read_to_string(state_file(fx.state_dir.path(), &fx.node))?;
    assert_eq!(state.trim(), "{}");
    fx.cleanup().await
}

#[tokio::test]
async fn expiry_and_sigterm_keep_working_while_the_api_server_is_unreachable() -> anyhow::Result<()>
{
    let fx = Fixture::new("ft-cut").await?;
    // The agent reaches the API server through a forwarder the test cuts:
    // its calls then hang, as across a network partition. (The admin
    // kubeconfig: the ServiceAccount's rights are tested above.)
    let forwarder = Forwarder::start(fx.cluster.apiserver_authority()?).await?;
    let kubeconfig = fx.cluster.kubeconfig_via(forwarder.addr())?;
    let mut agent = AgentProcess::spawn(&fx, &kubeconfig, &[]).await?;
    fx.gpu_uuids().await.with_context(|| agent.logs())?;

    // CPU 1 capped for longer than the test runs, CPU 2 for a while.
    let expires = Timestamp::now() + Duration::from_secs(30);
    let later = Timestamp::now() + Duration::from_secs(3600);
    fx.apply(
        "",
        &format!(
            "{{cpuId: 1, targetFrequency: 2000, policy: manual, expiresAt: \"{later}\"}}, \
             {{cpuId: 2, targetFrequency: 1500, policy: ns/p, expiresAt: \"{expires}\"}}"
        ),
    )
    .await?;
    fx.wait_khz(1, 2_000_000, "CPU 1 capped")
        .await
        .with_context(|| agent.logs())?;
    fx.wait_khz(2, 1_500_000, "CPU 2 capped").await?;

    // Cut: the agent's status writes (due every --status-interval, 5 s)
    // now hang until they time out, its watch goes silent.
    forwarder.cut();
    anyhow::ensure!(
        Timestamp::now() < expires,
        "the entry expired before the cut: nothing would be tested"
    );
    fx.wait_khz_within(
        2,
        DEFAULT_KHZ,
        Duration::from_secs(40),
        "CPU 2 restored after expiry, the API server still unreachable",
    )
    .await
    .with_context(|| agent.logs())?;
    assert!(
        Timestamp::now() >= expires,
        "restored before the entry expired"
    );
    assert_eq!(
        fx.sysfs.scaling_max_khz(1)?,
        2_000_000,
        "CPU 1 lost its cap"
    );

    // Back online: the status catches up with what happened meanwhile.
    forwarder.restore();
    fx.wait_cpu_entry_expired(2)
        .await
        .with_context(|| agent.logs())?;

    // Cut again, then stop: the agent restores CPU 1 and exits without
    // waiting for the API server.
    forwarder.cut();
    agent.signal("-TERM").await?;
    let status = agent.wait_exit().await.with_context(|| agent.logs())?;
    assert!(status.success(), "{status}: {}", agent.logs());
    assert_eq!(fx.sysfs.scaling_max_khz(1)?, DEFAULT_KHZ);
    drop(forwarder);
    fx.cleanup().await
}

#[tokio::test]
async fn an_agent_that_cannot_open_its_backend_retries_then_exits_non_zero() -> anyhow::Result<()> {
    let fx = Fixture::new("ft-noinit").await?;
    // sysfs not mounted: the CPU tree is not there.
    let tree = fx.sysfs.root().join("devices");
    std::fs::rename(&tree, fx.sysfs.root().join("elsewhere"))?;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        AgentProcess::command(
            &fx,
            &fx.kubeconfig,
            &[
                "--backend-init-attempts",
                "3",
                "--backend-init-backoff",
                "100ms",
            ],
        )
        .stderr(Stdio::piped())
        .output(),
    )
    .await
    .context("freqtuner kept running without its backend")??;
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}: {logs}", output.status);
    assert_eq!(
        logs.matches("could not open the backend: retrying").count(),
        2,
        "{logs}"
    );
    assert!(
        logs.contains("could not open the cpufreq backend in 3 attempt(s)"),
        "{logs}"
    );
    fx.cleanup().await
}

#[tokio::test]
async fn a_corrupt_state_file_is_moved_aside_and_what_it_still_records_is_restored()
-> anyhow::Result<()> {
    let fx = Fixture::new("ft-corrupt").await?;
    // A killed agent capped CPUs 0 and 3; its state file has one record
    // that no longer parses (a half-written hand edit, a disk error).
    fx.sysfs.overwrite(
        "devices/system/cpu/cpufreq/policy0/scaling_max_freq",
        "1200000",
    )?;
    fx.sysfs.overwrite(
        "devices/system/cpu/cpufreq/policy3/scaling_max_freq",
        "800000",
    )?;
    let file = state_file(fx.state_dir.path(), &fx.node);
    let corrupt = format!(r#"{{"0": {DEFAULT_KHZ}, "2": "2.2 GHz", "3": {DEFAULT_KHZ}}}"#);
    std::fs::write(&file, &corrupt)?;

    let agent = fx.spawn().await?;
    fx.wait_khz(0, DEFAULT_KHZ, "CPU 0 restored at start-up")
        .await
        .with_context(|| agent.logs())?;
    fx.wait_khz(3, DEFAULT_KHZ, "CPU 3 restored at start-up")
        .await
        .with_context(|| agent.logs())?;
    let aside: Vec<PathBuf> = std::fs::read_dir(fx.state_dir.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(&aside[0])?, corrupt);
    let m = agent.metrics().await?;
    assert_eq!(
        m.find("climatik_freqtuner_state_quarantined_total", &[])[0].value,
        1.0
    );
    assert!(agent.logs().contains("the restore state was corrupt"));

    // And it carries on: a new cap is applied and recorded.
    fx.gpu_uuids().await.with_context(|| agent.logs())?;
    fx.apply("", &manual_cpu(2, 1000)).await?;
    fx.wait_khz(2, 1_000_000, "CPU 2 capped")
        .await
        .with_context(|| agent.logs())?;
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    assert_eq!(state["policy2"]["original_khz"], DEFAULT_KHZ);
    drop(agent);
    fx.cleanup().await
}

#[tokio::test]
async fn a_gpu_reset_behind_the_agents_back_is_locked_again() -> anyhow::Result<()> {
    let fx = Fixture::new("ft-drift").await?;
    // GPU 0 under full load: unlocked, it runs at its maximum clock.
    let scenario = fx.state_dir.path().join("scenario.yaml");
    std::fs::write(&scenario, "gpus:\n  0: full\n")?;
    let scenario = scenario.to_string_lossy().into_owned();
    let agent = AgentProcess::spawn(&fx, &fx.kubeconfig, &["--sim-scenario", &scenario]).await?;
    let uuids = fx.gpu_uuids().await.with_context(|| agent.logs())?;
    fx.apply(&manual_gpu(&uuids[0], 990), "").await?;
    let clock_is = |mhz: f64| {
        let agent = &agent;
        move || async move { Ok((agent.sm_clock("0").await? == mhz).then_some(())) }
    };
    eventually(
        "GPU 0 locked at 990 MHz",
        Duration::from_secs(20),
        clock_is(990.0),
    )
    .await
    .with_context(|| agent.logs())?;

    // Someone runs `nvidia-smi -rgc -rpl` (the sim's SIGUSR1).
    agent.signal("-USR1").await?;
    eventually(
        "the reset counted as drift",
        Duration::from_secs(20),
        || async {
            let m = agent.metrics().await?;
            let drift = m.find(
                "climatik_freqtuner_drift_reapplied_total",
                &[("device", "gpu")],
            );
            Ok(drift.first().is_some_and(|s| s.value >= 1.0).then_some(()))
        },
    )
    .await
    .with_context(|| agent.logs())?;
    eventually(
        "GPU 0 locked at 990 MHz again",
        Duration::from_secs(20),
        clock_is(990.0),
    )
    .await
    .with_context(|| agent.logs())?;
    assert!(agent.logs().contains("SIGUSR1: every simulated GPU reset"));
    assert!(agent.logs().contains("changed by someone else"));
    drop(agent);
    fx.cleanup().await
}

fn state_file(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("cpufreq-{node}.json"))
}

/// An entry of policy `ns/p` with a budget, in budget group `group` when
/// one is given.
fn budgeted_gpu(uuid: &str, watts: f64, group: Option<&str>) -> String {
    let group = group.map_or(String::new(), |g| format!(", budgetGroup: {g}"));
    format!(
        "{{gpuId: {uuid}, targetFrequency: 1980, powerBudgetWatts: {watts}, policy: ns/p{group}, expiresAt: \"{}\"}}",
        in_five_minutes()
    )
}

/// Each GPU's budget in force as the status reports it, once both GPUs
/// have one that `settled` accepts.
async fn budgets_once(
    fx: &Fixture,
    uuids: &[String],
    what: &str,
    settled: impl Fn(f64, f64) -> bool,
) -> anyhow::Result<(f64, f64)> {
    eventually(what, Duration::from_secs(30), || async {
        let Some(nf) = fx.nf().await? else {
            return Ok(None);
        };
        let budget = |i: usize| gpu_status(&nf, &uuids[i]).and_then(|g| g.power_budget_watts);
        Ok(budget(0)
            .zip(budget(1))
            .filter(|(loaded, idle)| settled(*loaded, *idle)))
    })
    .await
}

/// Two GPUs of one policy in one budget group, GPU 0 fully loaded and GPU 1
/// idle: the agent moves the group's watts to GPU 0, never handing out
/// more than the group's sum; without the group each keeps its own.
async fn a_budget_group_follows_the_load(prefix: &str, extra: &[&str]) -> anyhow::Result<()> {
    let fx = Fixture::new(prefix).await?;
    let scenario = fx.state_dir.path().join("scenario.yaml");
    std::fs::write(&scenario, "gpus:\n  0: full\n")?;
    let scenario = scenario.to_string_lossy().into_owned();
    let mut args = vec!["--sim-scenario", scenario.as_str()];
    args.extend_from_slice(extra);
    let agent = AgentProcess::spawn(&fx, &fx.kubeconfig, &args).await?;
    let uuids = fx.gpu_uuids().await.with_context(|| agent.logs())?;
    let group = Some("ns/p");
    fx.apply(
        &format!(
            "{}, {}",
            budgeted_gpu(&uuids[0], 350.0, group),
            budgeted_gpu(&uuids[1], 350.0, group)
        ),
        "",
    )
    .await?;
    let (loaded, idle) = budgets_once(
        &fx,
        &uuids,
        "the loaded GPU given most of the group's 700 W",
        |l, _| l > 350.0,
    )
    .await
    .with_context(|| agent.logs())?;
    assert!(loaded + idle <= 700.0 + 1e-6, "{loaded} + {idle} W");
    // The idle GPU keeps at least the lowest limit the GPU accepts.
    assert!(idle >= 210.0, "{idle} W");

    // The same entries without a group: each its own 350 W again.
    fx.apply(
        &format!(
            "{}, {}",
            budgeted_gpu(&uuids[0], 350.0, None),
            budgeted_gpu(&uuids[1], 350.0, None)
        ),
        "",
    )
    .await?;
    budgets_once(&fx, &uuids, "each GPU back at its own 350 W", |l, i| {
        l == 350.0 && i == 350.0
    })
    .await
    .with_context(|| agent.logs())?;
    drop(agent);
    fx.cleanup().await
}

#[tokio::test]
async fn a_budget_group_is_resplit_by_load_with_the_clock_loop() -> anyhow::Result<()> {
    a_budget_group_follows_the_load("ft-group-clock", &[]).await
}

#[tokio::test]
async fn a_budget_group_is_resplit_by_load_with_power_limits() -> anyhow::Result<()> {
    a_budget_group_follows_the_load("ft-group-limit", &["--gpu-power-limit"]).await
}

/// The recommender's Lease as a leader renews it: holder and renewTime.
fn lease(name: &str, holder: &str) -> k8s_openapi::api::coordination::v1::Lease {
    use k8s_openapi::{
        api::coordination::v1::{Lease, LeaseSpec},
        apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    };
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    }
}

#[tokio::test]
async fn entries_kept_by_the_lease_count_while_it_is_renewed_and_lapse_after_the_grace()
-> anyhow::Result<()> {
    use k8s_openapi::api::{
        coordination::v1::Lease,
        rbac::v1::{Role, RoleBinding},
    };
    let fx = Fixture::new("ft-lease").await?;
    let ns = fx.ns.as_ref().context("namespace")?.name().to_string();
    let client = fx.cluster.client.clone();
    let leases = Api::<Lease>::namespaced(client.clone(), &ns);
    leases
        .create(&PostParams::default(), &lease("recommender", "rec-a"))
        .await?;
    // Read access to that one Lease only, as the chart grants it.
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "entry-lease"},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "resourceNames": ["recommender"], "verbs": ["list", "watch"]}],
    }))?;
    Api::<Role>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "entry-lease"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "entry-lease"},
        "subjects": [{"kind": "ServiceAccount", "name": "freqtuner", "namespace": ns}],
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await?;

    let entry_lease = format!("{ns}/recommender");
    let agent = AgentProcess::spawn(
        &fx,
        &fx.kubeconfig,
        &["--entry-lease", &entry_lease, "--entry-lease-grace", "6s"],
    )
    .await?;
    fx.gpu_uuids().await.with_context(|| agent.logs())?;
    // The agent announces the Lease once it has read it.
    eventually(
        "status.entryLease announced",
        Duration::from_secs(20),
        || async {
            let announced = fx.nf().await?.and_then(|nf| nf.status?.entry_lease);
            Ok((announced.as_deref() == Some(entry_lease.as_str())).then_some(()))
        },
    )
    .await
    .with_context(|| agent.logs())?;

    // Two entries that expire in 4 s: CPU 2's kept by the Lease, CPU 3's not.
    let expires = Timestamp::now() + Duration::from_secs(4);
    fx.apply(
        "",
        &format!(
            "{{cpuId: 2, targetFrequency: 1500, policy: ns/p, keptByLease: true, expiresAt: \"{expires}\"}}, \
             {{cpuId: 3, targetFrequency: 1600, policy: ns/p, expiresAt: \"{expires}\"}}"
        ),
    )
    .await?;
    fx.wait_khz(2, 1_500_000, "CPU 2 capped")
        .await
        .with_context(|| agent.logs())?;
    fx.wait_khz(3, 1_600_000, "CPU 3 capped").await?;

    // Renewed each second, as a leader does, a new holder identity each
    // time (a failover).
    let (stop_renewing, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let renewer = tokio::spawn({
        let leases = leases.clone();
        async move {
            let mut holder = 0;
            loop {
                holder += 1;
                let metadata = leases.get("recommender").await?.metadata;
                leases
                    .replace(
                        "recommender",
                        &PostParams::default(),
                        &Lease {
                            metadata,
                            ..lease("recommender", &format!("rec-{}", holder % 2))
                        },
                    )
                    .await?;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = &mut stopped => return anyhow::Ok(()),
                }
            }
        }
    });
    // CPU 3 lapses at its expiresAt; CPU 2 stays capped well past it
    // (beyond the 6 s grace too).
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(14)).await;
    anyhow::ensure!(Timestamp::now() > expires + Duration::from_secs(8));
    assert_eq!(
        fx.sysfs.scaling_max_khz(3)?,
        DEFAULT_KHZ,
        "the unkept entry lapses at its expiresAt"
    );
    assert_eq!(
        fx.sysfs.scaling_max_khz(2)?,
        1_500_000,
        "the kept entry counts while the Lease is renewed; {}",
        agent.logs()
    );

    // A killed agent's successor keeps the kept entry from its first pass
    // on: it reads the Lease before it acts, so CPU 2 is never restored.
    let mut agent = agent;
    agent.signal("-KILL").await?;
    agent.wait_exit().await?;
    let agent = AgentProcess::spawn(
        &fx,
        &fx.kubeconfig,
        &["--entry-lease", &entry_lease, "--entry-lease-grace", "6s"],
    )
    .await?;
    let watched_until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < watched_until {
        // An empty read is the agent's write in between, not a restore.
        if let Ok(khz) = fx.sysfs.scaling_max_khz(2) {
            assert_eq!(
                khz,
                1_500_000,
                "the successor restored a kept entry; {}",
                agent.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(
        agent.logs().contains("watching the entry Lease"),
        "the successor never read the Lease: {}",
        agent.logs()
    );

    // Nobody renews it any more: CPU 2 is restored after the grace.
    let _ = stop_renewing.send(());
    renewer.await??;
    let last_renewal = Timestamp::now();
    fx.wait_khz(2, DEFAULT_KHZ, "CPU 2 restored after the grace")
        .await
        .with_context(|| agent.logs())?;
    assert!(
        Timestamp::now() >= last_renewal + Duration::from_secs(4),
        "restored before the grace after the last renewal had passed"
    );
    fx.cleanup().await
}
