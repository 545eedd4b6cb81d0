//! The admin endpoints every binary serves:
//!
//! - `/healthz`: liveness; fails only when the process is wedged and a
//!   restart would help (an optional check the binary supplies);
//! - `/readyz`: readiness; fails until every check the binary registered on
//!   its [`Readiness`] passes (a watch has synced, a certificate is loaded);
//! - `/metrics`: the Prometheus text format, with one content type.
//!
//! Binaries with their own HTTP server (the webhook) merge [`router`] into
//! it; the others run [`serve`] on their `--metrics-listen` address.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

/// The one `/metrics` content type. The Prometheus text format 0.0.4 is what
/// every scraper reads, and what the simulated dcgm-exporter series that
/// freqtuner appends are (they are not valid OpenMetrics).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Check = Arc<dyn Fn() -> bool + Send + Sync>;
type Liveness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Named readiness checks; `/readyz` passes while all of them do. Clones
/// share the checks.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<(String, Check)>>>,
}

/// One readiness check the binary flips; starts not ready.
#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a check that fails until the returned flag is set.
    pub fn flag(&self, name: &str) -> ReadyFlag {
        let flag = ReadyFlag::default();
        let reader = flag.clone();
        self.check(name, move || reader.is_set());
        flag
    }

    /// Registers a check computed on each request.
    pub fn check(&self, name: &str, check: impl Fn() -> bool + Send + Sync + 'static) {
        self.lock().push((name.to_string(), Arc::new(check)));
    }

    /// Names of the checks that fail now; empty when ready.
    pub fn failing(&self) -> Vec<String> {
        // Evaluated outside the lock: a check may take its own locks.
        let checks: Vec<(String, Check)> = self.lock().clone();
        checks
            .into_iter()
            .filter(|(_, check)| !check())
            .map(|(name, _)| name)
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        self.failing().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Check)>> {
        // A panic while pushing leaves the list intact.
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the admin endpoints report.
#[derive(Clone)]
pub struct Admin {
    readiness: Readiness,
    liveness: Option<Liveness>,
    metrics: Metrics,
}

impl Admin {
    /// `metrics` renders the `/metrics` body in the Prometheus text format
    /// (see [`encode`]).
    pub fn new(metrics: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Self {
            readiness: Readiness::new(),
            liveness: None,
            metrics: Arc::new(metrics),
        }
    }

    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// `/healthz` fails with the error's text while `check` fails.
    pub fn with_liveness(
        mut self,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.liveness = Some(Arc::new(check));
        self
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router<S: Clone + Send + Sync + 'static>(admin: Admin) -> Router<S> {
    let live = admin.clone();
    let ready = admin.clone();
    Router::new()
        .route("/healthz", get(move || async move { healthz(&live) }))
        .route("/readyz", get(move || async move { readyz(&ready) }))
        .route("/metrics", get(move || async move { metrics(&admin) }))
}

fn healthz(admin: &Admin) -> Response {
    match admin.liveness.as_ref().map(|check| check()) {
        None | Some(Ok(())) => "ok\n".into_response(),
        Some(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

fn readyz(admin: &Admin) -> Response {
    let failing = admin.readiness.failing();
    if failing.is_empty() {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", failing.join(", ")),
        )
            .into_response()
    }
}

fn metrics(admin: &Admin) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        (admin.metrics)(),
    )
        .into_response()
}

/// A prometheus-client registry in the text format, without OpenMetrics'
/// closing `# EOF` (so more series may follow, and the body is what
/// [`METRICS_CONTENT_TYPE`] says). Empty if encoding fails, which only a
/// failing `fmt::Write` into a `String` could cause.
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode_registry(&mut text, registry).is_err() {
        text.clear();
    }
    text
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router::<()>(admin))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(app: &Router, path: &str) -> (StatusCode, String, String) {
        let request = axum::http::Request::get(path)
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, content_type, String::from_utf8_lossy(&body).into())
    }

    #[tokio::test]
    async fn readiness_follows_the_flags() {
        let readiness = Readiness::new();
        let watch = readiness.flag("watch");
        let cert = readiness.flag("certificate");
        let app = router::<()>(Admin::new(String::new).with_readiness(readiness));
        let (status, _, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: watch, certificate\n");
        watch.set(true);
        let (_, _, body) = get(&app, "/readyz").await;
        assert_eq!(body, "not ready: certificate\n");
        cert.set(true);
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        // Liveness does not depend on readiness.
        watch.set(false);
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn liveness_reports_why() {
        let alive = Arc::new(AtomicBool::new(true));
        let reader = alive.clone();
        let app = router::<()>(Admin::new(String::new).with_liveness(move || {
            if reader.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("loop stalled".into())
            }
        }));
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        alive.store(false, Ordering::Relaxed);
        let (status, _, body) = get(&app, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "loop stalled\n");
    }

    #[tokio::test]
    async fn metrics_are_text_without_eof() {
        let mut registry = prometheus_client::registry::Registry::with_prefix("x");
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("events", "Events", counter.clone());
        counter.inc();
        let text = encode(&registry);
        let app = router::<()>(Admin::new(move || text.clone()));
        let (status, content_type, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, METRICS_CONTENT_TYPE);
        assert!(body.contains("x_events_total 1"), "{body}");
        assert!(!body.contains("# EOF"), "{body}");
    }
}
