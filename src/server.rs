//! The exporter's HTTP server: `/metrics` (or `--web.telemetry-path`),
//! `/healthz` and `/-/healthy`, `/readyz` and `/-/ready`, `/-/reload`
//! (with `--web.enable-lifecycle`) and a landing page at `/`. Built by
//! [`router`], the one construction `vitals run` serves and the tests drive
//! without a socket.

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

use crate::exposition::Format;
use crate::store::Store;
use crate::telemetry::{COMMIT, Telemetry, VERSION};

/// Content type of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = crate::exposition::TEXT_CONTENT_TYPE;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<RwLock<Store>>,
    pub telemetry: Arc<Telemetry>,
    /// Set once every source has been started.
    pub ready: Arc<AtomicBool>,
    pub events: crate::events::EventBus,
    /// Where `POST /-/reload` sends its request; `None` disables it.
    pub reload: Option<tokio::sync::mpsc::Sender<crate::supervisor::ReloadRequest>>,
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
    /// Gzip the metrics endpoint for scrapers that accept it (`web.compression`).
    pub compression: bool,
    /// Answer OpenMetrics to scrapers that prefer it (`web.openmetrics`).
    pub openmetrics: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            telemetry_path: "/metrics".into(),
            exporter_metrics: true,
            lifecycle: false,
            compression: true,
            openmetrics: true,
        }
    }
}

impl ServerOptions {
    pub fn from_config(web: &crate::config::WebConfig) -> Self {
        ServerOptions {
            telemetry_path: web.telemetry_path.clone(),
            exporter_metrics: !web.disable_exporter_metrics,
            lifecycle: web.enable_lifecycle,
            compression: web.compression,
            openmetrics: web.openmetrics,
        }
    }
}

/// The exporter's own metrics that `--web.disable-exporter-metrics` leaves
/// out (node_exporter leaves out its `process_*`, `go_*` and `promhttp_*`).
fn is_exporter_metric(family: &str) -> bool {
    family.starts_with("process_") || family == "vitals_scrape_duration_seconds"
}

/// The exporter's router, as `vitals run` serves it and as the tests drive
/// it: the built-in endpoints, `page` (the live dashboard's routes, which
/// own `/`) in place of the plain landing page, `extra` routes (each with
/// its own state), and the push sources' routes (webhook ingestion, which
/// change on reload) as the fallback. `max_requests` bounds concurrent
/// `/metrics` renders.
pub fn router(
    state: AppState,
    max_requests: usize,
    page: Option<Router>,
    extra: Vec<Router>,
    push: crate::supervisor::PushRoutes,
) -> Router {
    let mut router = base(state, max_requests, page);
    for r in extra {
        router = router.merge(r);
    }
    router.fallback_service(axum::routing::any(crate::supervisor::dispatch).with_state(push))
}

