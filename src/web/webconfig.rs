//! The web configuration file (`--web.config.file`): the same YAML format
//! node_exporter and Prometheus take, so one file and `promtool check
//! web-config` serve them all.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional mutual TLS
//!   client_ca_file: ca.crt
//!   min_version: TLS12
//! http_server_config:
//!   headers:
//!     X-Frame-Options: deny
//! basic_auth_users:
//!   prometheus: $2y$10$...   # bcrypt
//! ```
//!
//! The file and the certificate files it names are re-read when they
//! change (checked at most once a second), so certificates rotate without a
//! restart. A changed file that is invalid is logged and the previous one
//! stays in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use serde::Deserialize;

/// Why a web configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: invalid YAML: {reason}")]
    Yaml { file: String, reason: String },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    cert_file: Option<String>,
    #[serde(default)]
    key_file: Option<String>,
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<String>,
    #[serde(default)]
    client_ca: Option<String>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
    #[serde(default)]
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    cipher_suites: Option<Vec<String>>,
    #[serde(default)]
    curve_preferences: Option<Vec<String>>,
    #[serde(default)]
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    http2: Option<bool>,
    #[serde(default)]
    headers: Option<BTreeMap<String, HeaderText>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    #[serde(default)]
    interval: Option<GoDuration>,
    #[serde(default)]
    burst: Option<i64>,
}

/// A header value: any YAML scalar, as Go's YAML decoder turns one into a
/// string (`X-XSS-Protection: 1`).
#[derive(Debug)]
struct HeaderText(String);

impl<'de> Deserialize<'de> for HeaderText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(HeaderText(s)),
            serde_json::Value::Number(n) => Ok(HeaderText(n.to_string())),
            serde_json::Value::Bool(b) => Ok(HeaderText(b.to_string())),
            serde_json::Value::Null => Ok(HeaderText(String::new())),
            _ => Err(D::Error::custom("a header value must be a string")),
        }
    }
}

/// A duration as Go's YAML decoder reads one: a string such as `1s`,
/// `500ms` or `1m30s`, or an integer number of nanoseconds.
#[derive(Debug, Clone, Copy)]
struct GoDuration(Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s.trim() == "0" => Ok(GoDuration(Duration::ZERO)),
            serde_json::Value::String(s) => humantime::parse_duration(s.trim())
                .map(GoDuration)
                .map_err(|e| D::Error::custom(format!("invalid duration {s:?}: {e}"))),
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(|ns| GoDuration(Duration::from_nanos(ns)))
                .ok_or_else(|| D::Error::custom("a duration must not be negative")),
            serde_json::Value::Null => Ok(GoDuration(Duration::ZERO)),
            _ => Err(D::Error::custom("expected a duration such as 1s")),
        }
    }
}

/// The response headers the format allows to be set, with the values
/// allowed where it restricts them (names match exactly, as in
/// exporter-toolkit).
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// `rate_limit`: one token bucket for the whole server; a request that
/// finds it empty gets 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// One token is added per interval.
    pub interval: Duration,
    /// Tokens the bucket holds (and starts with); 0 refuses every request,
    /// as exporter-toolkit does.
    pub burst: u32,
}

