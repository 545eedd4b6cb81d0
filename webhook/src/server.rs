//! HTTPS server: `POST /mutate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    response::{IntoResponse, Response},
    routing::post,
};
use climatik_api::workload::WorkloadKind;
use climatik_certs::{ReloadOutcome, ReloadingCertResolver};
use climatik_runtime::{Admin, Readiness, admin};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
    time::Instant,
};
use tracing::{info, warn};

use crate::{
    error::ApiError,
    floor::Checks,
    metrics::Metrics,
    metrics::{ReasonLabels, RequestLabels},
    mutate::{Decision, mutate},
    review::{self, Parsed},
};

/// Request handling limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted request body. A review holds the object and the old
    /// object, each up to etcd's ~1.5 MiB.
    pub max_body_bytes: usize,
    /// Bodies read or being decided on at once, in bytes: the webhook's
    /// memory is bounded by this (times the parsing overhead), however many
    /// requests arrive. A request waits for room until its deadline.
    pub max_in_flight_bytes: usize,
    /// How long the API server waits for an answer (the webhook
    /// configuration's `timeoutSeconds`). A request still unanswered by
    /// then is abandoned: the API server has already applied the failure
    /// policy, so finishing it would only spend memory.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_in_flight_bytes: 16 * 1024 * 1024,
            deadline: Duration::from_secs(5),
        }
    }
}

/// Room for bodies in flight, counted in KiB so a 4 MiB body fits the
/// semaphore's `u32` permits.
struct InFlight {
    kib: Arc<Semaphore>,
    capacity_kib: u32,
}

impl InFlight {
    fn new(limits: &Limits) -> Self {
        let capacity_kib = u32::try_from(limits.max_in_flight_bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            kib: Arc::new(Semaphore::new(capacity_kib as usize)),
            capacity_kib,
        }
    }

    /// Waits until `bytes` fit (a body larger than the whole budget waits
    /// for all of it), or fails at `deadline`.
    async fn reserve(
        &self,
        bytes: usize,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity_kib);
        match tokio::time::timeout_at(deadline, self.kib.clone().acquire_many_owned(kib)).await {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out, or the semaphore closed (never: it is not closed).
            _ => Err(ApiError::Overloaded),
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Metrics,
    limits: Limits,
    checks: Checks,
    in_flight: InFlight,
    certificate: Option<Arc<ReloadingCertResolver>>,
}

impl AppState {
    /// A state with the default [`Checks`].
    pub fn new(
        metrics: Metrics,
        limits: Limits,
        certificate: Option<Arc<ReloadingCertResolver>>,
    ) -> Self {
        Self::with_checks(metrics, limits, certificate, Checks::default())
    }

    pub fn with_checks(
        metrics: Metrics,
        limits: Limits,
        certificate: Option<Arc<ReloadingCertResolver>>,
        checks: Checks,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics,
                in_flight: InFlight::new(&limits),
                limits,
                checks,
                certificate,
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// The webhook's routes: `/mutate` and `climatik-runtime`'s admin
/// endpoints, all on the HTTPS port (the API server and the probes reach
/// the same listener).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate_handler))
        .with_state(state.clone())
        .merge(admin::router(admin(&state)))
}

/// `/readyz` passes while a serving certificate is loaded.
fn admin(state: &AppState) -> Admin {
    let readiness = Readiness::new();
    let certificate = state.inner.certificate.clone();
    readiness.check("certificate", move || match &certificate {
        Some(cert) => !cert.certificate_chain().is_empty(),
        // In-process use without TLS (tests, benchmarks).
        None => true,
    });
    let metrics = state.inner.metrics.clone();
    Admin::new(move || metrics.encode()).with_readiness(readiness)
}

async fn mutate_handler(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let metrics = &state.inner.metrics;
    let deadline = started + state.inner.limits.deadline;
    // Without a Content-Length the body may be as large as we accept.
    let expected = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(state.inner.limits.max_body_bytes)
        .min(state.inner.limits.max_body_bytes);
    let admitted = match state.inner.in_flight.reserve(expected, deadline).await {
        Ok(permit) => {
            let answer = tokio::time::timeout_at(deadline, admit(&state, body))
                .await
                .unwrap_or(Err(ApiError::DeadlinePassed(state.inner.limits.deadline)));
            drop(permit);
            answer
        }
        Err(err) => Err(err),
    };
    let response = match admitted {
        Ok(review) => Json(review).into_response(),
        Err(err) => {
            warn!(error = %err, "unreadable admission request");
            metrics.invalid_request(err.metric_label());
            err.into_response()
        }
    };
    metrics.duration.observe(started.elapsed().as_secs_f64());
    response
}

async fn read_body(body: Body, limits: &Limits) -> Result<axum::body::Bytes, ApiError> {
    match axum::body::to_bytes(body, limits.max_body_bytes).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(ApiError::BodyTooLarge {
                    limit: limits.max_body_bytes,
                })
            } else {
                Err(ApiError::BodyRead(e.to_string()))
            }
        }
    }
}

