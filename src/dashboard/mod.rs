//! The built-in live dashboard: a page at `/` (assets embedded in the
//! binary) fed over a WebSocket at `/api/ws`, plus `/api/series` (JSON).
//!
//! One hub task ([`Dashboard::run_hub`]) watches the store's change counter
//! and the event bus. When something changed (at most once per
//! `update_interval`) it scans the store once, renders each changed
//! series' new points to JSON once, and publishes the result as a [`Tick`]
//! on a bounded broadcast channel. Every client [`stream::session`] picks
//! from each tick what its filters match. History lives in the store
//! (a ring per series, see [`crate::store::History`]).
//!
//! Anomaly scores: the ingest task records a point's score with
//! [`crate::store::Series::record_score`] in the same store write as the
//! upsert; the hub only reads them (events on the bus are forwarded, not
//! recorded).

pub mod filter;
pub mod stream;

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use rustc_hash::FxHashMap;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::DashboardConfig;
use crate::events::{Event, EventBus};
use crate::model::{FamilyMeta, Labels};
use crate::store::{Series, Store};
use crate::telemetry::Telemetry;
use filter::{Filter, Subject};
use stream::ClientMsg;

/// Ticks a client may fall behind before it is skipped ahead.
const TICK_BACKLOG: usize = 16;
/// Events kept for the snapshot of a newly connected client.
const RECENT_EVENTS: usize = 200;
/// Events carried by one tick; more are dropped (and counted).
const EVENTS_PER_TICK: usize = 256;
/// How often the hub looks at the store's change counter.
const POLL: Duration = Duration::from_millis(20);
/// How often the hub looks at the store while no dashboard is connected.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How often source health is pushed.
const SOURCES_EVERY: Duration = Duration::from_secs(1);

/// Name, labels and source of one series, rendered to JSON once.
#[derive(Debug)]
pub struct SeriesMeta {
    pub id: u64,
    pub metric: Arc<str>,
    pub source: Arc<str>,
    pub labels: Labels,
    /// `{"id":..,"metric":..,"kind":..,"source":..,"help":..,"labels":{..}}`
    pub json: String,
}

/// One series' new points in a tick.
#[derive(Debug)]
pub struct Update {
    pub meta: Arc<SeriesMeta>,
    /// `{"id":..,"t":[..],"v":[..],...}`
    pub json: String,
}

/// What changed since the previous tick, shared by every client.
#[derive(Debug, Default)]
pub struct Tick {
    pub now_ms: i64,
    /// Series seen for the first time.
    pub new: Vec<Arc<SeriesMeta>>,
    pub updates: Vec<Update>,
    /// Ids of series removed from the store.
    pub gone: Vec<u64>,
    pub events: Vec<Arc<Event>>,
    /// Source health (JSON array), about once a second.
    pub sources: Option<String>,
}

/// Self-metrics of the dashboard.
struct Metrics {
    clients: IntGauge,
    messages: IntCounter,
    bytes: IntCounter,
    resyncs: IntCounter,
    dropped: IntCounterVec,
    bad_messages: IntCounterVec,
    events_dropped: IntCounter,
}

