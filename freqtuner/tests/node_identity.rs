//! The chart's node-identity ValidatingAdmissionPolicy against the real API
//! server. An agent's token bound to a Pod on node A may create A's
//! NodeFrequencies (as the agent does) and write its status; it may not
//! touch B's, write any spec or delete, even where RBAC is widened to allow
//! it; an unbound token writes nothing. The recommender's spec writes are
//! unaffected. Each run owns its Nodes, ServiceAccounts and cluster-scoped
//! chart objects (named after its namespace), so runs never collide.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, bail};
use climatik_api::{NodeFrequencies, names};
use climatik_test_support::{TestCluster, TestNamespace, cluster, eventually};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};

/// The policy's name as the chart renders it with `fullnameOverride`.
fn policy_name(fullname: &str) -> String {
    format!("{fullname}-freqtuner-node-identity")
}

/// The two Nodes, the chart's agent and recommender objects rendered for
/// this run's namespace, and an agent Pod on node A.
struct Fixture {
    cluster: TestCluster,
    ns: Option<TestNamespace>,
    /// `fullnameOverride`: prefix of every rendered object's name.
    fullname: String,
    node_a: String,
    node_b: String,
    /// Every cluster-scoped object this run applied, deleted at the end.
    cluster_objects: String,
}

impl Fixture {
    async fn new() -> anyhow::Result<Self> {
        let cluster = cluster().await?;
        cluster.install_crds().await?;
        let ns = cluster.namespace("node-identity").await?;
        let fullname = ns.name().to_string();
        let node_a = format!("{fullname}-a");
        let node_b = format!("{fullname}-b");
        let mut fx = Self {
            cluster,
            ns: Some(ns),
            fullname,
            node_a,
            node_b,
            cluster_objects: String::new(),
        };

        let nodes: String = [&fx.node_a, &fx.node_b]
            .iter()
            .map(|n| {
                format!(
                    "apiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n  labels:\n    climatik.io/test: \"true\"\n---\n"
                )
            })
            .collect();
        let override_name = format!("fullnameOverride={}", fx.fullname);
        let rendered = fx
            .cluster
            .render_chart(
                "node-identity",
                fx.ns(),
                &[
                    "--set",
                    &override_name,
                    "--show-only",
                    "templates/freqtuner/serviceaccount.yaml",
                    "--show-only",
                    "templates/freqtuner/rbac.yaml",
                    "--show-only",
                    "templates/freqtuner/node-identity.yaml",
                    "--show-only",
                    "templates/recommender/serviceaccount.yaml",
                    "--show-only",
                    "templates/recommender/rbac.yaml",
                ],
            )
            .await?;
        // Recorded before applying, so a half-applied run is still removed.
        fx.cluster_objects = format!("{nodes}{rendered}");
        fx.cluster
            .kubectl_with_stdin(["apply", "-f", "-"], &fx.cluster_objects)
            .await
            .context("applying the Nodes and the chart's objects")?;

        // The agent's Pod: never runs (no kubelet), but a token bound to it
        // names node A, as the kubelet-mounted token of a DaemonSet pod does.
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent"},
            "spec": {
                "nodeName": fx.node_a,
                "serviceAccountName": fx.agent_account(),
                "containers": [{"name": "freqtuner", "image": "registry.k8s.io/pause:3.10"}],
            },
        }))?;
        Api::<Pod>::namespaced(fx.cluster.client.clone(), fx.ns())
            .create(&PostParams::default(), &pod)
            .await
            .context("creating the agent's Pod")?;
        Ok(fx)
    }

    fn ns(&self) -> &str {
        self.ns
            .as_ref()
            .map(TestNamespace::name)
            .unwrap_or_default()
    }

    fn agent_account(&self) -> String {
        format!("{}-freqtuner", self.fullname)
    }

    /// A client with the agent's token bound to its Pod on node A.
    async fn agent_on_a(&self) -> anyhow::Result<Api<NodeFrequencies>> {
        let kubeconfig = self
            .cluster
            .pod_bound_service_account_kubeconfig(self.ns(), &self.agent_account(), "agent")
            .await?;
        Ok(Api::all(self.cluster.client_for(&kubeconfig).await?))
    }

    /// A client with an agent token bound to nothing.
    async fn agent_unbound(&self) -> anyhow::Result<Api<NodeFrequencies>> {
        let kubeconfig = self
            .cluster
            .service_account_kubeconfig(self.ns(), &self.agent_account())
            .await?;
        Ok(Api::all(self.cluster.client_for(&kubeconfig).await?))
    }

    async fn recommender(&self) -> anyhow::Result<Api<NodeFrequencies>> {
        let account = format!("{}-freqtuning-recommender", self.fullname);
        let kubeconfig = self
            .cluster
            .service_account_kubeconfig(self.ns(), &account)
            .await?;
        Ok(Api::all(self.cluster.client_for(&kubeconfig).await?))
    }

    /// What the agent creates for a missing object: its node's name, no
    /// targets, owned by its Node.
    async fn agent_object(&self, node: &str) -> anyhow::Result<NodeFrequencies> {
        let uid = Api::<Node>::all(self.cluster.client.clone())
            .get(node)
            .await?
            .metadata
            .uid
            .context("Node without uid")?;
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "climatik.io/v1alpha1", "kind": "NodeFrequencies",
            "metadata": {"name": node, "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]},
            "spec": {"nodeName": node},
        }))?)
    }

    /// Grants the agent's account every write on NodeFrequencies, so what
    /// is refused next is refused by the policy, not by RBAC.
    async fn widen_agent_rbac(&mut self) -> anyhow::Result<()> {
        let name = format!("{}-widened", self.fullname);
        let objects = format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\nrules:\n  - apiGroups: [climatik.io]\n    resources: [nodefrequencies, nodefrequencies/status]\n    verbs: [create, update, patch, delete]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {name}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {name}\nsubjects:\n  - kind: ServiceAccount\n    name: {account}\n    namespace: {ns}\n---\n",
            account = self.agent_account(),
            ns = self.ns(),
        );
        self.cluster_objects.push_str(&objects);
        self.cluster
            .kubectl_with_stdin(["apply", "-f", "-"], &objects)
            .await?;
        Ok(())
    }

    async fn cleanup(mut self) -> anyhow::Result<()> {
        // No kubelet ever confirms the Pod's deletion: remove it at once, or
        // the namespace waits for the pod garbage collector.
        Api::<Pod>::namespaced(self.cluster.client.clone(), self.ns())
            .delete("agent", &DeleteParams::default().grace_period(0))
            .await
            .context("deleting the agent's Pod")?;
        self.cluster
            .kubectl_with_stdin(
                ["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
                &self.cluster_objects,
            )
            .await?;
        self.cluster_objects.clear();
        if let Some(ns) = self.ns.take() {
            ns.cleanup().await?;
        }
        Ok(())
    }
}

