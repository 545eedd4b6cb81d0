//! Prometheus text from the API server and the controllers, before and
//! after the window.

use climatik_test_support::exposition;

use super::*;

/// One sample line: name, labels, value.
pub type Line = (String, BTreeMap<String, String>, f64);

pub struct Snapshot {
    pub apiserver: Vec<Line>,
    pub controllers: HashMap<&'static str, Vec<Line>>,
}

/// A snapshot, retried: an overloaded API server times requests out.
pub async fn take(
    client: &kube::Client,
    controllers: &[children::Controller],
) -> anyhow::Result<Snapshot> {
    let mut last = None;
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(20), try_take(client, controllers)).await {
            Ok(Ok(snapshot)) => return Ok(snapshot),
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(anyhow::anyhow!("timed out after 20 s")),
        }
        tracing::warn!(error = ?last, "metrics snapshot failed; retrying");
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
        .context("metrics snapshot"))
}

async fn try_take(
    client: &kube::Client,
    controllers: &[children::Controller],
) -> anyhow::Result<Snapshot> {
    let request = axum::http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(request)
        .await
        .context("reading the API server's /metrics")?;
    let apiserver = parse(&text, |name| name == "apiserver_request_total");
    let mut by_controller = HashMap::new();
    for c in controllers {
        let url = format!("http://{}/metrics", c.metrics_addr);
        let text = reqwest::get(&url)
            .await
            .with_context(|| url.clone())?
            .text()
            .await?;
        by_controller.insert(c.name, parse(&text, |n| n.starts_with("climatik_")));
    }
    Ok(Snapshot {
        apiserver,
        controllers: by_controller,
    })
}

/// The samples of the metrics `keep` selects (lines the reader cannot
/// read are passed over: the API server's page is not ours to check).
pub fn parse(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Line> {
    exposition::samples(text)
        .filter(|s| keep(&s.name))
        .map(|s| (s.name, s.labels, s.value))
        .collect()
}

fn label<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    labels.get(key).map_or("", String::as_str)
}

/// Counter increase per label set between two snapshots.
fn deltas(before: &[Line], after: &[Line], name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let old: HashMap<&BTreeMap<String, String>, f64> = before
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, l, v)| (l, *v))
        .collect();
    after
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, l, v)| (l.clone(), v - old.get(l).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d >= 0.0)
        .collect()
}

pub fn api_rates(before: &[Line], after: &[Line], seconds: f64, bench_writes: f64) -> Value {
    let d = deltas(before, after, "apiserver_request_total");
    let mut by_resource: BTreeMap<(String, String), f64> = BTreeMap::new();
    let (mut writes, mut reads, mut ours) = (0.0, 0.0, 0.0);
    for (labels, n) in d.iter().filter(|(_, n)| *n > 0.0) {
        let verb = label(labels, "verb");
        let group = label(labels, "group");
        let resource = match label(labels, "subresource") {
            "" => label(labels, "resource").to_string(),
            sub => format!("{}/{sub}", label(labels, "resource")),
        };
        let qualified = if group.is_empty() {
            resource
        } else {
            format!("{resource}.{group}")
        };
        if WRITE_VERBS.contains(&verb) {
            writes += n;
            if group == "climatik.io" || group == "events.k8s.io" {
                ours += n;
            }
        } else if READ_VERBS.contains(&verb) {
            reads += n;
        } else {
            continue;
        }
        *by_resource
            .entry((qualified, verb.to_string()))
            .or_default() += n;
    }
    let per_s = |x: f64| round3(x / seconds.max(1e-9));
    let breakdown: Vec<Value> = by_resource
        .iter()
        .map(|((resource, verb), n)| json!({ "resource": resource, "verb": verb, "count": n, "per_s": per_s(*n) }))
        .collect();
    json!({
        "window_s": round3(seconds),
        "writes_per_s": per_s(writes),
        "controller_writes_per_s": per_s((ours - bench_writes).max(0.0)),
        "reads_per_s": per_s(reads),
        "bench_probe_writes": bench_writes,
        "by_resource_and_verb": breakdown,
        "note": "writes_per_s: every write the API server served (includes the controller-manager and scheduler); controller_writes_per_s: writes to climatik.io and events.k8s.io resources, which only our two controllers write during the window, less the bench's probe patches",
    })
}

