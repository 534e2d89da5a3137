//! The `webhook` source: events pushed over HTTP to the exporter's own
//! server (`POST /ingest/<name>` unless a `path` is configured).
//!
//! A body holds JSON events (one object, an array of objects, or JSON lines)
//! or CSV lines. A request is all or nothing: it is checked (size, bearer
//! token or HMAC-SHA256 signature, syntax) before any event counts, and a
//! 2xx answer is only sent once its batch is queued for the store, so an
//! accepted event is never lost and — thanks to the idempotency window on
//! the configured key — a retried POST is not counted twice.
//!
//! Rejections answer 400/401/413/503 with a JSON body
//! `{"error": "...", "reason": "..."}` and are counted in
//! `vitals_source_errors_total` by that bounded reason.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use sha2::Sha256;

use crate::events::Event;
use crate::key_error::KeyError;
use crate::model::{Batch, BatchMode, FamilyMeta, Labels, MetricKind, Sample, now_ms};
use crate::payload::rules::{self, RuleConfig, RuleSet};
use crate::sources::SourceContext;
use crate::sources::aggregate::{MetricConfig, MetricState, Skip};
use crate::sources::record::{CsvRecord, FieldPath, JsonRecord, Record, split_csv};

/// Body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// One JSON object, an array of objects, or one object per line.
    #[default]
    Json,
    /// CSV lines; the first line is the header unless `csv_columns` is set.
    Csv,
}

/// How requests prove they may push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// A hex HMAC-SHA256 of the raw body under the secret, in `signature_header`.
    Hmac,
}

fn default_signature_header() -> String {
    "x-signature-256".into()
}

fn default_signature_prefix() -> String {
    "sha256=".into()
}

/// `[sources.auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub scheme: AuthScheme,
    /// Environment variable holding the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the secret (surrounding whitespace ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// HMAC: the header carrying the signature.
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// HMAC: text before the hex digest in that header (may be empty).
    #[serde(default = "default_signature_prefix")]
    pub signature_prefix: String,
}

fn default_max_body_bytes() -> usize {
    1 << 20
}

fn default_window() -> Duration {
    Duration::from_secs(600)
}

fn default_capacity() -> usize {
    100_000
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(2)
}