/// Reads an AdmissionReview and answers it. Errors are requests that are
/// not AdmissionReviews at all; a review that names a request but cannot
/// be read further gets a well-formed `allowed: false`.
async fn admit(state: &AppState, body: Body) -> Result<AdmissionReview<DynamicObject>, ApiError> {
    let bytes = read_body(body, &state.inner.limits).await?;
    match review::parse(&bytes)? {
        Parsed::Request(request) => Ok(decide(state, &request)?.into_review()),
        Parsed::Invalid { uid, reason } => {
            state.inner.metrics.invalid_request("invalid_review");
            warn!(uid = %uid, %reason, "invalid AdmissionReview");
            Ok(review::invalid(uid, reason))
        }
    }
}

/// Decides on one readable request; one span per admission, named after
/// the workload.
#[tracing::instrument(
    name = "admission",
    skip_all,
    fields(
        uid = %req.uid,
        kind = %req.kind.kind,
        namespace = req.namespace.as_deref().unwrap_or(""),
        name = %req.name,
        operation = operation_label(&req.operation),
    )
)]
fn decide(
    state: &AppState,
    req: &AdmissionRequest<DynamicObject>,
) -> Result<AdmissionResponse, ApiError> {
    let metrics = &state.inner.metrics;
    let kind = WorkloadKind::from_gvk(&req.kind).map_or("other", WorkloadKind::kind);
    let operation = operation_label(&req.operation);
    let count = |result: &'static str| {
        metrics
            .requests
            .get_or_create(&RequestLabels {
                kind,
                operation,
                result,
            })
            .inc();
    };
    let ns = req.namespace.as_deref().unwrap_or("");
    match mutate(req, &state.inner.checks) {
        Decision::Deny { reason, message } => {
            count("denied");
            metrics
                .denials
                .get_or_create(&ReasonLabels {
                    reason: reason.metric_label(),
                })
                .inc();
            info!(uid = %req.uid, kind, namespace = ns, name = %req.name, reason = reason.metric_label(), %message, "denied");
            Ok(AdmissionResponse::from(req).deny(message))
        }
        Decision::Allow { patch, warnings } => {
            count("allowed");
            let mut response = AdmissionResponse::from(req);
            if !patch.is_empty() {
                response = response
                    .with_patch(json_patch::Patch(patch))
                    .map_err(|e| ApiError::Encode(e.to_string()))?;
            }
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            Ok(response)
        }
    }
}

fn operation_label(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// A running HTTPS server and its certificate reloader.
pub struct RunningServer {
    pub addr: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
    serve: JoinHandle<std::io::Result<()>>,
    reload: JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish (up to `grace`),
    /// and waits for the server to end.
    pub async fn shutdown(self, grace: Duration) -> std::io::Result<()> {
        self.handle.graceful_shutdown(Some(grace));
        self.reload.abort();
        match self.serve.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Serves `state`'s router over TLS on `listener`, with the certificate
/// from `resolver` re-read every `reload_interval`.
pub fn start(
    listener: std::net::TcpListener,
    resolver: Arc<ReloadingCertResolver>,
    state: AppState,
    reload_interval: Duration,
) -> anyhow::Result<RunningServer> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let tls = climatik_certs::server_config(resolver.clone())?;
    let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, config)?.handle(handle.clone());
    let app = router(state.clone());
    let serve = tokio::spawn(async move { server.serve(app.into_make_service()).await });
    let metrics = state.metrics().clone();
    let reload = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(reload_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match resolver.reload_if_changed() {
                Ok(ReloadOutcome::Unchanged) => {}
                Ok(ReloadOutcome::Reloaded { serial_hex }) => {
                    metrics
                        .certificate_reloads
                        .get_or_create(&ReasonLabels { reason: "reloaded" })
                        .inc();
                    info!(serial = %serial_hex, "serving a new certificate");
                }
                Err(e) => {
                    metrics
                        .certificate_reloads
                        .get_or_create(&ReasonLabels {
                            reason: e.metric_label(),
                        })
                        .inc();
                    warn!(error = %e, "certificate files changed but cannot be used; keeping the old certificate");
                }
            }
        }
    });
    info!(%addr, serial = %resolver_serial(&state), "webhook listening");
    Ok(RunningServer {
        addr,
        handle,
        serve,
        reload,
    })
}

fn resolver_serial(state: &AppState) -> String {
    state
        .inner
        .certificate
        .as_ref()
        .map(|c| c.serial_hex())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_shared_by_size_and_waiting_ends_at_the_deadline() {
        let in_flight = InFlight::new(&Limits {
            max_in_flight_bytes: 64 * 1024,
            ..Limits::default()
        });
        let soon = || Instant::now() + Duration::from_millis(50);
        // Small bodies share the room; one larger than it takes all of it.
        let a = in_flight.reserve(20 * 1024, soon()).await;
        let b = in_flight.reserve(20 * 1024, soon()).await;
        assert!(a.is_ok() && b.is_ok());
        assert!(matches!(
            in_flight.reserve(30 * 1024, soon()).await,
            Err(ApiError::Overloaded)
        ));
        drop((a, b));
        let all = in_flight.reserve(100 * 1024 * 1024, soon()).await;
        assert!(all.is_ok());
        assert!(matches!(
            in_flight.reserve(1, soon()).await,
            Err(ApiError::Overloaded)
        ));
        drop(all);
        assert!(in_flight.reserve(1, soon()).await.is_ok());
    }
}
