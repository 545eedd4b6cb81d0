//! Peak memory of each component against the memory limit the Helm chart
//! gives its container: the peak resident set (`VmHWM`) the kernel keeps
//! per process, so a spike between two readings is not missed.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, bail};

/// `component -> limit in MiB`, from `charts/climatik/values.yaml`. The
/// stack's component names map onto the chart's sections: every
/// `freqtuner-<node>` has the freqtuner's limit.
#[derive(Debug, Clone)]
pub struct Limits(BTreeMap<String, f64>);

impl Limits {
    pub fn from_values(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let values: serde_yaml::Value = serde_yaml::from_str(&text)?;
        let mut limits = BTreeMap::new();
        for section in ["webhook", "controller", "recommender", "freqtuner"] {
            let quantity = values
                .get(section)
                .and_then(|s| s.get("resources"))
                .and_then(|r| r.get("limits"))
                .and_then(|l| l.get("memory"))
                .and_then(|m| m.as_str())
                .with_context(|| {
                    format!(
                        "{} sets no {section}.resources.limits.memory",
                        path.display()
                    )
                })?;
            limits.insert(section.to_string(), mebibytes(quantity)?);
        }
        Ok(Self(limits))
    }

    /// The limit of a stack component, by its name in the stack.
    pub fn of(&self, component: &str) -> Option<f64> {
        let section = match component {
            "webhook" => "webhook",
            "powercapping-controller" => "controller",
            "freqtuning-recommender" => "recommender",
            c if c.starts_with("freqtuner") => "freqtuner",
            _ => return None,
        };
        self.0.get(section).copied()
    }
}

/// A Kubernetes memory quantity (`128Mi`, `1Gi`, `500M`, `1048576`) in MiB.
pub fn mebibytes(quantity: &str) -> anyhow::Result<f64> {
    let units: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(suffix, factor)| quantity.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((quantity, 1.0));
    let value: f64 = number
        .parse()
        .with_context(|| format!("{quantity:?} is not a memory quantity"))?;
    if !value.is_finite() || value < 0.0 {
        bail!("{quantity:?} is not a memory quantity");
    }
    Ok(value * factor / (1024.0 * 1024.0))
}

/// The peak resident set of process `pid` in MiB (`VmHWM`), or `None` once
/// it has exited.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() -> anyhow::Result<()> {
        assert_eq!(mebibytes("128Mi")?, 128.0);
        assert_eq!(mebibytes("1Gi")?, 1024.0);
        assert_eq!(mebibytes("1048576")?, 1.0);
        assert!(mebibytes("lots").is_err());
        assert!(mebibytes("-1Mi").is_err());
        Ok(())
    }

    #[test]
    fn reads_the_charts_limits() -> anyhow::Result<()> {
        let limits = Limits::from_values(
            &climatik_test_support::repo_root().join("charts/climatik/values.yaml"),
        )?;
        for component in [
            "webhook",
            "powercapping-controller",
            "freqtuning-recommender",
            "freqtuner-gpu-node-0",
        ] {
            assert!(limits.of(component).is_some_and(|l| l > 0.0), "{component}");
        }
        assert_eq!(limits.of("something-else"), None);
        Ok(())
    }

    #[test]
    fn reads_our_own_peak() {
        assert!(peak_rss_mib(std::process::id()).is_some_and(|m| m > 0.0));
    }
}
