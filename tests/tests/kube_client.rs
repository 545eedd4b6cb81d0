//! Our Kubernetes client (`climatik_runtime::kube_client`, which the
//! binaries and the test support use) against the real API server: it
//! speaks HTTP/2, and many requests at once, a watch included, share one
//! connection instead of opening one each.

use std::{collections::HashSet, time::Duration};

use anyhow::Context;
use climatik_test_support::cluster;
use futures::{StreamExt, TryStreamExt, future::try_join_all};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api,
    api::ListParams,
    runtime::{WatchStreamExt, watcher},
};

/// Requests sent at once: kube's own client opens a connection for each.
const CONCURRENT: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_and_watches_share_one_http2_connection() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let port = cluster
        .apiserver_url()
        .parse::<http::Uri>()?
        .port_u16()
        .context("the API server's URL has a port")?;
    // The test support's client is `kube_client::from_config`, as the
    // binaries' is; it is this process's only client of the API server.
    let client = cluster.client.clone();

    let version = client
        .send(http::Request::get("/version").body(kube::client::Body::empty())?)
        .await?;
    assert_eq!(version.version(), http::Version::HTTP_2);
    assert!(version.status().is_success(), "{:?}", version.status());

    // A watch held open while the burst runs, as the controllers hold theirs.
    let ns = cluster.namespace("kube-client").await?;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns.name());
    let mut watch = watcher(config_maps, watcher::Config::default())
        .default_backoff()
        .boxed();
    tokio::time::timeout(Duration::from_secs(30), watch.try_next())
        .await
        .context("the watch's first event")??;

    let namespaces = Api::<Namespace>::all(client.clone());
    let first_five = ListParams::default().limit(5);
    let answers =
        try_join_all((0..CONCURRENT).map(|_| namespaces.list_metadata(&first_five))).await?;
    assert_eq!(answers.len(), CONCURRENT);

    let connections = established_to(port)?;
    assert_eq!(
        connections, 1,
        "{CONCURRENT} requests and a watch should share one connection to the API server"
    );
    Ok(())
}

/// This process's established TCP connections to local `port`: the sockets
/// among its file descriptors that `/proc/net/tcp{,6}` lists with that
/// remote port.
fn established_to(port: u16) -> anyhow::Result<usize> {
    const ESTABLISHED: &str = "01";
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) =
                (fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let remote_port = remote
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if remote_port == Some(port) && *state == ESTABLISHED {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let mut ours = 0;
    for fd in std::fs::read_dir("/proc/self/fd")? {
        if let Ok(target) = std::fs::read_link(fd?.path())
            && inodes.contains(target.to_string_lossy().as_ref())
        {
            ours += 1;
        }
    }
    Ok(ours)
}
