//! The chart's Grafana dashboard (`charts/climatik/dashboards/climatik.json`)
//! as PromQL: every panel target's query and every variable's
//! `label_values(...)`, with Grafana's variables put in, so the e2e test can
//! run them against the local Prometheus and the demo can link to them.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Where the dashboard lives, relative to the repository root.
pub const DASHBOARD_PATH: &str = "charts/climatik/dashboards/climatik.json";

/// The panels whose queries `make demo` links to: power against caps, and
/// how much of the time the policies were capped.
pub const KEY_PANELS: [&str; 2] = ["Fleet power vs caps", "Capping time share"];

/// One query of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// A query variable: Grafana fills it from `label_values(selector, label)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    pub name: String,
    pub selector: String,
    pub label: String,
}

/// The dashboard's queries.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub targets: Vec<Target>,
    pub variables: Vec<Variable>,
}

#[derive(Deserialize)]
struct Json {
    panels: Vec<JsonPanel>,
    templating: JsonTemplating,
}

#[derive(Deserialize)]
struct JsonPanel {
    title: String,
    #[serde(default)]
    targets: Vec<JsonTarget>,
}

#[derive(Deserialize)]
struct JsonTarget {
    #[serde(rename = "refId")]
    ref_id: String,
    expr: String,
}

#[derive(Deserialize)]
struct JsonTemplating {
    list: Vec<JsonVariable>,
}

#[derive(Deserialize)]
struct JsonVariable {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    definition: String,
}

impl Dashboard {
    /// Reads the dashboard from the repository.
    pub fn load() -> anyhow::Result<Dashboard> {
        let path: PathBuf = climatik_test_support::repo_root().join(DASHBOARD_PATH);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Dashboard::parse(&text).with_context(|| format!("in {DASHBOARD_PATH}"))
    }

    pub fn parse(text: &str) -> anyhow::Result<Dashboard> {
        let json: Json = serde_json::from_str(text).context("not a dashboard")?;
        let targets = json
            .panels
            .into_iter()
            .flat_map(|p| {
                let panel = p.title;
                p.targets.into_iter().map(move |t| Target {
                    panel: panel.clone(),
                    ref_id: t.ref_id,
                    expr: t.expr,
                })
            })
            .collect();
        let variables = json
            .templating
            .list
            .into_iter()
            .filter(|v| v.kind == "query")
            .map(|v| {
                let (selector, label) =
                    label_values(&v.definition).with_context(|| format!("variable {}", v.name))?;
                Ok(Variable {
                    name: v.name,
                    selector,
                    label,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Dashboard { targets, variables })
    }

    /// The targets of panel `title`.
    pub fn panel(&self, title: &str) -> anyhow::Result<Vec<&Target>> {
        let found: Vec<_> = self.targets.iter().filter(|t| t.panel == title).collect();
        if found.is_empty() {
            bail!("the dashboard has no panel {title:?}");
        }
        Ok(found)
    }
}

impl Variable {
    /// The PromQL Grafana's `label_values(selector, label)` stands for: one
    /// series per value of `label`.
    pub fn query(&self) -> String {
        format!("count by ({}) ({})", self.label, self.selector)
    }
}

/// `label_values(selector, label)` split into its two arguments.
fn label_values(definition: &str) -> anyhow::Result<(String, String)> {
    let inner = definition
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .with_context(|| format!("{definition:?} is not label_values(selector, label)"))?;
    let (selector, label) = inner
        .rsplit_once(',')
        .with_context(|| format!("{definition:?} names no label"))?;
    Ok((selector.trim().to_string(), label.trim().to_string()))
}

/// Puts `values` in for Grafana's `$name` and `${name}` variables (the
/// dashboard's own and the built-in `$__rate_interval`, `$__range`...).
/// `$1` and the like are left alone: they are `label_replace`'s references.
/// A variable without a value is an error, so a query never reaches
/// Prometheus half-substituted.
pub fn substitute(expr: &str, values: &BTreeMap<&str, String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .with_context(|| format!("unclosed ${{ in {expr:?}"))?;
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            out.push('$');
            rest = after;
            continue;
        }
        let value = values
            .get(name)
            .with_context(|| format!("no value for ${name} in {expr:?}"))?;
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A link to Prometheus' graph page showing `exprs`, one graph each.
pub fn graph_url(prometheus_url: &str, exprs: &[String]) -> anyhow::Result<String> {
    let base = format!("{}/graph", prometheus_url.trim_end_matches('/'));
    let params: Vec<(String, String)> = exprs
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            [
                (format!("g{i}.expr"), e.clone()),
                (format!("g{i}.tab"), "0".to_string()),
                (format!("g{i}.range_input"), "15m".to_string()),
            ]
        })
        .collect();
    let url = reqwest::Url::parse_with_params(&base, &params)
        .with_context(|| format!("building a URL from {base}"))?;
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("namespace", "team".to_string()),
            ("__rate_interval", "30s".to_string()),
        ])
    }

    #[test]
    fn substitutes_plain_and_braced_variables_and_keeps_label_replace_references() {
        let expr = r#"rate(x{namespace=~"$namespace", n="${namespace}"}[$__rate_interval]) + label_replace(y, "u", "$1", "g", "(.+)")"#;
        assert_eq!(
            substitute(expr, &values()).unwrap(),
            r#"rate(x{namespace=~"team", n="team"}[30s]) + label_replace(y, "u", "$1", "g", "(.+)")"#
        );
    }

    #[test]
    fn a_variable_without_a_value_is_an_error() {
        let err = substitute("increase(x[$__range])", &values()).unwrap_err();
        assert!(err.to_string().contains("$__range"), "{err}");
    }

    #[test]
    fn label_values_becomes_a_count_by_the_label() {
        let (selector, label) =
            label_values(r#"label_values(m{namespace=~"$namespace"}, policy)"#).unwrap();
        let v = Variable {
            name: "policy".into(),
            selector,
            label,
        };
        assert_eq!(
            v.query(),
            r#"count by (policy) (m{namespace=~"$namespace"})"#
        );
    }

    #[test]
    fn the_chart_dashboard_parses_and_has_the_demo_panels() {
        let d = Dashboard::load().unwrap();
        assert!(d.targets.len() >= 8, "{:?}", d.targets);
        assert_eq!(d.variables.len(), 2, "{:?}", d.variables);
        for title in KEY_PANELS {
            assert!(!d.panel(title).unwrap().is_empty());
        }
    }
}