/// `[[sources]]` with `type = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    /// Route on the exporter's server; default `/ingest/<name>`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub format: EventFormat,
    /// CSV column names; empty means the body's first line is the header.
    #[serde(default)]
    pub csv_columns: Vec<String>,
    /// Larger bodies are refused with 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Field whose value identifies an event (e.g. `id`); an event whose key
    /// was accepted within the window is acknowledged but not counted again.
    #[serde(default)]
    pub idempotency_key: Option<FieldPath>,
    /// How long accepted keys are remembered.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Most keys remembered; the oldest are forgotten first.
    #[serde(default = "default_capacity")]
    pub idempotency_capacity: usize,
    /// How long a request waits for room in the ingest queue before 503.
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    #[serde(default)]
    pub metrics: Vec<MetricConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl WebhookConfig {
    /// The route the source answers on.
    pub fn route(&self) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| format!("/ingest/{}", self.name))
    }

    /// Checks between keys; the key is relative to the source.
    pub fn validate(&self) -> Result<(), KeyError> {
        let route = self.route();
        if !route.starts_with('/')
            || route.contains(['{', '}', '*', '?', '#', ' '])
            || matches!(route.as_str(), "/" | "/metrics" | "/healthz" | "/readyz")
        {
            return Err(KeyError::at(
                "path".into(),
                format!(
                    "{route:?} must start with `/`, hold no `{{}}*?# ` and not be a built-in route"
                ),
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(KeyError::at("max_body_bytes".into(), "must be at least 1".into()));
        }
        if self.idempotency_capacity == 0 {
            return Err(KeyError::at("idempotency_capacity".into(), "must be at least 1".into()));
        }
        if let Some(auth) = &self.auth {
            if auth.secret_env.is_some() == auth.secret_file.is_some() {
                return Err(KeyError::at(
                    "auth".into(),
                    "set exactly one of `secret_env` and `secret_file`".into(),
                ));
            }
            if auth.scheme == AuthScheme::Hmac
                && axum::http::HeaderName::try_from(auth.signature_header.as_str()).is_err()
            {
                return Err(KeyError::at(
                    "auth.signature_header".into(),
                    "is not a valid header name".into(),
                ));
            }
        }
        if self.format != EventFormat::Csv && !self.csv_columns.is_empty() {
            return Err(KeyError::at(
                "csv_columns".into(),
                "only `format = \"csv\"` uses `csv_columns`".into(),
            ));
        }
        if self.metrics.is_empty() && self.rules.is_empty() {
            return Err(KeyError::at("metrics".into(), "needs at least one metric or rule".into()));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            if m.pattern.is_some() {
                return Err(KeyError::at(
                    format!("metrics[{i}].match"),
                    "webhook events have fields; `match` is for regex logs".into(),
                ));
            }
        }
        Ok(super::aggregate::validate_all(&self.metrics, &self.rules)?)
    }
}

/// Constant-time equality (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// A request refused, with its bounded reason.
#[derive(Debug)]
struct Reject {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl Reject {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Reject {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// The SHA-256 digest of a canonical idempotency key: every remembered key
/// takes the same room, however long the id.
type KeyDigest = [u8; 32];

/// Accepted keys (by digest), remembered for a window, bounded in number.
/// Times are ms since the Unix epoch, so the window is saved and restored
/// across restarts ([`crate::detect::state`]).
struct Dedupe {
    window_ms: i64,
    capacity: usize,
    seen: FxHashMap<KeyDigest, i64>,
    order: VecDeque<(i64, KeyDigest)>,
}

impl Dedupe {
    fn new(window: Duration, capacity: usize) -> Self {
        Dedupe {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            capacity,
            seen: FxHashMap::default(),
            order: VecDeque::new(),
        }
    }

    fn expire(&mut self, now_ms: i64) {
        while let Some((at, _)) = self.order.front() {
            if now_ms.saturating_sub(*at) <= self.window_ms && self.order.len() <= self.capacity {
                break;
            }
            if let Some((at, key)) = self.order.pop_front()
                && self.seen.get(&key) == Some(&at)
            {
                self.seen.remove(&key);
            }
        }
    }

    /// True when `key` is new (and remembers it).
    fn insert(&mut self, key: &str, now_ms: i64) -> bool {
        use sha2::Digest;
        let key: KeyDigest = Sha256::digest(key.as_bytes()).into();
        self.insert_digest(key, now_ms)
    }

    fn insert_digest(&mut self, key: KeyDigest, at_ms: i64) -> bool {
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key, at_ms);
        self.order.push_back((at_ms, key));
        true
    }

    /// The keys remembered, oldest first.
    fn entries(&self) -> Vec<(i64, KeyDigest)> {
        self.order
            .iter()
            .filter(|(at, key)| self.seen.get(key) == Some(at))
            .copied()
            .collect()
    }

    /// Remember saved keys again (those still within the window).
    fn restore(&mut self, mut entries: Vec<(i64, KeyDigest)>, now_ms: i64) {
        entries.sort_by_key(|(at, _)| *at);
        for (at, key) in entries {
            self.insert_digest(key, at);
        }
        self.expire(now_ms);
    }
}

/// The canonical idempotency key of an event: its id written as compact
/// JSON, so the type is part of the key. `"7"` (a string), `7` (an integer,
/// exact however large) and `7.0` (a float, by value) are three keys. A CSV
/// field is a string. `Ok(false)`: no id (absent or `null`), the event is
/// not de-duplicated.
trait IdKey {
    fn id_key(&self, field: &FieldPath, out: &mut String) -> Result<bool, IdError>;
}

/// An id that cannot be a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdError {
    /// An object or an array.
    NotScalar,
}

impl IdKey for JsonRecord<'_> {
    fn id_key(&self, field: &FieldPath, out: &mut String) -> Result<bool, IdError> {
        match self.lookup(field) {
            None | Some(serde_json::Value::Null) => Ok(false),
            Some(serde_json::Value::Object(_) | serde_json::Value::Array(_)) => {
                Err(IdError::NotScalar)
            }
            Some(v) => {
                // Writing a scalar JSON value to a String cannot fail.
                use std::fmt::Write as _;
                let _ = write!(out, "{v}");
                Ok(true)
            }
        }
    }
}

impl IdKey for CsvRecord<'_> {
    fn id_key(&self, field: &FieldPath, out: &mut String) -> Result<bool, IdError> {
        match self.get(field) {
            None => Ok(false),
            Some(v) => {
                let mut text = String::new();
                v.write_str(&mut text);
                use std::fmt::Write as _;
                let _ = write!(out, "{}", serde_json::Value::String(text));
                Ok(true)
            }
        }
    }
}

