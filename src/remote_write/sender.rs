//! Posting queued blocks to a remote: one task per lane, oldest block
//! first, retried with backoff on 5xx, 429 (honouring `Retry-After`) and
//! network errors, given up (and counted) on other 4xx.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::config::{Auth, RemoteWriteConfig};
use super::{Ctl, RemoteMetrics};
use crate::telemetry::Telemetry;

/// Longest `Retry-After` honoured; a larger one waits this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What to do after one attempt.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Sent,
    /// Try again, after at least this long if the receiver said so.
    Retry(Option<Duration>, &'static str),
    /// Give the block up (the receiver will never take it).
    Drop(u16),
}

/// Classify a response status and its `Retry-After` header.
pub fn classify(status: u16, retry_after: Option<&str>) -> Outcome {
    match status {
        200..=299 => Outcome::Sent,
        429 => Outcome::Retry(retry_after.and_then(parse_retry_after), "http_429"),
        500..=599 => Outcome::Retry(retry_after.and_then(parse_retry_after), "http_5xx"),
        s => Outcome::Drop(s),
    }
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// A block's request, ready to post (and to post again).
struct Sending {
    samples: u32,
    newest_ms: i64,
    body: bytes::Bytes,
}

pub struct Sender {
    cfg: Arc<RemoteWriteConfig>,
    client: reqwest::Client,
    auth: Auth,
    m: Arc<RemoteMetrics>,
    telemetry: Arc<Telemetry>,
}

impl Sender {
    pub fn new(
        cfg: Arc<RemoteWriteConfig>,
        client: reqwest::Client,
        auth: Auth,
        m: Arc<RemoteMetrics>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Sender {
            cfg,
            client,
            auth,
            m,
            telemetry,
        }
    }

    /// Send the blocks of `lane` until shutdown.
    pub async fn run(
        self: Arc<Self>,
        lane: u32,
        ctl: mpsc::Sender<Ctl>,
        notify: Arc<[Notify]>,
        shutdown: CancellationToken,
    ) {
        let mut after = None;
        // Request buffers kept from one block to the next.
        let mut enc = Some(super::encoder::RequestEncoder::default());
        loop {
            let (reply, rx) = oneshot::channel();
            if ctl.send(Ctl::Next { lane, after, reply }).await.is_err() {
                return;
            }
            let block = tokio::select! {
                b = rx => match b { Ok(b) => b, Err(_) => return },
                _ = shutdown.cancelled() => return,
            };
            let Some(block) = block else {
                tokio::select! {
                    _ = notify[lane as usize].notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            };
            // Build the request off the runtime's threads (lanes in parallel).
            let mut e = enc.take().expect("the encoder is back after each block");
            let (e, block, body) = tokio::task::spawn_blocking(move || {
                let body = block.body_with(&mut e);
                (e, block, body)
            })
            .await
            .expect("building a request does not panic");
            enc = Some(e);
            match body {
                Ok(body) => {
                    let sending = Sending {
                        samples: block.samples,
                        newest_ms: block.newest_ms,
                        body: bytes::Bytes::from(body),
                    };
                    if !self.deliver(&sending, &shutdown).await {
                        return;
                    }
                }
                Err(error) => {
                    // It would fail the same way every time: give it up.
                    self.m.failed(block.samples as u64);
                    tracing::error!(remote = %self.cfg.name, %error, samples = block.samples, "A remote write queue block cannot be read; it is dropped.");
                }
            }
            after = Some(block.seq);
            if ctl
                .send(Ctl::Done {
                    lane,
                    seq: block.seq,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Post one block until it is sent or given up; false on shutdown.
    async fn deliver(&self, block: &Sending, shutdown: &CancellationToken) -> bool {
        let mut backoff = self.cfg.min_backoff;
        loop {
            self.m.in_flight(1);
            let result = self.post(block).await;
            self.m.in_flight(-1);
            let (outcome, detail) = match result {
                Ok((status, retry_after)) => (
                    classify(status, retry_after.as_deref()),
                    format!("HTTP {status}"),
                ),
                Err(e) => (Outcome::Retry(None, "network"), error_chain(&e)),
            };
            match outcome {
                Outcome::Sent => {
                    self.m.sent(
                        block.samples as u64,
                        block.body.len() as u64,
                        block.newest_ms,
                    );
                    return true;
                }
                Outcome::Drop(status) => {
                    self.m.failed(block.samples as u64);
                    if let Some(suppressed) = self.telemetry.should_log(&self.cfg.name, "rejected")
                    {
                        tracing::warn!(remote = %self.cfg.name, status, samples = block.samples, suppressed, "Remote refused a block; it is dropped.");
                    }
                    return true;
                }
                Outcome::Retry(after, reason) => {
                    self.m.retried(block.samples as u64);
                    let wait = after.unwrap_or(backoff);
                    if let Some(suppressed) = self.telemetry.should_log(&self.cfg.name, reason) {
                        tracing::warn!(remote = %self.cfg.name, reason, error = %detail, retry_in = ?wait, suppressed, "Remote write failed; retrying.");
                    }
                    backoff = (backoff * 2).min(self.cfg.max_backoff);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return false,
                    }
                }
            }
        }
    }

    async fn post(&self, block: &Sending) -> Result<(u16, Option<String>), reqwest::Error> {
        let mut req = self
            .client
            .post(&self.cfg.url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0");
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        req = match &self.auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Basic(u, p) => req.basic_auth(u, p.as_ref()),
        };
        let resp = req.body(block.body.clone()).send().await?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Read the (small) body so the connection can be reused.
        let _ = resp.bytes().await;
        Ok((status, retry_after))
    }
}

/// An error with its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_sent_retried_or_dropped() {
        assert_eq!(classify(204, None), Outcome::Sent);
        assert_eq!(classify(500, None), Outcome::Retry(None, "http_5xx"));
        assert_eq!(
            classify(429, Some("3")),
            Outcome::Retry(Some(Duration::from_secs(3)), "http_429")
        );
        assert_eq!(classify(400, Some("3")), Outcome::Drop(400));
        assert_eq!(classify(404, None), Outcome::Drop(404));
        assert_eq!(parse_retry_after("99999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
