//! Every node agent is Ready and has reported: the DaemonSet runs a Ready
//! agent on each node it selects, and each of those nodes' NodeFrequencies
//! names the backend the agent found. A DaemonSet that selects no node
//! (GPU nodes not labelled) fails too: nothing would be capped.

use std::collections::BTreeMap;

use climatik_api::NodeFrequencies;
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use kube::{Api, api::ListParams};

/// Reads the DaemonSet, its pods and their nodes' NodeFrequencies.
pub async fn check(client: &kube::Client, namespace: &str, name: &str) -> Result<String, String> {
    let daemonset = Api::<DaemonSet>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| format!("DaemonSet {namespace}/{name}: {e}"))?;
    let selector = daemonset
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let node_selector = daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    let counts = Counts::of(&daemonset);
    judge_rollout(&counts, &node_selector)
        .map_err(|problem| format!("DaemonSet {namespace}/{name}: {problem}"))?;

    let labels = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&labels))
        .await
        .map_err(|e| format!("pods of DaemonSet {namespace}/{name}: {e}"))?;
    let frequencies = Api::<NodeFrequencies>::all(client.clone());
    let mut reports = BTreeMap::new();
    for node in pods.items.iter().filter(|p| ready(p)).filter_map(node_of) {
        let found = frequencies
            .get_opt(&node)
            .await
            .map_err(|e| format!("NodeFrequencies {node}: {e}"))?;
        reports.insert(node, found.and_then(|nf| nf.status).and_then(|s| s.backend));
    }
    judge_reports(&reports)
}

/// The DaemonSet's rollout counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
}

impl Counts {
    fn of(daemonset: &DaemonSet) -> Self {
        daemonset
            .status
            .as_ref()
            .map(|s| Self {
                desired: s.desired_number_scheduled,
                ready: s.number_ready,
                updated: s.updated_number_scheduled.unwrap_or_default(),
            })
            .unwrap_or_default()
    }
}

/// Every selected node runs a Ready agent of the current template.
pub fn judge_rollout(
    counts: &Counts,
    node_selector: &BTreeMap<String, String>,
) -> Result<(), String> {
    if counts.desired == 0 {
        let selector = node_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        return Err(format!(
            "selects no node: no node has the labels {selector:?} and tolerates the agent (label the GPU nodes, or set freqtuner.nodeSelector)"
        ));
    }
    if counts.ready < counts.desired || counts.updated < counts.desired {
        return Err(format!(
            "{} of {} agents Ready, {} updated; `kubectl describe pod` on the others says why",
            counts.ready, counts.desired, counts.updated
        ));
    }
    Ok(())
}

/// Each Ready agent's node has a NodeFrequencies with the agent's backend.
pub fn judge_reports(reports: &BTreeMap<String, Option<String>>) -> Result<String, String> {
    if reports.is_empty() {
        return Err("no agent pod is Ready".into());
    }
    let silent: Vec<&str> = reports
        .iter()
        .filter(|(_, backend)| backend.is_none())
        .map(|(node, _)| node.as_str())
        .collect();
    if !silent.is_empty() {
        return Err(format!(
            "the agents on {} have not reported (their NodeFrequencies has no status.backend); see the agents' logs",
            silent.join(", ")
        ));
    }
    let mut by_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for backend in reports.values().flatten() {
        *by_backend.entry(backend.as_str()).or_default() += 1;
    }
    let backends = by_backend
        .iter()
        .map(|(backend, n)| format!("{n} {backend}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "{} nodes, each agent Ready and reporting ({backends})",
        reports.len()
    ))
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu_nodes() -> BTreeMap<String, String> {
        BTreeMap::from([("nvidia.com/gpu.present".into(), "true".into())])
    }

    #[test]
    fn a_daemonset_without_nodes_names_the_labels_it_wants() {
        let problem = judge_rollout(&Counts::default(), &gpu_nodes()).expect_err("no node");
        assert!(problem.contains("nvidia.com/gpu.present=true"), "{problem}");
    }

    #[test]
    fn every_selected_node_needs_a_ready_current_agent() {
        let all = Counts {
            desired: 3,
            ready: 3,
            updated: 3,
        };
        assert_eq!(judge_rollout(&all, &gpu_nodes()), Ok(()));
        let one_down = Counts { ready: 2, ..all };
        let problem = judge_rollout(&one_down, &gpu_nodes()).expect_err("one down");
        assert!(problem.starts_with("2 of 3 agents Ready"), "{problem}");
        let rolling = Counts { updated: 1, ..all };
        assert!(judge_rollout(&rolling, &gpu_nodes()).is_err());
    }

    #[test]
    fn every_ready_agent_must_have_reported_its_backend() {
        let reports = BTreeMap::from([
            ("gpu-1".to_string(), Some("nvml".to_string())),
            ("gpu-2".to_string(), Some("nvml".to_string())),
            ("cpu-1".to_string(), Some("cpufreq".to_string())),
        ]);
        assert_eq!(
            judge_reports(&reports),
            Ok("3 nodes, each agent Ready and reporting (1 cpufreq, 2 nvml)".to_string())
        );
        let mut one_silent = reports.clone();
        one_silent.insert("gpu-3".into(), None);
        let problem = judge_reports(&one_silent).expect_err("gpu-3 silent");
        assert!(problem.contains("gpu-3"), "{problem}");
        assert!(judge_reports(&BTreeMap::new()).is_err());
    }
}