/// What is applied under one lock, in the order batches are queued.
struct Inner {
    metrics: Vec<MetricState>,
    rules: RuleSet,
    dedupe: Dedupe,
    accepted: u64,
    duplicates: u64,
}

/// One webhook source.
pub struct Webhook {
    cfg: WebhookConfig,
    name: Arc<str>,
    health: super::Health,
    /// `None` with auth configured means the secret could not be read:
    /// every request is refused (fail closed).
    secret: Option<Vec<u8>>,
    signature_header: Option<axum::http::HeaderName>,
    columns: Option<Vec<Box<str>>>,
    inner: Mutex<Inner>,
    ctx: SourceContext,
    events_family: Arc<FamilyMeta>,
}

fn read_secret(auth: &AuthConfig) -> Result<Vec<u8>, String> {
    let raw = if let Some(var) = &auth.secret_env {
        std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
    } else if let Some(path) = &auth.secret_file {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?
    } else {
        return Err("no secret configured".into());
    };
    let secret = raw.trim();
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(secret.as_bytes().to_vec())
}

impl Webhook {
    pub fn new(cfg: WebhookConfig, ctx: SourceContext, health: super::Health) -> Arc<Self> {
        let name: Arc<str> = cfg.name.as_str().into();
        let mut secret = None;
        if let Some(auth) = &cfg.auth {
            match read_secret(auth) {
                Ok(s) => secret = Some(s),
                Err(error) => health.down(Some(super::Failure::new("secret_unavailable", error))),
            }
        }
        let signature_header = cfg
            .auth
            .as_ref()
            .filter(|a| a.scheme == AuthScheme::Hmac)
            .and_then(|a| axum::http::HeaderName::try_from(a.signature_header.as_str()).ok());
        let limits = ctx.store.read().label_limits(&name);
        let mut metrics = super::aggregate::states(&cfg.metrics);
        for m in &mut metrics {
            m.set_limits(limits);
        }
        let mut dedupe = Dedupe::new(cfg.idempotency_window, cfg.idempotency_capacity);
        // The window saved by the previous run, if any.
        let saved = cfg.idempotency_key.as_ref().and_then(|field| {
            ctx.store
                .write()
                .persisted
                .take_window(&cfg.name, &field.to_string())
        });
        if let Some(saved) = saved {
            dedupe.restore(saved.entries, now_ms());
        }
        let inner = Inner {
            metrics,
            rules: RuleSet::new(&cfg.name, &cfg.rules),
            dedupe,
            accepted: 0,
            duplicates: 0,
        };
        let webhook = Arc::new(Webhook {
            columns: (!cfg.csv_columns.is_empty()).then(|| {
                cfg.csv_columns
                    .iter()
                    .map(|c| Box::from(c.as_str()))
                    .collect()
            }),
            name,
            health,
            secret,
            signature_header,
            inner: Mutex::new(inner),
            ctx,
            events_family: FamilyMeta::new(
                "vitals_webhook_events_total",
                MetricKind::Counter,
                "Events received by a webhook source, by outcome (accepted, duplicate).",
            ),
            cfg,
        });
        if webhook.cfg.idempotency_key.is_some() {
            let weak = Arc::downgrade(&webhook);
            let weak: std::sync::Weak<dyn crate::detect::state::SavedWindow> = weak;
            webhook.ctx.store.write().persisted.watch_window(weak);
        }
        webhook
    }

    /// The samples every source shows from the start (counters at 0).
    pub fn initial_batch(&self) -> Batch {
        let ts = now_ms();
        let mut samples = Vec::new();
        let inner = self.inner.lock();
        self.counts(&inner, ts, &mut samples);
        inner.rules.all(ts, &mut samples);
        Batch {
            source: self.name.clone(),
            mode: BatchMode::Update,
            samples,
        }
    }

