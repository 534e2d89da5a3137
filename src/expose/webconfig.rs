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
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
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
    basic_auth_users: BTreeMap<String, String>,
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
    headers: BTreeMap<String, String>,
}

/// The response headers the format allows to be set.
const ALLOWED_HEADERS: [&str; 5] = [
    "Strict-Transport-Security",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// A validated web configuration.
pub struct WebConfig {
    /// TLS settings; `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// User name → bcrypt hash; empty means no authentication.
    pub users: BTreeMap<String, String>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes are secrets too: only the user names are shown.
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
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
        for (user, hash) in &raw.basic_auth_users {
            if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")) {
                return Err(invalid(
                    &format!("basic_auth_users.{user}"),
                    "must be a bcrypt hash ($2a$, $2b$ or $2y$)".into(),
                ));
            }
        }
        let mut headers = Vec::new();
        let mut http2 = true;
        if let Some(http) = raw.http_server_config {
            http2 = http.http2.unwrap_or(true);
            for (name, value) in http.headers {
                let key = format!("http_server_config.headers.{name}");
                if !ALLOWED_HEADERS
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(&name))
                {
                    return Err(invalid(
                        &key,
                        format!(
                            "not an allowed header; allowed: {}",
                            ALLOWED_HEADERS.join(", ")
                        ),
                    ));
                }
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| invalid(&key, e.to_string()))?;
                let v = HeaderValue::from_str(&value).map_err(|e| invalid(&key, e.to_string()))?;
                headers.push((n, v));
            }
        }
        let tls = match raw.tls_server_config {
            None => None,
            Some(t) => Some(Arc::new(build_tls(t, base, http2, &invalid)?)),
        };
        Ok(WebConfig {
            tls,
            users: raw.basic_auth_users,
            headers,
        })
    }
}

fn read_pem(
    base: &Path,
    file: &Option<String>,
    inline: &Option<String>,
    key: &str,
    invalid: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<Option<Vec<u8>>, WebConfigError> {
    match (file, inline) {
        (Some(_), Some(_)) => Err(invalid(
            key,
            "set either the file or the inline value, not both".into(),
        )),
        (Some(f), None) => std::fs::read(base.join(f))
            .map(Some)
            .map_err(|e| invalid(&format!("{key}_file"), format!("cannot read {f}: {e}"))),
        (None, Some(pem)) => Ok(Some(pem.clone().into_bytes())),
        (None, None) => Ok(None),
    }
}

fn build_tls(
    t: RawTls,
    base: &Path,
    http2: bool,
    invalid: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<rustls::ServerConfig, WebConfigError> {
    let key_prefix = "tls_server_config";
    for (set, name) in [
        (t.cipher_suites.is_some(), "cipher_suites"),
        (t.curve_preferences.is_some(), "curve_preferences"),
        (t.client_allowed_sans.is_some(), "client_allowed_sans"),
    ] {
        if set {
            return Err(invalid(
                &format!("{key_prefix}.{name}"),
                "is not supported by vitals yet (rustls chooses safe defaults); remove it".into(),
            ));
        }
    }
    let cert_pem = read_pem(
        base,
        &t.cert_file,
        &t.cert,
        &format!("{key_prefix}.cert"),
        invalid,
    )?
    .ok_or_else(|| {
        invalid(
            &format!("{key_prefix}.cert_file"),
            "is required for TLS".into(),
        )
    })?;
    let key_pem = read_pem(
        base,
        &t.key_file,
        &t.key,
        &format!("{key_prefix}.key"),
        invalid,
    )?
    .ok_or_else(|| {
        invalid(
            &format!("{key_prefix}.key_file"),
            "is required for TLS".into(),
        )
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            invalid(
                &format!("{key_prefix}.cert_file"),
                format!("not a PEM certificate: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            &format!("{key_prefix}.cert_file"),
            "contains no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            &format!("{key_prefix}.key_file"),
            format!("not a PEM private key: {e}"),
        )
    })?;

    let version =
        |v: &Option<String>, key: &str, default: &'static rustls::SupportedProtocolVersion| match v
            .as_deref()
        {
            None | Some("") => Ok(default),
            Some("TLS12") => Ok(&rustls::version::TLS12),
            Some("TLS13") => Ok(&rustls::version::TLS13),
            Some(other @ ("TLS10" | "TLS11")) => Err(invalid(
                &format!("{key_prefix}.{key}"),
                format!("{other} is not supported (rustls implements TLS12 and TLS13)"),
            )),
            Some(other) => Err(invalid(
                &format!("{key_prefix}.{key}"),
                format!("unknown TLS version {other:?}; use TLS12 or TLS13"),
            )),
        };
    let rank = |v: &rustls::SupportedProtocolVersion| {
        u8::from(v.version == rustls::ProtocolVersion::TLSv1_3)
    };
    let min = version(&t.min_version, "min_version", &rustls::version::TLS12)?;
    let max = version(&t.max_version, "max_version", &rustls::version::TLS13)?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| rank(v) >= rank(min) && rank(v) <= rank(max))
            .collect();
    if versions.is_empty() {
        return Err(invalid(
            &format!("{key_prefix}.min_version"),
            "is above max_version".into(),
        ));
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| invalid(key_prefix, e.to_string()))?;

    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let ca_pem = read_pem(
        base,
        &t.client_ca_file,
        &t.client_ca,
        &format!("{key_prefix}.client_ca"),
        invalid,
    )?;
    let builder = match auth {
        "NoClientCert" | "" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let ca_pem = ca_pem.ok_or_else(|| {
                invalid(
                    &format!("{key_prefix}.client_ca_file"),
                    format!("is required with client_auth_type {auth}"),
                )
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca_pem) {
                let cert = cert
                    .map_err(|e| invalid(&format!("{key_prefix}.client_ca_file"), e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(&format!("{key_prefix}.client_ca_file"), e.to_string()))?;
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            if auth == "VerifyClientCertIfGiven" {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| invalid(&format!("{key_prefix}.client_ca_file"), e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(invalid(
                &format!("{key_prefix}.client_auth_type"),
                format!(
                    "{auth} (accepting unverified client certificates) is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ),
            ));
        }
        other => {
            return Err(invalid(
                &format!("{key_prefix}.client_auth_type"),
                format!(
                    "unknown value {other:?}; use NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ),
            ));
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            &format!("{key_prefix}.key_file"),
            format!("does not match the certificate: {e}"),
        )
    })?;
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
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
        assert!(e.contains("not an allowed header"), "{e}");
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
