//! The webhook answers as the API server would call it: at the address of
//! the webhook configuration's Service (or URL), under the name the API
//! server checks, trusting only the configuration's `caBundle`, and a dry
//! review of an annotated Deployment comes back allowed and mutated. So a
//! CA that cert-manager has not injected yet, a certificate for the wrong
//! name, a Service without ready endpoints or a webhook that refuses all
//! fail here, each with its own message.

use climatik_runtime::error_chain;
use std::{net::SocketAddr, time::Duration};

use climatik_api::names::ANNOTATION_POWER_CAP;
use k8s_openapi::ByteString;
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, WebhookClientConfig},
    core::v1::Service,
};
use kube::Api;
use serde_json::{Value, json};

/// Longest wait for the webhook's answer: the API server's own limit for
/// a webhook call is 30 s.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The review's object and request id (the review is a dry run: nothing is
/// created).
const PROBE_NAME: &str = "climatik-helm-test";
const PROBE_UID: &str = "00000000-0000-4000-8000-c11a71c0c4ec";

/// Where the API server sends reviews, and the CA it trusts there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://NAME.NAMESPACE.svc:PORT/PATH`, or the configured URL.
    pub url: String,
    /// The Service's namespace and name, when the webhook is reached through
    /// one; its ClusterIP stands in for cluster DNS.
    pub service: Option<(String, String)>,
    /// PEM of the CA the API server trusts for this webhook.
    pub ca_pem: Vec<u8>,
}

/// Reads the configuration, resolves its Service and sends one review.
pub async fn check(client: &kube::Client, configuration: &str) -> Result<String, String> {
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(configuration)
        .await
        .map_err(|e| format!("MutatingWebhookConfiguration {configuration}: {e}"))?;
    let endpoint = endpoint(&config)?;
    let mut http = reqwest::Client::builder().timeout(TIMEOUT).tls_certs_only(
        reqwest::Certificate::from_pem_bundle(&endpoint.ca_pem)
            .map_err(|e| format!("the caBundle is not PEM certificates: {e}"))?,
    );
    if let Some((namespace, name)) = &endpoint.service {
        let address = service_address(client, namespace, name, &endpoint.url).await?;
        http = http.resolve(&format!("{name}.{namespace}.svc"), address);
    }
    let http = http
        .build()
        .map_err(|e| format!("building the HTTPS client: {e}"))?;
    let answer = http
        .post(&endpoint.url)
        .json(&review(&endpoint))
        .send()
        .await
        .map_err(|e| format!("{}: {}", endpoint.url, error_chain::describe(&e)))?;
    let status = answer.status();
    let body = answer
        .text()
        .await
        .map_err(|e| format!("{}: reading the answer: {e}", endpoint.url))?;
    if !status.is_success() {
        return Err(format!("{} answered {status}: {body}", endpoint.url));
    }
    judge(&body).map(|found| format!("{} {found}", endpoint.url))
}

/// The first webhook's client configuration, as the API server reads it.
pub fn endpoint(config: &MutatingWebhookConfiguration) -> Result<Endpoint, String> {
    let name = config.metadata.name.as_deref().unwrap_or_default();
    let webhook = config
        .webhooks
        .as_ref()
        .and_then(|w| w.first())
        .ok_or_else(|| format!("MutatingWebhookConfiguration {name} has no webhook"))?;
    let WebhookClientConfig {
        ca_bundle,
        service,
        url,
    } = &webhook.client_config;
    let ca_pem = ca_bundle
        .as_ref()
        .map(|b| b.0.clone())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            format!(
                "MutatingWebhookConfiguration {name} has no caBundle: with webhook.tls.mode=certManager, cert-manager's cainjector fills it in once the Certificate is issued (kubectl get certificate -A)"
            )
        })?;
    match (service, url) {
        (Some(s), _) => {
            let path = s.path.as_deref().unwrap_or("/");
            let port = s.port.unwrap_or(443);
            Ok(Endpoint {
                url: format!("https://{}.{}.svc:{port}{path}", s.name, s.namespace),
                service: Some((s.namespace.clone(), s.name.clone())),
                ca_pem,
            })
        }
        (None, Some(url)) => Ok(Endpoint {
            url: url.clone(),
            service: None,
            ca_pem,
        }),
        (None, None) => Err(format!(
            "MutatingWebhookConfiguration {name} names neither a Service nor a URL"
        )),
    }
}

