//! Kubeconfigs for ServiceAccounts, so components under test run with the
//! permissions their chart grants them rather than as admin. A token can be
//! bound to a Pod, as the kubelet's are: the API server then names the
//! Pod's node in the token's user info, which admission policies check.

use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::ServiceAccount,
    },
};
use kube::{Api, api::PostParams};

use crate::{cluster::TestCluster, env::check_dns_label};

/// How long minted tokens live: longer than any test run.
const TOKEN_SECONDS: i64 = 24 * 3600;

impl TestCluster {
    /// Mints a token for ServiceAccount `namespace/name` (TokenRequest API)
    /// and writes a kubeconfig using it, returning its path (under the
    /// cluster's state directory). The ServiceAccount must exist.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        self.minted_kubeconfig(namespace, name, None).await
    }

    /// Like [`Self::service_account_kubeconfig`], with the token bound to
    /// Pod `namespace/pod` (which must exist and run as this ServiceAccount):
    /// it carries the Pod's node as user extra
    /// `authentication.kubernetes.io/node-name`, as a kubelet-mounted token
    /// does, and dies with the Pod.
    pub async fn pod_bound_service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        pod: &str,
    ) -> anyhow::Result<PathBuf> {
        self.minted_kubeconfig(namespace, name, Some(pod)).await
    }

    async fn minted_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        pod: Option<&str>,
    ) -> anyhow::Result<PathBuf> {
        check_dns_label(namespace)?;
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(TOKEN_SECONDS),
                bound_object_ref: pod.map(|pod| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.into()),
                    uid: None,
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let minted = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?;
        let token = minted
            .status
            .map(|s| s.token)
            .context("the TokenRequest came back without a token")?;

        let ca = std::fs::read(self.ca_file())
            .with_context(|| format!("reading {}", self.ca_file().display()))?;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "climatik-local",
                "cluster": {
                    "server": self.apiserver_url(),
                    // ByteString serialises as base64, as kubeconfig wants.
                    "certificate-authority-data": ByteString(ca),
                },
            }],
            "users": [{ "name": user, "user": { "token": token } }],
            "contexts": [{
                "name": "climatik-local",
                "context": { "cluster": "climatik-local", "user": user, "namespace": namespace },
            }],
            "current-context": "climatik-local",
        });

        let dir = self.state_dir().join("sa-kubeconfigs");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = match pod {
            Some(pod) => format!("{namespace}.{name}.{pod}.kubeconfig"),
            None => format!("{namespace}.{name}.kubeconfig"),
        };
        let path = dir.join(file);
        // JSON is YAML, and every kubeconfig reader accepts it.
        let text = serde_json::to_string_pretty(&kubeconfig)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}
