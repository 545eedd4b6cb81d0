//! Kubeconfigs for ServiceAccounts, so components under test run with the
//! permissions their chart grants them rather than as admin.

use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
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
        check_dns_label(namespace)?;
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(TOKEN_SECONDS),
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
        let path = dir.join(format!("{namespace}.{name}.kubeconfig"));
        // JSON is YAML, and every kubeconfig reader accepts it.
        let text = serde_json::to_string_pretty(&kubeconfig)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}
