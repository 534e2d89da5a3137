//! The relay's configuration file: a TOML file whose top-level table is
//! `[relay]`. Parsed with unknown keys rejected, then validated and turned
//! into ready-to-use parts (compiled templates, resolved secrets, TLS
//! parameters) by [`super::Runtime::build`] before anything is swapped in.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::ConfigError;

/// The port `vitals relay` listens on by default (next to the exporter's 9797).
pub const DEFAULT_PORT: u16 = 9798;

/// A relay configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    pub relay: RelayConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    #[serde(default = "default_listen")]
    pub listen_address: SocketAddr,
    /// Directory holding the durable outbox (`outbox.redb`).
    pub data_dir: PathBuf,
    /// Largest accepted webhook body; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// A notification whose de-duplication key was accepted within this
    /// window is answered 200 but not delivered again (Alertmanager HA pairs).
    #[serde(default = "default_dedup", with = "humantime_serde")]
    pub dedup_window: Duration,
    /// How long in-flight requests and deliveries may take on shutdown.
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Domain used in Message-ID and threading headers.
    #[serde(default = "default_domain")]
    pub message_id_domain: String,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Connection limits and timeouts of the relay's HTTP server.
    #[serde(default)]
    pub web: crate::web::Limits,
    pub receivers: Vec<ReceiverConfig>,
    pub channels: Vec<ChannelConfig>,
    #[serde(default)]
    pub sms_providers: Vec<SmsProviderConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_dedup() -> Duration {
    Duration::from_secs(300)
}
fn default_shutdown() -> Duration {
    Duration::from_secs(10)
}
fn default_domain() -> String {
    "vitals-relay.localdomain".into()
}

/// Per-channel retry of transient failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// A notification still undelivered this long after it was accepted is
    /// recorded as failed (reason `expired`).
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            multiplier: 2.0,
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// A webhook receiver: Alertmanager's `receiver` name, also reachable as
/// `POST /webhook/<name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub name: String,
    pub auth: AuthConfig,
    /// Channel names this receiver fans out to.
    pub channels: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum AuthConfig {
    /// `Authorization: Bearer <token>`.
    Bearer { token: Secret },
    /// HTTP basic auth checked against bcrypt hashes.
    Basic { users: BTreeMap<String, String> },
    /// Grafana's HMAC-SHA256 signature of the body.
    Hmac {
        secret: Secret,
        #[serde(default = "default_hmac_header")]
        header: String,
        /// When set, the signature covers `"<timestamp>:" + body`.
        #[serde(default)]
        timestamp_header: Option<String>,
    },
    /// No authentication (only for loopback set-ups).
    None,
}

fn default_hmac_header() -> String {
    "X-Grafana-Alerting-Signature".into()
}