    fn counts(&self, inner: &Inner, ts: i64, out: &mut Vec<Sample>) {
        for (outcome, n) in [
            ("accepted", inner.accepted),
            ("duplicate", inner.duplicates),
        ] {
            out.push(Sample {
                family: self.events_family.clone(),
                labels: Labels::from_pairs(&[("source", &*self.name), ("outcome", outcome)]),
                value: n as f64,
                timestamp_ms: ts,
            });
        }
    }

    fn authorize(&self, headers: &HeaderMap, body: Option<&[u8]>) -> Result<(), Reject> {
        let Some(auth) = &self.cfg.auth else {
            return Ok(());
        };
        let Some(secret) = &self.secret else {
            return Err(Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "secret_unavailable",
                "the source's secret could not be read; see the exporter's log",
            ));
        };
        match auth.scheme {
            AuthScheme::Bearer => {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
                    .map(str::trim);
                match given {
                    Some(token) if ct_eq(token.as_bytes(), secret) => Ok(()),
                    Some(_) => Err(Reject::new(
                        StatusCode::UNAUTHORIZED,
                        "bad_token",
                        "the bearer token is wrong",
                    )),
                    None => Err(Reject::new(
                        StatusCode::UNAUTHORIZED,
                        "missing_credentials",
                        "an `Authorization: Bearer` header is required",
                    )),
                }
            }
            AuthScheme::Hmac => {
                // Checked once the body has been read.
                let Some(body) = body else {
                    return Ok(());
                };
                let given = self
                    .signature_header
                    .as_ref()
                    .and_then(|h| headers.get(h))
                    .and_then(|v| v.to_str().ok());
                let Some(given) = given else {
                    return Err(Reject::new(
                        StatusCode::UNAUTHORIZED,
                        "missing_credentials",
                        format!("the {} header is required", auth.signature_header),
                    ));
                };
                let hex = given
                    .trim()
                    .strip_prefix(auth.signature_prefix.as_str())
                    .unwrap_or(given.trim());
                let bad = || {
                    Reject::new(
                        StatusCode::UNAUTHORIZED,
                        "bad_signature",
                        "the signature does not match the body",
                    )
                };
                let sig = hex_decode(hex).ok_or_else(bad)?;
                let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| bad())?;
                mac.update(body);
                mac.verify_slice(&sig).map_err(|_| bad())
            }
        }
    }

    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, Reject> {
        let max = self.cfg.max_body_bytes;
        let too_large = || {
            Reject::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {max} bytes"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        match Limited::new(body, max).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Err(e) => Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "body_read",
                format!("the body could not be read: {e}"),
            )),
        }
    }

    /// Handle one request; the response body is JSON either way.
    pub async fn handle(self: Arc<Self>, headers: HeaderMap, body: Body) -> Response {
        match self.ingest(&headers, body).await {
            Ok((accepted, duplicates)) => (
                StatusCode::OK,
                axum::Json(serde_json::json!({"accepted": accepted, "duplicates": duplicates})),
            )
                .into_response(),
            Err(reject) => {
                self.health.error(reject.reason, &reject.message);
                (
                    reject.status,
                    axum::Json(serde_json::json!({
                        "error": reject.message,
                        "reason": reject.reason,
                    })),
                )
                    .into_response()
            }
        }
    }

    async fn ingest(&self, headers: &HeaderMap, body: Body) -> Result<(usize, usize), Reject> {
        self.authorize(headers, None)?;
        let body = self.read_body(headers, body).await?;
        self.authorize(headers, Some(&body))?;
        match self.cfg.format {
            EventFormat::Json => {
                let events = parse_json(&body)?;
                let records: Vec<JsonRecord<'_>> = events.iter().map(JsonRecord).collect();
                self.apply(&records).await
            }
            EventFormat::Csv => {
                let text = std::str::from_utf8(&body).map_err(|_| {
                    Reject::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_csv",
                        "the body is not UTF-8",
                    )
                })?;
                let (columns, rows) = parse_csv(text, self.columns.as_deref())?;
                let records: Vec<CsvRecord<'_>> = rows
                    .iter()
                    .map(|fields| CsvRecord {
                        columns: &columns,
                        fields,
                    })
                    .collect();
                self.apply(&records).await
            }
        }
    }

    /// Count `records` and queue their batch; all or nothing.
    async fn apply<R: Record + IdKey + Sync>(
        &self,
        records: &[R],
    ) -> Result<(usize, usize), Reject> {
        // Every id is checked before anything counts (all or nothing).
        let mut keys: Vec<Option<String>> = Vec::new();
        if let Some(field) = &self.cfg.idempotency_key {
            keys.reserve(records.len());
            for (i, record) in records.iter().enumerate() {
                let mut key = String::new();
                match record.id_key(field, &mut key) {
                    Ok(true) => keys.push(Some(key)),
                    Ok(false) => keys.push(None),
                    Err(IdError::NotScalar) => {
                        return Err(Reject::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_idempotency_key",
                            format!(
                                "event {i}: the idempotency key `{field}` is an object or an array; \
                                 it must be a string, a number or a boolean"
                            ),
                        ));
                    }
                }
            }
        }
        // Room in the queue first, so nothing below can fail: the state is
        // only changed when its batch is sure to be queued.
        let permit = match tokio::time::timeout(self.cfg.queue_timeout, self.ctx.tx.reserve()).await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => {
                return Err(Reject::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the exporter is shutting down",
                ));
            }
            Err(_) => {
                return Err(Reject::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_full",
                    "the ingest queue is full; retry later",
                ));
            }
        };
        let ts = now_ms();
        let mut samples = Vec::new();
        let mut events: Vec<Event> = Vec::new();
        let (accepted, duplicates) = {
            let mut guard = self.inner.lock();
            let inner = &mut *guard;
            inner.dedupe.expire(ts);
            let (mut accepted, mut duplicates) = (0, 0);
            for (i, record) in records.iter().enumerate() {
                if let Some(Some(key)) = keys.get(i)
                    && !inner.dedupe.insert(key, ts)
                {
                    duplicates += 1;
                    continue;
                }
                accepted += 1;
                for m in inner.metrics.iter_mut() {
                    if let Err(skip) = m.observe(record)
                        && skip != Skip::Filtered
                    {
                        self.ctx.telemetry.sample_dropped(
                            &self.name,
                            skip.reason(),
                            &m.cfg.name.0.as_str(),
                        );
                    }
                }
                inner.rules.eval(record, ts, &mut events);
            }
            inner.accepted += accepted as u64;
            inner.duplicates += duplicates as u64;
            for m in inner.metrics.iter_mut() {
                m.flush(ts, &mut samples);
            }
            inner.rules.flush(ts, &mut samples);
            self.counts(inner, ts, &mut samples);
            permit.send(Batch {
                source: self.name.clone(),
                mode: BatchMode::Update,
                samples,
            });
            (accepted, duplicates)
        };
        rules::publish(events, &self.ctx.events, &self.ctx.telemetry, &self.name);
        Ok((accepted, duplicates))
    }
}

