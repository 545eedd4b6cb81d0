//! The router in-process (`tower::ServiceExt::oneshot`), with AdmissionReview
//! fixtures from `tests/data/` and property tests over arbitrary input.
//! No network and no Kubernetes client: the webhook needs neither.

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use climatik_webhook::{
    floor::Checks,
    metrics::Metrics,
    server::{AppState, Limits, router},
};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn app_with(limits: Limits) -> Router {
    router(AppState::new(Metrics::new(), limits, None))
}

fn app() -> Router {
    app_with(Limits::default())
}

fn fixture(name: &str) -> Result<Value, Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

async fn send(
    app: Router,
    method: &str,
    uri: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Vec<u8>), Box<dyn std::error::Error>> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))?;
    let response = app.oneshot(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, bytes))
}

async fn review(app: Router, body: &Value) -> Result<Value, Box<dyn std::error::Error>> {
    let (status, bytes) = send(app, "POST", "/mutate", serde_json::to_vec(body)?).await?;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let value: Value = serde_json::from_slice(&bytes)?;
    assert_eq!(value["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(value["kind"], "AdmissionReview");
    Ok(value["response"].clone())
}

/// The JSON patch of a response (kube serialises the bytes as an array).
fn patch_of(response: &Value) -> Result<Value, Box<dyn std::error::Error>> {
    let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone())?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn apply_patch(object: &Value, patch: &Value) -> Result<Value, Box<dyn std::error::Error>> {
    let patch: json_patch::Patch = serde_json::from_value(patch.clone())?;
    let mut doc = object.clone();
    json_patch::patch(&mut doc, &patch)?;
    Ok(doc)
}

#[tokio::test]
async fn dry_run_deployment_is_patched_with_label_and_watts() -> TestResult {
    let body = fixture("deployment-create.json")?;
    let response = review(app(), &body).await?;
    assert_eq!(response["uid"], body["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = patch_of(&response)?;
    let text = patch.to_string();
    assert!(text.contains("climatik.io~1policy"), "{text}");
    let patched = apply_patch(&body["request"]["object"], &patch)?;
    let meta = &patched["spec"]["template"]["metadata"];
    assert_eq!(meta["labels"]["climatik.io/policy"], "deployment-vllm");
    assert_eq!(meta["labels"]["app"], "vllm");
    // The cap is recorded on the workload, so changing it rolls no pods.
    assert_eq!(
        patched["metadata"]["annotations"]["climatik.io/power-cap-watts"],
        "300"
    );
    assert!(meta.get("annotations").is_none(), "{meta}");

    // Idempotent: the same review yields the same patch.
    let again = review(app(), &body).await?;
    assert_eq!(patch_of(&again)?, patch);
    Ok(())
}

/// Four GPUs per pod under a 500 W cap: below 4 × 200 W, so kubectl
/// shows a warning; the workload is still admitted and labelled. With the
/// floor set to 0 the warning is off.
#[tokio::test]
async fn a_cap_below_the_gpus_floor_is_admitted_with_a_warning() -> TestResult {
    let body = fixture("deployment-gpus-over-cap.json")?;
    let response = review(app(), &body).await?;
    assert_eq!(response["allowed"], true);
    let warnings: Vec<String> = serde_json::from_value(response["warnings"].clone())?;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("500 W is below 800 W") && warnings[0].contains("4 GPU(s)"),
        "{warnings:?}"
    );
    let patched = apply_patch(&body["request"]["object"], &patch_of(&response)?)?;
    assert_eq!(
        patched["spec"]["template"]["metadata"]["labels"]["climatik.io/policy"],
        "deployment-trainer"
    );

    let off = router(AppState::with_checks(
        Metrics::new(),
        Limits::default(),
        None,
        Checks {
            min_watts_per_gpu: 0.0,
        },
    ));
    let response = review(off, &body).await?;
    assert!(response.get("warnings").is_none(), "{response}");
    // One GPU under a 300 W cap is within reach.
    let response = review(app(), &fixture("deployment-create.json")?).await?;
    assert!(response.get("warnings").is_none(), "{response}");
    Ok(())
}

#[tokio::test]
async fn cronjob_template_is_nested() -> TestResult {
    let body = fixture("cronjob-update.json")?;
    let response = review(app(), &body).await?;
    assert_eq!(response["allowed"], true);
    let patched = apply_patch(&body["request"]["object"], &patch_of(&response)?)?;
    let meta = &patched["spec"]["jobTemplate"]["spec"]["template"]["metadata"];
    assert_eq!(meta["labels"]["climatik.io/policy"], "cronjob-nightly");
    assert_eq!(
        patched["metadata"]["annotations"]["climatik.io/power-cap-watts"],
        "1200"
    );
    Ok(())
}

#[tokio::test]
async fn bad_annotation_is_denied_with_the_accepted_forms() -> TestResult {
    let response = review(app(), &fixture("job-bad-annotation.json")?).await?;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("climatik.io/power-cap"), "{message}");
    assert!(message.contains("\"300 watts\""), "{message}");
    assert!(message.contains("1.5kW"), "{message}");
    assert!(response.get("patch").is_none());
    Ok(())
}

#[tokio::test]
async fn a_bad_priority_and_a_guarantee_above_the_cap_are_denied() -> TestResult {
    let response = review(app(), &fixture("deployment-bad-priority.json")?).await?;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("climatik.io/priority") && message.contains("\"urgent\""),
        "{message}"
    );
    assert!(message.contains("a whole number"), "{message}");
    assert!(
        message.contains("climatik.io/min-power") && message.contains("above the cap 300W"),
        "{message}"
    );
    assert!(response.get("patch").is_none());

    // Within bounds, both are admitted.
    let mut body = fixture("deployment-bad-priority.json")?;
    let annotations = &mut body["request"]["object"]["metadata"]["annotations"];
    annotations["climatik.io/priority"] = json!("-10");
    annotations["climatik.io/min-power"] = json!("300W");
    let response = review(app(), &body).await?;
    assert_eq!(response["allowed"], true, "{response}");
    Ok(())
}

#[tokio::test]
async fn unannotated_workload_passes_untouched() -> TestResult {
    let response = review(app(), &fixture("statefulset-unannotated.json")?).await?;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    Ok(())
}

#[tokio::test]
async fn a_real_request_is_answered_without_any_kubernetes_client() -> TestResult {
    // Not a dry run: the webhook writes nothing, so it needs no client and
    // answers with the patch alone.
    let mut body = fixture("deployment-create.json")?;
    body["request"]["dryRun"] = json!(false);
    let response = review(app(), &body).await?;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_some(), "{response}");
    Ok(())
}

