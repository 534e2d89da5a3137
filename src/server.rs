//! The exporter's HTTP server: `/metrics` (or `--web.telemetry-path`),
//! `/healthz` and `/-/healthy`, `/readyz` and `/-/ready`, `/-/reload`
//! (with `--web.enable-lifecycle`) and a landing page at `/`. Built by
//! [`app`] so tests can drive it without a socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use parking_lot::RwLock;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::store::Store;
use crate::telemetry::{COMMIT, Telemetry, VERSION};

/// Content type of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<RwLock<Store>>,
    pub telemetry: Arc<Telemetry>,
    /// Set once every source has been started.
    pub ready: Arc<AtomicBool>,
    pub events: crate::events::EventBus,
    /// Where `POST /-/reload` sends its request; `None` disables it.
    pub reload: Option<tokio::sync::mpsc::Sender<crate::run::ReloadRequest>>,
    /// Paths and switches from the `web` configuration.
    pub options: ServerOptions,
}

/// The `web` settings the router is built with.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Path of the metrics endpoint (`web.telemetry_path`).
    pub telemetry_path: String,
    /// Include the exporter's own `process_*` metrics and scrape-duration
    /// histogram (off with `web.disable_exporter_metrics`).
    pub exporter_metrics: bool,
    /// Serve `POST`/`PUT /-/reload` (`web.enable_lifecycle`); off, 403.
    pub lifecycle: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            telemetry_path: "/metrics".into(),
            exporter_metrics: true,
            lifecycle: false,
        }
    }
}

impl ServerOptions {
    pub fn from_config(web: &crate::config::WebConfig) -> Self {
        ServerOptions {
            telemetry_path: web.telemetry_path.clone(),
            exporter_metrics: !web.disable_exporter_metrics,
            lifecycle: web.enable_lifecycle,
        }
    }
}

/// The exporter's own metrics that `--web.disable-exporter-metrics` leaves
/// out (node_exporter leaves out its `process_*`, `go_*` and `promhttp_*`).
fn is_exporter_metric(family: &str) -> bool {
    family.starts_with("process_") || family == "vitals_scrape_duration_seconds"
}

/// The router; `max_requests` bounds concurrent `/metrics` renders.
pub fn app(state: AppState, max_requests: usize) -> Router {
    app_with(state, max_requests, Vec::new())
}

/// [`app`] plus routes contributed by sources (webhook ingestion); each
/// carries its own state.
pub fn app_with(state: AppState, max_requests: usize, extra: Vec<Router>) -> Router {
    app_with_page(state, max_requests, extra, None)
}

/// [`app_with`] with `page` (the live dashboard's routes, which own `/`)
/// in place of the plain landing page.
pub fn app_with_page(
    state: AppState,
    max_requests: usize,
    extra: Vec<Router>,
    page: Option<Router>,
) -> Router {
    let mut router = base(state, max_requests, page);
    for r in extra {
        router = router.merge(r);
    }
    router
}

fn base(state: AppState, max_requests: usize, page: Option<Router>) -> Router {
    let path = state.options.telemetry_path.clone();
    let metrics = Router::new()
        .route(&path, get(metrics))
        .layer(GlobalConcurrencyLimitLayer::new(max_requests));
    let root = page.unwrap_or_else(|| {
        let path = path.clone();
        Router::new().route("/", get(move || landing(path.clone())))
    });
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        // Prometheus' and Alertmanager's spellings of the same two checks.
        .route("/-/healthy", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/-/ready", get(readyz))
        .route("/-/reload", axum::routing::post(reload).put(reload))
        .merge(metrics)
        .with_state(state)
        .merge(root)
}

/// Render the store and the self-metrics into `out` (appended).
pub fn render_into(state: &AppState, out: &mut String) {
    let started = Instant::now();
    state.store.read().render(out);
    let mut own = Vec::with_capacity(16 * 1024);
    if state.options.exporter_metrics {
        state.telemetry.render(&mut own);
    } else {
        state
            .telemetry
            .render_filtered(&mut own, |family| !is_exporter_metric(family));
    }
    out.push_str(&String::from_utf8_lossy(&own));
    state
        .telemetry
        .scrape_duration
        .observe(started.elapsed().as_secs_f64());
}

/// Size of the last exposition: a buffer sized from it is not grown (and
/// copied) step by step while a large store is written.
static LAST_LEN: AtomicUsize = AtomicUsize::new(64 * 1024);

async fn metrics(State(state): State<AppState>) -> Response {
    // Rendering is CPU work bounded by the store size; it holds the store's
    // read lock only while the store part is written.
    let hint = LAST_LEN.load(Ordering::Relaxed);
    let mut out = String::with_capacity(hint + hint / 8);
    render_into(&state, &mut out);
    LAST_LEN.store(out.len(), Ordering::Relaxed);
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], out).into_response()
}

/// `POST /-/reload`: re-read the configuration; 200 with what changed, or
/// 400 with why the new configuration was rejected (the old one stays).
async fn reload(State(state): State<AppState>) -> Response {
    if !state.options.lifecycle {
        // Prometheus' answer without --web.enable-lifecycle.
        return (
            StatusCode::FORBIDDEN,
            "Lifecycle API is not enabled (start vitals with --web.enable-lifecycle, or send SIGHUP).\n",
        )
            .into_response();
    }
    let Some(requests) = state.reload.clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "reload is not available\n").into_response();
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if requests.send(Some(tx)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match rx.await {
        Ok(Ok(summary)) => (StatusCode::OK, format!("{summary}\n")).into_response(),
        Ok(Err(error)) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn landing(metrics: String) -> Html<String> {
    // The path is validated (no quotes or markup characters are possible
    // in a path vitals accepts, but escape anyway).
    let href = metrics
        .trim_start_matches('/')
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    let shown = metrics.replace('&', "&amp;").replace('<', "&lt;");
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>vitals</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:2em auto\">\
         <h1>vitals</h1><p>Version {VERSION} (commit {COMMIT}).</p><ul>\
         <li><a href=\"{href}\">{shown}</a> &mdash; Prometheus metrics</li>\
         <li><a href=\"-/healthy\">/-/healthy</a> (or /healthz) &mdash; liveness</li>\
         <li><a href=\"-/ready\">/-/ready</a> (or /readyz) &mdash; readiness</li></ul></body></html>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state() -> AppState {
        AppState {
            store: Arc::new(RwLock::new(Store::new())),
            telemetry: Arc::new(Telemetry::new()),
            ready: Arc::new(AtomicBool::new(false)),
            events: crate::events::EventBus::default(),
            reload: None,
            options: ServerOptions::default(),
        }
    }

    async fn get(app: Router, path: &str) -> (StatusCode, String, Option<String>) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap(), ct)
    }

    #[tokio::test]
    async fn metrics_has_text_format_and_self_metrics() {
        let (status, body, ct) = get(app(state(), 4), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(TEXT_FORMAT));
        assert!(body.contains("# TYPE vitals_build_info gauge"));
    }

    #[tokio::test]
    async fn readyz_reflects_start_up() {
        let s = state();
        let (status, _, _) = get(app(s.clone(), 4), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        s.ready.store(true, Ordering::Release);
        let (status, _, _) = get(app(s, 4), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn landing_links_to_metrics() {
        let (status, body, _) = get(app(state(), 4), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("href=\"metrics\""));
    }
}
