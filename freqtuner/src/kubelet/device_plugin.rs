//! The kubelet device plugin of the simulated GPUs: serves the
//! device-plugin API (`v1beta1`) on a unix socket in the kubelet's
//! device-plugins directory and registers it with the kubelet, so the node
//! advertises one `nvidia.com/gpu` per simulated GPU and the kubelet, not
//! the agent, decides which container gets which. As NVIDIA's plugin does,
//! it advertises every GPU `Healthy` under its UUID, answers `Allocate`
//! with `NVIDIA_VISIBLE_DEVICES=<UUIDs>` per container, needs no pre-start
//! hook and offers no preferred allocation.
//!
//! The kubelet wipes the directory when it starts, so the plugin watches its
//! own socket (and the kubelet's): when either goes away or is replaced, it
//! serves again on a fresh socket and registers again. A kubelet that is not
//! there (yet) is retried with backoff; nothing here ends the agent.

use std::{path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context;
use futures::Stream;
use tokio::{
    net::UnixListener,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use super::{
    Backoff, FileId,
    pb::v1beta1::{
        AllocateRequest, AllocateResponse, ContainerAllocateResponse,
        ContainerPreferredAllocationResponse, Device, DevicePluginOptions, Empty,
        ListAndWatchResponse, PreStartContainerRequest, PreStartContainerResponse,
        PreferredAllocationRequest, PreferredAllocationResponse, RegisterRequest,
        device_plugin_server::{DevicePlugin, DevicePluginServer},
        registration_client::RegistrationClient,
    },
};

/// The device-plugin API version the kubelet is asked to speak.
pub const API_VERSION: &str = "v1beta1";

/// The kubelet's Registration socket, in the device-plugins directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";

/// Our socket's name in the device-plugins directory.
pub const SOCKET_NAME: &str = "climatik-sim-gpu.sock";

/// The variable through which NVIDIA's container runtime (and `sim-workload`)
/// learns which GPUs a container was given.
pub const VISIBLE_DEVICES_ENV: &str = "NVIDIA_VISIBLE_DEVICES";

const HEALTHY: &str = "Healthy";

/// How long one Register call may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping server may take to close its connections.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// What the plugin serves and where.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The kubelet's device-plugins directory (`<kubelet root>/device-plugins`).
    pub dir: PathBuf,
    /// Our socket's file name in `dir`.
    pub socket_name: String,
    /// Extended resource name (`nvidia.com/gpu`).
    pub resource_name: String,
    /// Device IDs: the simulated GPUs' UUIDs.
    pub devices: Vec<String>,
    /// How often the sockets are checked for a kubelet restart.
    pub check_interval: Duration,
    /// First and longest delay between attempts when the kubelet is away.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl PluginConfig {
    /// The defaults for a real kubelet.
    pub fn new(dir: PathBuf, devices: Vec<String>) -> Self {
        Self {
            dir,
            socket_name: SOCKET_NAME.into(),
            resource_name: crate::sim::pods::GPU_RESOURCE.into(),
            devices,
            check_interval: Duration::from_secs(1),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(&self.socket_name)
    }

    pub fn kubelet_socket(&self) -> PathBuf {
        self.dir.join(KUBELET_SOCKET)
    }
}

/// The options the plugin registers with and reports: no pre-start hook, no
/// preferred allocation (any simulated GPU is as good as another).
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: false,
    }
}

/// The `DevicePlugin` service.
#[derive(Debug, Clone)]
pub struct Plugin {
    devices: Arc<[String]>,
    /// Set when this server stops, which ends the ListAndWatch streams (the
    /// kubelet takes the end of the stream for the plugin going away).
    stopping: watch::Receiver<bool>,
}

impl Plugin {
    pub fn new(devices: Vec<String>, stopping: watch::Receiver<bool>) -> Self {
        Self {
            devices: devices.into(),
            stopping,
        }
    }

    fn list(&self) -> ListAndWatchResponse {
        ListAndWatchResponse {
            devices: self
                .devices
                .iter()
                .map(|id| Device {
                    id: id.clone(),
                    health: HEALTHY.into(),
                })
                .collect(),
        }
    }