impl crate::detect::state::SavedWindow for Webhook {
    fn save_window(&self) -> Option<crate::detect::state::WindowState> {
        let key = self.cfg.idempotency_key.as_ref()?;
        let mut inner = self.inner.lock();
        inner.dedupe.expire(now_ms());
        Some(crate::detect::state::WindowState {
            source: self.cfg.name.clone(),
            key: key.to_string(),
            entries: inner.dedupe.entries(),
        })
    }
}

fn malformed_json(message: String) -> Reject {
    Reject::new(StatusCode::BAD_REQUEST, "malformed_json", message)
}

/// One object, an array of objects, or whitespace-separated objects (JSON lines).
fn parse_json(body: &[u8]) -> Result<Vec<serde_json::Value>, Reject> {
    let trimmed = body.trim_ascii_start();
    if trimmed.is_empty() {
        return Err(malformed_json("the body is empty".into()));
    }
    let values: Vec<serde_json::Value> = if trimmed.starts_with(b"[") {
        match serde_json::from_slice(trimmed) {
            Ok(serde_json::Value::Array(items)) => items,
            Ok(other) => vec![other],
            Err(e) => return Err(malformed_json(format!("invalid JSON: {e}"))),
        }
    } else {
        let mut out = Vec::new();
        for v in serde_json::Deserializer::from_slice(trimmed).into_iter::<serde_json::Value>() {
            out.push(v.map_err(|e| malformed_json(format!("invalid JSON: {e}")))?);
        }
        out
    };
    if let Some(i) = values.iter().position(|v| !v.is_object()) {
        return Err(malformed_json(format!("event {i} is not a JSON object")));
    }
    Ok(values)
}

