//! Errors: [`ApiError`] for requests that cannot be answered with an
//! AdmissionReview (answered with a 4xx/5xx and a reason instead).

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
    #[error("no answer within the API server's {0:?} deadline (slow body or overload)")]
    DeadlinePassed(std::time::Duration),
    #[error("too many admission requests in flight; try again")]
    Overloaded,
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
            ApiError::DeadlinePassed(_) => "deadline_passed",
            ApiError::Overloaded => "overloaded",
            ApiError::NotJson(_) => "not_json",
            ApiError::NotAdmissionReview(_) => "not_admission_review",
            ApiError::Encode(_) => "encode",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::DeadlinePassed(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
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
