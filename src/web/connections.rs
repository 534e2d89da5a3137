//! What one client may hold of the HTTP server: a bounded number of open
//! connections, and per connection a deadline for each phase in which the
//! client, not the server, is expected to act (TLS handshake, request head,
//! request body, the next request on a kept-alive connection).
//!
//! Every connection has a watchdog: while no request is in flight, the next
//! complete request head must arrive within `header_read_timeout` (first
//! request) or `idle_timeout` (later ones), or the connection is closed. A
//! request body must arrive whole within `body_read_timeout` of its head,
//! or the request is answered 408 and the connection closed. When
//! `max_connections` are open, a new connection takes the place of the
//! oldest one with no request in flight (those that never sent a request
//! first); only when every connection is busy is the new one refused. Each
//! refusal and close is counted by a bounded reason and logged
//! rate-limited, so a flood of silent clients can neither exhaust the file
//! descriptors nor lock out a scrape.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Connection limits and timeouts of an HTTP server (the `[web]` table of
/// `vitals run`, `[relay.web]` of `vitals relay`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections at most; at the cap the oldest idle one is closed
    /// for a newcomer, and a newcomer is refused when none is idle.
    pub max_connections: usize,
    /// A new connection (after its TLS handshake) must send a complete
    /// request head within this.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this after its head.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after
    /// this (HTTP/1 and HTTP/2 alike).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The TLS handshake must be done within this (with a web config file).
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Concurrent requests (streams) on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 connections are pinged this often (0s: never) and closed when
    /// a ping is not answered within `http2_keep_alive_timeout`.
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            tls_handshake_timeout: Duration::from_secs(10),
            http2_max_concurrent_streams: 100,
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The first key (relative to its table) whose value is out of range,
    /// with the reason.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.max_connections == 0 {
            return Err(("max_connections", "must be at least 1"));
        }
        for (key, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("http2_keep_alive_timeout", self.http2_keep_alive_timeout),
        ] {
            if d < Duration::from_millis(1) {
                return Err((key, "must be at least 1ms"));
            }
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err(("http2_max_concurrent_streams", "must be at least 1"));
        }
        Ok(())
    }
}

/// Refusals (`rejected`) and closes (`closed`) by reason; the label sets
/// are these lists and nothing else.
const REJECTED: [&str; 2] = ["max_connections", "accept_error"];
const CLOSED: [&str; 5] = [
    "header_timeout",
    "body_timeout",
    "idle_timeout",
    "tls_handshake_timeout",
    "evicted",
];

/// At most one warning per kind of event in this window.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The open connections of one server, with their metrics.
pub struct Connections {
    limits: Limits,
    open: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    open_gauge: IntGauge,
    rejected: IntCounterVec,
    closed: IntCounterVec,
    /// Rate limit of the "connection limit reached" and "timed out" logs.
    cap_log: LogWindow,
    timeout_log: LogWindow,
}

