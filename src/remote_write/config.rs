//! `[[remote_write]]`: one remote-write endpoint, its durable queue and what
//! is sent to it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::select::Pattern;
use crate::sources::http::{BasicAuthConfig, check_auth_choice};
use crate::sources::secret::{Secret, resolve_secret};

/// One `[[remote_write]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// Unique name: the `remote` label of the self-metrics and the queue's
    /// file name (`<queue_dir>/<name>.redb`).
    pub name: String,
    /// Receiver endpoint, e.g. `http://mimir:8080/api/v1/push`.
    pub url: String,
    /// Extra request headers (tenant ids such as `X-Scope-OrgID`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    #[serde(default)]
    pub tls: RemoteTlsConfig,
    /// Whole-request timeout of one send.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Directory of the on-disk queue (created if missing).
    pub queue_dir: PathBuf,
    /// Most payload bytes the queue holds on disk; beyond it the oldest
    /// blocks are dropped (counted as `queue_full`).
    #[serde(default = "default_queue_max_bytes")]
    pub queue_max_bytes: u64,
    /// Most samples in one queued block, which is one request.
    #[serde(default = "default_batch_max_samples")]
    pub batch_max_samples: usize,
    /// Requests in flight at once. Series are split over this many ordered
    /// lanes by a hash of their labels, so each series stays in order.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    #[serde(default = "default_min_backoff", with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Labels added to every series sent (a label the series has wins).
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    /// Which series are sent: any selector matching is enough; none set
    /// sends everything, anomaly scores included.
    #[serde(default)]
    pub select: Vec<SeriesSelector>,
}

/// A series selector, as in `[[pipeline]]`: a family name regex plus label
/// matchers (all anchored).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesSelector {
    pub metric: Pattern,
    #[serde(default)]
    pub labels: BTreeMap<String, Pattern>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteTlsConfig {
    /// PEM file of CA certificates trusted in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. For testing only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_queue_max_bytes() -> u64 {
    512 * 1024 * 1024
}
fn default_batch_max_samples() -> usize {
    5000
}
fn default_max_concurrency() -> usize {
    4
}
fn default_min_backoff() -> Duration {
    Duration::from_millis(30)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}

/// Header names vitals sets itself.
const RESERVED_HEADERS: [&str; 6] = [
    "content-encoding",
    "content-type",
    "content-length",
    "user-agent",
    "x-prometheus-remote-write-version",
    "host",
];

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Resolved credentials of a remote.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    Bearer(String),
    Basic(String, Option<String>),
}

