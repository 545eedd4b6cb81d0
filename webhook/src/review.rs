//! Reading a request body as a typed `AdmissionReview`: pure functions from
//! bytes to either the request to decide on, a review to answer with
//! `allowed: false` (it names a request that cannot be read), or an
//! [`ApiError`] for bodies that are no AdmissionReview at all.

use std::collections::BTreeMap;

use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use serde::{Deserialize, de::IgnoredAny};

use crate::error::ApiError;

/// The only review version the webhook registers for.
pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// What a request body turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// A readable request, to decide on.
    Request(Box<AdmissionRequest<DynamicObject>>),
    /// A review whose request cannot be read: answered `allowed: false`
    /// under `uid` (empty when even that is unknown) with `reason`.
    Invalid { uid: String, reason: String },
}

/// Reads `bytes` as an `admission.k8s.io/v1` AdmissionReview.
pub fn parse(bytes: &[u8]) -> Result<Parsed, ApiError> {
    match serde_json::from_slice::<AdmissionReview<DynamicObject>>(bytes) {
        Ok(review) => {
            check_types(Some(&review.types.kind), Some(&review.types.api_version))?;
            Ok(request_of(review))
        }
        Err(e) if e.is_data() => salvage(bytes, &e),
        // Syntax, end of input or I/O: not JSON at all.
        Err(e) => Err(ApiError::NotJson(e.to_string())),
    }
}

/// Refuses bodies that are not a v1 AdmissionReview.
fn check_types(kind: Option<&str>, api_version: Option<&str>) -> Result<(), ApiError> {
    if kind == Some(KIND) && api_version == Some(API_VERSION) {
        Ok(())
    } else {
        Err(not_a_review(kind, api_version))
    }
}

fn not_a_review(kind: Option<&str>, api_version: Option<&str>) -> ApiError {
    ApiError::NotAdmissionReview(format!("kind {kind:?}, apiVersion {api_version:?}"))
}

fn request_of(review: AdmissionReview<DynamicObject>) -> Parsed {
    let request: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
    match request {
        Ok(request) => Parsed::Request(Box::new(request)),
        Err(_) => Parsed::Invalid {
            uid: String::new(),
            reason: no_request(),
        },
    }
}

fn no_request() -> String {
    "the AdmissionReview has no request".to_string()
}

/// Any JSON body, read two levels deep: enough to tell a broken review
/// (answered under its uid) from something else, and a syntax error that
/// the typed parse stopped short of from a body that is JSON.
#[derive(Deserialize)]
#[serde(untagged)]
enum Body {
    Object(BTreeMap<String, Member>),
    Other(IgnoredAny),
}

/// A top-level member: `kind`, `apiVersion` and `request` are read.
#[derive(Deserialize)]
#[serde(untagged)]
enum Member {
    Null(()),
    Text(String),
    Object(BTreeMap<String, Leaf>),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Leaf {
    Text(String),
    Other(IgnoredAny),
}

fn text<'a>(members: &'a BTreeMap<String, Member>, key: &str) -> Option<&'a str> {
    match members.get(key) {
        Some(Member::Text(t)) => Some(t),
        _ => None,
    }
}

/// A body the typed parse refused: not JSON, no AdmissionReview, or a
/// review whose request is refused by uid.
fn salvage(bytes: &[u8], error: &serde_json::Error) -> Result<Parsed, ApiError> {
    let body: Body = serde_json::from_slice(bytes).map_err(|e| ApiError::NotJson(e.to_string()))?;
    let Body::Object(members) = body else {
        return Err(not_a_review(None, None));
    };
    check_types(text(&members, "kind"), text(&members, "apiVersion"))?;
    Ok(match members.get("request") {
        None | Some(Member::Null(())) => Parsed::Invalid {
            uid: String::new(),
            reason: no_request(),
        },
        Some(request) => Parsed::Invalid {
            uid: match request {
                Member::Object(fields) => match fields.get("uid") {
                    Some(Leaf::Text(uid)) => uid.clone(),
                    _ => String::new(),
                },
                _ => String::new(),
            },
            reason: format!("the AdmissionReview request does not parse: {error}"),
        },
    })
}

/// The `allowed: false` review for a request that cannot be read.
pub fn invalid(uid: String, reason: String) -> AdmissionReview<DynamicObject> {
    let mut response = AdmissionResponse::invalid(reason);
    response.uid = uid;
    response.into_review()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn review(request: serde_json::Value) -> Vec<u8> {
        let mut body = json!({"apiVersion": API_VERSION, "kind": KIND});
        if !request.is_null() {
            body["request"] = request;
        }
        serde_json::to_vec(&body).unwrap_or_default()
    }

    fn label(result: Result<Parsed, ApiError>) -> &'static str {
        match result {
            Ok(Parsed::Request(_)) => "request",
            Ok(Parsed::Invalid { .. }) => "invalid",
            Err(e) => e.metric_label(),
        }
    }

    #[test]
    fn bodies_that_are_not_reviews_are_errors() {
        assert_eq!(label(parse(b"")), "not_json");
        assert_eq!(label(parse(b"{not json")), "not_json");
        assert_eq!(label(parse(b"{} trailing")), "not_json");
        assert_eq!(label(parse(br#"{"kind":7} trailing"#)), "not_json");
        assert_eq!(label(parse(b"[1, 2]")), "not_admission_review");
        assert_eq!(label(parse(b"\"a string\"")), "not_admission_review");
        assert_eq!(label(parse(br#"{"kind":"Pod"}"#)), "not_admission_review");
        assert_eq!(label(parse(br#"{"kind":7}"#)), "not_admission_review");
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#;
        assert_eq!(label(parse(v1beta1)), "not_admission_review");
    }

    #[test]
    fn a_review_with_an_unreadable_request_is_refused_under_its_uid() {
        let Ok(Parsed::Invalid { uid, reason }) = parse(&review(serde_json::Value::Null)) else {
            panic!("a review without a request is refused");
        };
        assert_eq!(
            (uid.as_str(), reason.as_str()),
            ("", "the AdmissionReview has no request")
        );

        let broken = review(json!({"uid": "u-1", "kind": "not a GVK"}));
        let Ok(Parsed::Invalid { uid, reason }) = parse(&broken) else {
            panic!("a broken request is refused");
        };
        assert_eq!(uid, "u-1");
        assert!(
            reason.starts_with("the AdmissionReview request does not parse"),
            "{reason}"
        );

        // A uid that is not a string is not trusted, nor is a list.
        for request in [json!({"uid": 5}), json!(["u-1"]), json!("u-1")] {
            let Ok(Parsed::Invalid { uid, .. }) = parse(&review(request)) else {
                panic!("refused");
            };
            assert_eq!(uid, "");
        }
    }

    #[test]
    fn the_refusal_is_a_well_formed_review() {
        let body = serde_json::to_value(invalid("u-1".into(), "why".into())).unwrap_or_default();
        assert_eq!(body["apiVersion"], API_VERSION);
        assert_eq!(body["kind"], KIND);
        assert_eq!(body["response"]["uid"], "u-1");
        assert_eq!(body["response"]["allowed"], false);
    }
}