/// What the accept loop needs to know about a connection to pick one to
/// close at the cap.
struct Entry {
    activity: watch::Receiver<Activity>,
    evict: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
struct Activity {
    /// Requests (HTTP/2 streams) whose response is not yet fully sent.
    in_flight: u32,
    /// Requests answered so far.
    answered: u64,
    /// Since when nothing is in flight (connection set-up at first).
    idle_since: Instant,
}

impl Connections {
    /// Register the connection metrics on `registry`; panics only when the
    /// names are already taken (a programming error).
    pub fn new(limits: Limits, registry: &Registry) -> Arc<Connections> {
        let open_gauge = IntGauge::new(
            "vitals_http_connections_open",
            "HTTP connections currently open (upgraded WebSocket connections are not counted).",
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "vitals_http_connections_rejected_total",
                "HTTP connections refused on accept, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let closed = IntCounterVec::new(
            Opts::new(
                "vitals_http_connections_closed_total",
                "HTTP connections closed by the server because the client was too slow or idle, or to make room at the connection limit, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for r in REJECTED {
            rejected.with_label_values(&[r]);
        }
        for r in CLOSED {
            closed.with_label_values(&[r]);
        }
        for c in [
            Box::new(open_gauge.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejected.clone()),
            Box::new(closed.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Arc::new(Connections {
            limits,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            open_gauge,
            rejected,
            closed,
            cap_log: LogWindow::new(),
            timeout_log: LogWindow::new(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A connection builder (HTTP/1 and HTTP/2) with the HTTP/2 limits set.
    /// Header deadlines are the watchdog's, so hyper's own is off.
    pub fn builder(&self) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
        let l = &self.limits;
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().header_read_timeout(None);
        let keep_alive =
            (!l.http2_keep_alive_interval.is_zero()).then_some(l.http2_keep_alive_interval);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(l.http2_max_concurrent_streams)
            .keep_alive_interval(keep_alive)
            .keep_alive_timeout(l.http2_keep_alive_timeout);
        builder
    }

    /// Count and log (rate-limited) a failed accept, such as running out of
    /// file descriptors.
    pub fn accept_failed(&self, error: &std::io::Error) {
        self.rejected.with_label_values(&["accept_error"]).inc();
        if let Some(suppressed) = self.cap_log.ready() {
            tracing::warn!(%error, suppressed, "Accepting a connection failed.");
        }
    }

    /// Take a place for a new connection: a free one, or that of the oldest
    /// connection with no request in flight (closed for it). `None` when
    /// every connection is busy; the refusal is counted and, for plain
    /// HTTP, answered 503 if the socket takes it without waiting.
    pub fn admit(self: &Arc<Self>, stream: &TcpStream, plain: bool) -> Option<Slot> {
        let now = Instant::now();
        let (tx, rx) = watch::channel(Activity {
            in_flight: 0,
            answered: 0,
            idle_since: now,
        });
        let evict = CancellationToken::new();
        let mut open = self.open.lock();
        if open.len() >= self.limits.max_connections {
            // Never-used connections first, then the longest idle.
            let victim = open
                .iter()
                .filter_map(|(id, e)| {
                    let a = *e.activity.borrow();
                    (a.in_flight == 0).then_some(((a.answered > 0, a.idle_since), *id))
                })
                .min()
                .map(|(_, id)| id);
            match victim.and_then(|id| open.remove(&id)) {
                Some(old) => {
                    old.evict.cancel();
                    self.closed.with_label_values(&["evicted"]).inc();
                }
                None => {
                    drop(open);
                    self.rejected.with_label_values(&["max_connections"]).inc();
                    if plain {
                        let _ = stream.try_write(
                            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                        );
                    }
                    if let Some(suppressed) = self.cap_log.ready() {
                        tracing::warn!(
                            max_connections = self.limits.max_connections,
                            suppressed,
                            "Connection limit reached with every connection busy; refusing new connections."
                        );
                    }
                    return None;
                }
            }
            if let Some(suppressed) = self.cap_log.ready() {
                tracing::warn!(
                    max_connections = self.limits.max_connections,
                    suppressed,
                    "Connection limit reached; closing idle connections to make room."
                );
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        open.insert(
            id,
            Entry {
                activity: rx.clone(),
                evict: evict.clone(),
            },
        );
        self.open_gauge.set(open.len() as i64);
        Some(Slot {
            conns: self.clone(),
            id,
            activity: Arc::new(tx),
            watch: rx,
            evict,
        })
    }

    fn close(&self, reason: &'static str) {
        self.closed.with_label_values(&[reason]).inc();
        if let Some(suppressed) = self.timeout_log.ready() {
            tracing::warn!(
                reason,
                suppressed,
                "Closed a connection whose client was too slow or idle."
            );
        }
    }
}

/// One admitted connection; gives its place back when dropped.
pub struct Slot {
    conns: Arc<Connections>,
    id: u64,
    activity: Arc<watch::Sender<Activity>>,
    watch: watch::Receiver<Activity>,
    evict: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.conns.open.lock();
        open.remove(&self.id);
        self.conns.open_gauge.set(open.len() as i64);
    }
}

impl Slot {
    /// Run a TLS handshake (or any set-up) within `tls_handshake_timeout`;
    /// `None` when it timed out or the connection was closed for another.
    pub async fn handshake<T>(&self, setup: impl Future<Output = Option<T>>) -> Option<T> {
        tokio::select! {
            r = tokio::time::timeout(self.conns.limits.tls_handshake_timeout, setup) => match r {
                Ok(r) => {
                    // The header deadline starts after the handshake.
                    self.activity.send_modify(|a| a.idle_since = Instant::now());
                    r
                }
                Err(_) => {
                    self.conns.close("tls_handshake_timeout");
                    None
                }
            },
            _ = self.evict.cancelled() => None,
        }
    }

    /// `app` as a hyper service that keeps this connection's activity and
    /// bounds each request body's arrival.
    pub fn service(
        &self,
        app: Router,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    > + Clone
    + Send
    + 'static {
        let activity = self.activity.clone();
        let conns = self.conns.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = Busy::begin(activity.clone());
            let app = app.clone();
            let conns = conns.clone();
            async move {
                let expired = Arc::new(AtomicBool::new(false));
                let deadline = Instant::now() + conns.limits.body_read_timeout;
                let req = req.map(|b| {
                    Body::new(Deadline {
                        inner: b,
                        deadline,
                        sleep: None,
                        expired: expired.clone(),
                    })
                });
                let Ok(mut response) = app.oneshot(req).await;
                if expired.load(Ordering::Relaxed) {
                    conns.close("body_timeout");
                    response =
                        (StatusCode::REQUEST_TIMEOUT, "Request body timeout\n").into_response();
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok(response.map(|inner| Body::new(Tracked { inner, _busy: busy })))
            }
        })
    }

    /// Drive `conn` (the connection, already under graceful shutdown) until
    /// it ends, the client idles past its deadline, or the connection is
    /// closed to make room for another.
    pub async fn run<E: std::fmt::Display>(
        mut self,
        conn: impl Future<Output = Result<(), E>>,
        peer: std::net::SocketAddr,
    ) {
        let mut conn = std::pin::pin!(conn);
        let limits = self.conns.limits.clone();
        loop {
            let a = *self.watch.borrow_and_update();
            let (timeout, reason) = if a.answered == 0 {
                (limits.header_read_timeout, "header_timeout")
            } else {
                (limits.idle_timeout, "idle_timeout")
            };
            let deadline = (a.in_flight == 0).then(|| a.idle_since + timeout);
            tokio::select! {
                r = &mut conn => {
                    if let Err(error) = r {
                        tracing::debug!(%peer, %error, "HTTP connection ended with an error.");
                    }
                    return;
                }
                _ = self.evict.cancelled() => {
                    tracing::debug!(%peer, "Closed an idle connection to make room for a new one.");
                    return;
                }
                Ok(()) = self.watch.changed() => {}
                _ = sleep_until(deadline) => {
                    // The deadline may have moved while we slept.
                    let now = *self.watch.borrow();
                    if now.in_flight == 0 && now.idle_since == a.idle_since {
                        tracing::debug!(%peer, reason, "Closed a slow or idle connection.");
                        self.conns.close(reason);
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One request in flight on a connection, from its head until its
/// response is fully sent (or dropped).
struct Busy(Arc<watch::Sender<Activity>>);

impl Busy {
    fn begin(activity: Arc<watch::Sender<Activity>>) -> Busy {
        activity.send_modify(|a| a.in_flight += 1);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight -= 1;
            a.answered += 1;
            if a.in_flight == 0 {
                a.idle_since = Instant::now();
            }
        });
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body did not arrive within `body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// A request body that fails once its deadline has passed; the timer is
/// only set when the client makes the reader wait.
struct Deadline {
    inner: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = &mut *self;
        if this.expired.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyTimeout.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One warning per `LOG_EVERY`; counts what it held back.
struct LogWindow {
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogWindow {
    fn new() -> Self {
        LogWindow {
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn ready(&self) -> Option<u64> {
        let mut s = self.state.lock();
        let now = std::time::Instant::now();
        match s.0 {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_their_own_check() {
        assert_eq!(Limits::default().check(), Ok(()));
        let zero = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(zero.check().unwrap_err().0, "max_connections");
        let no_idle = Limits {
            idle_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert_eq!(no_idle.check().unwrap_err().0, "idle_timeout");
    }

    #[test]
    fn web_table_sets_and_checks_the_limits() {
        use crate::config::{ConfigFormat, load_str};
        let cfg = load_str(
            "[web]\nmax_connections = 7\nidle_timeout = \"5s\"\n",
            ConfigFormat::Toml,
            "t.toml",
        )
        .unwrap();
        let l = cfg.web.limits();
        assert_eq!(l.max_connections, 7);
        assert_eq!(l.idle_timeout, Duration::from_secs(5));
        assert_eq!(l.header_read_timeout, Limits::default().header_read_timeout);
        let err = load_str(
            "[web]\nbody_read_timeout = \"0s\"\n",
            ConfigFormat::Toml,
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("web.body_read_timeout"), "{err}");
    }

    #[test]
    fn log_window_counts_what_it_holds_back() {
        let w = LogWindow::new();
        assert_eq!(w.ready(), Some(0));
        assert_eq!(w.ready(), None);
        assert_eq!(w.ready(), None);
        let mut s = w.state.lock();
        s.0 = Some(std::time::Instant::now() - LOG_EVERY);
        drop(s);
        assert_eq!(w.ready(), Some(2));
    }
}
