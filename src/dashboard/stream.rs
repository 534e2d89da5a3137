//! The WebSocket stream: one [`session`] per connected client.
//!
//! The session is generic over a `Sink<String>` and a stream of
//! [`ClientMsg`], so tests drive it with channels and the HTTP handler with
//! an axum WebSocket. Message format: docs/dashboard-stream.md.
//!
//! Back-pressure: the hub publishes each tick once on a bounded broadcast
//! channel shared by every client; a client never has a queue of its own.
//! A client that falls more than that channel's capacity behind is skipped
//! ahead (it gets a fresh snapshot instead of the missed deltas); a client
//! whose socket does not accept a message within `send_timeout` is
//! disconnected. Memory per client is its filter and a match cache bounded
//! by the number of series in the store.

use std::fmt::Write as _;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::filter::{self, Filter, Subject};
use super::{Dashboard, SeriesMeta, Tick};
use crate::events::Event;
use crate::store::Point;

/// What the client sent, reduced to what the session cares about.
#[derive(Debug)]
pub enum ClientMsg {
    Text(String),
    /// Binary frames are not part of the protocol.
    Binary,
    Close,
}

/// A client's message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    /// Replace the filters (and window); answered with a fresh snapshot.
    Subscribe {
        #[serde(default)]
        filters: Vec<Filter>,
        #[serde(default)]
        window: Option<u64>,
    },
    /// Answered with `pong` carrying the same `t` (latency probes).
    Ping {
        #[serde(default)]
        t: Option<f64>,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed the connection or its stream ended.
    Closed,
    /// The client did not take a message within the send timeout.
    Slow,
    /// Shutdown.
    Shutdown,
}

/// Per-client state.
struct Client {
    filters: Vec<Filter>,
    /// Window of history in the snapshot, seconds.
    window_s: u64,
    /// Cached filter mask per series id.
    masks: FxHashMap<u64, u8>,
}

impl Client {
    fn mask(&mut self, meta: &SeriesMeta) -> u8 {
        let filters = &self.filters;
        *self.masks.entry(meta.id).or_insert_with(|| {
            filter::mask(
                filters,
                &Subject {
                    source: &meta.source,
                    metric: &meta.metric,
                    labels: meta.labels.as_str(),
                },
            )
        })
    }

    fn event_mask(&self, e: &Event) -> u8 {
        filter::mask(
            &self.filters,
            &Subject {
                source: &e.source,
                metric: &e.metric,
                labels: &e.labels,
            },
        )
    }
}