/// A validated web configuration.
pub struct WebConfig {
    /// TLS settings; `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// User name → bcrypt hash; empty means no authentication.
    pub users: BTreeMap<String, String>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `http_server_config.http2`: HTTP/2 offered (over TLS) at all.
    pub http2: bool,
    /// `rate_limit`, when set with a non-zero interval.
    pub rate_limit: Option<RateLimit>,
    /// Accepted settings vitals serves differently from Go (logged at load).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes are secrets too: only the user names are shown.
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .field("http2", &self.http2)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// Parse YAML into JSON values so serde (with key paths) does the rest.
fn yaml_to_json(y: &yaml_rust2::Yaml) -> serde_json::Value {
    use serde_json::Value;
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) | Yaml::Real(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        _ => String::new(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

impl WebConfig {
    /// Read and validate a web configuration file. Relative certificate
    /// paths are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| WebConfigError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::load_str(&text, &file, base)
    }

    /// Parse and validate web configuration text; `file` names it in
    /// errors and relative certificate paths are resolved against `base`.
    pub fn load_str(text: &str, file: &str, base: &Path) -> Result<WebConfig, WebConfigError> {
        let file = file.to_string();
        let docs =
            yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| WebConfigError::Yaml {
                file: file.clone(),
                reason: e.to_string(),
            })?;
        let value = docs
            .first()
            .map(yaml_to_json)
            .unwrap_or(serde_json::Value::Null);
        let raw: RawWebConfig = if value.is_null() {
            RawWebConfig::default()
        } else {
            serde_path_to_error::deserialize(value).map_err(|e| WebConfigError::Invalid {
                file: file.clone(),
                key: e.path().to_string(),
                reason: e.into_inner().to_string(),
            })?
        };
        Self::compile(raw, &file, base)
    }

    fn compile(raw: RawWebConfig, file: &str, base: &Path) -> Result<WebConfig, WebConfigError> {
        let invalid = |key: &str, reason: String| WebConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let users = raw.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")) {
                return Err(invalid(
                    &format!("basic_auth_users.{user}"),
                    "must be a bcrypt hash ($2a$, $2b$ or $2y$)".into(),
                ));
            }
        }
        let mut warnings = Vec::new();
        let mut headers = Vec::new();
        let mut http2 = true;
        if let Some(http) = raw.http_server_config {
            http2 = http.http2.unwrap_or(true);
            for (name, HeaderText(value)) in http.headers.unwrap_or_default() {
                let key = format!("http_server_config.headers.{name}");
                let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(h, _)| *h == name) else {
                    return Err(invalid(
                        &key,
                        format!(
                            "HTTP header {name:?} can not be configured; allowed: {}",
                            ALLOWED_HEADERS.map(|(h, _)| h).join(", ")
                        ),
                    ));
                };
                if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                    return Err(invalid(
                        &key,
                        format!("must be one of {allowed:?}, not {value:?}"),
                    ));
                }
                if value.is_empty() {
                    // "Unset if blank".
                    continue;
                }
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| invalid(&key, e.to_string()))?;
                let v = HeaderValue::from_str(&value).map_err(|e| invalid(&key, e.to_string()))?;
                headers.push((n, v));
            }
        }
        let rate_limit = match raw.rate_limit {
            None => None,
            Some(r) => {
                let interval = r.interval.map_or(Duration::ZERO, |d| d.0);
                let burst = r.burst.unwrap_or(0);
                let burst = u32::try_from(burst).map_err(|_| {
                    invalid(
                        "rate_limit.burst",
                        format!("must be between 0 and {}", u32::MAX),
                    )
                })?;
                if interval.is_zero() {
                    None
                } else {
                    if burst == 0 {
                        warnings.push(
                            "rate_limit.burst is 0: every request is refused with 429 (as exporter-toolkit does)"
                                .to_string(),
                        );
                    }
                    Some(RateLimit { interval, burst })
                }
            }
        };
        let tls = match raw.tls_server_config {
            None => None,
            Some(t) => build_tls(t, base, http2, &invalid, &mut warnings)?.map(Arc::new),
        };
        Ok(WebConfig {
            tls,
            users,
            headers,
            http2,
            rate_limit,
            warnings,
        })
    }
}

impl WebConfig {
    /// Log what is accepted but served differently from exporter-toolkit.
    pub fn log_warnings(&self, path: &Path) {
        for warning in &self.warnings {
            tracing::warn!(file = %path.display(), %warning, "Web configuration setting not served as written.");
        }
    }
}

