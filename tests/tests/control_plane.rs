//! The local control plane behaves like a real cluster in the ways our
//! components depend on: controllers, the scheduler, RBAC, garbage
//! collection, and Prometheus scraping.

use std::time::Duration;

use anyhow::Context;
use climatik_test_support::cluster;
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{ConfigMap, Pod},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use climatik_test_support::eventually;

#[tokio::test]
async fn deployment_pods_are_scheduled_onto_gpu_nodes() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let ns = cluster.namespace("deploy").await?;
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: vllm
spec:
  replicas: 2
  selector:
    matchLabels: {app: vllm}
  template:
    metadata:
      labels: {app: vllm}
    spec:
      containers:
      - name: vllm
        image: vllm/vllm-openai:latest
        resources:
          limits: {nvidia.com/gpu: "1"}
"#;
    cluster
        .kubectl_with_stdin(["-n", ns.name(), "apply", "-f", "-"], manifest)
        .await?;

    // The ReplicaSet comes from the deployment controller...
    let replicasets = Api::<ReplicaSet>::namespaced(cluster.client.clone(), ns.name());
    eventually("a ReplicaSet", Duration::from_secs(30), || async {
        Ok(replicasets
            .list(&ListParams::default())
            .await?
            .items
            .first()
            .cloned())
    })
    .await?;

    // ...its Pods from the replicaset controller, and their nodes from the
    // scheduler, which must have counted the nodes' nvidia.com/gpu.
    let pods = Api::<Pod>::namespaced(cluster.client.clone(), ns.name());
    let nodes = eventually("2 scheduled Pods", Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default().labels("app=vllm")).await?;
        let nodes: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        Ok((nodes.len() == 2).then_some(nodes))
    })
    .await?;
    for node in &nodes {
        assert!(node.starts_with("gpu-node-"), "pod scheduled onto {node}");
    }

    // The nodekeeper's fake kubelet reports them Running, so a rollout
    // completes as on a real cluster.
    cluster
        .kubectl([
            "-n",
            ns.name(),
            "rollout",
            "status",
            "deployment/vllm",
            "--timeout=60s",
        ])
        .await?;
    ns.cleanup().await
}

#[tokio::test]
async fn rbac_denies_a_service_account_until_granted() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let ns = cluster.namespace("rbac").await?;
    cluster
        .kubectl(["-n", ns.name(), "create", "serviceaccount", "reader"])
        .await?;
    let kubeconfig = cluster
        .service_account_kubeconfig(ns.name(), "reader")
        .await?;
    let sa_client = cluster.client_for(&kubeconfig).await?;
    let configmaps = Api::<ConfigMap>::namespaced(sa_client, ns.name());

    match configmaps.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }

    cluster
        .kubectl([
            "-n",
            ns.name(),
            "create",
            "role",
            "cm-reader",
            "--verb=get,list,watch",
            "--resource=configmaps",
        ])
        .await?;
    let subject = format!("{}:reader", ns.name());
    cluster
        .kubectl([
            "-n",
            ns.name(),
            "create",
            "rolebinding",
            "cm-reader",
            "--role=cm-reader",
            "--serviceaccount",
            &subject,
        ])
        .await?;
    // RBAC is read from the API server's informer cache: allow a moment.
    eventually(
        "the RoleBinding to take effect",
        Duration::from_secs(10),
        || async { Ok(configmaps.list(&ListParams::default()).await.ok()) },
    )
    .await?;
    ns.cleanup().await
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let ns = cluster.namespace("gc").await?;
    let configmaps = Api::<ConfigMap>::namespaced(cluster.client.clone(), ns.name());
    let owner = configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let uid = owner.metadata.uid.context("created ConfigMap has no uid")?;
    let dependent = ConfigMap {
        metadata: ObjectMeta {
            name: Some("dependent".into()),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: "owner".into(),
                    uid,
                    ..Default::default()
                },
            ]),
            ..Default::default()
        },
        ..Default::default()
    };
    configmaps
        .create(&PostParams::default(), &dependent)
        .await?;

    configmaps
        .delete("owner", &DeleteParams::background())
        .await?;
    eventually("the garbage collector", Duration::from_secs(60), || async {
        Ok(configmaps
            .get_opt("dependent")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    ns.cleanup().await
}

/// Serves `body` as `/metrics` to any request, until the test ends.
async fn serve_metrics(body: String) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // One request per connection is enough for Prometheus.
                let _ = stream.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn prometheus_scrapes_a_registered_target() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let marker: u32 = rand::random::<u32>() % 1_000_000;
    let body = format!(
        "# HELP climatik_test_marker A value chosen by the test.\n\
         # TYPE climatik_test_marker gauge\n\
         climatik_test_marker{{gpu=\"0\"}} {marker}\n"
    );
    let addr = serve_metrics(body).await?;
    let name = format!("control-plane-test-{marker}");
    cluster.register_prometheus_target(&name, &addr.to_string(), &[("node", "gpu-node-0")])?;

    let query = format!("climatik_test_marker{{node=\"gpu-node-0\",gpu=\"0\"}} == {marker}");
    let result = cluster
        .wait_for_prometheus(&query, Duration::from_secs(30))
        .await;
    cluster.remove_prometheus_target(&name)?;
    let samples = result?;
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0].value, f64::from(marker));
    assert_eq!(
        samples[0].labels.get("job").map(String::as_str),
        Some("climatik")
    );
    Ok(())
}