    fn check_known<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Result<(), Status> {
        match ids.into_iter().find(|id| !self.devices.contains(id)) {
            Some(unknown) => Err(Status::invalid_argument(format!(
                "unknown device {unknown:?}: not a simulated GPU of this node"
            ))),
            None => Ok(()),
        }
    }
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(1);
        let list = self.list();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            if tx.send(Ok(list)).await.is_err() {
                return;
            }
            // Simulated GPUs never change health: hold the stream open until
            // this server stops or the kubelet hangs up.
            tokio::select! {
                () = super::until_set(&mut stopping) => {}
                () = tx.closed() => {}
            }
        });
        tracing::debug!(devices = self.devices.len(), "kubelet listed the devices");
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        // Never asked for (see `options`), but answered sensibly: what must
        // be included, then the first available, up to the size.
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| {
                let size = usize::try_from(c.allocation_size).unwrap_or(0);
                let mut ids = c.must_include_device_ids;
                for id in c.available_device_ids {
                    if ids.len() >= size {
                        break;
                    }
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                ContainerPreferredAllocationResponse { device_ids: ids }
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let request = request.into_inner();
        let mut container_responses = Vec::with_capacity(request.container_requests.len());
        for container in &request.container_requests {
            self.check_known(&container.device_ids)?;
            let visible = container.device_ids.join(",");
            tracing::info!(devices = %visible, "kubelet allocated simulated GPUs");
            container_responses.push(ContainerAllocateResponse {
                envs: [(VISIBLE_DEVICES_ENV.to_string(), visible)].into(),
            });
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        request: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        self.check_known(&request.into_inner().device_ids)?;
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// Registers `config`'s socket with the kubelet.
pub async fn register(config: &PluginConfig) -> anyhow::Result<()> {
    let kubelet = config.kubelet_socket();
    let call = async {
        let channel = super::connect(&kubelet)
            .await
            .with_context(|| format!("connecting to {}", kubelet.display()))?;
        RegistrationClient::new(channel)
            .register(RegisterRequest {
                version: API_VERSION.into(),
                endpoint: config.socket_name.clone(),
                resource_name: config.resource_name.clone(),
                options: Some(options()),
            })
            .await
            .map_err(|s| anyhow::anyhow!("kubelet refused the registration: {}", s.message()))?;
        anyhow::Ok(())
    };
    tokio::time::timeout(REGISTER_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} in time", kubelet.display()))?
}

/// One server on one socket.
struct Serving {
    socket: PathBuf,
    id: Option<FileId>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Serving {
    /// Binds a fresh socket (replacing a stale one: a predecessor's, or the
    /// kubelet's leftovers) and serves on it.
    async fn start(config: &PluginConfig) -> anyhow::Result<Self> {
        let socket = config.socket();
        match tokio::fs::remove_file(&socket).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", socket.display())),
        }
        let listener =
            UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
        let id = FileId::of(&socket).await;
        let (stop, stopping) = watch::channel(false);
        let service =
            DevicePluginServer::new(Plugin::new(config.devices.clone(), stopping.clone()));
        let mut until = stopping;
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    super::until_set(&mut until).await;
                }),
        );
        Ok(Self {
            socket,
            id,
            stop,
            task,
        })
    }

    /// Whether our socket is still the one we bound.
    async fn socket_is_ours(&self) -> bool {
        self.id.is_some() && FileId::of(&self.socket).await == self.id
    }

    /// Stops serving; removes the socket when `remove` and it is still ours.
    async fn stop(mut self, remove: bool) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(STOP_TIMEOUT, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        if remove && self.socket_is_ours().await {
            let _ = tokio::fs::remove_file(&self.socket).await;
        }
    }
}

/// Why a serving cycle ended.
enum Cycle {
    Shutdown,
    Restart,
}

/// Serves the plugin and keeps it registered until `shutdown` turns true
/// (or its sender goes away), then removes the socket. Never fails: every
/// problem is logged and retried.
pub async fn run(config: PluginConfig, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    tracing::info!(
        dir = %config.dir.display(),
        socket = %config.socket_name,
        resource = %config.resource_name,
        devices = config.devices.len(),
        "serving the kubelet device-plugin API for the simulated GPUs"
    );
    while !*shutdown.borrow() {
        match cycle(&config, &mut shutdown, &mut backoff).await {
            Cycle::Shutdown => break,
            Cycle::Restart => {}
        }
    }
    tracing::info!("device plugin stopped");
}

/// Waits `delay`; false when shutdown came first.
async fn pause(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = super::until_set(shutdown) => false,
    }
}

