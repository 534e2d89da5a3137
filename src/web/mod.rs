//! Serving the HTTP router: plain HTTP, or — with a web configuration file —
//! TLS (optionally mutual), basic authentication and extra response headers,
//! re-read when the file changes. Either way the connections are bounded
//! and slow or idle clients timed out by [`connections`].

pub mod connections;
mod kx_p521;
pub mod webconfig;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use connections::{Connections, Limits};
use webconfig::{WebConfig, WebConfigWatcher};

/// Serve `app` on `listener` until `shutdown` fires, then stop accepting
/// and wait for in-flight requests (the caller bounds that wait). `conns`
/// bounds the open connections and times out slow and idle clients.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    web: Option<Arc<WebConfigWatcher>>,
    conns: Arc<Connections>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = match &web {
        Some(web) => {
            let auth = Arc::new(Auth::new(web.clone()));
            app.layer(middleware::from_fn_with_state(auth, guard))
        }
        None => app,
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = conns.builder();
    // For `http_server_config.http2: false`: hyper-util's auto builder
    // ignores `http1_only` for connections served with upgrades (WebSocket),
    // so those go to hyper's HTTP/1 builder directly.
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly.
                    conns.accept_failed(&error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let tls = web.as_ref().and_then(|w| w.current().tls.clone());
        let Some(slot) = conns.admit(&stream, tls.is_none()) else {
            continue;
        };
        let service = slot.service(app.clone());
        let builder = builder.clone();
        // `http_server_config.http2: false`: HTTP/1.1 only, for ALPN and
        // prior-knowledge HTTP/2 alike (see `serve_http1_only`).
        let http1_only = web
            .as_ref()
            .is_some_and(|w| !w.current().http2)
            .then(|| (http1.clone(), shutdown.clone()));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match tls {
                None => {
                    if let Some((http1, stop)) = http1_only {
                        let conn =
                            serve_http1_only(http1, TokioIo::new(stream), service, stop, watcher);
                        return slot.run(conn, peer).await;
                    }
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    slot.run(watcher.watch(conn), peer).await;
                }
                Some(tls) => {
                    let Some(stream) = slot.handshake(tls_handshake(stream, tls, peer)).await
                    else {
                        return;
                    };
                    if let Some((http1, stop)) = http1_only {
                        let conn =
                            serve_http1_only(http1, TokioIo::new(stream), service, stop, watcher);
                        return slot.run(conn, peer).await;
                    }
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    slot.run(watcher.watch(conn), peer).await;
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Serve one connection as HTTP/1.1 only (with upgrades), finishing it
/// gracefully when `stop` fires; `watcher` is held until it ends so the
/// server's drain waits for it.
async fn serve_http1_only<I, S>(
    http1: hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    stop: CancellationToken,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = http1.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    drop(watcher);
    result
}

/// The TLS handshake; plain HTTP sent to the TLS port gets a clear answer
/// instead of a handshake failure.
async fn tls_handshake(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] != 0x16 => {
            let mut stream = stream;
            let body = "Client sent an HTTP request to an HTTPS server.\n";
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
            return None;
        }
        Ok(1) => {}
        _ => return None,
    }
    match tokio_rustls::TlsAcceptor::from(tls).accept(stream).await {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::debug!(%peer, %error, "TLS handshake failed.");
            None
        }
    }
}

/// Basic-auth verification with a cache, bcrypt off the async threads and
/// the same work for unknown users as for known ones.
struct Auth {
    web: Arc<WebConfigWatcher>,
    /// SHA-256 of (user, hash, password) of recently verified credentials.
    verified: Mutex<HashSet<[u8; 32]>>,
    /// bcrypt hash compared against for unknown users.
    dummy: String,
    /// At most two bcrypt verifications at once.
    bcrypt: Semaphore,
    /// The `rate_limit` token bucket (rebuilt when the setting changes).
    bucket: Mutex<Option<Bucket>>,
    /// Requests refused with 429 since the last log line, and when that was.
    refused: Mutex<(u64, Option<std::time::Instant>)>,
}

/// A token bucket: `burst` tokens at most (and at first), one more per
/// `interval`, one taken per request.
struct Bucket {
    limit: webconfig::RateLimit,
    tokens: f64,
    last: std::time::Instant,
}

impl Bucket {
    fn new(limit: webconfig::RateLimit) -> Self {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            last: std::time::Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill =
            now.duration_since(self.last).as_secs_f64() / self.limit.interval.as_secs_f64();
        self.tokens = (self.tokens + refill).min(f64::from(self.limit.burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How much of a refused request's body is read before the 401, and for
/// how long at most.
const REJECT_DRAIN_BYTES: usize = 64 * 1024;
const REJECT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Cached verified credentials; cleared when full.
const CACHE_MAX: usize = 1024;

impl Auth {
    fn new(web: Arc<WebConfigWatcher>) -> Self {
        Auth {
            web,
            verified: Mutex::new(HashSet::new()),
            // bcrypt (cost 10) of a string no user has as password.
            dummy: "$2b$10$ISQlx8nWtPlgIrTOujqF5uIETFWZ5ZIScWTgA759fi0t2QzdjD3oG".to_string(),
            bcrypt: Semaphore::new(2),
            bucket: Mutex::new(None),
            refused: Mutex::new((0, None)),
        }
    }

    /// Log refusals by `rate_limit` at most once every ten seconds, with
    /// the number refused since the last line.
    fn log_rate_limited(&self) {
        let mut refused = self.refused.lock();
        refused.0 += 1;
        let due = refused
            .1
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::warn!(
                refused = refused.0,
                "Requests over the web configuration's rate_limit refused with 429."
            );
            *refused = (0, Some(std::time::Instant::now()));
        }
    }

    /// Whether `rate_limit` lets one more request through.
    fn rate_allows(&self, limit: Option<webconfig::RateLimit>) -> bool {
        let mut bucket = self.bucket.lock();
        let Some(limit) = limit else {
            *bucket = None;
            return true;
        };
        match bucket.as_mut() {
            Some(b) if b.limit == limit => b.allow(),
            _ => bucket.insert(Bucket::new(limit)).allow(),
        }
    }

    async fn verify(&self, cfg: &WebConfig, user: &str, password: &str) -> bool {
        let known = cfg.users.get(user);
        let hash = known.cloned().unwrap_or_else(|| self.dummy.clone());
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0xff])
            .chain_update(hash.as_bytes())
            .chain_update([0xff])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if known.is_some() && self.verified.lock().contains(&key) {
            return true;
        }
        let Ok(_permit) = self.bcrypt.acquire().await else {
            return false;
        };
        let password = password.to_string();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if ok && known.is_some() {
            let mut cache = self.verified.lock();
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key);
            true
        } else {
            false
        }
    }
}

fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

async fn guard(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let cfg = auth.web.current();
    // Before authentication and without the configured headers, as
    // exporter-toolkit answers a request over the limit.
    if !auth.rate_allows(cfg.rate_limit) {
        auth.log_rate_limited();
        return (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response();
    }
    let mut response = if cfg.users.is_empty() {
        next.run(req).await
    } else {
        let ok = match basic_credentials(&req) {
            Some((user, password)) => auth.verify(&cfg, &user, &password).await,
            None => false,
        };
        if ok {
            next.run(req).await
        } else {
            // Take in (a bounded part of) the body first: an HTTP/2 client
            // still sending it would otherwise see its stream reset instead
            // of the 401 (curl: "Stream error in the HTTP/2 framing layer").
            let _ = tokio::time::timeout(
                REJECT_DRAIN_TIMEOUT,
                axum::body::to_bytes(req.into_body(), REJECT_DRAIN_BYTES),
            )
            .await;
            let mut r = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"vitals\""),
            );
            r
        }
    };
    for (name, value) in &cfg.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod bucket_tests {
    use super::*;

    #[test]
    fn the_bucket_holds_burst_tokens_and_refills_one_per_interval() {
        let limit = webconfig::RateLimit {
            interval: Duration::from_secs(3600),
            burst: 2,
        };
        let mut b = Bucket::new(limit);
        assert!(b.allow() && b.allow());
        assert!(!b.allow(), "empty after the burst");
        // As if an interval had passed.
        b.last -= Duration::from_secs(3600);
        assert!(b.allow() && !b.allow());
        let mut none = Bucket::new(webconfig::RateLimit { burst: 0, ..limit });
        assert!(!none.allow(), "burst 0 refuses everything");
    }
}
