//! The relay's HTTP side: `POST /webhook` (receiver from the payload) and
//! `POST /webhook/{receiver}`, `/metrics`, `/healthz`, `/-/healthy`,
//! `/-/reload`. Every refusal is JSON `{"error": "..."}`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::deliver::{Dispatcher, Shared};
use super::metrics::RelayMetrics;
use super::outbox::{Accepted, NewJob, Outbox};
use super::payload;
use super::routing::matches_all;
use super::runtime::{Auth, Runtime};
use crate::server::TEXT_FORMAT;

#[derive(Clone)]
pub struct RelayState {
    pub runtime: Shared,
    pub outbox: Outbox,
    pub dispatcher: Dispatcher,
    pub metrics: Arc<RelayMetrics>,
    /// The file `/-/reload` and SIGHUP read again.
    pub config_path: PathBuf,
    /// Digests of (user, hash, password) that bcrypt already verified, so
    /// a busy Alertmanager does not pay a bcrypt per request.
    pub basic_ok: Arc<Mutex<HashSet<[u8; 32]>>>,
}

pub fn app(state: RelayState) -> Router {
    Router::new()
        .route("/webhook", post(webhook_any))
        .route("/webhook/{receiver}", post(webhook_named))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/-/healthy", get(|| async { "ok\n" }))
        .route("/-/reload", post(reload))
        .with_state(state)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": msg.into() }))).into_response()
}

async fn metrics(State(s): State<RelayState>) -> Response {
    s.metrics.outbox_depth.set(s.outbox.depth());
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], s.metrics.render()).into_response()
}

async fn reload(State(s): State<RelayState>) -> Response {
    match super::reload(&s).await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"status": "reloaded"}))).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn webhook_named(
    State(s): State<RelayState>,
    Path(receiver): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(s, Some(receiver), headers, body).await
}

async fn webhook_any(State(s): State<RelayState>, headers: HeaderMap, body: Body) -> Response {
    handle(s, None, headers, body).await
}

async fn handle(
    s: RelayState,
    path_receiver: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let runtime = s.runtime.read().clone();
    let (label, resp) = accept(&s, &runtime, path_receiver, headers, body).await;
    s.metrics
        .requests
        .with_label_values(&[label.as_str(), resp.status().as_str()])
        .inc();
    resp
}

/// Returns the receiver label for metrics (a configured name or `unknown`)
/// and the response.
async fn accept(
    s: &RelayState,
    runtime: &Runtime,
    path_receiver: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> (String, Response) {
    let unknown = || "unknown".to_string();
    let limit = runtime.cfg.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let label = path_receiver
        .as_ref()
        .filter(|r| runtime.receivers.contains_key(*r))
        .cloned()
        .unwrap_or_else(unknown);
    if declared.is_some_and(|n| n > limit) {
        return (label, too_large(limit));
    }
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return (label, too_large(limit)),
        Err(_) => {
            return (
                label,
                error(StatusCode::BAD_REQUEST, "cannot read the body"),
            );
        }
    };

    // The receiver: from the URL path, or else the payload's `receiver`.
    let (receiver, parsed) = match path_receiver {
        Some(name) => match runtime.receivers.get(&name) {
            Some(r) => (r, None),
            None => {
                return (
                    unknown(),
                    error(
                        StatusCode::NOT_FOUND,
                        format!("no receiver is named {name:?}"),
                    ),
                );
            }
        },
        None => {
            let n = match payload::parse(&bytes) {
                Ok(n) => n,
                Err(e) => return (unknown(), error(StatusCode::BAD_REQUEST, e.to_string())),
            };
            match runtime.receivers.get(&n.receiver) {
                Some(r) => (r, Some(n)),
                None => {
                    return (
                        unknown(),
                        error(
                            StatusCode::NOT_FOUND,
                            format!("no receiver is named {:?}", n.receiver),
                        ),
                    );
                }
            }
        }
    };
    let label = receiver.name.clone();
    if let Err(resp) = authenticate(s, &receiver.auth, &headers, &bytes).await {
        return (label, resp);
    }
    let mut n = match parsed {
        Some(n) => n,
        None => match payload::parse(&bytes) {
            Ok(n) => n,
            Err(e) => return (label, error(StatusCode::BAD_REQUEST, e.to_string())),
        },
    };
    // Route under the receiver that authenticated the request.
    n.receiver = receiver.name.clone();

    let mut jobs = Vec::new();
    for c in &receiver.channels {
        let Some(channel) = runtime.channels.get(c) else {
            continue;
        };
        if !matches_all(&channel.matchers, &n) {
            continue;
        }
        for recipient in channel.notifier.recipients() {
            jobs.push(NewJob {
                channel: c.clone(),
                recipient,
            });
        }
    }
    if jobs.is_empty() {
        s.metrics.unrouted.with_label_values(&[&label]).inc();
        return (
            label,
            (
                StatusCode::OK,
                axum::Json(json!({"status": "accepted", "jobs": 0})),
            )
                .into_response(),
        );
    }
    let window = runtime.cfg.dedup_window;
    match s.outbox.accept(Arc::new(n), window, jobs).await {
        Ok(Accepted::Jobs(jobs)) => {
            s.metrics.received.with_label_values(&[&label]).inc();
            let count = jobs.len();
            s.dispatcher.enqueue(jobs);
            s.metrics.outbox_depth.set(s.outbox.depth());
            (
                label,
                (
                    StatusCode::OK,
                    axum::Json(json!({"status": "accepted", "jobs": count})),
                )
                    .into_response(),
            )
        }
        Ok(Accepted::Duplicate) => {
            s.metrics.duplicates.with_label_values(&[&label]).inc();
            (
                label,
                (StatusCode::OK, axum::Json(json!({"status": "duplicate"}))).into_response(),
            )
        }
        Err(e) => {
            s.metrics.persist_errors.inc();
            // The outbox logs when commits start and stop failing; this
            // path only counts, so a full disk does not flood the log.
            tracing::debug!(receiver = %label, error = %e, "Cannot persist a notification; answering 503.");
            (
                label,
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot persist the notification; retry later",
                ),
            )
        }
    }
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body is larger than {limit} bytes"),
    )
}