impl Metrics {
    fn new(t: &Telemetry) -> Self {
        let m = Metrics {
            clients: IntGauge::new(
                "vitals_dashboard_clients",
                "Dashboard WebSocket clients connected.",
            )
            .expect("valid metric"),
            messages: IntCounter::new(
                "vitals_dashboard_messages_sent_total",
                "Messages sent to dashboard clients.",
            )
            .expect("valid metric"),
            bytes: IntCounter::new(
                "vitals_dashboard_sent_bytes_total",
                "Bytes of messages sent to dashboard clients.",
            )
            .expect("valid metric"),
            resyncs: IntCounter::new(
                "vitals_dashboard_client_resyncs_total",
                "Times a lagging dashboard client was skipped ahead to a fresh snapshot.",
            )
            .expect("valid metric"),
            dropped: IntCounterVec::new(
                Opts::new(
                    "vitals_dashboard_clients_dropped_total",
                    "Dashboard clients disconnected by vitals, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            bad_messages: IntCounterVec::new(
                Opts::new(
                    "vitals_dashboard_bad_messages_total",
                    "Dashboard client messages or filters refused, by reason.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            events_dropped: IntCounter::new(
                "vitals_dashboard_events_dropped_total",
                "Events not shown on the dashboard (more than a tick can carry, or bus lag).",
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(m.clients.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.messages.clone()),
            Box::new(m.bytes.clone()),
            Box::new(m.resyncs.clone()),
            Box::new(m.dropped.clone()),
            Box::new(m.bad_messages.clone()),
            Box::new(m.events_dropped.clone()),
        ] {
            // A second dashboard on the same registry (tests) reuses the
            // names; the first registration wins.
            let _ = t.registry().register(c);
        }
        m
    }

    fn sent(&self, len: usize) {
        self.messages.inc();
        self.bytes.inc_by(len as u64);
    }

    fn dropped(&self, reason: &'static str) {
        self.dropped.with_label_values(&[reason]).inc();
    }
}

pub(crate) struct Inner {
    store: Arc<RwLock<Store>>,
    telemetry: Arc<Telemetry>,
    cfg: DashboardConfig,
    ticks: broadcast::Sender<Arc<Tick>>,
    clients: AtomicUsize,
    recent_events: Mutex<VecDeque<Arc<Event>>>,
    /// Rendered metadata by series id (kept by the hub, read by snapshots).
    metas: Mutex<FxHashMap<u64, Arc<SeriesMeta>>>,
    metrics: Metrics,
}

/// Handle to the dashboard; cheap to clone.
#[derive(Clone)]
pub struct Dashboard {
    pub(crate) inner: Arc<Inner>,
}

impl Dashboard {
    pub fn new(cfg: DashboardConfig, store: Arc<RwLock<Store>>, telemetry: Arc<Telemetry>) -> Self {
        let metrics = Metrics::new(&telemetry);
        let (ticks, _) = broadcast::channel(TICK_BACKLOG);
        Dashboard {
            inner: Arc::new(Inner {
                store,
                telemetry,
                cfg,
                ticks,
                clients: AtomicUsize::new(0),
                recent_events: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
                metas: Mutex::new(FxHashMap::default()),
                metrics,
            }),
        }
    }

    /// The routes: `/`, `/assets/{file}`, `/api/ws`, `/api/series`.
    pub fn router(&self, shutdown: CancellationToken) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/assets/{file}", get(asset))
            .route("/api/ws", get(ws))
            .route("/api/series", get(series))
            .with_state((self.clone(), shutdown))
    }

    /// Connected clients.
    pub fn clients(&self) -> usize {
        self.inner.clients.load(Ordering::Acquire)
    }

    /// Run the hub until `shutdown`.
    pub async fn run_hub(self, events: EventBus, shutdown: CancellationToken) {
        let mut hub = Hub::new(self.inner.clone());
        let mut events = events.subscribe();
        let changes = self.inner.store.read().changes();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let interval = self.inner.cfg.update_interval;
        let mut last_tick = Instant::now() - interval;
        let mut last_sources = Instant::now() - SOURCES_EVERY;
        // With nobody watching, wake up only a few times a second (the
        // 20 ms poll alone cost ~0.4 % of a core on an idle host).
        let mut idle = tokio::time::interval(IDLE_POLL);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let watching = self.inner.ticks.receiver_count() > 0;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                e = events.recv() => match e {
                    Ok(e) => hub.event(e),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.inner.metrics.events_dropped.inc_by(n);
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        // No more events; keep serving series.
                        events = EventBus::new(1).subscribe();
                    }
                },
                _ = async {
                    if watching {
                        poll.tick().await
                    } else {
                        idle.tick().await
                    }
                } => {
                    let changed = changes.load(Ordering::Acquire) != hub.last_seq
                        || !hub.pending.is_empty();
                    if self.inner.ticks.receiver_count() == 0 {
                        // Nobody watching: only keep the hub's view of the
                        // store current (once a second, nothing rendered),
                        // so the first tick after a connect stays small.
                        if changed && last_tick.elapsed() >= SOURCES_EVERY {
                            last_tick = Instant::now();
                            hub.pending.clear();
                            hub.scan(false);
                        }
                        continue;
                    }
                    let sources_due = last_sources.elapsed() >= SOURCES_EVERY;
                    let data_due = changed && last_tick.elapsed() >= interval;
                    if data_due || sources_due {
                        // Only data ticks count for the batching interval:
                        // a health-only tick must not delay the next data.
                        if data_due {
                            last_tick = Instant::now();
                        }
                        let sources = sources_due.then(|| {
                            last_sources = Instant::now();
                            self.inner.sources_json()
                        });
                        let mut tick = hub.scan(true);
                        tick.sources = sources;
                        let _ = self.inner.ticks.send(Arc::new(tick));
                    }
                }
            }
        }
    }

    /// Notice for filter values that match nothing in the store (sources,
    /// label names, metric patterns); logged rate-limited.
    fn unknown_filter_values(&self, filters: &[Filter]) -> Option<String> {
        let (mut sources, mut metrics, mut label_names) =
            (BTreeSet::new(), Vec::new(), BTreeSet::new());
        {
            let store = self.inner.store.read();
            for family in store.families() {
                metrics.push(family.meta.name.clone());
                for (labels, s) in &family.series {
                    sources.insert(s.source.clone());
                    for (k, _) in labels.pairs() {
                        label_names.insert(k);
                    }
                }
            }
        }
        let mut unknown: Vec<String> = Vec::new();
        for f in filters {
            for s in &f.source {
                if !sources.contains(s.as_str()) {
                    unknown.push(format!("source={s}"));
                }
            }
            for p in &f.metric {
                if !metrics.iter().any(|m| filter::glob(p, m)) {
                    unknown.push(format!("metric={p}"));
                }
            }
            for k in f.labels.keys() {
                if !label_names.contains(k) {
                    unknown.push(format!("label={k}"));
                }
            }
        }
        if unknown.is_empty() {
            return None;
        }
        self.inner
            .metrics
            .bad_messages
            .with_label_values(&["unknown_filter_value"])
            .inc();
        if let Some(suppressed) = self
            .inner
            .telemetry
            .should_log("dashboard", "unknown_filter_value")
        {
            tracing::info!(unknown = ?unknown, suppressed, "Dashboard filter names values not in the store (yet).");
        }
        let mut out = String::from(
            r#"{"type":"notice","level":"info","reason":"unknown_filter_value","message":"These filter values match nothing (yet).","unknown":"#,
        );
        out.push_str(&serde_json::to_string(&unknown).unwrap_or_else(|_| "[]".into()));
        out.push('}');
        Some(out)
    }
}