/// The Service's ClusterIP and the port of `url`: no cluster DNS needed,
/// and the same Service routing the API server uses.
async fn service_address(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    url: &str,
) -> Result<SocketAddr, String> {
    let service = Api::<Service>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| format!("Service {namespace}/{name}: {e}"))?;
    let ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None")
        .ok_or_else(|| format!("Service {namespace}/{name} has no ClusterIP"))?;
    let port = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.port_or_known_default())
        .unwrap_or(443);
    format!("{ip}:{port}")
        .parse()
        .or_else(|_| format!("[{ip}]:{port}").parse())
        .map_err(|e| format!("Service {namespace}/{name}: ClusterIP {ip:?}: {e}"))
}

/// A dry-run CREATE of a Deployment of one GPU capped at 300 W, as the API
/// server would send it for `kubectl apply --dry-run=server`.
pub fn review(endpoint: &Endpoint) -> Value {
    let namespace = endpoint
        .service
        .as_ref()
        .map_or("default", |(ns, _)| ns.as_str());
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": PROBE_UID,
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "name": PROBE_NAME,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "climatik-helm-test"},
            "object": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": PROBE_NAME,
                    "namespace": namespace,
                    "annotations": {ANNOTATION_POWER_CAP: "300W"}
                },
                "spec": {
                    "selector": {"matchLabels": {"app": PROBE_NAME}},
                    "template": {
                        "metadata": {"labels": {"app": PROBE_NAME}},
                        "spec": {"containers": [{
                            "name": "probe",
                            "image": "probe",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}}
                        }]}
                    }
                }
            },
            "dryRun": true,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// The answer must be this review's, allowed, with a JSON patch (the pod
