//! The simulated GPUs' kubelet integration over real unix sockets, against
//! an in-process stand-in for the kubelet (its Registration and
//! PodResources services in a temporary kubelet root): registration,
//! ListAndWatch, Allocate, re-registration after a kubelet restart, waiting
//! for an absent kubelet, PodResources-driven DCGM labels; and the
//! `sim-workload` binary. No cluster needed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use climatik_freqtuner::{
    kubelet::{
        self,
        device_plugin::{self, PluginConfig},
        pb::{
            v1::{
                ContainerDevices, ContainerResources, ListPodResourcesRequest,
                ListPodResourcesResponse, PodResources,
                pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
            },
            v1beta1::{
                AllocateRequest, ContainerAllocateRequest, Empty, RegisterRequest,
                device_plugin_client::DevicePluginClient,
                registration_server::{Registration, RegistrationServer},
            },
        },
        pod_resources::Poller,
    },
    sim::{
        Assignment, Scenario, SharedWorld, SimConfig, SimWorld, dcgm, load::LoadProfile,
        model::GpuModel, pods::PodGpus,
    },
};
use climatik_test_support::exposition;
use tokio::{
    net::UnixListener,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status, service::Routes};

const WAIT: Duration = Duration::from_secs(10);

/// The kubelet's Registration service: hands each request to the test.
struct FakeRegistration(mpsc::UnboundedSender<RegisterRequest>);

#[tonic::async_trait]
impl Registration for FakeRegistration {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(Empty {}))
    }
}

/// The kubelet's PodResources service: answers what the test set.
#[derive(Clone, Default)]
struct FakePodResources(Arc<Mutex<ListPodResourcesResponse>>);

#[tonic::async_trait]
impl PodResourcesLister for FakePodResources {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        let answer = self
            .0
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .clone();
        Ok(Response::new(answer))
    }
}

/// A kubelet root in a temporary directory.
struct KubeletRoot {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl KubeletRoot {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        Self { _dir: dir, root }
    }

    fn plugins(&self) -> PathBuf {
        self.root.join("device-plugins")
    }

    fn pod_resources(&self) -> PathBuf {
        self.root.join("pod-resources").join("kubelet.sock")
    }

    fn plugin_config(&self, devices: &[String]) -> PluginConfig {
        PluginConfig {
            check_interval: Duration::from_millis(50),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..PluginConfig::new(self.plugins(), devices.to_vec())
        }
    }
}

/// A gRPC server on a fresh unix socket at `path`, until the sender is
/// used or dropped.
fn serve(path: &Path, routes: Routes) -> (oneshot::Sender<()>, JoinHandle<()>) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("socket directory");
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, task)
}

/// The kubelet's Registration socket; returns what registers.
fn serve_registration(
    root: &KubeletRoot,
) -> (
    mpsc::UnboundedReceiver<RegisterRequest>,
    oneshot::Sender<()>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, task) = serve(
        &root.plugins().join(device_plugin::KUBELET_SOCKET),
        Routes::new(RegistrationServer::new(FakeRegistration(tx))),
    );
    (rx, stop, task)
}

async fn next_registration(rx: &mut mpsc::UnboundedReceiver<RegisterRequest>) -> RegisterRequest {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the plugin registers in time")
        .expect("registration channel open")
}

fn uuids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("GPU-0000000{i}-0000-0000-0000-000000000000"))
        .collect()
}

