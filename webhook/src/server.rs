//! HTTPS server: `POST /mutate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    response::{IntoResponse, Response},
    routing::post,
};
use climatik_certs::{ReloadOutcome, ReloadingCertResolver};
use climatik_runtime::{Admin, Readiness, admin};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use tokio::{task::JoinHandle, time::Instant};
use tracing::{info, warn};

use crate::{
    effects::Effects,
    error::ApiError,
    metrics::Metrics,
    metrics::{ReasonLabels, RequestLabels},
    mutate::{Decision, PolicyAction, mutate},
    review::{self, Parsed},
    workload::WorkloadKind,
};

/// Request handling limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted request body. A review holds the object and the old
    /// object, each up to etcd's ~1.5 MiB.
    pub max_body_bytes: usize,
    /// A client that has not sent its whole body by then is cut off.
    pub body_timeout: Duration,
    /// Budget for the policy writes of one admission (the API server
    /// waits 10 s for the webhook by default).
    pub effect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            body_timeout: Duration::from_secs(5),
            effect_timeout: Duration::from_secs(7),
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
    effects: Effects,
    limits: Limits,
    certificate: Option<Arc<ReloadingCertResolver>>,
}

impl AppState {
    pub fn new(
        metrics: Metrics,
        effects: Effects,
        limits: Limits,
        certificate: Option<Arc<ReloadingCertResolver>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                metrics,
                effects,
                limits,
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

async fn mutate_handler(State(state): State<AppState>, body: Body) -> Response {
    let started = Instant::now();
    let metrics = &state.inner.metrics;
    let response = match admit(&state, body).await {
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
    let read = axum::body::to_bytes(body, limits.max_body_bytes);
    match tokio::time::timeout(limits.body_timeout, read).await {
        Err(_) => Err(ApiError::BodyTimeout(limits.body_timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
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
        Parsed::Request(request) => Ok(decide(state, &request).await?.into_review()),
        Parsed::Invalid { uid, reason } => {
            state.inner.metrics.invalid_request("invalid_review");
            warn!(uid = %uid, %reason, "invalid AdmissionReview");
            Ok(review::invalid(uid, reason))
        }
    }
}

/// Decides on one readable request and carries out the policy writes it
/// asks for; one span per admission, named after the workload.
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
async fn decide(
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
    match mutate(req) {
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
        Decision::Allow {
            patch,
            policy,
            mut warnings,
        } => {
            if !req.dry_run {
                let limit = state.inner.limits.effect_timeout;
                let outcome = tokio::time::timeout(limit, state.inner.effects.execute(&policy))
                    .await
                    .unwrap_or(Err(crate::error::EffectError::Timeout(limit)));
                match (outcome, &policy) {
                    (Ok(more), _) => warnings.extend(more),
                    (Err(err), PolicyAction::Apply(desired)) => {
                        // The user asked for a cap we could not record:
                        // admitting the workload uncapped would hide that.
                        metrics.error(err.metric_label());
                        count("denied");
                        metrics
                            .denials
                            .get_or_create(&ReasonLabels {
                                reason: "policy_write_failed",
                            })
                            .inc();
                        warn!(uid = %req.uid, policy = %desired.name, error = %err, "policy write failed; denying");
                        return Ok(AdmissionResponse::from(req).deny(format!(
                            "could not write the generated PowerCappingPolicy: {err}; try again"
                        )));
                    }
                    (Err(err), _) => {
                        metrics.error(err.metric_label());
                        warn!(uid = %req.uid, error = %err, "policy cleanup failed");
                        warnings.push(format!(
                            "the generated PowerCappingPolicy could not be removed: {err}"
                        ));
                    }
                }
                if let PolicyAction::Apply(desired) = &policy
                    && matches!(req.operation, Operation::Create)
                    && desired.workload.uid.is_none()
                {
                    state.inner.effects.spawn_owner_follow_up(desired);
                }
            }
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
