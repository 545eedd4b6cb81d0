//! The webhook through the real API server of the local control plane: the
//! API server calls it over HTTPS by URL, trusting a dev CA. The webhook has
//! no Kubernetes client; the controller's policy generator runs beside it
//! with a ServiceAccount bound to the RBAC of `docs/components.md` and
//! writes the generated policies.
//!
//! Each test registers its own MutatingWebhookConfiguration, scoped by a
//! namespace label only its namespace carries, so tests run in parallel
//! with each other and with other crates' tests.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use anyhow::Context;
use climatik_api::{
    PowerCappingPolicy,
    names::{LABEL_GENERATED, LABEL_POLICY},
};
use climatik_certs::{
    CertFiles, ReloadingCertResolver, write_dev_ca, x509::certificate_serial_hex,
};
use climatik_controller::{
    generator::{self, GeneratorConfig},
    lease::Leadership,
};
use climatik_test_support::{
    TestCluster, TestNamespace, cluster,
    fixtures::{cap_annotations, deployment},
};
use climatik_webhook::{
    metrics::Metrics,
    registration::webhook_configuration,
    server::{AppState, Limits, RunningServer, start},
};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    batch::v1::Job,
    core::v1::{Namespace, Pod, ServiceAccount},
    rbac::v1::{ClusterRole, PolicyRule, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use rand::{Rng, distr::Alphanumeric};
use rustls::pki_types::{CertificateDer, pem::PemObject};

use climatik_test_support::eventually;

/// A webhook running in-process on 127.0.0.1, registered with the API
/// server for one namespace.
struct Harness {
    cluster: TestCluster,
    ns: Option<TestNamespace>,
    id: String,
    server: Option<RunningServer>,
    resolver: Arc<ReloadingCertResolver>,
    tls_dir: tempfile::TempDir,
    ca_pem: String,
    stop_generator: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Harness {
    async fn start(prefix: &str) -> anyhow::Result<Self> {
        let cluster = cluster().await?;
        cluster.install_crds().await?;
        let ns = cluster.namespace(prefix).await?;
        let id: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(8)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
        let client = cluster.client.clone();

        // Only this test's namespace carries this label.
        let namespaces = Api::<Namespace>::all(client.clone());
        let label_patch =
            serde_json::json!({ "metadata": { "labels": { "climatik.io/webhook-test": id } } });
        namespaces
            .patch(
                ns.name(),
                &PatchParams::default(),
                &Patch::Merge(label_patch),
            )
            .await?;

        // The policy generator's identity and the RBAC the chart grants the
        // controller for it.
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("climatik-controller".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(client.clone(), ns.name())
            .create(&PostParams::default(), &sa)
            .await?;
        let role_name = format!("climatik-generator-test-{id}");
        let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let read = ["get", "list", "watch"];
        let role = ClusterRole {
            metadata: ObjectMeta {
                name: Some(role_name.clone()),
                ..Default::default()
            },
            rules: Some(vec![
                rule(
                    &["climatik.io"],
                    &["powercappingpolicies"],
                    &["get", "list", "watch", "create", "patch", "delete"],
                ),
                rule(&["apps"], &["deployments", "statefulsets"], &read),
                rule(&["batch"], &["jobs", "cronjobs"], &read),
            ]),
            ..Default::default()
        };
        Api::<ClusterRole>::all(client.clone())
            .create(&PostParams::default(), &role)
            .await?;
        let binding = RoleBinding {
            metadata: ObjectMeta {
                name: Some("climatik-controller".into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: role_name,
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "climatik-controller".into(),
                namespace: Some(ns.name().to_string()),
                ..Default::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(client.clone(), ns.name())
            .create(&PostParams::default(), &binding)
            .await?;
        let kubeconfig = cluster
            .service_account_kubeconfig(ns.name(), "climatik-controller")
            .await?;
        let generator_client = cluster.client_for(&kubeconfig).await?;
        let (stop_generator, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(generator::run(
            generator_client,
            GeneratorConfig {
                namespace: Some(ns.name().to_string()),
                resync: Duration::from_secs(30),
            },
            Leadership::always(),
            climatik_controller::metrics::Metrics::new("powercapping-controller"),
            async move {
                let _ = stopped.await;
            },
        ));

        // TLS from a dev CA, served from files like a Secret mount.
        let tls_dir = tempfile::tempdir()?;
        let written = write_dev_ca(
            tls_dir.path(),
            &["localhost".to_string()],
            &[IpAddr::from([127, 0, 0, 1])],
        )?;
        let ca_pem = std::fs::read_to_string(&written.ca_cert)?;
        let resolver = Arc::new(ReloadingCertResolver::new(CertFiles {
            cert: written.tls_cert,
            key: written.tls_key,
        })?);
        let state = AppState::new(Metrics::new(), Limits::default(), Some(resolver.clone()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let server = start(
            listener,
            resolver.clone(),
            state,
            Duration::from_millis(200),
        )?;

        let harness = Self {
            cluster,
            ns: Some(ns),
            id,
            server: Some(server),
            resolver,
            tls_dir,
            ca_pem,
            stop_generator: Some(stop_generator),
        };
        harness.register("127.0.0.1").await?;
        harness.wait_until_admitting().await?;
        Ok(harness)
    }

    fn ns(&self) -> &str {
        self.ns.as_ref().map(|n| n.name()).unwrap_or_default()
    }

    fn config_name(&self) -> String {
        format!("climatik-webhook-test-{}", self.id)
    }

    fn port(&self) -> u16 {
        self.server
            .as_ref()
            .map(|s| s.addr.port())
            .unwrap_or_default()
    }

    /// Creates or updates this test's webhook configuration, reaching the
    /// webhook at `host` (127.0.0.1 or localhost; both are in the cert).
    async fn register(&self, host: &str) -> anyhow::Result<()> {
        let url = format!("https://{host}:{}/mutate", self.port());
        let labels = BTreeMap::from([("climatik.io/webhook-test".to_string(), self.id.clone())]);
        let config = webhook_configuration(&self.config_name(), &url, &self.ca_pem, labels);
        Api::<MutatingWebhookConfiguration>::all(self.cluster.client.clone())
            .patch(
                &self.config_name(),
                &PatchParams::apply("climatik-webhook-test").force(),
                &Patch::Apply(config),
            )
            .await?;
        Ok(())
    }

    /// The API server picks up webhook configurations asynchronously: wait
    /// until a server-side dry run comes back labelled.
    async fn wait_until_admitting(&self) -> anyhow::Result<()> {
        eventually(
            "the webhook configuration to take effect",
            Duration::from_secs(30),
            || async {
                let out = self.dry_run_deployment("probe", "100W").await?;
                Ok(out
                    .pointer("/spec/template/metadata/labels")
                    .and_then(|l| l.get(LABEL_POLICY))
                    .map(|_| ()))
            },
        )
        .await
    }

    async fn kubectl_apply(
        &self,
        manifest: &serde_json::Value,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let mut args = vec!["apply", "-n", self.ns(), "-f", "-"];
        args.extend_from_slice(extra);
        self.cluster
            .kubectl_with_stdin(args, &manifest.to_string())
            .await
    }

    async fn dry_run_deployment(&self, name: &str, cap: &str) -> anyhow::Result<serde_json::Value> {
        let out = self
            .kubectl_apply(
                &deployment(name, Some(cap)),
                &["--dry-run=server", "-o", "json"],
            )
            .await?;
        Ok(serde_json::from_str(&out)?)
    }

    fn policies(&self) -> Api<PowerCappingPolicy> {
        Api::namespaced(self.cluster.client.clone(), self.ns())
    }

    async fn wait_policy(&self, name: &str, watts: i64) -> anyhow::Result<PowerCappingPolicy> {
        let api = self.policies();
        eventually(
            &format!("policy {name} with {watts} W"),
            Duration::from_secs(20),
            || async {
                Ok(api
                    .get_opt(name)
                    .await?
                    .filter(|p| p.spec.power_cap_limit == watts))
            },
        )
        .await
    }

    async fn wait_policy_gone(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let api = self.policies();
        eventually(&format!("policy {name} to be deleted"), timeout, || async {
            Ok(api.get_opt(name).await?.is_none().then_some(()))
        })
        .await
    }

    async fn wait_owner(&self, policy: &str, uid: &str) -> anyhow::Result<()> {
        let api = self.policies();
        eventually(
            &format!("ownerReference on {policy}"),
            Duration::from_secs(20),
            || async {
                Ok(api.get_opt(policy).await?.and_then(|p| {
                    p.metadata
                        .owner_references
                        .unwrap_or_default()
                        .iter()
                        .any(|r| r.uid == uid && r.controller == Some(true))
                        .then_some(())
                }))
            },
        )
        .await
    }

    async fn wait_labelled_pods(&self, policy: &str) -> anyhow::Result<Vec<Pod>> {
        let pods = Api::<Pod>::namespaced(self.cluster.client.clone(), self.ns());
        let selector = format!("{LABEL_POLICY}={policy}");
        eventually(
            &format!("pods labelled {selector}"),
            Duration::from_secs(30),
            || async {
                let list = pods.list(&ListParams::default().labels(&selector)).await?;
                Ok((!list.items.is_empty()).then_some(list.items))
            },
        )
        .await
    }

    async fn cleanup(mut self) -> anyhow::Result<()> {
        let client = self.cluster.client.clone();
        let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(&self.config_name(), &DeleteParams::default())
            .await;
        let _ = Api::<ClusterRole>::all(client)
            .delete(
                &format!("climatik-generator-test-{}", self.id),
                &DeleteParams::default(),
            )
            .await;
        if let Some(stop) = self.stop_generator.take() {
            let _ = stop.send(());
        }
        if let Some(ns) = self.ns.take() {
            ns.cleanup().await?;
        }
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::from_secs(2)).await?;
        }
        Ok(())
    }
}

impl Drop for Harness {
    /// A failed test still removes its cluster-scoped objects.
    fn drop(&mut self) {
        if self.server.is_none() {
            return;
        }
        for args in [
            vec![
                "delete".to_string(),
                "mutatingwebhookconfiguration".into(),
                self.config_name(),
                "--ignore-not-found".into(),
                "--wait=false".into(),
            ],
            vec![
                "delete".to_string(),
                "clusterrole".into(),
                format!("climatik-generator-test-{}", self.id),
                "--ignore-not-found".into(),
                "--wait=false".into(),
            ],
        ] {
            let _ = std::process::Command::new(self.cluster.kubectl_path())
                .arg("--kubeconfig")
                .arg(self.cluster.kubeconfig())
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The workload annotations for an optional cap.
fn job(name: &str, cap: Option<&str>) -> serde_json::Value {
    let annotations = cap_annotations(cap);
    serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{ "name": "main", "image": "pytorch/pytorch:latest" }]
                }
            }
        }
    })
}

fn template_label(object: &serde_json::Value) -> Option<String> {
    object
        .pointer("/spec/template/metadata/labels")
        .and_then(|l| l.get(LABEL_POLICY))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_annotation_lifecycle() -> anyhow::Result<()> {
    let h = Harness::start("webhook-deploy").await?;
    let deployments = Api::<Deployment>::namespaced(h.cluster.client.clone(), h.ns());

    // Annotated Deployment: labelled pods, a generated policy, an owner.
    h.kubectl_apply(&deployment("vllm", Some("1.5kW")), &[])
        .await?;
    let policy = h.wait_policy("deployment-vllm", 1500).await?;
    let labels = policy.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(LABEL_GENERATED).map(String::as_str),
        Some("true")
    );
    let selector = policy
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    assert_eq!(
        selector.get(LABEL_POLICY).map(String::as_str),
        Some("deployment-vllm")
    );
    h.wait_labelled_pods("deployment-vllm").await?;
    // The normalized cap is recorded on the workload, not its pods.
    let recorded = deployments
        .get("vllm")
        .await?
        .metadata
        .annotations
        .unwrap_or_default();
    assert_eq!(
        recorded
            .get("climatik.io/power-cap-watts")
            .map(String::as_str),
        Some("1500")
    );
    let uid = deployments
        .get("vllm")
        .await?
        .metadata
        .uid
        .context("no uid")?;
    h.wait_owner("deployment-vllm", &uid).await?;

    // Re-applying the same manifest writes nothing.
    let before = h
        .policies()
        .get("deployment-vllm")
        .await?
        .metadata
        .resource_version;
    let generation = deployments.get("vllm").await?.metadata.generation;
    h.kubectl_apply(&deployment("vllm", Some("1.5kW")), &[])
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.policies()
            .get("deployment-vllm")
            .await?
            .metadata
            .resource_version,
        before
    );
    assert_eq!(
        deployments.get("vllm").await?.metadata.generation,
        generation
    );

    // A new cap updates the policy.
    h.kubectl_apply(&deployment("vllm", Some("800")), &[])
        .await?;
    h.wait_policy("deployment-vllm", 800).await?;

    // A server-side dry run is mutated but creates no policy.
    let dry = h.dry_run_deployment("dry", "300W").await?;
    assert_eq!(template_label(&dry).as_deref(), Some("deployment-dry"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.policies().get_opt("deployment-dry").await?.is_none());
    assert!(deployments.get_opt("dry").await?.is_none());

    // A bad annotation fails kubectl apply with the webhook's message.
    let err = h
        .kubectl_apply(&deployment("bad", Some("300 watts")), &[])
        .await
        .err()
        .context("a bad annotation was admitted")?
        .to_string();
    assert!(err.contains("climatik.io/power-cap"), "{err}");
    assert!(err.contains("300 watts"), "{err}");
    assert!(err.contains("1.5kW"), "{err}");
    assert!(deployments.get_opt("bad").await?.is_none());

    // A hand-written policy of the generated name is never overwritten.
    let manual: PowerCappingPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1",
        "kind": "PowerCappingPolicy",
        "metadata": { "name": "deployment-manual" },
        "spec": { "powerCapLimit": 4242, "selector": { "matchLabels": { "team": "x" } } }
    }))?;
    h.policies().create(&PostParams::default(), &manual).await?;
    h.kubectl_apply(&deployment("manual", Some("100")), &[])
        .await?;
    let kept = h.policies().get("deployment-manual").await?;
    assert_eq!(kept.spec.power_cap_limit, 4242);
    assert!(
        !kept
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(LABEL_GENERATED)
    );

    // Removing the annotation removes the label and the policy.
    h.kubectl_apply(&deployment("vllm", None), &[]).await?;
    h.wait_policy_gone("deployment-vllm", Duration::from_secs(20))
        .await?;
    let template = deployments
        .get("vllm")
        .await?
        .spec
        .and_then(|s| s.template.metadata);
    let template_labels = template.and_then(|m| m.labels).unwrap_or_default();
    assert!(
        !template_labels.contains_key(LABEL_POLICY),
        "{template_labels:?}"
    );

    // Deleting an annotated Deployment garbage-collects its policy.
    h.kubectl_apply(&deployment("vllm", Some("500W")), &[])
        .await?;
    h.wait_policy("deployment-vllm", 500).await?;
    let uid = deployments
        .get("vllm")
        .await?
        .metadata
        .uid
        .context("no uid")?;
    h.wait_owner("deployment-vllm", &uid).await?;
    deployments
        .delete("vllm", &DeleteParams::background())
        .await?;
    h.wait_policy_gone("deployment-vllm", Duration::from_secs(60))
        .await?;

    h.cleanup().await
}

/// `climatik.io/priority` and `climatik.io/min-power` reach the generated
/// policy, follow a change, and a bad value fails `kubectl apply` with the
/// webhook's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_and_guarantee_annotations_reach_the_policy() -> anyhow::Result<()> {
    let h = Harness::start("webhook-priority").await?;
    let with = |priority: &str, min_power: &str| {
        let mut manifest = deployment("serve", Some("1kW"));
        manifest["metadata"]["annotations"]["climatik.io/priority"] = priority.into();
        manifest["metadata"]["annotations"]["climatik.io/min-power"] = min_power.into();
        manifest
    };
    let wait_for = |priority: i32, min_watts: i64| {
        let api = h.policies();
        async move {
            eventually(
                &format!("policy with priority {priority} and minWatts {min_watts}"),
                Duration::from_secs(20),
                || async {
                    Ok(api.get_opt("deployment-serve").await?.filter(|p| {
                        p.spec.priority == Some(priority) && p.spec.min_watts == Some(min_watts)
                    }))
                },
            )
            .await
        }
    };
    h.kubectl_apply(&with("100", "400W"), &[]).await?;
    wait_for(100, 400).await?;
    h.kubectl_apply(&with("-5", "1kW"), &[]).await?;
    wait_for(-5, 1000).await?;

    for (priority, min_power, named, why) in [
        ("urgent", "400W", "climatik.io/priority", "a whole number"),
        (
            "2000000000",
            "400W",
            "climatik.io/priority",
            "a whole number",
        ),
        ("100", "1.2kW", "climatik.io/min-power", "above the cap 1kW"),
        ("100", "none", "climatik.io/min-power", "1.5kW"),
    ] {
        let err = h
            .kubectl_apply(&with(priority, min_power), &[])
            .await
            .err()
            .context("a bad priority or guarantee was admitted")?
            .to_string();
        assert!(err.contains(named) && err.contains(why), "{err}");
    }
    // The policy still says what was last admitted.
    let kept = h.policies().get("deployment-serve").await?;
    assert_eq!(
        (kept.spec.priority, kept.spec.min_watts),
        (Some(-5), Some(1000))
    );
    h.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_annotation_lifecycle() -> anyhow::Result<()> {
    let h = Harness::start("webhook-job").await?;
    let jobs = Api::<Job>::namespaced(h.cluster.client.clone(), h.ns());

    h.kubectl_apply(&job("train", Some("300W")), &[]).await?;
    let policy = h.wait_policy("job-train", 300).await?;
    assert_eq!(
        policy
            .metadata
            .labels
            .unwrap_or_default()
            .get(LABEL_GENERATED)
            .map(String::as_str),
        Some("true")
    );
    h.wait_labelled_pods("job-train").await?;
    let uid = jobs.get("train").await?.metadata.uid.context("no uid")?;
    h.wait_owner("job-train", &uid).await?;

    // Dry run: mutated, nothing written.
    let out = h
        .kubectl_apply(
            &job("dry", Some("300W")),
            &["--dry-run=server", "-o", "json"],
        )
        .await?;
    let dry: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(template_label(&dry).as_deref(), Some("job-dry"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.policies().get_opt("job-dry").await?.is_none());

    // Bad annotation.
    let err = h
        .kubectl_apply(&job("bad", Some("-5kW")), &[])
        .await
        .err()
        .context("a bad annotation was admitted")?
        .to_string();
    assert!(
        err.contains("climatik.io/power-cap") && err.contains("-5kW"),
        "{err}"
    );

    // Removing the annotation deletes the policy; the Job's pod template
    // is immutable, so its label stays (with a warning).
    h.kubectl_apply(&job("train", None), &[]).await?;
    h.wait_policy_gone("job-train", Duration::from_secs(20))
        .await?;
    assert!(jobs.get_opt("train").await?.is_some());

    // Deleting an annotated Job garbage-collects its policy.
    h.kubectl_apply(&job("etl", Some("2kW")), &[]).await?;
    h.wait_policy("job-etl", 2000).await?;
    let uid = jobs.get("etl").await?.metadata.uid.context("no uid")?;
    h.wait_owner("job-etl", &uid).await?;
    jobs.delete("etl", &DeleteParams::background()).await?;
    h.wait_policy_gone("job-etl", Duration::from_secs(60))
        .await?;

    h.cleanup().await
}

/// One HTTP/1.1 request over a fresh TLS connection to the webhook, verified
/// by `ca_pem`: the serial of the leaf certificate served, and the response.
async fn https_request(
    port: u16,
    host: &str,
    ca_pem: &str,
    request: Vec<u8>,
) -> anyhow::Result<(String, String)> {
    let ca_pem = ca_pem.to_string();
    let host = host.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(String, String)> {
        use std::io::{Read, Write};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host)?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        let sock = std::net::TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(&request)?;
        tls.flush()?;
        let mut response = Vec::new();
        // The server closes (Connection: close); a TLS close without
        // close_notify still leaves the whole response read.
        let _ = tls.read_to_end(&mut response);
        let leaf = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no peer certificate")?;
        let serial = certificate_serial_hex(leaf).context("unreadable serial")?;
        Ok((serial, String::from_utf8_lossy(&response).into_owned()))
    })
    .await?
}

