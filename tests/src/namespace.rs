//! Throwaway namespaces: every test works in its own, so tests sharing the
//! one cluster cannot see each other's objects.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, PostParams},
};
use rand::{Rng, distr::Alphanumeric};

use crate::{cluster::TestCluster, env::check_dns_label};

/// Label on every namespace a test creates, so leftovers can be found with
/// `kubectl get ns -l climatik.io/test=true`.
pub const TEST_NAMESPACE_LABEL: &str = "climatik.io/test";

/// A namespace that is deleted when dropped, or by [`TestNamespace::cleanup`]
/// (which also waits until it is gone). Set `CLIMATIK_KEEP_NAMESPACES=1` to
/// keep the namespaces of failing tests for a look.
pub struct TestNamespace {
    name: String,
    client: kube::Client,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    deleted: bool,
}

impl TestCluster {
    /// Creates a namespace named `<prefix>-<random suffix>`.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<TestNamespace> {
        let suffix: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(6)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(50)
            .collect();
        let name = format!("{}-{suffix}", prefix.trim_matches('-'));
        check_dns_label(&name)?;

        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace {
            name,
            client: self.client.clone(),
            kubectl: self.env.kubectl.clone(),
            kubeconfig: self.env.kubeconfig.clone(),
            deleted: false,
        })
    }
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace and waits (up to a minute) until the namespace
    /// controller has removed it and everything in it.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        let api = Api::<Namespace>::all(self.client.clone());
        match api.delete(&self.name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("deleting namespace {}", self.name)),
        }
        for _ in 0..120 {
            if api.get_opt(&self.name).await?.is_none() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!("namespace {} was not deleted within 60s", self.name)
    }
}

impl Drop for TestNamespace {
    /// Drop cannot await, and the test's runtime may already be shutting
    /// down, so deletion is handed to kubectl without waiting for it.
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if std::thread::panicking() && std::env::var_os("CLIMATIK_KEEP_NAMESPACES").is_some() {
            eprintln!("keeping namespace {} of the failed test", self.name);
            return;
        }
        let result = std::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !matches!(result, Ok(s) if s.success()) {
            eprintln!(
                "warning: could not delete namespace {}: {result:?}",
                self.name
            );
        }
    }
}
