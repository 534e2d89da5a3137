//! The `http` source: poll a JSON (or CSV) API on an interval and map the
//! response to samples with the shared [`crate::mapping`].
//!
//! Every poll sends one snapshot batch, so array elements or object members
//! that disappear from the response lose their series, and a failed poll
//! (unreachable API, bad status, unreadable body) removes the source's
//! series instead of exporting frozen values. Each mapping of the source is
//! applied independently: one that fails on a response (wrong type, missing
//! field) is counted by reason while the others still export.
//!
//! Tokens and passwords come from the file, an environment variable or a
//! file (re-read on every poll, so rotated credentials are picked up).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{
    Failure, Health, Outcome, SecretInput, SourceContext, Started, secret_input,
};
use super::secret::{Secret, resolve_secret};
use crate::key_error::KeyError;
use crate::model::{Batch, BatchMode, Sample, now_ms};
use crate::payload::mapping::{JsonPath, MapError, Mapping, MappingConfig, valid_label_name};

/// `type = "http"`: one URL polled on an interval.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Unique source name (the `source` label of self-metrics).
    pub name: String,
    /// `http://` or `https://` URL to poll.
    pub url: String,
    #[serde(default)]
    pub method: HttpMethod,
    /// Request body (POST only), sent with `content_type`.
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `Authorization: Bearer` token: literal, from an environment variable
    /// or from a file.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Whole-request timeout (connect, send, read the body).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Responses larger than this are refused (reason `too_large`).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Labels added to every sample of this source.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// One or more mappings applied to every response (e.g. one per child array).
    pub mappings: Vec<MappingConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    #[serde(alias = "get")]
    Get,
    #[serde(alias = "post")]
    Post,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of CA certificates trusted in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For testing only: it disables the
    /// protection TLS gives against impersonation.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_content_type() -> String {
    "application/json".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_response_bytes() -> usize {
    4 * 1024 * 1024
}

impl HttpConfig {
    /// Checks beyond the types; the error's key is relative to the source.
    pub fn validate(&self) -> Result<(), KeyError> {
        let bad = |k: &str, r: &str| Err(KeyError::at(k.to_string(), r.to_string()));
        if self.name.is_empty() {
            return bad("name", "must not be empty");
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            Ok(u) => {
                return bad(
                    "url",
                    &format!(
                        "scheme {:?} is not supported; use http:// or https://",
                        u.scheme()
                    ),
                );
            }
            Err(e) => return bad("url", &format!("not a valid URL: {e}")),
        }
        if self.body.is_some() && self.method != HttpMethod::Post {
            return bad("body", "is only sent with method = \"POST\"");
        }
        if reqwest::header::HeaderValue::from_str(&self.content_type).is_err() {
            return bad("content_type", "is not a valid header value");
        }
        for (k, v) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return bad(&format!("headers.{k}"), "is not a valid header name");
            }
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                return bad(&format!("headers.{k}"), "is not a valid header value");
            }
        }
        check_auth_choice(
            [
                self.bearer_token.is_some(),
                self.bearer_token_env.is_some(),
                self.bearer_token_file.is_some(),
            ],
            self.basic_auth.as_ref(),
        )?;
        if self.interval < Duration::from_millis(100) {
            return bad("interval", "must be at least 100ms");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be more than 0s");
        }
        if self.max_response_bytes == 0 {
            return bad("max_response_bytes", "must be at least 1");
        }
        for k in self.labels.keys() {
            if !valid_label_name(k) {
                return bad(
                    &format!("labels.{k}"),
                    &format!("{k:?} is not a valid label name"),
                );
            }
        }
        if self.mappings.is_empty() {
            return bad("mappings", "must list at least one mapping");
        }
        self.compile().map(|_| ())
    }

    /// Compile the mappings (the keys are checked by `validate`).
    fn compile(&self) -> Result<Vec<Compiled>, KeyError> {
        self.mappings
            .iter()
            .enumerate()
            .map(|(i, m)| Compiled::new(m).map_err(|r| KeyError::new(format!("mappings[{i}]"), r)))
            .collect()
    }
}

impl super::Source for HttpConfig {
    const KIND: &'static str = "http";
    /// The compiled mappings.
    type Built = Arc<Vec<Compiled>>;

    fn name(&self) -> &str {
        &self.name
    }

    fn build(&self) -> Result<Self::Built, KeyError> {
        // `validate` ends by compiling the mappings; this keeps them.
        self.validate()?;
        Ok(Arc::new(self.compile().map_err(KeyError::from)?))
    }

    fn start(&self, built: &Self::Built, ctx: SourceContext, health: Health) -> Started {
        let (cfg, mappings) = (self.clone(), built.clone());
        Started::task(async move {
            poll_loop(&cfg, &mappings, &ctx, &health).await;
            super::forget_series(&ctx, Arc::from(cfg.name.as_str()));
        })
    }