/// A setting that counts as set: present and not empty (as in Go, where
/// the empty string is the unset value).
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// The PEM bytes of a `<name>_file` / inline `<name>` pair; the file wins
/// when both are given, as in exporter-toolkit.
fn read_pem(
    base: &Path,
    file: &Option<String>,
    inline: &Option<String>,
    key: &str,
    invalid: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<Option<Vec<u8>>, WebConfigError> {
    match (set(file), set(inline)) {
        (Some(f), _) => std::fs::read(base.join(f))
            .map(Some)
            .map_err(|e| invalid(&format!("{key}_file"), format!("cannot read {f}: {e}"))),
        (None, Some(pem)) => Ok(Some(pem.as_bytes().to_vec())),
        (None, None) => Ok(None),
    }
}

/// TLS 1.3 suite names Go accepts in `cipher_suites` (and ignores: the
/// setting applies up to TLS 1.2).
const GO_TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites in Go's `tls.CipherSuites()` that rustls does not implement
/// (CBC modes and RSA key exchange): accepted, with a warning, and not
/// offered.
const GO_SUITES_NOT_IN_RUSTLS: [&str; 8] = [
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
];

/// The provider's cipher suites for `cipher_suites` (Go names): every
/// TLS 1.3 suite, then the listed TLS 1.2 suites in the listed order.
fn cipher_suites(
    names: &[String],
    all: &[rustls::SupportedCipherSuite],
    warnings: &mut Vec<String>,
) -> Result<Vec<rustls::SupportedCipherSuite>, String> {
    let mut out: Vec<rustls::SupportedCipherSuite> = all
        .iter()
        .filter(|s| s.version().version == rustls::ProtocolVersion::TLSv1_3)
        .copied()
        .collect();
    for name in names {
        if GO_TLS13_SUITES.contains(&name.as_str()) {
            continue;
        }
        if GO_SUITES_NOT_IN_RUSTLS.contains(&name.as_str()) {
            warnings.push(format!(
                "tls_server_config.cipher_suites: {name} is not implemented by rustls and is not offered"
            ));
            continue;
        }
        let suite = all
            .iter()
            .find(|s| {
                s.version().version == rustls::ProtocolVersion::TLSv1_2
                    && s.suite().as_str() == Some(name.as_str())
            })
            .ok_or_else(|| format!("unknown cipher: {name}"))?;
        if !out.contains(suite) {
            out.push(*suite);
        }
    }
    Ok(out)
}

/// The key-exchange groups for `curve_preferences` (Go names), in order.
fn kx_groups(
    names: &[String],
) -> Result<Vec<&'static dyn rustls::crypto::SupportedKxGroup>, String> {
    use rustls::crypto::ring::kx_group;
    names
        .iter()
        .map(|name| match name.as_str() {
            "CurveP256" => Ok(kx_group::SECP256R1),
            "CurveP384" => Ok(kx_group::SECP384R1),
            "CurveP521" => Ok(super::kx_p521::SECP521R1),
            "X25519" => Ok(kx_group::X25519),
            other => Err(format!(
                "unknown curve: {other} (use CurveP256, CurveP384, CurveP521 or X25519)"
            )),
        })
        .collect()
}

/// How client certificates are requested and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    /// `RequestClientCert`: asked for, optional, not verified.
    Request,
    /// `RequireAnyClientCert`: required, not verified.
    RequireAny,
    /// `VerifyClientCertIfGiven`: optional, verified when sent.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`: required and verified.
    RequireAndVerify,
}