#[tokio::test]
async fn registers_advertises_allocates_and_re_registers_after_a_kubelet_restart() {
    let root = KubeletRoot::new();
    let (mut registrations, stop_kubelet, kubelet_task) = serve_registration(&root);
    let devices = uuids(3);
    let config = root.plugin_config(&devices);
    let (shutdown, shutting_down) = watch::channel(false);
    let plugin = tokio::spawn(device_plugin::run(config.clone(), shutting_down));

    let request = next_registration(&mut registrations).await;
    assert_eq!(request.version, "v1beta1");
    assert_eq!(request.resource_name, "nvidia.com/gpu");
    assert_eq!(request.endpoint, device_plugin::SOCKET_NAME);
    let options = request.options.expect("options");
    assert!(!options.pre_start_required && !options.get_preferred_allocation_available);

    // The kubelet's side: dial the endpoint it was given.
    let endpoint = root.plugins().join(&request.endpoint);
    let mut client =
        DevicePluginClient::new(kubelet::connect(&endpoint).await.expect("dial plugin"));
    let options = client
        .get_device_plugin_options(Empty {})
        .await
        .expect("options")
        .into_inner();
    assert!(!options.pre_start_required && !options.get_preferred_allocation_available);

    let mut stream = client
        .list_and_watch(Empty {})
        .await
        .expect("ListAndWatch")
        .into_inner();
    let listed = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a device list in time")
        .expect("stream ok")
        .expect("a first message");
    let got: Vec<(String, String)> = listed
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.health.clone()))
        .collect();
    let want: Vec<(String, String)> = devices
        .iter()
        .map(|id| (id.clone(), "Healthy".to_string()))
        .collect();
    assert_eq!(got, want);

    let allocated = client
        .allocate(AllocateRequest {
            container_requests: vec![
                ContainerAllocateRequest {
                    device_ids: vec![devices[2].clone(), devices[0].clone()],
                },
                ContainerAllocateRequest {
                    device_ids: vec![devices[1].clone()],
                },
            ],
        })
        .await
        .expect("allocate")
        .into_inner();
    let envs: Vec<BTreeMap<String, String>> = allocated
        .container_responses
        .iter()
        .map(|c| c.envs.clone().into_iter().collect())
        .collect();
    assert_eq!(
        envs,
        vec![
            BTreeMap::from([(
                "NVIDIA_VISIBLE_DEVICES".to_string(),
                format!("{},{}", devices[2], devices[0])
            )]),
            BTreeMap::from([("NVIDIA_VISIBLE_DEVICES".to_string(), devices[1].clone())]),
        ]
    );

    // Our socket deleted (what a restarting kubelet does): served anew and
    // registered again; the old stream ends.
    std::fs::remove_file(&endpoint).expect("delete the plugin socket");
    let again = next_registration(&mut registrations).await;
    assert_eq!(again.endpoint, device_plugin::SOCKET_NAME);
    let ended = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the old ListAndWatch stream ends");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    assert!(endpoint.exists(), "a fresh socket is served");
    let mut client = DevicePluginClient::new(kubelet::connect(&endpoint).await.expect("redial"));
    let mut stream = client
        .list_and_watch(Empty {})
        .await
        .expect("ListAndWatch")
        .into_inner();
    assert_eq!(
        stream
            .message()
            .await
            .expect("stream ok")
            .expect("a list")
            .devices
            .len(),
        3
    );

    // A whole kubelet restart: it goes away, wipes the directory, comes back.
    let _ = stop_kubelet.send(());
    let _ = kubelet_task.await;
    for entry in std::fs::read_dir(root.plugins()).expect("read dir") {
        let _ = std::fs::remove_file(entry.expect("entry").path());
    }
    let (mut registrations, stop_kubelet, _kubelet_task) = serve_registration(&root);
    let third = next_registration(&mut registrations).await;
    assert_eq!(third.resource_name, "nvidia.com/gpu");

    // Shutdown: the plugin stops and takes its socket with it.
    shutdown.send(true).expect("plugin running");
    tokio::time::timeout(WAIT, plugin)
        .await
        .expect("the plugin stops in time")
        .expect("no panic");
    assert!(!endpoint.exists(), "socket removed on shutdown");
    let _ = stop_kubelet.send(());
}

#[tokio::test]
async fn waits_for_a_kubelet_that_is_not_there_yet() {
    let root = KubeletRoot::new();
    // Not even the directory exists yet.
    let config = root.plugin_config(&uuids(2));
    let (shutdown, shutting_down) = watch::channel(false);
    let plugin = tokio::spawn(device_plugin::run(config, shutting_down));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!plugin.is_finished(), "the plugin keeps retrying");

    // The directory appears, still without a kubelet.
    std::fs::create_dir_all(root.plugins()).expect("mkdir");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!plugin.is_finished(), "the plugin keeps retrying");

    let (mut registrations, stop_kubelet, _task) = serve_registration(&root);
    let request = next_registration(&mut registrations).await;
    assert_eq!(request.endpoint, device_plugin::SOCKET_NAME);

    shutdown.send(true).expect("plugin running");
    tokio::time::timeout(WAIT, plugin)
        .await
        .expect("stops in time")
        .expect("no panic");
    let _ = stop_kubelet.send(());
}