impl Drop for Fixture {
    /// A failed test still removes its cluster-scoped objects (the Nodes
    /// take their NodeFrequencies with them, by ownership).
    fn drop(&mut self) {
        if self.cluster_objects.is_empty() {
            return;
        }
        let child = std::process::Command::new(self.cluster.kubectl_path())
            .arg("--kubeconfig")
            .arg(self.cluster.kubeconfig())
            .args(["delete", "--ignore-not-found", "--wait=false", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut child) = child {
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write;
                let _ = stdin.write_all(self.cluster_objects.as_bytes());
            }
            let _ = child.wait();
        }
    }
}

/// The status write the agent makes (server-side apply on `/status`).
async fn write_status(api: &Api<NodeFrequencies>, node: &str) -> kube::Result<NodeFrequencies> {
    let body = serde_json::json!({
        "apiVersion": "climatik.io/v1alpha1", "kind": "NodeFrequencies",
        "metadata": {"name": node},
        "status": {"backend": "sim"},
    });
    api.patch_status(
        node,
        &PatchParams::apply(names::MANAGER_FREQTUNER).force(),
        &Patch::Apply(&body),
    )
    .await
}

/// The API server's refusal: 403 with a message containing `want`.
fn assert_refused<T: std::fmt::Debug>(result: kube::Result<T>, want: &str) -> anyhow::Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 && status.message.contains(want) => {
            Ok(())
        }
        other => bail!("expected a 403 containing {want:?}, got {other:?}"),
    }
}

/// Whether `result` is the policy's refusal (not RBAC's, not success).
fn refused_by_policy<T>(result: &kube::Result<T>, policy: &str) -> bool {
    matches!(result, Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(policy))
}

