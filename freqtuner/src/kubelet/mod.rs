//! The kubelet's gRPC APIs, spoken over unix sockets the way NVIDIA's device
//! plugin and dcgm-exporter speak them: the device-plugin API (`v1beta1`),
//! through which the simulated GPUs are advertised to and allocated by the
//! kubelet, and the PodResources API (`v1`), which says which container
//! holds which of them. The messages come from our own minimal protos in
//! `proto/` (see `build.rs`).

pub mod device_plugin;
pub mod pod_resources;

use std::{io, path::Path, time::Duration};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tonic::transport::{Channel, Endpoint, Uri};

/// Generated messages, clients and servers.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    /// Device-plugin API.
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");
    }
    /// PodResources API.
    pub mod v1 {
        tonic::include_proto!("v1");
    }
}

/// How long connecting to a kubelet socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A gRPC channel to the unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // gRPC needs a URI for the :authority header; every connection goes to
    // the socket regardless (grpc-go clients send "localhost" too).
    Endpoint::from_static("http://localhost")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Completes when `flag` turns true or its sender goes away. (Returns
/// nothing: the guard `wait_for` gives must not be held across an await.)
pub async fn until_set(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await.map(|_| ());
}

/// Identity of a file (device and inode), to notice it being deleted or
/// replaced by a new one of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// `None` when nothing is at `path` (or it cannot be read).
    pub async fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = tokio::fs::symlink_metadata(path).await.ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Doubling retry delays, capped, so a missing kubelet is retried quickly
/// at first and without flooding the log later. The delays come from
/// `backon`; this adds what the agent's loops need around them: a count of
/// failures since the last success and one log line per failure.
#[derive(Debug)]
pub struct Backoff {
    schedule: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
    /// Failures since the last success.
    pub failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let schedule = ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(initial.min(max))
            .with_max_delay(max)
            .without_max_times();
        Self {
            delays: schedule.build(),
            schedule,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt, after a failure.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // Without a limit on attempts the schedule never ends; the cap only
        // keeps this total.
        self.delays.next().unwrap_or(self.max)
    }

    /// [`Backoff::fail`], logged: what failed, why, the attempt and the delay.
    pub fn fail_logged(&mut self, error: &impl std::fmt::Display, what: &str) -> Duration {
        let delay = self.fail();
        tracing::warn!(
            error = format!("{error:#}"),
            attempt = self.failures,
            retry_in = ?delay,
            "{what}"
        );
        delay
    }

    pub fn reset(&mut self) {
        self.delays = self.schedule.build();
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<u128> = (0..5).map(|_| b.fail().as_millis()).collect();
        assert_eq!(delays, vec![500, 1000, 2000, 3000, 3000]);
        assert_eq!(b.failures, 5);
        b.reset();
        assert_eq!((b.fail().as_millis(), b.failures), (500, 1));
    }
}