/// A body that sends what `tx` sends and then nothing, while `tx` lives.
fn stalled_body() -> (
    Body,
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (Body::from_stream(stream), tx)
}

#[tokio::test]
async fn a_stalled_body_is_cut_at_the_deadline_and_holds_no_room_after() -> TestResult {
    let deadline = Duration::from_secs(1);
    let limits = Limits {
        max_in_flight_bytes: 1024,
        deadline,
        ..Limits::default()
    };
    let app = app_with(limits);
    let (body, tx) = stalled_body();
    tx.send(Ok(b"{\"apiVersion\":".to_vec())).await?;
    let request = Request::builder()
        .method("POST")
        .uri("/mutate")
        .header("content-type", "application/json")
        .body(body)?;
    let started = tokio::time::Instant::now();
    let slow = tokio::spawn(app.clone().oneshot(request));
    // Let the slow request take all the room.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A good request behind it waits for room, and gets it once the slow
    // one is cut off at its deadline.
    let good = serde_json::to_vec(&fixture("deployment-create.json")?)?;
    let (status, bytes) = send(app, "POST", "/mutate", good).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes)?["response"]["allowed"],
        true
    );
    // Only after the slow one was cut: it could not have got room before.
    assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
    let slow = slow.await??;
    assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
    let bytes = slow.into_body().collect().await?.to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes)?["reason"],
        "deadline_passed"
    );
    drop(tx);
    Ok(())
}