#[tokio::test]
async fn an_agent_writes_only_its_own_nodes_status() -> anyhow::Result<()> {
    let mut fx = Fixture::new().await?;
    let policy = policy_name(&fx.fullname);
    let (a, b) = (fx.node_a.clone(), fx.node_b.clone());
    let agent = fx.agent_on_a().await?;
    let recommender = fx.recommender().await?;

    // The API server loads new policies asynchronously: wait until it
    // refuses (dry run) the agent on A creating B's object. Without the
    // policy this never happens: RBAC lets every agent create every node's.
    let b_object = fx.agent_object(&b).await?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        "the node-identity policy to refuse node A's agent creating B's object",
        Duration::from_secs(30),
        || async {
            let result = agent.create(&dry_run, &b_object).await;
            Ok(refused_by_policy(&result, &policy).then_some(()))
        },
    )
    .await?;
    assert_refused(
        agent.create(&PostParams::default(), &b_object).await,
        &format!("the freqtuner on node {a} may write only NodeFrequencies {a}, not {b}"),
    )?;

    // Its own object with targets in it: the agent creates no targets.
    let mut a_with_targets = fx.agent_object(&a).await?;
    a_with_targets.spec.cpu_frequencies = serde_json::from_value(serde_json::json!(
        [{"cpuId": 0, "targetFrequency": 2000, "expiresAt": "2099-01-01T00:00:00Z"}]
    ))?;
    assert_refused(
        agent.create(&dry_run, &a_with_targets).await,
        &format!("may create NodeFrequencies {a} only with spec.nodeName {a}, no targets"),
    )?;

    // Its own object, exactly as the agent creates it, and its status.
    agent
        .create(&PostParams::default(), &fx.agent_object(&a).await?)
        .await
        .context("agent on A creating A's NodeFrequencies")?;
    write_status(&agent, &a)
        .await
        .context("agent on A writing A's status")?;

    // B's object (as B's agent made it): its status is not A's to write.
    Api::<NodeFrequencies>::all(fx.cluster.client.clone())
        .create(&PostParams::default(), &fx.agent_object(&b).await?)
        .await
        .context("creating B's NodeFrequencies")?;
    assert_refused(
        write_status(&agent, &b).await,
        &format!("the freqtuner on node {a} may write only NodeFrequencies {a}, not {b}"),
    )?;

    // A token not bound to a Pod on a node writes nothing.
    assert_refused(
        write_status(&fx.agent_unbound().await?, &a).await,
        "only with a token bound to a Pod scheduled on a node",
    )?;

    // Spec writes and deletes: RBAC refuses them already; with RBAC
    // widened, the policy still does.
    let spec_patch = Patch::Merge(serde_json::json!({
        "spec": {"cpuFrequencies": [{"cpuId": 0, "targetFrequency": 2000,
                                     "expiresAt": "2099-01-01T00:00:00Z"}]},
    }));
    assert_refused(
        agent.patch(&a, &PatchParams::default(), &spec_patch).await,
        "cannot patch resource \"nodefrequencies\"",
    )?;
    fx.widen_agent_rbac().await?;
    let spec_refusal = format!(
        "the freqtuner on node {a} may write only the status of NodeFrequencies {a}; \
         its spec and metadata belong to the recommender"
    );
    eventually(
        "the widened RBAC to reach the authorizer (the policy refuses, not RBAC)",
        Duration::from_secs(30),
        || async {
            let result = agent.patch(&a, &PatchParams::default(), &spec_patch).await;
            Ok(refused_by_policy(&result, &policy).then_some(result))
        },
    )
    .await
    .and_then(|result| assert_refused(result, &spec_refusal))?;
    assert_refused(
        agent.delete(&a, &DeleteParams::default()).await,
        &format!("the freqtuner on node {a} may not delete NodeFrequencies {a}"),
    )?;
    // The recommender still writes A's spec.
    recommender
        .patch(&a, &PatchParams::default(), &spec_patch)
        .await
        .context("recommender writing A's spec")?;
    let a_now = Api::<NodeFrequencies>::all(fx.cluster.client.clone())
        .get(&a)
        .await?;
    assert_eq!(a_now.spec.cpu_frequencies.len(), 1, "{a_now:?}");
    assert_eq!(
        a_now.status.and_then(|s| s.backend).as_deref(),
        Some("sim"),
        "the agent's status write on A landed"
    );

    fx.cleanup().await
}