/// Serve, register, watch; returns when the kubelet went away or on shutdown.
async fn cycle(
    config: &PluginConfig,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Cycle {
    let serving = match Serving::start(config).await {
        Ok(serving) => serving,
        Err(e) => {
            let delay = backoff.fail_logged(
                &e,
                "cannot serve the device plugin (is the kubelet's device-plugins directory mounted?)",
            );
            return if pause(delay, shutdown).await {
                Cycle::Restart
            } else {
                Cycle::Shutdown
            };
        }
    };

    // Register, retrying while the kubelet is away.
    loop {
        let attempt = tokio::select! {
            r = register(config) => r,
            () = super::until_set(shutdown) => {
                serving.stop(true).await;
                return Cycle::Shutdown;
            }
        };
        match attempt {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.fail_logged(
                    &e,
                    "cannot register the device plugin with the kubelet; retrying",
                );
                if !pause(delay, shutdown).await {
                    serving.stop(true).await;
                    return Cycle::Shutdown;
                }
                if !serving.socket_is_ours().await {
                    // The kubelet came up and wiped the directory: serve anew.
                    serving.stop(false).await;
                    return Cycle::Restart;
                }
            }
        }
    }
    backoff.reset();
    let kubelet = FileId::of(&config.kubelet_socket()).await;
    tracing::info!(
        resource = %config.resource_name,
        devices = config.devices.len(),
        "registered the device plugin with the kubelet"
    );

    // Watch for a kubelet restart: it deletes our socket and makes a new one
    // of its own.
    let mut tick = tokio::time::interval(config.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = super::until_set(shutdown) => {
                serving.stop(true).await;
                return Cycle::Shutdown;
            }
            _ = tick.tick() => {}
        }
        let reason = if !serving.socket_is_ours().await {
            Some("the plugin socket was removed or replaced")
        } else if FileId::of(&config.kubelet_socket())
            .await
            .is_some_and(|now| Some(now) != kubelet)
        {
            Some("the kubelet socket was recreated")
        } else if serving.task.is_finished() {
            Some("the plugin server stopped")
        } else {
            None
        };
        if let Some(reason) = reason {
            tracing::info!(reason, "kubelet restarted? serving and registering again");
            serving.stop(false).await;
            return Cycle::Restart;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> Plugin {
        let (_tx, rx) = watch::channel(false);
        Plugin::new(vec!["GPU-a".into(), "GPU-b".into(), "GPU-c".into()], rx)
    }

    #[tokio::test]
    async fn allocate_sets_the_visible_devices_per_container() {
        let response = plugin()
            .allocate(Request::new(AllocateRequest {
                container_requests: vec![
                    super::super::pb::v1beta1::ContainerAllocateRequest {
                        device_ids: vec!["GPU-c".into(), "GPU-a".into()],
                    },
                    super::super::pb::v1beta1::ContainerAllocateRequest {
                        device_ids: vec!["GPU-b".into()],
                    },
                ],
            }))
            .await
            .expect("allocate")
            .into_inner();
        let envs: Vec<_> = response
            .container_responses
            .iter()
            .map(|c| c.envs.get(VISIBLE_DEVICES_ENV).cloned())
            .collect();
        assert_eq!(
            envs,
            vec![Some("GPU-c,GPU-a".to_string()), Some("GPU-b".to_string())]
        );
    }

    #[tokio::test]
    async fn unknown_devices_are_refused() {
        let status = plugin()
            .allocate(Request::new(AllocateRequest {
                container_requests: vec![super::super::pb::v1beta1::ContainerAllocateRequest {
                    device_ids: vec!["GPU-zzz".into()],
                }],
            }))
            .await
            .expect_err("unknown device");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn preferred_allocation_keeps_required_devices_first() {
        let response = plugin()
            .get_preferred_allocation(Request::new(PreferredAllocationRequest {
                container_requests: vec![
                    super::super::pb::v1beta1::ContainerPreferredAllocationRequest {
                        available_device_ids: vec!["GPU-a".into(), "GPU-b".into(), "GPU-c".into()],
                        must_include_device_ids: vec!["GPU-c".into()],
                        allocation_size: 2,
                    },
                ],
            }))
            .await
            .expect("preferred")
            .into_inner();
        assert_eq!(
            response.container_responses[0].device_ids,
            vec!["GPU-c".to_string(), "GPU-a".to_string()]
        );
    }
}
