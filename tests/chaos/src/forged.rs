//! Forged and malformed AdmissionReviews sent straight to the webhook, as
//! anything that reaches its port could: garbage, empty and truncated
//! bodies, reviews without a request, workloads with hostile annotations,
//! nesting deep enough to exhaust a naive parser, and bodies over the size
//! limit. The webhook must answer each one (4xx or a decision) and stay up.

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
}

/// Bodies larger than this are over the webhook's 4 MiB limit.
const OVER_LIMIT_BYTES: usize = 4 * 1024 * 1024;

/// Requests in flight at once.
const CONCURRENCY: usize = 32;

/// Sends `count` forged reviews to `https://addr/mutate`.
pub async fn send(addr: &str, namespace: &str, count: usize) -> anyhow::Result<Answers> {
    // The webhook's dev certificate is not what is tested here.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .context("building an HTTP client")?;
    let url = format!("https://{addr}/mutate");
    let results: Vec<Outcome> = stream::iter(0..count)
        .map(|i| {
            let http = http.clone();
            let url = url.clone();
            let body = body(i, namespace);
            let oversized = body.len() > OVER_LIMIT_BYTES;
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
                    Err(_) => Outcome::Unanswered,
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
            Outcome::Unanswered => answers.unanswered += 1,
        }
    }
    Ok(answers)
}

enum Outcome {
    Decided,
    Refused,
    ServerError,
    Unanswered,
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