fn build_tls(
    t: RawTls,
    base: &Path,
    http2: bool,
    invalid: &dyn Fn(&str, String) -> WebConfigError,
    warnings: &mut Vec<String>,
) -> Result<Option<rustls::ServerConfig>, WebConfigError> {
    let key_prefix = "tls_server_config";
    let k = |name: &str| format!("{key_prefix}.{name}");
    // As in exporter-toolkit, TLS is on when any of these is set; the
    // other settings alone leave plain HTTP.
    let enabled = [
        &t.cert_file,
        &t.cert,
        &t.key_file,
        &t.key,
        &t.client_ca_file,
        &t.client_ca,
        &t.client_auth_type,
    ]
    .iter()
    .any(|v| set(v).is_some());
    // Names are checked whether or not TLS ends up on, as Go's YAML
    // decoding checks them; what rustls serves differently is reported
    // only when TLS is on.
    let mut late = Vec::new();
    // TLS versions as numbers: 10 = TLS 1.0 ... 13 = TLS 1.3.
    let version = |v: &Option<String>, key: &str, default: u8| match set(v) {
        None => Ok(default),
        Some("TLS10") => Ok(10),
        Some("TLS11") => Ok(11),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(other) => Err(invalid(
            &k(key),
            format!("unknown TLS version: {other} (use TLS10, TLS11, TLS12 or TLS13)"),
        )),
    };
    let min = version(&t.min_version, "min_version", 12)?;
    let max = version(&t.max_version, "max_version", 13)?;
    if min < 12 {
        late.push(format!(
            "{key_prefix}.min_version: TLS 1.0 and 1.1 are not implemented by rustls; TLS 1.2 is the lowest version served"
        ));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(n, _)| *n >= min.max(12) && *n <= max)
            .map(|(_, v)| v)
            .collect();

    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = t.cipher_suites.as_deref().filter(|n| !n.is_empty()) {
        provider.cipher_suites =
            cipher_suites(names, rustls::crypto::ring::ALL_CIPHER_SUITES, &mut late)
                .map_err(|e| invalid(&k("cipher_suites"), e))?;
    }
    if let Some(names) = t.curve_preferences.as_deref().filter(|n| !n.is_empty()) {
        provider.kx_groups = kx_groups(names).map_err(|e| invalid(&k("curve_preferences"), e))?;
    }
    if !enabled {
        return Ok(None);
    }
    warnings.append(&mut late);
    if max < 12 {
        return Err(invalid(
            &k("max_version"),
            "TLS10 and TLS11 are not implemented by rustls (TLS12 and TLS13 are): nothing could be served".into(),
        ));
    }
    if min > max {
        return Err(invalid(
            &k("min_version"),
            "is above max_version: no handshake could succeed".into(),
        ));
    }
    let cert_pem = read_pem(base, &t.cert_file, &t.cert, &k("cert"), invalid)?
        .ok_or_else(|| invalid(&k("cert_file"), "missing one of cert or cert_file".into()))?;
    let key_pem = read_pem(base, &t.key_file, &t.key, &k("key"), invalid)?
        .ok_or_else(|| invalid(&k("key_file"), "missing one of key or key_file".into()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&k("cert_file"), format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(&k("cert_file"), "contains no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid(&k("key_file"), format!("not a PEM private key: {e}")))?;

    let provider = Arc::new(provider);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| {
            invalid(
                key_prefix,
                format!("{e} (cipher_suites has no suite for the TLS versions allowed)"),
            )
        })?;

    let auth = match set(&t.client_auth_type).unwrap_or("NoClientCert") {
        "NoClientCert" => None,
        "RequestClientCert" => Some(ClientAuth::Request),
        // `RequireClientCert` is exporter-toolkit's older spelling.
        "RequireAnyClientCert" | "RequireClientCert" => Some(ClientAuth::RequireAny),
        "VerifyClientCertIfGiven" => Some(ClientAuth::VerifyIfGiven),
        "RequireAndVerifyClientCert" => Some(ClientAuth::RequireAndVerify),
        other => {
            return Err(invalid(
                &k("client_auth_type"),
                format!(
                    "invalid value {other:?}; use NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ),
            ));
        }
    };
    let ca_pem = read_pem(
        base,
        &t.client_ca_file,
        &t.client_ca,
        &k("client_ca"),
        invalid,
    )?;
    let builder = match auth {
        None => {
            if ca_pem.is_some() {
                return Err(invalid(
                    &k("client_ca_file"),
                    "client CAs are configured without a client_auth_type policy (set client_auth_type, e.g. RequireAndVerifyClientCert)".into(),
                ));
            }
            if t.client_allowed_sans.is_some() {
                return Err(invalid(
                    &k("client_allowed_sans"),
                    "requires client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert"
                        .into(),
                ));
            }
            builder.with_no_client_auth()
        }
        Some(auth) => {
            if t.client_allowed_sans.is_some()
                && !matches!(auth, ClientAuth::RequireAny | ClientAuth::RequireAndVerify)
            {
                return Err(invalid(
                    &k("client_allowed_sans"),
                    "requires client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert"
                        .into(),
                ));
            }
            let verifier = ClientVerifier::new(
                auth,
                ca_pem.as_deref(),
                t.client_allowed_sans.clone(),
                provider.clone(),
            )
            .map_err(|e| invalid(&k("client_ca_file"), e))?;
            if matches!(auth, ClientAuth::Request | ClientAuth::RequireAny) {
                warnings.push(format!(
                    "{key_prefix}.client_auth_type: client certificates are not verified (use RequireAndVerifyClientCert to authenticate clients)"
                ));
            }
            builder.with_client_cert_verifier(Arc::new(verifier))
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            &k("key_file"),
            format!("does not match the certificate: {e}"),
        )
    })?;
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Some(config))
}

/// Client certificate checks as Go's `crypto/tls` makes them for the
/// exporter-toolkit policies: chain verification against the listed CAs
/// (the system roots when none are listed), a listed CA certificate also
/// accepted as the client certificate itself (a self-signed client
/// certificate listed as its own CA, which webpki alone refuses as "CA
/// used as end entity"), no verification for the Request/RequireAny
/// policies, and the `client_allowed_sans` match.
#[derive(Debug)]
struct ClientVerifier {
    auth: ClientAuth,
    /// Chain verification; `None` when there are no roots to verify with.
    webpki: Option<Arc<dyn ClientCertVerifier>>,
    /// The listed CA certificates, accepted on an exact match.
    listed: Vec<CertificateDer<'static>>,
    /// `client_allowed_sans`: one of these must be a SAN of the certificate.
    sans: Option<Vec<String>>,
    hints: Vec<rustls::DistinguishedName>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    fn new(
        auth: ClientAuth,
        ca_pem: Option<&[u8]>,
        sans: Option<Vec<String>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, String> {
        let algorithms = provider.signature_verification_algorithms;
        let mut listed = Vec::new();
        let mut roots = rustls::RootCertStore::empty();
        if matches!(
            auth,
            ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify
        ) {
            match ca_pem {
                Some(pem) => {
                    for cert in CertificateDer::pem_slice_iter(pem) {
                        let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
                        roots.add(cert.clone()).map_err(|e| e.to_string())?;
                        listed.push(cert);
                    }
                    if listed.is_empty() {
                        return Err("contains no certificate".into());
                    }
                }
                // Go verifies against the system roots when no client CA
                // is given.
                None => {
                    let native = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(native.certs);
                }
            }
        }
        let webpki = if roots.is_empty() {
            None
        } else {
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| e.to_string())?;
            Some(v)
        };
        let hints = webpki
            .as_ref()
            .map(|v| v.root_hint_subjects().to_vec())
            .unwrap_or_default();
        Ok(ClientVerifier {
            auth,
            webpki,
            listed,
            sans,
            hints,
            algorithms,
        })
    }

    fn check_sans(&self, cert: &CertificateDer<'_>, sans: &[String]) -> Result<(), rustls::Error> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|_| rustls::CertificateError::BadEncoding)?;
        let found = sans.iter().any(|want| {
            parsed.valid_dns_names().any(|n| n == want)
                || parsed.valid_uri_names().any(|u| u == want)
                || want.parse::<std::net::IpAddr>().is_ok_and(|ip| {
                    parsed
                        .verify_is_valid_for_subject_name(
                            &rustls::pki_types::ServerName::IpAddress(ip.into()),
                        )
                        .is_ok()
                })
        });
        if found {
            Ok(())
        } else {
            Err(rustls::CertificateError::ApplicationVerificationFailure.into())
        }
    }
}

/// webpki's refusal of a CA certificate presented as the end entity
/// (checked after the validity period).
fn is_ca_used_as_end_entity(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        matches!(
            self.auth,
            ClientAuth::RequireAny | ClientAuth::RequireAndVerify
        )
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if matches!(
            self.auth,
            ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify
        ) {
            let Some(webpki) = &self.webpki else {
                return Err(rustls::CertificateError::UnknownIssuer.into());
            };
            if let Err(e) = webpki.verify_client_cert(end_entity, intermediates, now) {
                let listed = self
                    .listed
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref());
                if !(listed && is_ca_used_as_end_entity(&e)) {
                    return Err(e);
                }
            }
        }
        if let Some(sans) = &self.sans {
            self.check_sans(end_entity, sans)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A web configuration file that is re-read when it (or a file it names)
/// changes.
pub struct WebConfigWatcher {
    path: PathBuf,
    inner: Mutex<Watched>,
}

struct Watched {
    config: Arc<WebConfig>,
    /// Modification times of the file and the files it references.
    stamp: Vec<Option<SystemTime>>,
    checked: Instant,
}

/// How often the files are checked for changes.
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl WebConfigWatcher {
    /// Load the file; an invalid file is an error at start-up.
    pub fn new(path: &Path) -> Result<Self, WebConfigError> {
        let config = WebConfig::load(path)?;
        config.log_warnings(path);
        Ok(WebConfigWatcher {
            path: path.to_path_buf(),
            inner: Mutex::new(Watched {
                config: Arc::new(config),
                stamp: stamp(path),
                checked: Instant::now(),
            }),
        })
    }

    /// The configuration in force, re-read first when a file changed.
    pub fn current(&self) -> Arc<WebConfig> {
        let mut w = self.inner.lock();
        if w.checked.elapsed() >= CHECK_EVERY {
            w.checked = Instant::now();
            let now = stamp(&self.path);
            if now != w.stamp {
                w.stamp = now;
                match WebConfig::load(&self.path) {
                    Ok(config) => {
                        tracing::info!(file = %self.path.display(), "Web configuration reloaded.");
                        config.log_warnings(&self.path);
                        w.config = Arc::new(config);
                    }
                    Err(error) => {
                        tracing::error!(%error, "Web configuration change rejected; the previous one stays in force.");
                    }
                }
            }
        }
        w.config.clone()
    }
}

/// Modification times of the web config and of every file it names.
fn stamp(path: &Path) -> Vec<Option<SystemTime>> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut out = vec![mtime(path)];
    let base = path.parent().unwrap_or(Path::new("."));
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            let line = line.trim();
            for key in ["cert_file:", "key_file:", "client_ca_file:"] {
                if let Some(v) = line.strip_prefix(key) {
                    let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                    out.push(mtime(&base.join(v)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<WebConfig, WebConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("web.yml");
        std::fs::write(&p, yaml).unwrap();
        WebConfig::load(&p)
    }

    #[test]
    fn empty_file_means_plain_http_without_auth() {
        let c = load("").unwrap();
        assert!(c.tls.is_none() && c.users.is_empty() && c.headers.is_empty());
    }

    #[test]
    fn users_and_headers_are_read() {
        let c = load(
            "basic_auth_users:\n  prom: $2y$10$abcdefghijklmnopqrstuu5Ck3SJgvyQ9Ip3EjyBQ8oVa5.kXwFq\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n",
        )
        .unwrap();
        assert!(c.users.contains_key("prom"));
        assert_eq!(c.headers[0].0.as_str(), "x-frame-options");
    }

    #[test]
    fn header_values_may_be_yaml_numbers_and_names_match_exactly() {
        let c = load("http_server_config:\n  headers:\n    X-XSS-Protection: 1\n    Content-Security-Policy: ''\n").unwrap();
        assert_eq!(c.headers.len(), 1, "a blank value sets no header");
        assert_eq!(c.headers[0].1, "1");
        for bad in [
            "x-frame-options: deny",
            "X-Frame-Options: DENY",
            "X-Frame-Options: allow-from x",
            "X-Content-Type-Options: sniff",
            "Server: vitals",
        ] {
            let e = load(&format!("http_server_config:\n  headers:\n    {bad}\n"));
            assert!(e.is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn rate_limit_reads_go_durations_and_zero_turns_it_off() {
        let c = load("rate_limit:\n  interval: 1m30s\n  burst: 3\n").unwrap();
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                interval: Duration::from_secs(90),
                burst: 3
            })
        );
        assert!(c.warnings.is_empty());
        let c = load("rate_limit:\n  interval: 0\n  burst: 3\n").unwrap();
        assert_eq!(c.rate_limit, None);
        let c = load("rate_limit:\n  interval: 100ms\n").unwrap();
        assert_eq!(c.rate_limit.map(|r| r.burst), Some(0));
        assert!(
            c.warnings[0].contains("every request is refused"),
            "{:?}",
            c.warnings
        );
        assert!(load("rate_limit:\n  interval: soon\n").is_err());
        assert!(load("rate_limit:\n  burst: -1\n  interval: 1s\n").is_err());
        assert!(load("rate_limit:\n  every: 1s\n").is_err());
    }

    #[test]
    fn tls_settings_without_a_certificate_setting_leave_plain_http() {
        let c = load(
            "tls_server_config:\n  min_version: TLS13\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
        )
        .unwrap();
        assert!(c.tls.is_none());
        // Names are still checked, as Go's decoder checks them.
        assert!(load("tls_server_config:\n  cipher_suites: [X]\n").is_err());
        assert!(load("tls_server_config:\n  min_version: TLS14\n").is_err());
        let e = load("tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing one of cert or cert_file"), "{e}");
    }

    #[test]
    fn go_cipher_names_map_to_rustls_suites() {
        let all = rustls::crypto::ring::ALL_CIPHER_SUITES;
        let mut warnings = Vec::new();
        let names: Vec<String> = [
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
            "TLS_AES_128_GCM_SHA256",
        ]
        .map(String::from)
        .to_vec();
        let suites = cipher_suites(&names, all, &mut warnings).unwrap();
        let tls12: Vec<_> = suites
            .iter()
            .filter(|s| s.version().version == rustls::ProtocolVersion::TLSv1_2)
            .map(|s| s.suite().as_str().unwrap())
            .collect();
        assert_eq!(
            tls12,
            [
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert_eq!(suites.len(), 2 + 3, "every TLS 1.3 suite stays");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let e =
            cipher_suites(&["TLS_RSA_WITH_RC4_128_SHA".into()], all, &mut warnings).unwrap_err();
        assert_eq!(e, "unknown cipher: TLS_RSA_WITH_RC4_128_SHA");
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("basic_auth_users:\n  prom: plain\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `basic_auth_users.prom`: must be a bcrypt hash"),
            "{e}"
        );
        let e = load("tls_server_config:\n  cert_fil: x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `tls_server_config.cert_fil`: unknown field"),
            "{e}"
        );
        let e = load("http_server_config:\n  headers:\n    Server: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("can not be configured"), "{e}");
        let e = load(
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot read /nonexistent.crt"), "{e}");
        let e = load("tls_server_config:\n  min_version: TLS10\n  cert: x\n  key: y\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("contains no certificate") || e.contains("TLS10"),
            "{e}"
        );
        let e = load("unknown: 1\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `unknown`"), "{e}");
    }
}