/// Serve one client until it leaves, is too slow, or shutdown.
pub async fn session<S, R>(
    dash: Dashboard,
    mut sink: S,
    mut incoming: R,
    initial: Vec<Filter>,
    window_s: Option<u64>,
    shutdown: CancellationToken,
) -> Ended
where
    S: Sink<String> + Unpin,
    R: Stream<Item = ClientMsg> + Unpin,
{
    let inner = dash.inner.clone();
    let history_s = inner.history_s();
    let mut client = Client {
        filters: initial,
        window_s: window_s.unwrap_or(history_s).min(history_s),
        masks: FxHashMap::default(),
    };
    // Subscribe before the snapshot so no tick between the two is missed;
    // the client merges points idempotently by time.
    let mut ticks = inner.ticks.subscribe();
    let send_timeout = inner.cfg.send_timeout;
    macro_rules! send {
        ($msg:expr) => {{
            let msg: String = $msg;
            let len = msg.len();
            match tokio::time::timeout(send_timeout, sink.send(msg)).await {
                Ok(Ok(())) => inner.metrics.sent(len),
                Ok(Err(_)) => return Ended::Closed,
                Err(_) => {
                    inner.metrics.dropped("slow");
                    if let Some(suppressed) = inner.telemetry.should_log("dashboard", "slow_client")
                    {
                        tracing::warn!(
                            timeout = ?send_timeout,
                            suppressed,
                            "Dashboard client too slow; disconnected."
                        );
                    }
                    return Ended::Slow;
                }
            }
        }};
    }
    send!(inner.hello());
    send!(snapshot(&dash, &mut client));
    loop {
        tokio::select! {
            tick = ticks.recv() => match tick {
                Ok(tick) => {
                    if let Some(msg) = delta(&tick, &mut client) {
                        send!(msg);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    // Skipped ahead: what was missed is replaced by a fresh
                    // snapshot; nothing queued up for this client.
                    inner.metrics.resyncs.inc();
                    if let Some(suppressed) = inner.telemetry.should_log("dashboard", "lagged") {
                        tracing::info!(missed, suppressed, "Dashboard client fell behind; resynchronising.");
                    }
                    ticks = ticks.resubscribe();
                    send!(snapshot(&dash, &mut client));
                }
                Err(RecvError::Closed) => return Ended::Shutdown,
            },
            msg = incoming.next() => match msg {
                None | Some(ClientMsg::Close) => return Ended::Closed,
                Some(ClientMsg::Binary) => {
                    send!(inner.bad_message("binary", "binary frames are not part of the protocol"));
                }
                Some(ClientMsg::Text(text)) => match serde_json::from_str::<Request>(&text) {
                    Ok(Request::Subscribe { filters, window }) => {
                        if let Err(e) = check_filters(&filters) {
                            send!(inner.bad_message("filter", &e.to_string()));
                            continue;
                        }
                        client.filters = filters;
                        client.masks.clear();
                        if let Some(w) = window {
                            client.window_s = w.clamp(1, history_s);
                        }
                        if let Some(notice) = dash.unknown_filter_values(&client.filters) {
                            send!(notice);
                        }
                        send!(snapshot(&dash, &mut client));
                    }
                    Ok(Request::Ping { t }) => {
                        let mut out = String::from(r#"{"type":"pong","now":"#);
                        let _ = write!(out, "{}", crate::model::now_ms());
                        if let Some(t) = t.filter(|t| t.is_finite()) {
                            let _ = write!(out, r#","t":{t}"#);
                        }
                        out.push('}');
                        send!(out);
                    }
                    Err(e) => {
                        send!(inner.bad_message("malformed", &e.to_string()));
                    }
                },
            },
            _ = shutdown.cancelled() => return Ended::Shutdown,
        }
    }
}

fn check_filters(filters: &[Filter]) -> Result<(), filter::FilterError> {
    if filters.len() > filter::MAX_FILTERS {
        return Err(filter::FilterError::TooManyFilters);
    }
    filters.iter().try_for_each(Filter::check)
}

/// The full view for a client: every matching series with its points in
/// the window, recent matching events and source health.
fn snapshot(dash: &Dashboard, client: &mut Client) -> String {
    let inner = &dash.inner;
    let now = crate::model::now_ms();
    let since_s = (now / 1000 - client.window_s as i64).max(0);
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r#"{{"type":"snapshot","now":{now},"window":{},"series":["#,
        client.window_s
    );
    let mut first = true;
    {
        let store = inner.store.read();
        for family in store.families() {
            for (labels, series) in &family.series {
                let meta = inner.meta_for(&family.meta, labels, series);
                let m = client.mask(&meta);
                if m == 0 {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&meta.json[..meta.json.len() - 1]);
                let _ = write!(out, r#","m":{m},"#);
                write_points(
                    &mut out,
                    series
                        .history
                        .points()
                        .filter(|p| p.unix_ms() / 1000 >= since_s),
                    series.timestamp_ms,
                    series.value,
                );
                out.push('}');
            }
        }
    }
    out.push_str(r#"],"events":["#);
    let events = inner.recent_events.lock();
    let mut first = true;
    for e in events.iter() {
        let m = client.event_mask(e);
        if m == 0 {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        write_event(&mut out, e, m);
    }
    drop(events);
    out.push_str(r#"],"sources":"#);
    out.push_str(&inner.sources_json());
    out.push('}');
    out
}

/// This client's part of one tick; `None` when nothing in it matches.
fn delta(tick: &Tick, client: &mut Client) -> Option<String> {
    let mut out = String::with_capacity(4096);
    let _ = write!(out, r#"{{"type":"delta","now":{},"series":["#, tick.now_ms);
    let mut any = false;
    let mut first = true;
    for meta in &tick.new {
        let m = client.mask(meta);
        if m == 0 {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        any = true;
        out.push_str(&meta.json[..meta.json.len() - 1]);
        let _ = write!(out, r#","m":{m}}}"#);
    }
    out.push_str(r#"],"points":["#);
    let mut first = true;
    for u in &tick.updates {
        if client.mask(&u.meta) == 0 {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        any = true;
        out.push_str(&u.json);
    }
    out.push_str(r#"],"gone":["#);
    let mut first = true;
    for id in &tick.gone {
        if client.masks.remove(id).is_some_and(|m| m != 0) {
            if !first {
                out.push(',');
            }
            first = false;
            any = true;
            let _ = write!(out, "{id}");
        }
    }
    out.push_str(r#"],"events":["#);
    let mut first = true;
    for e in &tick.events {
        let m = client.event_mask(e);
        if m == 0 {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        any = true;
        write_event(&mut out, e, m);
    }
    out.push(']');
    if let Some(sources) = &tick.sources {
        any = true;
        out.push_str(r#","sources":"#);
        out.push_str(sources);
    }
    out.push('}');
    any.then_some(out)
}

/// `"t":[..],"v":[..],"s":[..],"last":ms,"value":v` (no braces); `s` is
/// left out when no point has a score.
pub(super) fn write_points<'a>(
    out: &mut String,
    points: impl Iterator<Item = &'a Point> + Clone,
    last_ms: i64,
    value: f64,
) {
    out.push_str(r#""t":["#);
    for (i, p) in points.clone().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}", p.unix_ms() / 1000);
    }
    out.push_str(r#"],"v":["#);
    for (i, p) in points.clone().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_f32(out, p.value);
    }
    out.push(']');
    if points.clone().any(|p| !p.score.is_nan()) {
        out.push_str(r#","s":["#);
        for (i, p) in points.enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_f32(out, p.score);
        }
        out.push(']');
    }
    let _ = write!(out, r#","last":{last_ms},"value":"#);
    write_f64(out, value);
}

fn write_f32(out: &mut String, v: f32) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.push_str("null");
    }
}

fn write_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.push_str("null");
    }
}

fn write_event(out: &mut String, e: &Event, m: u8) {
    match serde_json::to_string(e) {
        Ok(json) => {
            out.push_str(&json[..json.len() - 1]);
            let _ = write!(out, r#","m":{m}}}"#);
        }
        Err(_) => out.push_str("null"),
    }
}