fn world(gpus: u32) -> SharedWorld {
    SimWorld::new(
        SimConfig {
            node: "gpu-node-1".into(),
            gpus,
            model: GpuModel::h100().expect("model"),
            driver_version: "550.54.15".into(),
            scenario: Scenario::default(),
            default_load: LoadProfile::Constant(1.0),
            assignment: Assignment::Kubelet,
        },
        Instant::now(),
    )
    .expect("world")
    .shared()
}

fn pod_resources(pod: &str, container: &str, ids: &[String]) -> ListPodResourcesResponse {
    ListPodResourcesResponse {
        pod_resources: vec![PodResources {
            name: pod.into(),
            namespace: "team".into(),
            containers: vec![ContainerResources {
                name: container.into(),
                devices: vec![ContainerDevices {
                    resource_name: "nvidia.com/gpu".into(),
                    device_ids: ids.to_vec(),
                }],
            }],
        }],
    }
}

fn dcgm_power(world: &SharedWorld) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut w = world.lock().expect("world");
    let text = dcgm::render(&w.readings(Instant::now()), w.node(), w.driver_version());
    exposition::parse(&text)
        .expect("valid exposition")
        .samples
        .into_iter()
        .filter(|s| s.name == "DCGM_FI_DEV_POWER_USAGE")
        .map(|s| {
            let mut labels = s.labels;
            labels.insert("value".into(), s.value.to_string());
            (labels.get("gpu").cloned().unwrap_or_default(), labels)
        })
        .collect()
}

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn pod_resources_say_which_pod_the_dcgm_series_belong_to() {
    let root = KubeletRoot::new();
    let world = world(2);
    let gpu1 = world.lock().expect("world").infos()[1].uuid.clone();
    // The pod as the watch knows it, with its load annotation.
    world.lock().expect("world").set_pods(
        &[PodGpus {
            uid: "u-1".into(),
            namespace: "team".into(),
            name: "vllm-0".into(),
            created: "2025-01-01T00:00:00Z".into(),
            containers: vec![("vllm".into(), 1)],
            load: Some("0.8".into()),
        }],
        Instant::now(),
    );
    let answers = FakePodResources::default();
    // Before the kubelet answers, the agent assigns nothing itself.
    assert!(dcgm_power(&world).values().all(|l| !l.contains_key("pod")));

    let (shutdown, shutting_down) = watch::channel(false);
    let poller = Poller {
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..Poller::new(root.pod_resources(), Duration::from_millis(50))
    };
    let polling = tokio::spawn(poller.run(world.clone(), shutting_down));
    // The kubelet comes up late: the poller waits for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!polling.is_finished());
    *answers.0.lock().expect("answers") =
        pod_resources("vllm-0", "vllm", std::slice::from_ref(&gpu1));
    let (stop_kubelet, _task) = serve(
        &root.pod_resources(),
        Routes::new(PodResourcesListerServer::new(answers.clone())),
    );

    let labels = eventually("GPU 1 labelled with its pod", || {
        dcgm_power(&world)
            .get("1")
            .filter(|l| l.contains_key("pod"))
            .cloned()
    })
    .await;
    assert_eq!(labels["UUID"], gpu1);
    assert_eq!(labels["pod"], "vllm-0");
    assert_eq!(labels["namespace"], "team");
    assert_eq!(labels["container"], "vllm");
    // Loaded as its annotation says: 70 W idle + 0.8 x 630 W.
    assert_eq!(labels["value"], "574");
    assert!(!dcgm_power(&world)["0"].contains_key("pod"));

    // The pod goes away: the kubelet stops listing it, the labels go.
    *answers.0.lock().expect("answers") = ListPodResourcesResponse::default();
    eventually("GPU 1 unlabelled", || {
        (!dcgm_power(&world)["1"].contains_key("pod")).then_some(())
    })
    .await;

    shutdown.send(true).expect("poller running");
    tokio::time::timeout(WAIT, polling)
        .await
        .expect("stops in time")
        .expect("no panic");
    let _ = stop_kubelet.send(());
}

#[tokio::test]
async fn sim_workload_reports_its_gpus_and_exits_0_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sim-workload"))
        .env("NVIDIA_VISIBLE_DEVICES", "GPU-a,GPU-b")
        .env("POD_NAME", "worker-0")
        .env_remove("POD_NAMESPACE")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sim-workload");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("read")
        .expect("a line");
    assert_eq!(line, "sim-workload: pod=worker-0 gpus=GPU-a,GPU-b");

    // Still running until told to stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(child.try_wait().expect("try_wait").is_none());
    let pid = child.id().expect("pid").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits promptly")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}