    fn secret_inputs(&self) -> Vec<(&'static str, SecretInput<'_>)> {
        let mut out = Vec::new();
        secret_input(
            &mut out,
            "bearer_token",
            self.bearer_token_env.as_deref(),
            self.bearer_token_file.as_deref(),
        );
        if let Some(b) = &self.basic_auth {
            secret_input(
                &mut out,
                "basic_auth.password",
                b.password_env.as_deref(),
                b.password_file.as_deref(),
            );
        }
        out
    }
}

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("A credential is unusable: {0}.")]
    Secret(String),
    #[error("The request timed out.")]
    Timeout,
    #[error("The API cannot be reached: {0}")]
    Connect(String),
    #[error("The TLS handshake failed: {0}")]
    Tls(String),
    #[error("The API answered with status {0}.")]
    Status(u16),
    #[error("The response body could not be read: {0}")]
    Body(String),
    #[error("The response is larger than {0} bytes.")]
    TooLarge(usize),
    #[error("The request failed: {0}")]
    Request(String),
}

impl PollError {
    /// Bounded reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            PollError::Secret(_) => "secret",
            PollError::Timeout => "timeout",
            PollError::Connect(_) => "connect",
            PollError::Tls(_) => "tls",
            PollError::Status(_) => "http_status",
            PollError::Body(_) => "body",
            PollError::TooLarge(_) => "too_large",
            PollError::Request(_) => "request",
        }
    }

    fn from_reqwest(e: reqwest::Error) -> PollError {
        // Never echo the URL: it may carry credentials in its query.
        let e = e.without_url();
        if e.is_timeout() {
            PollError::Timeout
        } else if e.is_connect() {
            let text = chain(&e);
            // rustls errors name the certificate or the handshake.
            if text.contains("certificate") || text.contains("handshake") || text.contains("TLS") {
                PollError::Tls(text)
            } else {
                PollError::Connect(text)
            }
        } else if e.is_body() || e.is_decode() {
            PollError::Body(chain(&e))
        } else {
            PollError::Request(chain(&e))
        }
    }
}

/// An error with its causes, `outer: inner: root`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// Build the HTTP client: rustls with the ring provider, system roots plus
/// the configured CA file.
fn client(cfg: &HttpConfig) -> Result<reqwest::Client, String> {
    // A process-wide provider is needed by the platform verifier; whichever
    // component installs one first wins, which is fine: both are ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .user_agent(concat!("vitals/", env!("CARGO_PKG_VERSION")))
        .tls_danger_accept_invalid_certs(cfg.tls.insecure_skip_verify);
    if let Some(path) = &cfg.tls.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read CA file {}: {}", path.display(), e.kind()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("CA file {} is not PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("CA file {} holds no certificate", path.display()));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

async fn poll_loop(cfg: &HttpConfig, mappings: &[Compiled], ctx: &SourceContext, health: &Health) {
    let name = health.source().clone();
    let client = match client(cfg) {
        Ok(c) => c,
        Err(error) => {
            health.down(Some(Failure::new("tls_config", error)));
            ctx.shutdown.cancelled().await;
            return;
        }
    };
    let base: Vec<(String, String)> = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        // One poll: a failed request or a failing mapping marks the source
        // down (the mappings that worked still export).
        let samples = health
            .collect(async {
                let fetched = tokio::select! {
                    r = fetch(&client, cfg) => r,
                    _ = ctx.shutdown.cancelled() => return (None, Outcome::Stopped),
                };
                let mut samples = Vec::new();
                let mut failures = Vec::new();
                match fetched {
                    Ok(body) => {
                        let now = now_ms();
                        for m in mappings {
                            if let Err(error) = map_response(m, &body, &base, now, &mut samples) {
                                failures.push(Failure::new(error.reason(), error));
                            }
                        }
                    }
                    Err(error) => failures.push(Failure::new(error.reason(), error)),
                }
                let outcome = if failures.is_empty() {
                    Outcome::Ok
                } else {
                    Outcome::Down(failures)
                };
                (Some(samples), outcome)
            })
            .await;
        let Some(samples) = samples else { return };
        let batch = Batch {
            source: name.clone(),
            mode: BatchMode::Snapshot,
            samples,
        };
        tokio::select! {
            r = ctx.tx.send(batch) => if r.is_err() { return },
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}

/// A compiled mapping and its `each` path (to tell an empty list from a
/// missing one).
pub struct Compiled {
    mapping: Mapping,
    each: Option<JsonPath>,
}

impl Compiled {
    fn new(cfg: &MappingConfig) -> Result<Compiled, String> {
        Ok(Compiled {
            mapping: Mapping::new(cfg)?,
            each: cfg.each.as_deref().map(JsonPath::parse).transpose()?,
        })
    }
}

/// Map one response; an `each` that points at an empty array or object is
/// zero samples, not an error.
fn map_response(
    c: &Compiled,
    body: &[u8],
    base: &[(String, String)],
    now: i64,
    out: &mut Vec<Sample>,
) -> Result<usize, MapError> {
    match c.mapping.map(body, base, now, out) {
        Err(MapError::MissingField(path)) => {
            if let Some(each) = &c.each
                && let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body)
            {
                match each.get(&doc) {
                    Some(serde_json::Value::Array(a)) if a.is_empty() => return Ok(0),
                    Some(serde_json::Value::Object(o)) if o.is_empty() => return Ok(0),
                    _ => {}
                }
            }
            Err(MapError::MissingField(path))
        }
        other => other,
    }
}

