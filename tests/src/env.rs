//! Reading the environment file `tests/cluster/up.sh` writes, so the crate
//! learns ports and paths from the scripts instead of repeating them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

/// What `<state>/env` says about a running cluster.
#[derive(Debug, Clone)]
pub(crate) struct ClusterEnv {
    pub state_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub apiserver_url: String,
    pub ca_file: PathBuf,
    pub prometheus_url: String,
    pub prometheus_sd_dir: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
}

impl ClusterEnv {
    pub fn read(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join("env");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let vars = parse(&text);
        let get = |key: &str| -> anyhow::Result<String> {
            vars.get(key)
                .cloned()
                .with_context(|| format!("{} does not set {key}", path.display()))
        };
        Ok(Self {
            state_dir: state_dir.to_path_buf(),
            kubeconfig: get("KUBECONFIG")?.into(),
            apiserver_url: get("APISERVER_URL")?,
            ca_file: get("CLUSTER_CA_FILE")?.into(),
            prometheus_url: get("PROMETHEUS_URL")?,
            prometheus_sd_dir: get("PROMETHEUS_SD_DIR")?.into(),
            kubectl: get("KUBECTL")?.into(),
            helm: get("HELM")?.into(),
        })
    }
}

/// Parses `export KEY='value'` lines; up.sh writes nothing more elaborate.
fn parse(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            if line.starts_with('#') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(value);
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

/// Checks that a generated name is a DNS-1123 label, before the API server
/// rejects it with a less helpful message.
pub(crate) fn check_dns_label(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!("{name:?} is not a valid DNS label");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_file() {
        let vars = parse("# comment\nexport A='x y'\nexport B=z\n\n");
        assert_eq!(vars["A"], "x y");
        assert_eq!(vars["B"], "z");
        assert_eq!(vars.len(), 2);
    }

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("abc-1").is_ok());
        assert!(check_dns_label("Abc").is_err());
        assert!(check_dns_label("-a").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
    }
}