/// Reconciliations per second and duration percentiles from the
/// histogram's buckets.
pub fn reconcile_rates(before: &[Line], after: &[Line], seconds: f64, expected: f64) -> Value {
    let sum = |name: &str| -> f64 { deltas(before, after, name).iter().map(|(_, d)| d).sum() };
    let count = sum("climatik_reconcile_total");
    let errors: BTreeMap<String, f64> = deltas(before, after, "climatik_reconcile_errors_total")
        .into_iter()
        .map(|(l, d)| (label(&l, "error").to_string(), d))
        .collect();
    let mut buckets: Vec<(f64, f64)> =
        deltas(before, after, "climatik_reconcile_duration_seconds_bucket")
            .into_iter()
            .filter_map(|(l, d)| {
                let le = label(&l, "le");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, d))
            })
            .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    // "resource decision reason" -> per second: what each period decided
    // to write, and what it left alone.
    let decisions: BTreeMap<String, f64> = deltas(before, after, "climatik_write_decisions_total")
        .into_iter()
        .map(|(l, d)| {
            let key = ["resource", "decision", "reason"]
                .map(|k| label(&l, k))
                .join(" ");
            (key, round3(d / seconds.max(1e-9)))
        })
        .collect();
    let duration_sum = sum("climatik_reconcile_duration_seconds_sum");
    let duration_count = sum("climatik_reconcile_duration_seconds_count");
    let queries = sum("climatik_prometheus_query_duration_seconds_count");
    // Gauges: their value when the window closed.
    let at_end = |name: &str| -> Option<f64> {
        after
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
            .reduce(f64::max)
    };
    json!({
        "prometheus_queries_per_s": round3(queries / seconds.max(1e-9)),
        "waiting_for_a_slot_at_end": at_end("climatik_reconcile_waiting"),
        "due_policies_at_end": at_end("climatik_monitor_due_policies"),
        "oldest_measurement_age_s_at_end": at_end("climatik_monitor_oldest_measurement_age_seconds").map(round3),
        "reconciles": count,
        "reconciles_per_s": round3(count / seconds.max(1e-9)),
        "policies_per_interval_per_s": round3(expected),
        "errors": errors,
        "nodefrequencies_applies_per_s": round3(sum("climatik_nodefrequencies_applies_total") / seconds.max(1e-9)),
        "write_decisions_per_s": decisions,
        "duration": {
            "p50_s": quantile(&buckets, 0.5).map(round3),
            "p99_s": quantile(&buckets, 0.99).map(round3),
            "p50_beyond_largest_bucket": beyond(&buckets, 0.5),
            "p99_beyond_largest_bucket": beyond(&buckets, 0.99),
            "mean_s": (duration_count > 0.0).then(|| round3(duration_sum / duration_count)),
            "note": "time inside one reconcile (API calls and Prometheus queries), from climatik_reconcile_duration_seconds; percentiles interpolated within buckets",
        },
    })
}

/// Whether the quantile falls in the +Inf bucket (then `quantile` gives
/// only a lower bound, the largest finite bound).
pub fn beyond(cumulative: &[(f64, f64)], q: f64) -> bool {
    let total = cumulative.last().map_or(0.0, |b| b.1);
    let finite = cumulative
        .iter()
        .filter(|b| b.0.is_finite())
        .map(|b| b.1)
        .fold(0.0, f64::max);
    total > 0.0 && finite < q * total
}

/// Like PromQL's histogram_quantile: linear inside the bucket holding
/// the rank; the largest finite bound when it falls in +Inf.
pub fn quantile(cumulative: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in cumulative {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let width = count - lower.1;
            let share = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let text = "# TYPE x counter\napiserver_request_total{code=\"200\",group=\"climatik.io\",resource=\"nodefrequencies\",subresource=\"\",verb=\"APPLY\"} 42\nother 1\n";
        let lines = parse(text, |n| n == "apiserver_request_total");
        assert_eq!(lines.len(), 1);
        let (_, labels, value) = &lines[0];
        assert_eq!(label(labels, "verb"), "APPLY");
        assert_eq!(label(labels, "subresource"), "");
        assert_eq!(*value, 42.0);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let buckets = [
            (0.01, 10.0),
            (0.05, 90.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // Rank 50 is half way through the 0.01-0.05 bucket (10..90).
        let p50 = quantile(&buckets, 0.5).unwrap_or_default();
        assert!((p50 - 0.03).abs() < 1e-9, "{p50}");
        let p99 = quantile(&buckets, 0.99).unwrap_or_default();
        assert!((p99 - 0.095).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
        assert!(!beyond(&buckets, 0.99));
        // Everything slower than the largest bound: a lower bound of 10 s.
        let slow = [(1.0, 0.0), (10.0, 0.0), (f64::INFINITY, 50.0)];
        assert_eq!(quantile(&slow, 0.5), Some(10.0));
        assert!(beyond(&slow, 0.5));
    }

    #[test]
    fn rates_count_writes_and_subtract_probes() {
        let line = |verb: &str, group: &str, v: f64| {
            let labels = BTreeMap::from([
                ("verb".to_string(), verb.to_string()),
                ("group".to_string(), group.to_string()),
                ("resource".to_string(), "r".to_string()),
            ]);
            ("apiserver_request_total".to_string(), labels, v)
        };
        let before = vec![line("APPLY", "climatik.io", 10.0), line("LIST", "", 5.0)];
        let after = vec![
            line("APPLY", "climatik.io", 110.0),
            line("LIST", "", 25.0),
            line("PATCH", "", 10.0),
        ];
        let v = api_rates(&before, &after, 10.0, 20.0);
        assert_eq!(v["writes_per_s"], json!(11.0));
        assert_eq!(v["controller_writes_per_s"], json!(8.0));
        assert_eq!(v["reads_per_s"], json!(2.0));
    }
}