impl Inner {
    fn history_s(&self) -> u64 {
        self.cfg.history.as_secs().max(1)
    }

    fn hello(&self) -> String {
        serde_json::json!({
            "type": "hello",
            "version": crate::telemetry::VERSION,
            "now": crate::model::now_ms(),
            "history": self.history_s(),
            "resolution": self.cfg.resolution.as_secs().max(1),
            "update_interval_ms": self.cfg.update_interval.as_millis() as u64,
            "group_labels": self.cfg.group_labels,
            "score_threshold": self.cfg.score_threshold,
        })
        .to_string()
    }

    /// Count, log rate-limited, and answer a refused client message.
    fn bad_message(&self, reason: &'static str, detail: &str) -> String {
        self.metrics.bad_messages.with_label_values(&[reason]).inc();
        if let Some(suppressed) = self.telemetry.should_log("dashboard", reason) {
            tracing::warn!(reason, error = %detail, suppressed, "Dashboard client message refused.");
        }
        serde_json::json!({
            "type": "notice",
            "level": "error",
            "reason": reason,
            "message": detail,
        })
        .to_string()
    }

    /// Metadata of a series, from the hub's cache or rendered now.
    fn meta_for(&self, family: &FamilyMeta, labels: &Labels, series: &Series) -> Arc<SeriesMeta> {
        if let Some(m) = self.metas.lock().get(&series.id) {
            return m.clone();
        }
        Arc::new(render_meta(family, labels, series))
    }