#[tokio::test]
async fn unreadable_requests_get_a_reason() -> TestResult {
    // Not JSON.
    let (status, bytes) = send(app(), "POST", "/mutate", b"{not json".to_vec()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&bytes)?;
    assert_eq!(body["reason"], "not_json");

    // JSON, but not an AdmissionReview.
    let (status, bytes) = send(app(), "POST", "/mutate", br#"{"kind":"Pod"}"#.to_vec()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes)?["reason"],
        "not_admission_review"
    );

    // JSON whose start reads as a review but that is not JSON to the end,
    // and JSON that is not an object.
    for (body, reason) in [
        (&b"{} trailing"[..], "not_json"),
        (&br#"{"kind":7} trailing"#[..], "not_json"),
        (&b"[1, 2]"[..], "not_admission_review"),
    ] {
        let (status, bytes) = send(app(), "POST", "/mutate", body.to_vec()).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(serde_json::from_slice::<Value>(&bytes)?["reason"], reason);
    }

    // A review without a request.
    let response = review(
        app(),
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
    )
    .await?;
    assert_eq!(response["allowed"], false);

    // A request whose object does not parse keeps its uid.
    let mut body = fixture("deployment-create.json")?;
    body["request"]["object"] = json!("a string, not an object");
    let response = review(app(), &body).await?;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["uid"], body["request"]["uid"]);

    // Over the size limit.
    let small = app_with(Limits {
        max_body_bytes: 512,
        ..Limits::default()
    });
    let big = serde_json::to_vec(&fixture("deployment-create.json")?)?;
    assert!(big.len() > 512);
    let (status, bytes) = send(small, "POST", "/mutate", big).await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes)?["reason"],
        "body_too_large"
    );
    Ok(())
}

#[tokio::test]
async fn health_readiness_and_metrics() -> TestResult {
    let app = app();
    let (status, _) = send(app.clone(), "GET", "/healthz", Vec::new()).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(app.clone(), "GET", "/readyz", Vec::new()).await?;
    assert_eq!(status, StatusCode::OK);
    review(app.clone(), &fixture("deployment-create.json")?).await?;
    review(app.clone(), &fixture("job-bad-annotation.json")?).await?;
    let (status, bytes) = send(app, "GET", "/metrics", Vec::new()).await?;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(bytes)?;
    assert!(
        text.contains(r#"climatik_webhook_admission_requests_total{kind="Deployment",operation="CREATE",result="allowed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"climatik_webhook_admission_denials_total{reason="invalid_annotation"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("climatik_webhook_admission_duration_seconds_count 2"),
        "{text}"
    );
    Ok(())
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z/.]{0,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every answer is a 4xx with a reason, or a 200 AdmissionReview with an
/// `allowed` verdict; never a 5xx, a panic or a hang.
fn check_well_formed(status: StatusCode, bytes: &[u8]) -> Result<(), TestCaseError> {
    let body: Value = serde_json::from_slice(bytes)
        .map_err(|e| TestCaseError::fail(format!("response is not JSON: {e}")))?;
    if status == StatusCode::OK {
        prop_assert!(body["response"]["allowed"].is_boolean(), "{body}");
    } else {
        prop_assert!(status.is_client_error(), "{status}: {body}");
        prop_assert!(body["error"].is_string(), "{body}");
    }
    Ok(())
}

fn run(body: Vec<u8>) -> Result<(StatusCode, Vec<u8>), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(5), send(app(), "POST", "/mutate", body)).await
        })
        .map_err(|_| TestCaseError::fail("the handler hung"))?
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_are_answered(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let (status, bytes) = run(body)?;
        check_well_formed(status, &bytes)?;
    }

    #[test]
    fn arbitrary_json_is_answered(body in arbitrary_json()) {
        let (status, bytes) = run(serde_json::to_vec(&body).unwrap_or_default())?;
        check_well_formed(status, &bytes)?;
    }

    #[test]
    fn arbitrary_objects_inside_a_real_review_are_answered(
        object in arbitrary_json(),
        annotations in prop::collection::btree_map(
            prop_oneof![
                Just("climatik.io/power-cap".to_string()),
                Just("climatik.io/capping-threshold".to_string()),
                Just("climatik.io/dry-run".to_string()),
                Just("climatik.io/priority".to_string()),
                Just("climatik.io/min-power".to_string()),
                "[a-z/.]{1,8}",
            ],
            "\\PC{0,10}",
            0..4,
        ),
        template in arbitrary_json(),
    ) {
        // The object as a whole, and a well-formed Deployment whose
        // annotations and pod template are arbitrary.
        let mut review = serde_json::from_str::<Value>(include_str!("data/deployment-create.json"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        review["request"]["object"] = object;
        let (status, bytes) = run(serde_json::to_vec(&review).unwrap_or_default())?;
        check_well_formed(status, &bytes)?;

        let mut review = serde_json::from_str::<Value>(include_str!("data/deployment-create.json"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        review["request"]["object"]["metadata"]["annotations"] = json!(annotations);
        review["request"]["object"]["spec"]["template"] = template;
        let (status, bytes) = run(serde_json::to_vec(&review).unwrap_or_default())?;
        check_well_formed(status, &bytes)?;
        prop_assert_eq!(status, StatusCode::OK);
    }
}