// No `deny_unknown_fields` here: serde cannot combine it with `flatten`;
// the flattened kinds deny unknown keys instead.
#[derive(Debug, Clone, Deserialize)]
pub struct ChannelConfig {
    pub name: String,
    /// Label matchers every one of which must hold for at least one alert of
    /// the group (`severity="critical"`, `env!="dev"`, `team=~"db|ops"`).
    #[serde(default)]
    pub matchers: Vec<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Sends in flight at once (without a rate limit; with one, sends are
    /// one at a time so the limit is exact).
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    #[serde(flatten)]
    pub kind: ChannelKind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChannelKind {
    Email(EmailConfig),
    Sms(SmsChannelConfig),
}

/// At most `max` messages per `per` window and recipient; the excess is
/// folded into one summary sent when the window opens again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub max: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub to: Vec<String>,
    pub from: String,
    pub smtp: SmtpConfig,
    /// Templates (minijinja) overriding the built-in ones; inline text.
    #[serde(default)]
    pub subject_template: Option<String>,
    #[serde(default)]
    pub text_template: Option<String>,
    #[serde(default)]
    pub html_template: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    /// Extra CA certificate (PEM) to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub auth: Vec<AuthMechanism>,
    #[serde(default = "default_smtp_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_smtp_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Starttls,
    Implicit,
    None,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMechanism {
    Plain,
    Login,
    Xoauth2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsChannelConfig {
    /// Name of an `[[relay.sms_providers]]` entry.
    pub provider: String,
    pub to: Vec<String>,
    /// Template overriding the built-in, length-aware text.
    #[serde(default)]
    pub text_template: Option<String>,
    /// Longest message in SMS segments (1 = 160 GSM-7 / 70 UCS-2 characters).
    #[serde(default = "default_segments")]
    pub max_segments: usize,
}

fn default_parallelism() -> usize {
    4
}

fn default_segments() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
pub struct SmsProviderConfig {
    pub name: String,
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(flatten)]
    pub kind: SmsProviderKind,
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(15)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SmsProviderKind {
    Twilio {
        account_sid: String,
        auth_token: Secret,
        #[serde(default)]
        from: Option<String>,
        #[serde(default)]
        messaging_service_sid: Option<String>,
        #[serde(default = "twilio_base")]
        base_url: String,
    },
    Vonage {
        api_key: String,
        api_secret: Secret,
        from: String,
        #[serde(default = "vonage_base")]
        base_url: String,
    },
    Http {
        #[serde(default = "default_method")]
        method: String,
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Sent as `Authorization: Bearer <token>` when set.
        #[serde(default)]
        bearer_token: Option<Secret>,
        /// minijinja template of the body; variables `to`, `from`, `text`, `id`.
        body_template: String,
        #[serde(default = "default_content_type")]
        content_type: String,
        #[serde(default)]
        from: Option<String>,
        /// Statuses retried with backoff; every other non-2xx is permanent.
        #[serde(default = "default_retry_statuses")]
        retry_statuses: Vec<u16>,
    },
}

impl SmsProviderKind {
    /// The same provider with every secret replaced by a placeholder, for
    /// `vitals check` on a machine without the secrets.
    pub fn with_placeholder_secrets(mut self) -> SmsProviderKind {
        let placeholder = Secret::literal("placeholder");
        match &mut self {
            SmsProviderKind::Twilio { auth_token, .. } => *auth_token = placeholder,
            SmsProviderKind::Vonage { api_secret, .. } => *api_secret = placeholder,
            SmsProviderKind::Http { bearer_token, .. } => {
                if bearer_token.is_some() {
                    *bearer_token = Some(placeholder);
                }
            }
        }
        self
    }
}

fn twilio_base() -> String {
    "https://api.twilio.com".into()
}
fn vonage_base() -> String {
    "https://rest.nexmo.com".into()
}
fn default_method() -> String {
    "POST".into()
}
fn default_content_type() -> String {
    "application/json".into()
}
fn default_retry_statuses() -> Vec<u16> {
    vec![408, 425, 429, 500, 502, 503, 504]
}

/// A secret given as `env:NAME`, `file:/path` or (discouraged) the literal
/// value. Never printed: `Debug` shows where it comes from, not the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A literal value (used to stand in for secrets when only checking).
    pub fn literal(value: &str) -> Secret {
        Secret(value.to_string())
    }

    /// True when the value lives outside the file (`env:` or `file:`).
    pub fn is_external(&self) -> bool {
        self.0.starts_with("env:") || self.0.starts_with("file:")
    }

    /// Where the value comes from, safe to print: `env:NAME`,
    /// `file:/path`, or `inline` for a literal.
    pub fn source(&self) -> &str {
        if self.is_external() {
            &self.0
        } else {
            "inline"
        }
    }

    /// Read the value from the environment or the file.
    pub fn resolve(&self) -> Result<String, String> {
        if let Some(name) = self.0.strip_prefix("env:") {
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
        } else if let Some(path) = self.0.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("cannot read secret file {path}: {}", e.kind()))
        } else {
            Ok(self.0.clone())
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.starts_with("env:") || self.0.starts_with("file:") {
            write!(f, "Secret({})", self.0)
        } else {
            f.write_str("Secret(<inline>)")
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret(String::deserialize(d)?))
    }
}

/// True when `text` looks like a relay configuration (a top-level `[relay]`
/// table), so `vitals check` can tell the two kinds of file apart.
pub fn is_relay_config(text: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .map(|t| t.contains_key("relay"))
        .unwrap_or(false)
}

/// Read and parse a relay configuration file (not yet validated).
pub fn parse_file(path: &Path) -> Result<RelayConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    parse_str(&text, &file)
}

pub fn parse_str(text: &str, file: &str) -> Result<RelayConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        reason: one_line(&e.to_string()),
    })?;
    let parsed: RelayFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Invalid {
            file: file.to_string(),
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            reason: one_line(&e.into_inner().to_string()),
        }
    })?;
    Ok(parsed.relay)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