impl RemoteWriteConfig {
    /// Checks beyond the types: `(key relative to the table, reason)`.
    /// Secrets and TLS files are read here too, so a missing one is
    /// reported at start with its key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, r: &str| Err((k.to_string(), r.to_string()));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return bad(
                "name",
                "must be non-empty and use only letters, digits, `_`, `-` and `.`",
            );
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            Ok(_) => return bad("url", "must be an http:// or https:// URL with a host"),
            Err(e) => return bad("url", &format!("is not a URL: {e}")),
        }
        for (k, v) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return bad(&format!("headers.{k}"), "is not a valid header name");
            }
            if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                return bad(&format!("headers.{k}"), "is set by vitals itself");
            }
            if k.eq_ignore_ascii_case("authorization") {
                return bad(
                    &format!("headers.{k}"),
                    "use `bearer_token` or `basic_auth` (kept out of logs)",
                );
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
        self.auth()?;
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return bad("tls.cert_file", "`cert_file` and `key_file` go together");
        }
        for (key, path) in [
            ("tls.ca_file", &self.tls.ca_file),
            ("tls.cert_file", &self.tls.cert_file),
            ("tls.key_file", &self.tls.key_file),
        ] {
            if let Some(p) = path
                && let Err(e) = std::fs::metadata(p)
            {
                return bad(key, &format!("cannot read {}: {}", p.display(), e.kind()));
            }
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be more than 0s");
        }
        if self.queue_dir.as_os_str().is_empty() {
            return bad("queue_dir", "must not be empty");
        }
        if self.queue_max_bytes < 1024 * 1024 {
            return bad("queue_max_bytes", "must be at least 1 MiB (1048576)");
        }
        if !(1..=1_000_000).contains(&self.batch_max_samples) {
            return bad("batch_max_samples", "must be between 1 and 1000000");
        }
        if !(1..=64).contains(&self.max_concurrency) {
            return bad("max_concurrency", "must be between 1 and 64");
        }
        if self.min_backoff.is_zero() {
            return bad("min_backoff", "must be more than 0s");
        }
        if self.max_backoff < self.min_backoff {
            return bad("max_backoff", "must not be less than `min_backoff`");
        }
        for (k, v) in &self.external_labels {
            if !valid_label_name(k) || k.starts_with("__") {
                return bad(
                    &format!("external_labels.{k}"),
                    "is not a valid label name (letters, digits, `_`, not starting with `__`)",
                );
            }
            if v.is_empty() {
                return bad(&format!("external_labels.{k}"), "must not be empty");
            }
        }
        Ok(())
    }

    /// The credentials, with secrets read from their env var or file.
    pub fn auth(&self) -> Result<Auth, (String, String)> {
        let token = resolve_secret(
            "bearer_token",
            self.bearer_token.as_ref(),
            self.bearer_token_env.as_deref(),
            self.bearer_token_file.as_deref(),
        )
        .map_err(|e| ("bearer_token".to_string(), e))?;
        if let Some(t) = token {
            return Ok(Auth::Bearer(t));
        }
        if let Some(b) = &self.basic_auth {
            let password = resolve_secret(
                "password",
                b.password.as_ref(),
                b.password_env.as_deref(),
                b.password_file.as_deref(),
            )
            .map_err(|e| ("basic_auth.password".to_string(), e))?;
            return Ok(Auth::Basic(b.username.clone(), password));
        }
        Ok(Auth::None)
    }

    /// True when the series is sent to this remote.
    pub fn selects(&self, family: &str, labels: &crate::model::Labels) -> bool {
        self.select.is_empty()
            || self
                .select
                .iter()
                .any(|s| crate::select::matches(&s.metric, &s.labels, family, labels))
    }

    /// The HTTP client: rustls with the ring provider, system roots plus the
    /// configured CA, and the client certificate when set.
    pub fn client(&self) -> Result<reqwest::Client, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .user_agent(concat!("vitals/", env!("CARGO_PKG_VERSION")))
            .tls_danger_accept_invalid_certs(self.tls.insecure_skip_verify);
        if let Some(path) = &self.tls.ca_file {
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
        if let (Some(cert), Some(key)) = (&self.tls.cert_file, &self.tls.key_file) {
            let mut pem = std::fs::read(cert)
                .map_err(|e| format!("cannot read {}: {}", cert.display(), e.kind()))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| format!("cannot read {}: {}", key.display(), e.kind()))?,
            );
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("client certificate or key is not usable PEM: {e}"))?;
            b = b.identity(id);
        }
        b.build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    }
}