/// The leaf certificate a fresh TLS client is served, verified by `ca_pem`.
async fn served_serial(port: u16, host: &str, ca_pem: &str) -> anyhow::Result<String> {
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    Ok(https_request(port, host, ca_pem, request.to_vec()).await?.0)
}

/// An AdmissionReview nobody's API server sent: `operation` on the
/// Deployment `name` in `namespace`, with these annotations.
fn forged_review(
    namespace: &str,
    name: &str,
    operation: &str,
    annotations: serde_json::Value,
) -> Vec<u8> {
    let mut object = deployment(name, None);
    object["metadata"]["namespace"] = serde_json::json!(namespace);
    object["metadata"]["annotations"] = annotations;
    let body = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "f0f0f0f0-0000-4000-8000-000000000001",
            "kind": { "group": "apps", "version": "v1", "kind": "Deployment" },
            "resource": { "group": "apps", "version": "v1", "resource": "deployments" },
            "name": name,
            "namespace": namespace,
            "operation": operation,
            "userInfo": { "username": "mallory" },
            "object": object,
            "oldObject": deployment(name, Some("1.5kW")),
            "dryRun": false
        }
    })
    .to_string();
    let mut request = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_admission_review_changes_no_object() -> anyhow::Result<()> {
    let h = Harness::start("webhook-forged").await?;
    h.kubectl_apply(&deployment("victim", Some("1.5kW")), &[])
        .await?;
    let before = h.wait_policy("deployment-victim", 1500).await?;

    // Anyone who can reach the webhook can post to it. Ask for a 1 W cap,
    // then for the annotation's removal, then send a CREATE for a
    // workload that does not exist.
    for (name, operation, annotations) in [
        (
            "victim",
            "UPDATE",
            serde_json::json!({ "climatik.io/power-cap": "1W" }),
        ),
        ("victim", "UPDATE", serde_json::json!({})),
        (
            "ghost",
            "CREATE",
            serde_json::json!({ "climatik.io/power-cap": "1W" }),
        ),
    ] {
        let (_, response) = https_request(
            h.port(),
            "127.0.0.1",
            &h.ca_pem,
            forged_review(h.ns(), name, operation, annotations),
        )
        .await?;
        // The webhook answers (it cannot tell who sent it)...
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    // ...but nothing changed: give a writer time to act, then compare.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = h.policies().get("deployment-victim").await?;
    assert_eq!(after.spec.power_cap_limit, 1500);
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert!(h.policies().get_opt("deployment-ghost").await?.is_none());

    h.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_keeps_admissions_working() -> anyhow::Result<()> {
    let h = Harness::start("webhook-rotate").await?;
    let first = served_serial(h.port(), "127.0.0.1", &h.ca_pem).await?;
    assert_eq!(first, h.resolver.serial_hex());

    // Rotate: a new serving certificate from the same CA, written over the
    // files while the webhook keeps running.
    let rotated = write_dev_ca(
        h.tls_dir.path(),
        &["localhost".to_string()],
        &[IpAddr::from([127, 0, 0, 1])],
    )?;
    assert!(rotated.reused_ca);
    assert_ne!(rotated.serial_hex, first);
    let ca_pem = h.ca_pem.clone();
    let port = h.port();
    eventually(
        "the new certificate to be served",
        Duration::from_secs(10),
        || {
            let ca_pem = ca_pem.clone();
            let want = rotated.serial_hex.clone();
            async move {
                let serial = served_serial(port, "127.0.0.1", &ca_pem).await?;
                Ok((serial == want).then_some(()))
            }
        },
    )
    .await?;

    // Admissions keep working; point the API server at another host name so
    // it opens a new connection, which must verify the new certificate.
    let probes = h.resolver.handshakes_with_current();
    h.register("localhost").await?;
    eventually(
        "the API server to handshake with the new certificate",
        Duration::from_secs(30),
        || async {
            let out = h.dry_run_deployment("after-rotation", "250W").await?;
            assert_eq!(
                template_label(&out).as_deref(),
                Some("deployment-after-rotation")
            );
            Ok((h.resolver.handshakes_with_current() > probes).then_some(()))
        },
    )
    .await?;
    h.kubectl_apply(&deployment("rotated", Some("250W")), &[])
        .await?;
    h.wait_policy("deployment-rotated", 250).await?;

    h.cleanup().await
}
