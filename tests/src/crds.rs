//! Installing the chart's CustomResourceDefinitions into the test cluster.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::wait::{await_condition, conditions},
};
use serde::Deserialize;

use crate::cluster::{TestCluster, repo_root};

const FIELD_MANAGER: &str = "climatik-tests";

impl TestCluster {
    /// Server-side applies every CRD in `charts/climatik/crds/` and waits
    /// until each is Established (served), returning their names. Applying
    /// is idempotent, so every test that needs the CRDs may call this.
    pub async fn install_crds(&self) -> anyhow::Result<Vec<String>> {
        self.install_crds_from(&repo_root().join("charts/climatik/crds"))
            .await
    }

    /// Like [`TestCluster::install_crds`], from another directory.
    pub async fn install_crds_from(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        let crds = read_crds(dir)?;
        let api = Api::<CustomResourceDefinition>::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut names = Vec::with_capacity(crds.len());
        for crd in crds {
            let name = crd
                .metadata
                .name
                .clone()
                .context("a CustomResourceDefinition has no metadata.name")?;
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .with_context(|| format!("applying CRD {name}"))?;
            names.push(name);
        }
        for name in &names {
            let established = await_condition(api.clone(), name, conditions::is_crd_established());
            tokio::time::timeout(Duration::from_secs(30), established)
                .await
                .with_context(|| format!("CRD {name} was not Established within 30s"))?
                .with_context(|| format!("watching CRD {name}"))?;
        }
        Ok(names)
    }
}

/// Every CustomResourceDefinition in the `*.yaml`/`*.yml` files of `dir`
/// (multi-document files allowed; an absent or empty directory has none).
fn read_crds(dir: &Path) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    files.sort();

    let mut crds = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default();
            if kind != "CustomResourceDefinition" {
                bail!(
                    "{} holds a {kind:?}, not a CustomResourceDefinition",
                    file.display()
                );
            }
            let crd: CustomResourceDefinition = serde_yaml::from_value(value)
                .with_context(|| format!("parsing a CRD in {}", file.display()))?;
            crds.push(crd);
        }
    }
    Ok(crds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directory_has_no_crds() {
        let crds = read_crds(Path::new("/nonexistent/climatik/crds"));
        assert!(matches!(crds, Ok(v) if v.is_empty()));
    }
}