fn unauthorized(scheme: &'static str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized");
    if let Ok(v) = header::HeaderValue::from_str(scheme) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Constant-time equality of two byte strings (compares their digests).
fn same(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A bcrypt hash verified for unknown users, so the answer takes as long
/// as for known ones. Made once, on first use.
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn dummy_hash() -> String {
    DUMMY_HASH
        .get_or_init(|| bcrypt::hash("vitals-relay-unknown-user", 10).unwrap_or_default())
        .clone()
}

async fn authenticate(
    s: &RelayState,
    auth: &Auth,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Response> {
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match auth {
        Auth::None => Ok(()),
        Auth::Bearer(token) => {
            let given = authz
                .strip_prefix("Bearer ")
                .or_else(|| authz.strip_prefix("bearer "))
                .unwrap_or("");
            if !given.is_empty() && same(given.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(unauthorized("Bearer"))
            }
        }
        Auth::Basic(users) => {
            let basic = "Basic realm=\"vitals relay\"";
            let decoded = authz
                .strip_prefix("Basic ")
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| unauthorized(basic))?;
            let (user, password) = decoded.split_once(':').ok_or_else(|| unauthorized(basic))?;
            let (hash, known) = match users.get(user) {
                Some(h) => (h.clone(), true),
                None => (String::new(), false),
            };
            let digest: [u8; 32] = {
                let mut h = Sha256::new();
                for part in [user.as_bytes(), hash.as_bytes(), password.as_bytes()] {
                    h.update(part);
                    h.update([0]);
                }
                h.finalize().into()
            };
            if known && s.basic_ok.lock().contains(&digest) {
                return Ok(());
            }
            let password = password.to_string();
            let ok = tokio::task::spawn_blocking(move || {
                let hash = if known { hash } else { dummy_hash() };
                bcrypt::verify(password, &hash).unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            if ok && known {
                let mut cache = s.basic_ok.lock();
                if cache.len() >= 1024 {
                    cache.clear();
                }
                cache.insert(digest);
                Ok(())
            } else {
                Err(unauthorized(basic))
            }
        }
        Auth::Hmac {
            secret,
            header: name,
            timestamp_header,
        } => {
            let sig = headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| hex::decode(v.trim()).ok())
                .ok_or_else(|| unauthorized("HMAC"))?;
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).map_err(|_| unauthorized("HMAC"))?;
            if let Some(ts_name) = timestamp_header {
                let ts = headers
                    .get(ts_name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| unauthorized("HMAC"))?;
                mac.update(ts.as_bytes());
                mac.update(b":");
            }
            mac.update(body);
            mac.verify_slice(&sig).map_err(|_| unauthorized("HMAC"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;
    use tower::ServiceExt;

    const CONFIG: &str = r#"
[relay]
data_dir = "/nonexistent"
[[relay.receivers]]
name = "ops"
auth = { type = "none" }
channels = ["sms"]
[[relay.channels]]
name = "sms"
type = "sms"
provider = "gw"
to = ["+1555"]
[[relay.sms_providers]]
name = "gw"
type = "http"
url = "http://127.0.0.1:9/send"
body_template = "{{ text }}"
"#;

    #[tokio::test]
    async fn answers_503_when_the_outbox_cannot_persist() {
        super::super::ensure_crypto();
        let cfg = super::super::config::parse_str(CONFIG, "test.toml").unwrap();
        let rt = Runtime::build(cfg, "test.toml", false).unwrap();
        let shared: Shared = Arc::new(parking_lot::RwLock::new(Arc::new(rt)));
        let outbox = Outbox::stopped();
        let metrics = Arc::new(RelayMetrics::new());
        let dispatcher = Dispatcher::new(
            shared.clone(),
            outbox.clone(),
            metrics.clone(),
            CancellationToken::new(),
            TaskTracker::new(),
        );
        let state = RelayState {
            runtime: shared,
            outbox,
            dispatcher,
            metrics: metrics.clone(),
            config_path: PathBuf::from("test.toml"),
            basic_ok: Arc::new(Mutex::new(HashSet::new())),
        };
        let body = r#"{"version":"4","groupKey":"g","status":"firing","receiver":"ops",
            "alerts":[{"status":"firing","labels":{"alertname":"A"},"startsAt":"2024-01-01T00:00:00Z"}]}"#;
        let resp = app(state)
            .oneshot(
                Request::post("/webhook/ops")
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&bytes).contains("cannot persist"));
        assert_eq!(metrics.persist_errors.get(), 1);
    }
}
