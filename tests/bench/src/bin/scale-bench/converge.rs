//! Waiting for every policy to be measured and acted on; how fresh the
//! results stay.

use super::*;

fn is_measured(p: &PowerCappingPolicy) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.observed_generation.is_some()
            && s.observed_generation == p.metadata.generation
            && is_true(&s.conditions, conditions::METRICS_AVAILABLE) == Some(true)
    })
}

/// Policy keys with at least one live entry (past `expiresAt` too while
/// the Lease keeps it: at 5000 policies the first entries are written more
/// than a TTL before the last).
fn with_entries(store: &Store<NodeFrequencies>) -> std::collections::HashSet<String> {
    let now = Timestamp::now();
    store
        .state()
        .iter()
        .flat_map(|nf| {
            live_gpu_entries(nf, now)
                .map(|e| e.policy.clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub async fn wait(
    topology: &topology::Topology,
    watched: Watched<'_>,
    started: Instant,
    timeout: Duration,
) -> Value {
    let total = topology.policies.len();
    let keys: Vec<String> = topology
        .policies
        .iter()
        .map(|p| policy_key(&p.namespace, &p.name))
        .collect();
    let mut all_measured: Option<f64> = None;
    let mut all_entries: Option<f64> = None;
    let (mut measured_count, mut entries_count) = (0, 0);
    loop {
        let elapsed = started.elapsed().as_secs_f64();
        if all_measured.is_none() {
            measured_count = watched
                .policies
                .state()
                .iter()
                .filter(|p| {
                    p.namespace()
                        .is_some_and(|ns| ns.starts_with("scale-bench-"))
                })
                .filter(|p| is_measured(p))
                .count();
            if measured_count >= total {
                all_measured = Some(elapsed);
            }
        }
        if all_entries.is_none() {
            let have = with_entries(watched.nodes);
            entries_count = keys.iter().filter(|k| have.contains(*k)).count();
            if entries_count >= total {
                all_entries = Some(started.elapsed().as_secs_f64());
            }
        }
        tracing::info!(
            measured = measured_count,
            with_entries = entries_count,
            total,
            seconds = round3(elapsed),
            "warming up"
        );
        let converged = all_measured.is_some() && all_entries.is_some();
        if converged || started.elapsed() > timeout {
            if !converged {
                tracing::warn!(?timeout, "not converged; measuring the window anyway");
            }
            return json!({
                "converged": converged,
                "all_policies_measured_s": all_measured.map(round3),
                "all_policies_have_entries_s": all_entries.map(round3),
                "policies_measured_at_end": measured_count,
                "policies_with_entries_at_end": entries_count,
                "timeout_s": timeout.as_secs_f64(),
                "note": "seconds from starting both controllers with every object already created (a cold start or failover); measured = status for the current generation with MetricsAvailable=True",
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub fn freshness(topology: &topology::Topology, watched: Watched<'_>, ttl: Duration) -> Value {
    let policies = watched.policies.state();
    let now = Timestamp::now();
    let ages: Vec<f64> = policies
        .iter()
        .filter_map(|p| p.status.as_ref()?.last_updated.as_ref())
        .map(|t| now.duration_since(t.0).as_secs_f64())
        .collect();
    let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::from_secs(60));
    let keys: std::collections::HashSet<String> = topology
        .policies
        .iter()
        .map(|p| policy_key(&p.namespace, &p.name))
        .collect();
    let renewals: Vec<f64> = watched
        .nodes
        .state()
        .iter()
        .flat_map(|nf| {
            nf.spec
                .gpu_frequencies
                .iter()
                .filter(|e| keys.contains(&e.policy))
                .map(|e| &e.expires_at)
                .map(|t| now.duration_since(t.0 - ttl).as_secs_f64().max(0.0))
                .collect::<Vec<_>>()
        })
        .collect();
    json!({
        "status_age": distribution(ages),
        "entry_age": distribution(renewals),
        "note": "age at the end of the window of each policy's status.lastUpdated (its last write: on a material change or the heartbeat, by default every 3 intervals) and of each NodeFrequencies entry's last write (a changed target, or a renewal once a quarter of the entry TTL has passed); with every policy served each interval they stay under the heartbeat and a quarter of the TTL, plus an interval and the reconcile time; whether every policy is measured each interval shows in reconciles_per_s against policies_per_interval_per_s",
    })
}