type CsvRows<'a> = Vec<Vec<std::borrow::Cow<'a, str>>>;

fn parse_csv<'a>(
    text: &'a str,
    columns: Option<&[Box<str>]>,
) -> Result<(Vec<Box<str>>, CsvRows<'a>), Reject> {
    let bad = |line: usize, m: String| {
        Reject::new(
            StatusCode::BAD_REQUEST,
            "malformed_csv",
            format!("line {}: {m}", line + 1),
        )
    };
    let mut header: Option<Vec<Box<str>>> = columns.map(|c| c.to_vec());
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_csv(line).map_err(|e| bad(i, e.to_string()))?;
        match &header {
            None => header = Some(fields.iter().map(|f| Box::from(f.trim())).collect()),
            Some(h) if h.len() != fields.len() => {
                return Err(bad(
                    i,
                    format!("{} fields where the header has {}", fields.len(), h.len()),
                ));
            }
            Some(_) => rows.push(fields),
        }
    }
    if rows.is_empty() {
        return Err(bad(0, "no rows".into()));
    }
    Ok((header.unwrap_or_default(), rows))
}

/// Parse a body as the endpoint does after its size and auth checks, and
/// hand each event to `each`. Returns the number of events, or the bounded
/// reason the request would be rejected with. Pure (no state, no queue):
/// the fuzz targets and the corpus replay test use it.
pub fn parse_body(
    format: EventFormat,
    columns: Option<&[Box<str>]>,
    body: &[u8],
    mut each: impl FnMut(&dyn Record),
) -> Result<usize, &'static str> {
    match format {
        EventFormat::Json => {
            let events = parse_json(body).map_err(|r| r.reason)?;
            for e in &events {
                each(&JsonRecord(e));
            }
            Ok(events.len())
        }
        EventFormat::Csv => {
            let text = std::str::from_utf8(body).map_err(|_| "malformed_csv")?;
            let (columns, rows) = parse_csv(text, columns).map_err(|r| r.reason)?;
            for fields in &rows {
                each(&CsvRecord {
                    columns: &columns,
                    fields,
                });
            }
            Ok(rows.len())
        }
    }
}

impl super::Source for WebhookConfig {
    const KIND: &'static str = "webhook";
    type Built = ();

    fn name(&self) -> &str {
        &self.name
    }

    fn build(&self) -> Result<(), KeyError> {
        Ok(self.validate()?)
    }

    /// The route, and a task that queues the initial counters.
    fn start(&self, _: &(), ctx: SourceContext, health: super::Health) -> super::Started {
        let (router, source) = router_with(self.clone(), ctx, health);
        super::Started {
            task: super::Task::Async(Box::pin(announce(source))),
            routes: Some(router),
        }
    }

    fn secret_inputs(&self) -> Vec<(&'static str, super::SecretInput<'_>)> {
        let mut out = Vec::new();
        if let Some(a) = &self.auth {
            super::secret_input(
                &mut out,
                "auth.secret",
                a.secret_env.as_deref(),
                a.secret_file.as_deref(),
            );
        }
        out
    }
}

/// The route of one webhook source, ready to merge into the server, with a
/// health record of its own (the supervisor uses [`super::Source::start`]).
pub fn router(cfg: WebhookConfig, ctx: SourceContext) -> (Router, Arc<Webhook>) {
    let health = super::Health::new(&ctx.telemetry, &cfg.name, <WebhookConfig as super::Source>::KIND);
    router_with(cfg, ctx, health)
}

fn router_with(cfg: WebhookConfig, ctx: SourceContext, health: super::Health) -> (Router, Arc<Webhook>) {
    let route = cfg.route();
    let source = Webhook::new(cfg, ctx, health);
    let router = Router::new()
        .route(
            &route,
            post(
                |State(s): State<Arc<Webhook>>, headers: HeaderMap, body: Body| {
                    s.handle(headers, body)
                },
            ),
        )
        .with_state(source.clone());
    (router, source)
}