/// One request; the body, read up to `max_response_bytes`.
async fn fetch(client: &reqwest::Client, cfg: &HttpConfig) -> Result<Vec<u8>, PollError> {
    let mut req = match cfg.method {
        HttpMethod::Get => client.get(&cfg.url),
        HttpMethod::Post => client
            .post(&cfg.url)
            .header(reqwest::header::CONTENT_TYPE, &cfg.content_type)
            .body(cfg.body.clone().unwrap_or_default()),
    };
    req = req.header(
        reqwest::header::ACCEPT,
        "application/json, text/csv;q=0.9, */*;q=0.1",
    );
    for (k, v) in &cfg.headers {
        req = req.header(k, v);
    }
    let bearer = resolve_secret(
        "bearer_token",
        cfg.bearer_token.as_ref(),
        cfg.bearer_token_env.as_deref(),
        cfg.bearer_token_file.as_deref(),
    )
    .map_err(PollError::Secret)?;
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    if let Some(b) = &cfg.basic_auth {
        let password = resolve_secret(
            "basic_auth.password",
            b.password.as_ref(),
            b.password_env.as_deref(),
            b.password_file.as_deref(),
        )
        .map_err(PollError::Secret)?;
        req = req.basic_auth(&b.username, password);
    }
    let mut resp = req.send().await.map_err(PollError::from_reqwest)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(PollError::Status(status.as_u16()));
    }
    let max = cfg.max_response_bytes;
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(PollError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(PollError::from_reqwest)? {
        if body.len() + chunk.len() > max {
            return Err(PollError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The credential choices of an HTTP client (the http source, remote
/// write): at most one form of bearer token (`given`: literal, env, file),
/// and basic auth, when set, with a user, at most one form of password and
/// no bearer token. The error is (key, reason).
pub(crate) fn check_auth_choice(
    given: [bool; 3],
    basic: Option<&BasicAuthConfig>,
) -> Result<(), (String, String)> {
    let bad = |k: &str, r: &str| Err((k.to_string(), r.to_string()));
    let bearer = given.iter().filter(|b| **b).count();
    if bearer > 1 {
        return bad(
            "bearer_token",
            "set at most one of `bearer_token`, `bearer_token_env` and `bearer_token_file`",
        );
    }
    if let Some(b) = basic {
        if bearer > 0 {
            return bad("basic_auth", "cannot be combined with a bearer token");
        }
        if b.username.is_empty() {
            return bad("basic_auth.username", "must not be empty");
        }
        let given = [
            b.password.is_some(),
            b.password_env.is_some(),
            b.password_file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given > 1 {
            return bad(
                "basic_auth.password",
                "set at most one of `password`, `password_env` and `password_file`",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> HttpConfig {
        toml::from_str(text).expect("valid toml")
    }

    const BASE: &str = r#"
        name = "api"
        url = "https://api.example.test/v1/stats"
        bearer_token = "s3cret-token"
        [[mappings]]
        each = "servers"
        labels = { server = "name" }
        [[mappings.metrics]]
        name = "api_server_load"
        path = "load"
    "#;

    #[test]
    fn a_valid_config_passes_and_hides_its_token() {
        let c = cfg(BASE);
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn bad_url_body_and_auth_combinations_are_named() {
        let c = cfg(&BASE.replace("https://", "ftp://"));
        assert_eq!(c.validate().unwrap_err().key, "url");
        let c = cfg(&BASE.replace("name = \"api\"", "name = \"api\"\nbody = \"{}\""));
        assert_eq!(c.validate().unwrap_err().key, "body");
        let c = cfg(&BASE.replace(
            "name = \"api\"",
            "name = \"api\"\nbasic_auth = { username = \"u\", password = \"p\" }",
        ));
        assert_eq!(c.validate().unwrap_err().key, "basic_auth");
    }

    #[test]
    fn mapping_errors_name_the_mapping() {
        let c = cfg(&BASE.replace("path = \"load\"", "path = \"load\"\nkind = \"counter\""));
        let KeyError { key, reason } = c.validate().unwrap_err();
        assert_eq!(key, "mappings[0]");
        assert!(reason.contains("_total"), "{reason}");
    }

    #[test]
    fn an_empty_each_array_is_zero_samples_not_an_error() {
        let c = cfg(BASE);
        let m = Compiled::new(&c.mappings[0]).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            map_response(&m, br#"{"servers": []}"#, &[], 0, &mut out).unwrap(),
            0
        );
        let err = map_response(&m, br#"{"other": []}"#, &[], 0, &mut out).unwrap_err();
        assert_eq!(err.reason(), "missing_field");
    }
}