fn base(state: AppState, max_requests: usize, page: Option<Router>) -> Router {
    let path = state.options.telemetry_path.clone();
    let mut metrics = Router::new().route(&path, get(metrics));
    if state.options.compression {
        // Gzip only: what Prometheus asks for; the others add code, not
        // compatibility.
        metrics = metrics.layer(
            tower_http::compression::CompressionLayer::new()
                .gzip(true)
                .no_br()
                .no_deflate()
                .no_zstd(),
        );
    }
    let metrics = metrics.layer(GlobalConcurrencyLimitLayer::new(max_requests));
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

/// Write one scrape (the store, the anomaly families and the self-metrics,
/// by [`crate::exposition::write_scrape`]) into `out` in `format`; log the
/// families left out because their name was taken, and time the scrape.
fn scrape(state: &AppState, format: Format, out: &mut String) {
    let started = Instant::now();
    let mut own = state.telemetry.gather();
    if !state.options.exporter_metrics {
        own.retain(|family| !is_exporter_metric(family.name()));
    }
    let skipped =
        crate::exposition::write_scrape(&state.store, &own, state.telemetry.started(), format, out);
    if let Some(first) = skipped.first()
        && let Some(suppressed) = state.telemetry.should_log("exposition", "duplicate_family")
    {
        tracing::warn!(
            family = %first,
            families = skipped.len(),
            suppressed,
            "Families left out of /metrics: their name is already written."
        );
    }
    state
        .telemetry
        .scrape_duration
        .observe(started.elapsed().as_secs_f64());
}

/// Size of the last exposition: a buffer sized from it is not grown (and
/// copied) step by step while a large store is written.
static LAST_LEN: AtomicUsize = AtomicUsize::new(64 * 1024);

async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let format = if state.options.openmetrics {
        Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
    } else {
        Format::Text
    };
    // Rendering is CPU work bounded by the store size; it holds the store's
    // read lock only while the store part is written.
    let hint = LAST_LEN.load(Ordering::Relaxed);
    let mut out = String::with_capacity(hint + hint / 8);
    scrape(&state, format, &mut out);
    LAST_LEN.store(out.len(), Ordering::Relaxed);
    ([(header::CONTENT_TYPE, format.content_type())], out).into_response()
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

    use crate::supervisor::PushRoutes;
    use axum::routing::get as get_route;

    /// The production router ([`router`]) with no dashboard, extra or push
    /// routes.
    fn app(state: AppState) -> Router {
        router(state, 4, None, Vec::new(), PushRoutes::default())
    }

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
        let (status, body, ct) = get(app(state()), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(TEXT_FORMAT));
        assert!(body.contains("# TYPE vitals_build_info gauge"));
    }

    async fn get_with(app: Router, accept: &str) -> (String, String) {
        let resp = app
            .oneshot(
                Request::get("/metrics")
                    .header(header::ACCEPT, accept)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let ct = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (ct, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Names of the `# HELP` lines, in order.
    fn helps(body: &str) -> Vec<&str> {
        body.lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .map(|l| l.split(' ').next().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_store_family_named_like_a_self_metric_is_written_once() {
        use crate::model::{Labels, MetricKind, Sample};
        let s = state();
        {
            let mut store = s.store.write();
            let src: Arc<str> = "hook".into();
            let g = store.begin_batch();
            for (name, kind) in [
                ("process_cpu_seconds_total", MetricKind::Counter),
                ("vitals_build_info", MetricKind::Gauge),
                ("user_x_total", MetricKind::Counter),
            ] {
                let sample = Sample {
                    family: crate::store::family(name, kind, "From a user mapping."),
                    labels: Labels::from_pairs(&[("a", "1")]),
                    value: 1.0,
                    timestamp_ms: 0,
                };
                store.upsert(&src, &sample, g).unwrap();
            }
        }
        for accept in ["text/plain", "application/openmetrics-text; version=1.0.0"] {
            let (_, body) = get_with(app(s.clone()), accept).await;
            let names = helps(&body);
            let unique: std::collections::HashSet<&&str> = names.iter().collect();
            assert_eq!(
                unique.len(),
                names.len(),
                "{accept}: a family twice:\n{body}"
            );
            // The self-metrics win; the user's family of another name stays.
            assert!(
                !body.contains("From a user mapping.\n# TYPE process_cpu"),
                "{body}"
            );
            assert!(!body.contains("vitals_build_info{a=\"1\"}"), "{body}");
            assert!(body.contains("user_x_total{a=\"1\"} 1\n"), "{body}");
            assert!(body.contains("\nprocess_cpu_seconds_total "), "{body}");
        }
    }

    #[tokio::test]
    async fn openmetrics_when_the_scraper_prefers_it() {
        let (ct, body) = get_with(
            app(state()),
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .await;
        assert_eq!(ct, crate::exposition::OPENMETRICS_CONTENT_TYPE);
        assert!(body.ends_with("# EOF\n"));
        assert!(body.contains("# TYPE process_cpu_seconds counter\n"));
        let (ct, body) = get_with(app(state()), "text/plain;version=0.0.4").await;
        assert_eq!(ct, TEXT_FORMAT);
        assert!(!body.contains("# EOF"));
        let mut off = state();
        off.options.openmetrics = false;
        let (ct, _) = get_with(app(off), "application/openmetrics-text").await;
        assert_eq!(ct, TEXT_FORMAT);
    }

    #[tokio::test]
    async fn metrics_are_gzipped_when_asked_and_switched_on() {
        for on in [true, false] {
            let mut s = state();
            s.options.compression = on;
            let resp = app(s)
                .oneshot(
                    Request::get("/metrics")
                        .header(header::ACCEPT_ENCODING, "gzip")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let enc = resp.headers().get(header::CONTENT_ENCODING).cloned();
            assert_eq!(
                enc.as_ref().map(|v| v.to_str().unwrap()),
                on.then_some("gzip")
            );
        }
    }

    #[tokio::test]
    async fn readyz_reflects_start_up() {
        let s = state();
        let (status, _, _) = get(app(s.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        s.ready.store(true, Ordering::Release);
        let (status, _, _) = get(app(s), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn landing_links_to_metrics() {
        let (status, body, _) = get(app(state()), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("href=\"metrics\""));
    }

    #[tokio::test]
    async fn push_routes_are_served_beside_the_built_in_ones() {
        let push = PushRoutes::default();
        let app = router(state(), 4, None, Vec::new(), push.clone());
        let (status, _, _) = get(app.clone(), "/ingest/orders").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // A reload swaps the push routes; the same router serves the new ones.
        push.set(Router::new().route("/ingest/orders", get_route(|| async { "taken\n" })));
        let (status, body, _) = get(app.clone(), "/ingest/orders").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "taken\n"));
        let (status, _, _) = get(app, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
    }
}