/// labels that tie the workload to its policy).
pub fn judge(body: &str) -> Result<String, String> {
    let review: Value =
        serde_json::from_str(body).map_err(|e| format!("the answer is not JSON ({e}): {body}"))?;
    let response = review
        .get("response")
        .ok_or_else(|| format!("the answer is not an AdmissionReview with a response: {body}"))?;
    let uid = response
        .get("uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if uid != PROBE_UID {
        return Err(format!(
            "the answer is for request {uid:?}, not {PROBE_UID:?}"
        ));
    }
    if response.get("allowed").and_then(Value::as_bool) != Some(true) {
        let message = response
            .pointer("/status/message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Err(format!(
            "the webhook refused a valid annotated Deployment: {message}"
        ));
    }
    let patch = response
        .get("patch")
        .ok_or("the webhook allowed the Deployment without mutating it (no patch)")?;
    // The API server takes the patch as base64 text (Go's []byte) or, as
    // kube's AdmissionResponse writes it, as an array of bytes.
    let bytes: Vec<u8> = match patch {
        Value::String(_) => serde_json::from_value::<ByteString>(patch.clone()).map(|b| b.0),
        _ => serde_json::from_value(patch.clone()),
    }
    .map_err(|e| format!("the patch is neither base64 nor bytes: {e}"))?;
    let operations = serde_json::from_slice::<Vec<Value>>(&bytes)
        .map_err(|e| format!("the patch is not a JSON patch: {e}"))?
        .len();
    if operations == 0 {
        return Err("the webhook's patch is empty".into());
    }
    Ok(format!(
        "allowed and mutated an annotated Deployment ({operations} patch operations)"
    ))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, ServiceReference};
    use kube::core::{DynamicObject, admission::AdmissionReview};

    use super::*;

    fn config(client_config: WebhookClientConfig) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: kube::api::ObjectMeta {
                name: Some("climatik-webhook".into()),
                ..Default::default()
            },
            webhooks: Some(vec![MutatingWebhook {
                name: "workloads.webhook.climatik.io".into(),
                client_config,
                ..Default::default()
            }]),
        }
    }

    fn service(path: Option<&str>, port: Option<i32>) -> WebhookClientConfig {
        WebhookClientConfig {
            ca_bundle: Some(ByteString(b"PEM".to_vec())),
            service: Some(ServiceReference {
                name: "climatik-webhook".into(),
                namespace: "climatik-project".into(),
                path: path.map(Into::into),
                port,
            }),
            url: None,
        }
    }

    #[test]
    fn the_endpoint_is_the_service_name_the_api_server_checks() -> Result<(), String> {
        let e = endpoint(&config(service(Some("/mutate"), None)))?;
        assert_eq!(
            e.url,
            "https://climatik-webhook.climatik-project.svc:443/mutate"
        );
        assert_eq!(
            e.service,
            Some(("climatik-project".into(), "climatik-webhook".into()))
        );
        assert_eq!(e.ca_pem, b"PEM");
        let e = endpoint(&config(service(None, Some(8443))))?;
        assert_eq!(e.url, "https://climatik-webhook.climatik-project.svc:8443/");
        let e = endpoint(&config(WebhookClientConfig {
            ca_bundle: Some(ByteString(b"PEM".to_vec())),
            service: None,
            url: Some("https://hooks.example:9443/m".into()),
        }))?;
        assert_eq!(e.url, "https://hooks.example:9443/m");
        assert_eq!(e.service, None);
        Ok(())
    }

    #[test]
    fn a_configuration_without_its_ca_says_who_fills_it_in() {
        let mut no_ca = service(None, None);
        no_ca.ca_bundle = None;
        let problem = endpoint(&config(no_ca)).expect_err("no caBundle");
        assert!(problem.contains("cainjector"), "{problem}");
        let empty = MutatingWebhookConfiguration::default();
        assert!(endpoint(&empty).is_err());
    }

    fn answer(uid: &str, allowed: bool, patch: Option<Value>) -> String {
        let mut response = json!({"uid": uid, "allowed": allowed});
        if let Some(p) = patch {
            response["patch"] = p;
            response["patchType"] = json!("JSONPatch");
        }
        if !allowed {
            response["status"] = json!({"code": 400, "message": "bad cap"});
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
            .to_string()
    }

    /// As the API server's own clients send []byte: base64 text.
    fn base64(patch: &str) -> Option<Value> {
        Some(json!(ByteString(patch.as_bytes().to_vec())))
    }

    /// As kube's AdmissionResponse (our webhook) writes it: a byte array.
    fn byte_array(patch: &str) -> Option<Value> {
        Some(json!(patch.as_bytes()))
    }

    #[test]
    fn only_an_allowed_mutation_of_this_review_passes() {
        let patch = r#"[{"op":"add","path":"/spec/template/metadata/labels/climatik.io~1policy","value":"x"}]"#;
        for encoded in [base64(patch), byte_array(patch)] {
            let found = judge(&answer(PROBE_UID, true, encoded)).expect("allowed and mutated");
            assert!(found.contains("1 patch operations"), "{found}");
        }
        let refused = judge(&answer(PROBE_UID, false, None)).expect_err("refused");
        assert!(refused.contains("bad cap"), "{refused}");
        assert!(judge(&answer(PROBE_UID, true, None)).is_err());
        assert!(judge(&answer(PROBE_UID, true, base64("[]"))).is_err());
        assert!(judge(&answer(PROBE_UID, true, base64("not json"))).is_err());
        assert!(judge(&answer("other", true, base64(patch))).is_err());
        assert!(judge("<html>").is_err());
    }

    #[test]
    fn the_review_is_a_dry_run_of_an_annotated_deployment() {
        let e = endpoint(&config(service(None, None))).expect("endpoint");
        let r = review(&e);
        assert_eq!(r["request"]["dryRun"], true);
        assert_eq!(r["request"]["namespace"], "climatik-project");
        assert_eq!(
            r["request"]["object"]["metadata"]["annotations"][ANNOTATION_POWER_CAP],
            "300W"
        );
        // The webhook parses it as a typed review.
        serde_json::from_value::<AdmissionReview<DynamicObject>>(r).expect("a valid review");
    }
}