    /// Health of every source, from the telemetry's health table: up,
    /// last success, errors, series held.
    fn sources_json(&self) -> String {
        let rows = self.telemetry.health().snapshot();
        let store = self.store.read();
        let list: Vec<serde_json::Value> = rows
            .into_iter()
            .map(|(source, h)| {
                serde_json::json!({
                    "source": source,
                    "type": h.kind,
                    "up": h.up.map(|up| if up { 1.0 } else { 0.0 }),
                    "last_success": h.last_success,
                    "errors": h.errors as f64,
                    "series": store.source_len(&source),
                })
            })
            .collect();
        serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
    }
}

fn render_meta(family: &FamilyMeta, labels: &Labels, series: &Series) -> SeriesMeta {
    let pairs: serde_json::Map<String, serde_json::Value> = labels
        .pairs()
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    let json = serde_json::json!({
        "id": series.id,
        "metric": family.name.as_ref(),
        "kind": family.kind.as_str(),
        "source": series.source.as_ref(),
        "help": family.help.as_ref(),
        "labels": pairs,
    })
    .to_string();
    SeriesMeta {
        id: series.id,
        metric: family.name.clone(),
        source: series.source.clone(),
        labels: labels.clone(),
        json,
    }
}

/// What the hub remembers per series.
struct Known {
    meta: Arc<SeriesMeta>,
    /// Time (history offset) of the newest point already sent.
    last_t: u32,
    /// Scan number in which the series was last seen.
    seen: u64,
}

struct Hub {
    inner: Arc<Inner>,
    known: FxHashMap<u64, Known>,
    last_seq: u64,
    scan: u64,
    pending: Vec<Arc<Event>>,
}

impl Hub {
    fn new(inner: Arc<Inner>) -> Self {
        Hub {
            inner,
            known: FxHashMap::default(),
            last_seq: 0,
            scan: 0,
            pending: Vec::new(),
        }
    }

    fn event(&mut self, e: Arc<Event>) {
        {
            let mut recent = self.inner.recent_events.lock();
            if recent.len() >= RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(e.clone());
        }
        if self.pending.len() >= EVENTS_PER_TICK {
            self.inner.metrics.events_dropped.inc();
        } else {
            self.pending.push(e);
        }
    }