/// Checks across remotes (unique names), for the config validator.
pub fn validate_all(remotes: &[RemoteWriteConfig]) -> Result<(), (String, String)> {
    let mut names = std::collections::HashSet::new();
    for (i, r) in remotes.iter().enumerate() {
        r.validate()
            .map_err(|(k, reason)| (format!("remote_write[{i}].{k}"), reason))?;
        if let Err(e) = r.client() {
            return Err((format!("remote_write[{i}].tls"), e));
        }
        if !names.insert(r.name.as_str()) {
            return Err((
                format!("remote_write[{i}].name"),
                format!("remote {:?} is defined twice", r.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, ConfigFormat, load_str};

    /// The commented `[[remote_write]]` block of examples/vitals.toml with
    /// its key lines switched on.
    fn example_block() -> String {
        let text = include_str!("../../examples/vitals.toml");
        let start = text.find("# ---- BEGIN remote write").unwrap();
        let end = text.find("# ---- END remote write").unwrap();
        text[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| !l.starts_with(' ') && !l.starts_with('-') && !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn invalid(text: &str) -> (String, String) {
        match load_str(text, ConfigFormat::Toml, "rw.toml") {
            Err(ConfigError::Invalid { file, key, reason }) => {
                assert_eq!(file, "rw.toml");
                (key, reason)
            }
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    const BASE: &str =
        "[[remote_write]]\nname = \"c\"\nurl = \"http://127.0.0.1:9/w\"\nqueue_dir = \"/tmp/q\"\n";

    #[test]
    fn example_documents_every_key_and_validates() {
        let block = example_block();
        let cfg = load_str(&block, ConfigFormat::Toml, "example").unwrap();
        let r = &cfg.remote_write[0];
        assert_eq!(r.queue_max_bytes, 512 * 1024 * 1024);
        assert_eq!(r.external_labels["site"], "plant-3");
        assert_eq!(r.select.len(), 1);
        // Every key of the struct is in the example (enabled or described).
        let text = include_str!("../../examples/vitals.toml");
        let section = &text[text.find("# ---- BEGIN remote write").unwrap()..];
        for key in [
            "name",
            "url",
            "headers",
            "bearer_token",
            "bearer_token_env",
            "bearer_token_file",
            "basic_auth",
            "password_env",
            "password_file",
            "ca_file",
            "cert_file",
            "key_file",
            "insecure_skip_verify",
            "timeout",
            "queue_dir",
            "queue_max_bytes",
            "batch_max_samples",
            "max_concurrency",
            "min_backoff",
            "max_backoff",
            "external_labels",
            "remote_write.select",
            "metric",
            "labels",
        ] {
            assert!(section.contains(key), "{key}");
        }
    }

    #[test]
    fn typos_and_bad_values_name_the_key() {
        let (key, reason) = invalid(&format!("{BASE}queue_max_byte = 5\n"));
        assert_eq!(key, "remote_write[0].queue_max_byte");
        assert!(reason.contains("queue_max_byte"), "{reason}");
        let (key, _) = invalid(&format!("{BASE}max_concurrency = 0\n"));
        assert_eq!(key, "remote_write[0].max_concurrency");
        let (key, _) = invalid(&format!(
            "{BASE}min_backoff = \"2s\"\nmax_backoff = \"1s\"\n"
        ));
        assert_eq!(key, "remote_write[0].max_backoff");
        let (key, _) = invalid(&format!("{BASE}external_labels = {{ __x = \"a\" }}\n"));
        assert_eq!(key, "remote_write[0].external_labels.__x");
        let (key, reason) = invalid(&format!(
            "{BASE}bearer_token_env = \"VITALS_TEST_UNSET_RW_TOKEN\"\n"
        ));
        assert_eq!(key, "remote_write[0].bearer_token");
        assert!(reason.contains("VITALS_TEST_UNSET_RW_TOKEN"), "{reason}");
        let (key, _) = invalid(&format!(
            "{BASE}tls = {{ ca_file = \"/nonexistent/ca.pem\" }}\n"
        ));
        assert_eq!(key, "remote_write[0].tls.ca_file");
        let (key, _) = invalid(&format!("{BASE}headers = {{ Content-Type = \"x\" }}\n"));
        assert_eq!(key, "remote_write[0].headers.Content-Type");
        let (key, _) = invalid(&format!(
            "{BASE}{}",
            BASE.replace("[[remote_write]]\n", "[[remote_write]]\n")
        ));
        assert_eq!(key, "remote_write[1].name");
        let (key, _) =
            invalid("[[remote_write]]\nname = \"c\"\nurl = \"ftp://x/\"\nqueue_dir = \"/tmp/q\"\n");
        assert_eq!(key, "remote_write[0].url");
    }

    #[test]
    fn secrets_come_from_files_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        let cfg = load_str(
            &format!("{BASE}bearer_token_file = {:?}\n", f.display().to_string()),
            ConfigFormat::Toml,
            "rw.toml",
        )
        .unwrap();
        match cfg.remote_write[0].auth().unwrap() {
            super::Auth::Bearer(t) => assert_eq!(t, "s3cret"),
            _ => panic!("bearer expected"),
        }
        let cfg = load_str(
            &format!("{BASE}bearer_token = \"lit\"\n"),
            ConfigFormat::Toml,
            "x",
        )
        .unwrap();
        assert!(!format!("{:?}", cfg.remote_write[0]).contains("lit\""));
    }
}
