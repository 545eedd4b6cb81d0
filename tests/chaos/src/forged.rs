//! Forged and malformed AdmissionReviews sent straight to the webhook, as
//! anything that reaches its port could: garbage, empty and truncated
//! bodies, reviews without a request, workloads with hostile annotations,
//! nesting deep enough to exhaust a naive parser, and bodies over the size
//! limit. The webhook must answer each one (4xx or a decision) and stay up.

use climatik_runtime::error_chain;
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, stream};
use serde::Serialize;
use serde_json::json;

/// How the webhook answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Answers {
    pub sent: usize,
    /// 2xx with an AdmissionReview response.
    pub decided: usize,
    /// 4xx: refused as malformed or too large; also a body over the size
    /// limit whose connection the webhook closed before reading all of it
    /// (the client then sees its send cut off instead of the 413).
    pub refused: usize,
    /// 5xx: the webhook failed on its input.
    pub server_errors: usize,
    /// No HTTP answer at all (reset, timeout).
    pub unanswered: usize,
    /// Why requests went unanswered: the client's error (with its causes)
    /// and the kind of body, up to a few distinct ones.
    pub unanswered_reasons: Vec<String>,
}

/// Distinct reasons kept in the report.
const REASONS_KEPT: usize = 10;

/// Bodies larger than this are over the webhook's 4 MiB limit.
const OVER_LIMIT_BYTES: usize = 4 * 1024 * 1024;

/// Requests in flight at once.
const CONCURRENCY: usize = 32;

/// Sends `count` forged reviews to `https://addr/mutate`.
pub async fn send(addr: &str, namespace: &str, count: usize) -> anyhow::Result<Answers> {
    // The webhook's dev certificate is not what is tested here.
    let client = |pooled: bool| {
        let builder = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10));
        let builder = if pooled {
            builder
        } else {
            builder.pool_max_idle_per_host(0)
        };
        builder.build().context("building an HTTP client")
    };
    // A body over the limit is refused before it is all read, and the
    // webhook then closes its connection (the rest of the body is never
    // read). Such bodies get connections of their own, as an attacker's
    // would: a connection closed under requests that shared it with one
    // would say nothing about the webhook.
    let (http, oversized_http) = (client(true)?, client(false)?);
    let url = format!("https://{addr}/mutate");
    let results: Vec<Outcome> = stream::iter(0..count)
        .map(|i| {
            let body = body(i, namespace);
            let oversized = body.len() > OVER_LIMIT_BYTES;
            let http = if oversized {
                oversized_http.clone()
            } else {
                http.clone()
            };
            let url = url.clone();
            async move {
                match http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(response) => {
                        let status = response.status();
                        // Read the body, as the API server would.
                        let _ = response.bytes().await;
                        if status.is_success() {
                            Outcome::Decided
                        } else if status.is_client_error() {
                            Outcome::Refused
                        } else {
                            Outcome::ServerError
                        }
                    }
                    Err(_) if oversized => Outcome::Refused,
                    Err(e) => Outcome::Unanswered(format!(
                        "{} (body {})",
                        error_chain::describe(&e),
                        kind(i)
                    )),
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut answers = Answers {
        sent: results.len(),
        ..Answers::default()
    };
    for outcome in results {
        match outcome {
            Outcome::Decided => answers.decided += 1,
            Outcome::Refused => answers.refused += 1,
            Outcome::ServerError => answers.server_errors += 1,
            Outcome::Unanswered(reason) => {
                answers.unanswered += 1;
                if answers.unanswered_reasons.len() < REASONS_KEPT
                    && !answers.unanswered_reasons.contains(&reason)
                {
                    answers.unanswered_reasons.push(reason);
                }
            }
        }
    }
    Ok(answers)
}

enum Outcome {
    Decided,
    Refused,
    ServerError,
    Unanswered(String),
}

/// The kind of the `i`-th body, as [`body`] makes it.
fn kind(i: usize) -> &'static str {
    if i % 1000 == 999 {
        return "over the size limit";
    }
    match i % 9 {
        0 => "random bytes",
        1 => "empty",
        2 => "truncated JSON",
        3 => "review without a request",
        4 => "negative cap",
        5 => "huge values",
        6 => "a Pod",
        7 => "deep nesting",
        _ => "StatefulSet",
    }
}

/// The `i`-th forged body: one of several kinds, in turn.
fn body(i: usize, namespace: &str) -> Vec<u8> {
    if i % 1000 == 999 {
        // Over the webhook's 4 MiB body limit.
        return vec![b'{'; OVER_LIMIT_BYTES + 1024 * 1024];
    }
    match i % 9 {
        0 => (0..512).map(|k| ((i * 31 + k * 7) % 251) as u8).collect(),
        1 => Vec::new(),
        2 => b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionRev".to_vec(),
        3 => json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})
            .to_string()
            .into_bytes(),
        4 => review(
            i,
            namespace,
            "Deployment",
            json!({"climatik.io/power-cap": "-5W"}),
        ),
        5 => review(
            i,
            namespace,
            "Deployment",
            json!({
                "climatik.io/power-cap": "999999999999999999999W",
                "climatik.io/algorithm": "x".repeat(64 * 1024),
            }),
        ),
        6 => review(
            i,
            namespace,
            "Pod",
            json!({"climatik.io/power-cap": "100W"}),
        ),
        7 => {
            let depth = 10_000;
            let mut nested = "[".repeat(depth);
            nested.push_str(&"]".repeat(depth));
            nested.into_bytes()
        }
        _ => review(
            i,
            namespace,
            "StatefulSet",
            json!({"climatik.io/power-cap": "800W"}),
        ),
    }
}

/// A well-formed review of a workload of `kind` with `annotations`.
fn review(i: usize, namespace: &str, kind: &str, annotations: serde_json::Value) -> Vec<u8> {
    let name = format!("forged-{i}");
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-0000-0000-{i:012}"),
            "kind": {"group": "apps", "version": "v1", "kind": kind},
            "resource": {"group": "apps", "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "name": name,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:forged:attacker"},
            "object": {
                "apiVersion": "apps/v1",
                "kind": kind,
                "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
                "spec": {"template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": []}}}
            },
            "dryRun": false
        }
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_body_is_produced() {
        let bodies: Vec<Vec<u8>> = (0..1000).map(|i| body(i, "ns")).collect();
        assert!(bodies.iter().any(Vec::is_empty));
        assert!(bodies.iter().any(|b| b.len() > OVER_LIMIT_BYTES));
        let reviews = bodies
            .iter()
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .filter(|v| v.pointer("/request/uid").is_some())
            .count();
        assert!(reviews >= 4 * 1000 / 9, "{reviews} well-formed reviews");
        assert!(serde_json::from_slice::<serde_json::Value>(&bodies[2]).is_err());
    }
}