    /// Scan the store and build the next tick (with `emit` false, only
    /// bring the hub's bookkeeping up to date).
    fn scan(&mut self, emit: bool) -> Tick {
        self.scan += 1;
        let scan = self.scan;
        let mut tick = Tick {
            now_ms: crate::model::now_ms(),
            events: std::mem::take(&mut self.pending),
            ..Tick::default()
        };
        let store = self.inner.store.read();
        let seq = store.seq();
        let mut metas = self.inner.metas.lock();
        for family in store.families() {
            for (labels, series) in &family.series {
                let is_new = !self.known.contains_key(&series.id);
                if is_new {
                    let meta = Arc::new(render_meta(&family.meta, labels, series));
                    metas.insert(series.id, meta.clone());
                    if emit {
                        tick.new.push(meta.clone());
                    }
                    self.known.insert(
                        series.id,
                        Known {
                            meta,
                            last_t: 0,
                            seen: scan,
                        },
                    );
                }
                let Some(k) = self.known.get_mut(&series.id) else {
                    continue;
                };
                k.seen = scan;
                let newest = series.history.points().next_back().map(|p| p.t);
                if emit && (is_new || series.seq > self.last_seq) {
                    let last_t = k.last_t;
                    let points = series.history.points().filter(move |p| p.t >= last_t);
                    let mut json = String::with_capacity(96);
                    let _ = write!(json, r#"{{"id":{},"#, series.id);
                    stream::write_points(&mut json, points, series.timestamp_ms, series.value);
                    json.push('}');
                    tick.updates.push(Update {
                        meta: k.meta.clone(),
                        json,
                    });
                }
                if let Some(t) = newest {
                    k.last_t = t;
                }
            }
        }
        self.known.retain(|id, k| {
            if k.seen == scan {
                true
            } else {
                if emit {
                    tick.gone.push(*id);
                }
                metas.remove(id);
                false
            }
        });
        self.last_seq = seq;
        tick
    }
}

static INDEX_HTML: &str = include_str!("assets/index.html");
static STYLE_CSS: &str = include_str!("assets/style.css");
static CHART_JS: &str = include_str!("assets/chart.js");
static APP_JS: &str = include_str!("assets/app.js");
static FAVICON_SVG: &str = include_str!("assets/favicon.svg");

type RouteState = (Dashboard, CancellationToken);

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, ct) = match file.as_str() {
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        "chart.js" => (CHART_JS, "text/javascript; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (FAVICON_SVG, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/series?source=..&metric=..&label=k:v&text=..`: matching
/// series with their latest value, last-seen time and history length.
async fn series(State((dash, _)): State<RouteState>, RawQuery(q): RawQuery) -> Response {
    let (f, _, _) = filter::from_query(q.as_deref().unwrap_or(""));
    let store = dash.inner.store.read();
    let mut out = String::from(r#"{"series":["#);
    let mut first = true;
    for family in store.families() {
        for (labels, s) in &family.series {
            if !f.matches(&Subject {
                source: &s.source,
                metric: &family.meta.name,
                labels: labels.as_str(),
            }) {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            let meta = render_meta(&family.meta, labels, s);
            out.push_str(&meta.json[..meta.json.len() - 1]);
            let _ = write!(out, r#","last":{},"value":"#, s.timestamp_ms);
            if s.value.is_finite() {
                let _ = write!(out, "{}", s.value);
            } else {
                out.push_str("null");
            }
            let _ = write!(out, r#","points":{}}}"#, s.history.len());
        }
    }
    out.push_str("]}");
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

/// Decrements the client count when a session ends.
struct ClientSlot(Dashboard);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.inner.clients.fetch_sub(1, Ordering::AcqRel);
        self.0.inner.metrics.clients.dec();
    }
}

async fn ws(
    State((dash, shutdown)): State<RouteState>,
    RawQuery(q): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let max = dash.inner.cfg.max_clients;
    if dash
        .inner
        .clients
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_err()
    {
        dash.inner.metrics.dropped("too_many_clients");
        if let Some(suppressed) = dash
            .inner
            .telemetry
            .should_log("dashboard", "too_many_clients")
        {
            tracing::warn!(
                max,
                suppressed,
                "Dashboard client refused: too many clients."
            );
        }
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboard clients\n",
        )
            .into_response();
    }
    dash.inner.metrics.clients.inc();
    let slot = ClientSlot(dash.clone());
    let (f, window, unknown) = filter::from_query(q.as_deref().unwrap_or(""));
    upgrade
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024)
        .on_upgrade(move |socket: WebSocket| async move {
            let _slot = slot;
            let (sink, stream) = socket.split();
            let sink = sink.with(|s: String| {
                futures_util::future::ready(Ok::<_, axum::Error>(Message::Text(s.into())))
            });
            let stream = stream.filter_map(|m| {
                futures_util::future::ready(match m {
                    Ok(Message::Text(t)) => Some(ClientMsg::Text(t.to_string())),
                    Ok(Message::Binary(_)) => Some(ClientMsg::Binary),
                    Ok(Message::Ping(_) | Message::Pong(_)) => None,
                    Ok(Message::Close(_)) | Err(_) => Some(ClientMsg::Close),
                })
            });
            let mut sink = Box::pin(sink);
            if !unknown.is_empty() {
                let notice = dash.inner.bad_message(
                    "unknown_query_key",
                    &format!("not understood: {}", unknown.join(", ")),
                );
                let _ = tokio::time::timeout(dash.inner.cfg.send_timeout, sink.send(notice)).await;
            }
            let filters = if f == Filter::default() {
                vec![]
            } else {
                vec![f]
            };
            stream::session(dash, sink, Box::pin(stream), filters, window, shutdown).await;
        })
}

#[cfg(test)]
mod tests;
