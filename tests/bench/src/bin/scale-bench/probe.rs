//! Reaction-latency probes: a cap drop travels through both controllers.

use super::*;

#[derive(Default)]
pub struct Results {
    pub patches: usize,
    monitor: Vec<f64>,
    recommender: Vec<f64>,
    end_to_end: Vec<f64>,
    failures: Vec<String>,
}

impl Results {
    pub fn summary(&self) -> Value {
        json!({
            "probes": self.end_to_end.len(),
            "failed": self.failures.len(),
            "failures": self.failures.iter().take(5).collect::<Vec<_>>(),
            "monitor": distribution(self.monitor.clone()),
            "recommender": distribution(self.recommender.clone()),
            "end_to_end": distribution(self.end_to_end.clone()),
        })
    }
}

pub async fn run(
    client: &kube::Client,
    topology: &topology::Topology,
    store: &Store<NodeFrequencies>,
    deadline: Instant,
    hard_stop: Instant,
    concurrency: usize,
) -> Results {
    let results = Mutex::new(Results::default());
    let cursor = AtomicUsize::new(0);
    let n = topology.policies.len();
    // Visits the policies in a scattered but fixed order.
    let order = |i: usize| (i * 7919) % n.max(1);
    let workers = (0..concurrency.max(1)).map(|_| async {
        while Instant::now() < deadline {
            let i = cursor.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            let policy = &topology.policies[order(i)];
            let Some(before) = targets(store, policy) else {
                continue;
            };
            if before.values().any(|t| *t <= plant::MIN_CLOCK_MHZ) {
                continue; // cannot go lower
            }
            // A probe still running at the hard stop is a failure, but
            // its cap patch was sent: count it.
            let outcome =
                tokio::time::timeout_at(hard_stop.into(), one(client, store, policy, &before))
                    .await
                    .unwrap_or_else(|_| Outcome {
                        patches: 1,
                        latency: Err(anyhow::anyhow!("still waiting when the window ended")),
                    });
            let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
            r.patches += outcome.patches;
            match outcome.latency {
                Ok((monitor, recommender)) => {
                    r.monitor.push(monitor);
                    r.recommender.push(recommender);
                    r.end_to_end.push(monitor + recommender);
                }
                Err(e) => r
                    .failures
                    .push(format!("{}/{}: {e:#}", policy.namespace, policy.name)),
            }
        }
    });
    futures::future::join_all(workers).await;
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The policy's entry target per GPU, if every GPU has one.
fn targets(store: &Store<NodeFrequencies>, p: &topology::Policy) -> Option<BTreeMap<String, i32>> {
    let key = policy_key(&p.namespace, &p.name);
    p.pods
        .iter()
        .map(|pod| {
            let nf = store.get(&ObjectRef::new(&pod.node))?;
            let entry = nf
                .spec
                .gpu_frequencies
                .iter()
                .find(|e| e.gpu_id == pod.gpu_uuid && e.policy == key)?;
            Some((pod.gpu_uuid.clone(), entry.target_frequency))
        })
        .collect()
}

struct Outcome {
    patches: usize,
    latency: anyhow::Result<(f64, f64)>,
}

async fn one(
    client: &kube::Client,
    store: &Store<NodeFrequencies>,
    p: &topology::Policy,
    before: &BTreeMap<String, i32>,
) -> Outcome {
    let api = Api::<PowerCappingPolicy>::namespaced(client.clone(), &p.namespace);
    let mut patches = 0;
    let latency = measure(&api, store, p, before, &mut patches).await;
    // Put the cap back, whatever happened.
    let restore = json!({ "spec": { "powerCapLimit": p.cap_watts } });
    if api
        .patch(&p.name, &PatchParams::default(), &Patch::Merge(restore))
        .await
        .is_ok()
    {
        patches += 1;
    }
    Outcome { patches, latency }
}

async fn measure(
    api: &Api<PowerCappingPolicy>,
    store: &Store<NodeFrequencies>,
    p: &topology::Policy,
    before: &BTreeMap<String, i32>,
    patches: &mut usize,
) -> anyhow::Result<(f64, f64)> {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", p.name));
    let mut watch = std::pin::pin!(watcher(api.clone(), config).applied_objects());
    // The first object comes from the initial list: from here on the
    // watch sees every change.
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .context("watch did not start")?;
    let t0 = Instant::now();
    let patch = json!({ "spec": { "powerCapLimit": PROBE_CAP_WATTS } });
    let patched = api
        .patch(&p.name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    *patches += 1;
    let generation = patched.metadata.generation.context("no generation")?;
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(item) = watch.next().await {
            if let Ok(policy) = item
                && policy
                    .status
                    .as_ref()
                    .and_then(|s| s.observed_generation)
                    .is_some_and(|g| g >= generation)
            {
                return true;
            }
        }
        false
    })
    .await;
    if seen != Ok(true) {
        bail!("status did not reach generation {generation} within 30 s");
    }
    let monitor = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let lowered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(now) = targets(store, p)
                && now
                    .iter()
                    .all(|(gpu, t)| before.get(gpu).is_some_and(|b| t < b))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if lowered.is_err() {
        bail!("entries were not lowered within 30 s of the status");
    }
    Ok((monitor, t1.elapsed().as_secs_f64()))
}
