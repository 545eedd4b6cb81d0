//! Errors: [`ApiError`] for requests that cannot be answered with an
//! AdmissionReview (answered with a 4xx/5xx and a reason instead), and
//! [`EffectError`] for failed Kubernetes calls.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// A request the webhook cannot read as an AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("reading the request body: {0}")]
    BodyRead(String),
    #[error("the request body was not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    #[error("request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    NotAdmissionReview(String),
    #[error("encoding the response: {0}")]
    Encode(String),
}

impl ApiError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BodyRead(_) => "body_read",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::NotJson(_) => "not_json",
            ApiError::NotAdmissionReview(_) => "not_admission_review",
            ApiError::Encode(_) => "encode",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyRead(_) | ApiError::NotJson(_) | ApiError::NotAdmissionReview(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.to_string(),
            "reason": self.metric_label(),
        });
        (self.status(), Json(body)).into_response()
    }
}

/// A Kubernetes call made on behalf of an admission failed.
#[derive(Debug, thiserror::Error)]
pub enum EffectError {
    #[error("no Kubernetes client is configured")]
    NoClient,
    #[error("reading PowerCappingPolicy {namespace}/{name}: {source}")]
    Get {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying PowerCappingPolicy {namespace}/{name}: {source}")]
    Apply {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting PowerCappingPolicy {namespace}/{name}: {source}")]
    Delete {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting the ownerReference of PowerCappingPolicy {namespace}/{name}: {source}")]
    Owner {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl EffectError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            EffectError::NoClient => "no_client",
            EffectError::Get { .. } => "policy_get",
            EffectError::Apply { .. } => "policy_apply",
            EffectError::Delete { .. } => "policy_delete",
            EffectError::Owner { .. } => "policy_owner",
            EffectError::Timeout(_) => "kubernetes_timeout",
        }
    }
}
