//! Cutting a component off from the API server, as a network partition
//! does: the component reaches the API server through a [`Forwarder`] the
//! test owns, with a kubeconfig that points at it
//! ([`TestCluster::kubeconfig_via`]). Cut, every connection (open or new)
//! goes silent: nothing is refused, nothing answers, so only the
//! component's own timeouts notice.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use kube::config::Kubeconfig;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

use crate::cluster::TestCluster;

/// A TCP forwarder on 127.0.0.1 that can be cut and restored. Dropping it
/// closes every connection.
pub struct Forwarder {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Listens on an ephemeral port and forwards each connection to
    /// `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the forwarder")?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let upstream = upstream.to_string();
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(forward(client, upstream.clone(), cuts.subscribe()));
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, cut, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Silences every connection until [`Forwarder::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again; connections that were open while cut are closed,
    /// as a partition longer than TCP's patience would have.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: String, mut cut: watch::Receiver<bool>) {
    // Accepted while cut: hold it, unanswered, until restored.
    if cut.wait_for(|cut| !*cut).await.is_err() {
        return;
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let partitioned = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        cut = cut.wait_for(|cut| *cut) => cut.is_ok(),
    };
    if partitioned {
        // Both ends stay open and silent while cut.
        let _ = cut.wait_for(|cut| !*cut).await;
    }
}

impl TestCluster {
    /// A copy of the admin kubeconfig whose server is `addr` (a
    /// [`Forwarder`]'s): the API server's certificate names 127.0.0.1, so
    /// TLS still verifies. Written under the cluster's state directory.
    pub fn kubeconfig_via(&self, addr: SocketAddr) -> anyhow::Result<PathBuf> {
        self.kubeconfig_with_server(self.kubeconfig(), addr)
    }

    /// A copy of any kubeconfig (a ServiceAccount's, say) whose server is
    /// `addr`, written next to [`TestCluster::kubeconfig_via`]'s.
    pub fn kubeconfig_with_server(
        &self,
        kubeconfig: &Path,
        addr: SocketAddr,
    ) -> anyhow::Result<PathBuf> {
        let mut config = Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        for cluster in &mut config.clusters {
            if let Some(cluster) = cluster.cluster.as_mut() {
                cluster.server = Some(format!("https://{addr}"));
            }
        }
        let dir = self.state_dir().join("forwarded-kubeconfigs");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = kubeconfig
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("kubeconfig");
        let path = dir.join(format!("{stem}.{}.kubeconfig", addr.port()));
        // JSON is YAML, and every kubeconfig reader accepts it.
        std::fs::write(&path, serde_json::to_string_pretty(&config)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The API server's `host:port`, for a [`Forwarder`].
    pub fn apiserver_authority(&self) -> anyhow::Result<&str> {
        let url = self.apiserver_url();
        url.strip_prefix("https://")
            .map(|rest| rest.trim_end_matches('/'))
            .with_context(|| format!("the API server URL {url} is not https://host:port"))
    }
}