/// Queue the initial (zero) counters of a webhook source, so its series
/// exist before the first event.
pub async fn announce(source: Arc<Webhook>) {
    let batch = source.initial_batch();
    if source.ctx.tx.send(batch).await.is_ok()
        && source.secret.is_some() == source.cfg.auth.is_some()
    {
        source.health.up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `webhook` fuzz target (fuzz/corpus/webhook/json_empty_array):
    /// an empty JSON array is an empty batch, CSV without a data row is refused.
    #[test]
    fn empty_json_array_is_an_empty_batch_and_header_only_csv_is_refused() {
        let count = |format, body: &[u8]| parse_body(format, None, body, |_| {});
        assert_eq!(count(EventFormat::Json, b"[\t\t]"), Ok(0));
        assert_eq!(count(EventFormat::Json, b" \n"), Err("malformed_json"));
        assert_eq!(count(EventFormat::Json, b"[1]"), Err("malformed_json"));
        assert_eq!(count(EventFormat::Csv, b"a,b\n"), Err("malformed_csv"));
        assert_eq!(count(EventFormat::Csv, b"a,b\n1,2\n"), Ok(1));
        assert_eq!(count(EventFormat::Csv, b"\xff"), Err("malformed_csv"));
    }

    #[test]
    fn hex_and_constant_time_compare() {
        assert_eq!(hex_decode("00ffA1"), Some(vec![0, 255, 161]));
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn json_bodies_one_array_or_lines() {
        assert_eq!(parse_json(br#"{"a":1}"#).unwrap().len(), 1);
        assert_eq!(parse_json(br#" [{"a":1},{"a":2}] "#).unwrap().len(), 2);
        assert_eq!(
            parse_json(b"{\"a\":1}\n{\"a\":2}\n\n{\"a\":3}\n")
                .unwrap()
                .len(),
            3
        );
        for bad in [&b""[..], b"{\"a\":", b"[1,2]", b"{\"a\":1}\n42", b"nope"] {
            let r = parse_json(bad).unwrap_err();
            assert_eq!(
                (r.status, r.reason),
                (StatusCode::BAD_REQUEST, "malformed_json")
            );
        }
    }

    #[test]
    fn csv_bodies_with_header_or_columns() {
        let (cols, rows) = parse_csv("id,amount\nt-1,5\nt-2,7\n", None).unwrap();
        assert_eq!(cols.len(), 2);
        assert_eq!(rows.len(), 2);
        let given: Vec<Box<str>> = vec!["id".into(), "amount".into()];
        let (_, rows) = parse_csv("t-1,5\n", Some(&given)).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            parse_csv("id,amount\nt-1\n", None).unwrap_err().reason,
            "malformed_csv"
        );
        assert_eq!(
            parse_csv("id,amount\n\"t-1,5\n", None).unwrap_err().reason,
            "malformed_csv"
        );
        assert_eq!(
            parse_csv("id,amount\n", None).unwrap_err().reason,
            "malformed_csv"
        );
    }

    #[test]
    fn dedupe_forgets_after_window_and_capacity() {
        let t0 = 1_700_000_000_000;
        let mut d = Dedupe::new(Duration::from_secs(10), 2);
        assert!(d.insert("a", t0));
        assert!(!d.insert("a", t0));
        assert!(d.insert("b", t0));
        assert!(d.insert("c", t0));
        d.expire(t0);
        // Capacity 2: "a" is forgotten first.
        assert!(d.insert("a", t0));
        d.expire(t0 + 11_000);
        assert!(d.seen.is_empty());
    }

    #[test]
    fn dedupe_restored_from_its_entries_refuses_the_same_keys() {
        let t0 = 1_700_000_000_000;
        let mut d = Dedupe::new(Duration::from_secs(10), 3);
        assert!(d.insert("a", t0));
        assert!(d.insert("b", t0 + 5_000));
        let mut again = Dedupe::new(Duration::from_secs(10), 3);
        again.restore(d.entries(), t0 + 8_000);
        assert!(!again.insert("a", t0 + 8_000));
        assert!(!again.insert("b", t0 + 8_000));
        assert!(again.insert("c", t0 + 8_000));
        // Restored keys still leave when their own window ends.
        again.expire(t0 + 12_000);
        assert!(again.insert("a", t0 + 12_000));
        assert!(!again.insert("b", t0 + 12_000));
        // Keys older than the window are not restored.
        let mut late = Dedupe::new(Duration::from_secs(10), 3);
        late.restore(d.entries(), t0 + 60_000);
        assert!(late.seen.is_empty());
    }
}
