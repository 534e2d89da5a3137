//! Configuration: one TOML or YAML file plus `VITALS_`-prefixed environment
//! overrides, deserialized with unknown keys rejected and validated once
//! before anything starts.
//!
//! Environment overrides use `__` between nested keys:
//! `VITALS_WEB__LISTEN_ADDRESS=0.0.0.0:9797`,
//! `VITALS_SYSTEM__INTERVAL=5s`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use crate::key_error::KeyError;
/// The closed enum of source kinds lives with the sources; kept at its old path.
pub use crate::sources::SourceConfig;
use crate::sources::{Ready, SUBKEY};

/// Patterns moved to the [`select`](crate::select) leaf; kept at their old path.
pub use crate::select::Pattern;
/// The system and process group sections live in their sources' files.
pub use crate::sources::process::ProcessGroupConfig;
pub use crate::sources::system::{
    Collectors, CpuConfig, FilesystemConfig, NetworkConfig, SystemConfig,
};

/// The port vitals listens on when nothing else is configured. It is not
/// used by any exporter on Prometheus' default port allocation list.
pub const DEFAULT_PORT: u16 = 9797;

/// Why a configuration was rejected. Every variant names the file (or the
/// built-in defaults) and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the file: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

/// The whole configuration of `vitals run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub web: WebConfig,
    pub system: SystemConfig,
    /// Named groups of processes, each exported with an `up` gauge.
    pub process_groups: Vec<ProcessGroupConfig>,
    pub store: StoreConfig,
    /// Further sources (MQTT brokers, HTTP APIs, SQL queries, logs, webhooks),
    /// each a `[[sources]]` table with a `type` and a unique `name`.
    pub sources: Vec<SourceConfig>,
    /// `[detect]`: anomaly detection on every series.
    pub detect: crate::detect::DetectConfig,
    /// `[[pipeline]]`: per-selector filters and unit conversion.
    pub pipeline: Vec<crate::pipeline::filters::PipelineRule>,
    /// The built-in live dashboard at `/`.
    pub dashboard: DashboardConfig,
    /// `[[remote_write]]`: Prometheus remote-write receivers fed from a
    /// durable on-disk queue (read at start; a reload does not change them).
    pub remote_write: Vec<crate::remote_write::RemoteWriteConfig>,
    /// `[history]`: the on-disk history store (on by default).
    pub history: crate::history::HistoryConfig,
    /// What each of `sources` was built into when the file was checked
    /// (same order), so the supervisor starts them without compiling again.
    #[serde(skip)]
    built: BuiltSources,
}

/// The built forms of a configuration's `[[sources]]`.
#[derive(Clone, Default)]
struct BuiltSources(Vec<Arc<dyn Ready>>);

impl std::fmt::Debug for BuiltSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} built sources", self.0.len())
    }
}

/// `[dashboard]`: the live page at `/` and its WebSocket stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Serve the dashboard at `/` (otherwise a plain landing page) and
    /// keep the per-series history ring.
    pub enabled: bool,
    /// How much recent history each series keeps in memory.
    #[serde(with = "humantime_serde")]
    pub history: Duration,
    /// One history point per this interval (whole seconds).
    #[serde(with = "humantime_serde")]
    pub resolution: Duration,
    /// Updates are pushed as they happen, at most once per this interval
    /// per client (changes in between are batched).
    #[serde(with = "humantime_serde")]
    pub update_interval: Duration,
    /// Connected dashboards allowed at once; more are refused with 503.
    pub max_clients: usize,
    /// A client that does not take a message within this is disconnected.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Labels that make a series a sensor (grouped by these on the Sensors
    /// view); other non-system series go to the Business view.
    pub group_labels: Vec<String>,
    /// Anomaly score from which a point is drawn as anomalous.
    pub score_threshold: f64,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: true,
            history: Duration::from_secs(15 * 60),
            resolution: Duration::from_secs(1),
            update_interval: Duration::from_millis(250),
            max_clients: 64,
            send_timeout: Duration::from_secs(5),
            group_labels: ["line", "device", "machine", "sensor"]
                .map(String::from)
                .to_vec(),
            score_threshold: 0.8,
        }
    }
}

impl DashboardConfig {
    /// Points kept per series.
    pub fn history_points(&self) -> usize {
        (self.history.as_secs() / self.resolution.as_secs().max(1)) as usize
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            web: WebConfig::default(),
            system: SystemConfig::default(),
            process_groups: crate::sources::process::default_process_groups(),
            store: StoreConfig::default(),
            sources: Vec::new(),
            detect: crate::detect::DetectConfig::default(),
            pipeline: Vec::new(),
            dashboard: DashboardConfig::default(),
            remote_write: Vec::new(),
            history: crate::history::HistoryConfig::default(),
            built: BuiltSources::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Address the HTTP server binds (`/metrics`, `/healthz`, `/readyz`, `/`).
    pub listen_address: SocketAddr,
    /// At most this many `/metrics` requests are served at once; more wait.
    pub max_requests: usize,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Web configuration file (TLS, basic auth, headers) in the format
    /// node_exporter and Prometheus take; overridden by --web.config.file.
    pub config_file: Option<std::path::PathBuf>,
    /// Gzip `/metrics` when the scraper accepts it (Prometheus always does).
    pub compression: bool,
    /// Answer OpenMetrics 1.0 when the scraper's Accept header prefers it;
    /// false: always the text format 0.0.4.
    pub openmetrics: bool,
    /// Further addresses served like `listen_address` (a repeated
    /// `--web.listen-address` sets them).
    pub extra_listen_addresses: Vec<SocketAddr>,
    /// Path of the metrics endpoint.
    pub telemetry_path: String,
    /// Leave the exporter's own `process_*` metrics and scrape-duration
    /// histogram out of the metrics endpoint (node_exporter's flag).
    pub disable_exporter_metrics: bool,
    /// Allow `POST`/`PUT /-/reload` (Prometheus' `--web.enable-lifecycle`);
    /// off, they answer 403. SIGHUP reloads either way.
    pub enable_lifecycle: bool,
    /// Connection limits and timeouts: see [`crate::web::Limits`], whose
    /// fields these are (kept flat so they read `web.max_connections`).
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_timeout: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        let l = crate::web::Limits::default();
        WebConfig {
            listen_address: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            max_requests: 40,
            shutdown_timeout: Duration::from_secs(10),
            config_file: None,
            compression: true,
            openmetrics: true,
            extra_listen_addresses: Vec::new(),
            telemetry_path: "/metrics".to_string(),
            disable_exporter_metrics: false,
            enable_lifecycle: false,
            max_connections: l.max_connections,
            header_read_timeout: l.header_read_timeout,
            body_read_timeout: l.body_read_timeout,
            idle_timeout: l.idle_timeout,
            tls_handshake_timeout: l.tls_handshake_timeout,
            http2_max_concurrent_streams: l.http2_max_concurrent_streams,
            http2_keep_alive_interval: l.http2_keep_alive_interval,
            http2_keep_alive_timeout: l.http2_keep_alive_timeout,
        }
    }
}

impl WebConfig {
    /// The connection limits and timeouts of the HTTP server.
    pub fn limits(&self) -> crate::web::Limits {
        crate::web::Limits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            idle_timeout: self.idle_timeout,
            tls_handshake_timeout: self.tls_handshake_timeout,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            http2_keep_alive_interval: self.http2_keep_alive_interval,
            http2_keep_alive_timeout: self.http2_keep_alive_timeout,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Batches that may wait between the sources and the store; a source
    /// whose batch does not fit waits (system) or counts a drop (push sources).
    pub ingest_queue: usize,
    /// Longest label value of a new series, in bytes; a sample over it is
    /// dropped (`reason="label_value_too_long"`).
    pub max_label_value_bytes: usize,
    /// Most bytes of a new series' whole label set as written on `/metrics`
    /// (`reason="labels_too_large"`). With the series budgets, this bounds
    /// the memory a source can take.
    pub max_label_bytes: usize,
    /// Longest metric name (`reason="metric_name_too_long"`).
    pub max_metric_name_bytes: usize,
    /// `[store.source_limits.<source name>]`: the three bounds above for
    /// one source (each key optional, the global value otherwise).
    pub source_limits: std::collections::BTreeMap<String, SourceLimits>,
}

/// Per-source replacements of the `[store]` size bounds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceLimits {
    pub max_label_value_bytes: Option<usize>,
    pub max_label_bytes: Option<usize>,
    pub max_metric_name_bytes: Option<usize>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let limits = crate::model::LabelLimits::default();
        StoreConfig {
            ingest_queue: 1024,
            max_label_value_bytes: limits.max_label_value_bytes,
            max_label_bytes: limits.max_label_bytes,
            max_metric_name_bytes: limits.max_metric_name_bytes,
            source_limits: Default::default(),
        }
    }
}

impl StoreConfig {
    /// The bounds of sources without their own.
    pub fn label_limits(&self) -> crate::model::LabelLimits {
        crate::model::LabelLimits {
            max_label_value_bytes: self.max_label_value_bytes,
            max_label_bytes: self.max_label_bytes,
            max_metric_name_bytes: self.max_metric_name_bytes,
        }
    }

    /// The bounds of each source that sets its own.
    pub fn source_label_limits(
        &self,
    ) -> impl Iterator<Item = (&str, crate::model::LabelLimits)> + '_ {
        let d = self.label_limits();
        self.source_limits.iter().map(move |(name, l)| {
            (
                name.as_str(),
                crate::model::LabelLimits {
                    max_label_value_bytes: l
                        .max_label_value_bytes
                        .unwrap_or(d.max_label_value_bytes),
                    max_label_bytes: l.max_label_bytes.unwrap_or(d.max_label_bytes),
                    max_metric_name_bytes: l
                        .max_metric_name_bytes
                        .unwrap_or(d.max_metric_name_bytes),
                },
            )
        })
    }
}

/// Where a configuration comes from, for error messages.
fn origin(path: Option<&Path>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "built-in defaults with VITALS_* environment overrides".to_string(),
    }
}

/// Read a configuration file (TOML, or YAML by extension `.yml`/`.yaml`),
/// apply `VITALS_` environment overrides and validate it.
/// Without a path, the built-in defaults plus environment overrides are used.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let file = origin(path);
    let Some(path) = path else {
        return load_text(None, file);
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("yml" | "yaml") => ConfigFormat::Yaml,
        _ => ConfigFormat::Toml,
    };
    load_text(Some((&text, format)), file)
}

/// Syntax of a configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    Toml,
    Yaml,
}

/// Parse and validate a configuration text as [`load`] does a file (with
/// `VITALS_` environment overrides); errors name `name` as the file.
pub fn load_str(text: &str, format: ConfigFormat, name: &str) -> Result<Config, ConfigError> {
    load_text(Some((text, format)), name.to_string())
}

fn load_text(text: Option<(&str, ConfigFormat)>, file: String) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some((text, format)) = text {
        let format = match format {
            ConfigFormat::Yaml => config::FileFormat::Yaml,
            ConfigFormat::Toml => config::FileFormat::Toml,
        };
        builder = builder.add_source(config::File::from_str(text, format));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("VITALS")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true),
    );
    let raw = builder.build().map_err(|e| ConfigError::Parse {
        file: file.clone(),
        reason: one_line(&e.to_string()),
    })?;
    let mut cfg: Config = serde_path_to_error::deserialize(raw).map_err(|e| {
        let mut key = e.path().to_string();
        let mut message = e.into_inner().to_string();
        // An error inside a `[[sources]]` table carries its inner key.
        if let Some((inner, rest)) = message.clone().split_once(SUBKEY) {
            if !inner.is_empty() && inner != "." {
                key = format!("{key}.{inner}");
            }
            message = rest.to_string();
        }
        ConfigError::Invalid {
            file: file.clone(),
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            reason: strip_key_suffix(&one_line(&message)),
        }
    })?;
    cfg.validate(&file)?;
    Ok(cfg)
}

/// The `config` crate appends " for key `x`" to its messages; the key is
/// already reported, so drop it.
fn strip_key_suffix(s: &str) -> String {
    match s.rfind(" for key `") {
        Some(i) if s.ends_with('`') => s[..i].to_string(),
        _ => s.to_string(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Paths the exporter serves itself, which the metrics path cannot take.
const RESERVED_PATHS: [&str; 7] = [
    "/",
    "/healthz",
    "/readyz",
    "/-/healthy",
    "/-/ready",
    "/-/reload",
    "/api",
];

impl Config {
    /// Check the `web` settings the command line can change (called again
    /// after the flags are applied).
    pub fn validate_web(&self) -> Result<(), ConfigError> {
        self.validate_web_in("command line")
    }

    fn validate_web_in(&self, file: &str) -> Result<(), ConfigError> {
        let p = &self.web.telemetry_path;
        let bad = !p.starts_with('/')
            || p.len() < 2
            || p.contains(['?', '#', ' ', '*', '{', '}'])
            || RESERVED_PATHS.contains(&p.as_str())
            || p.starts_with("/api/")
            || p.starts_with("/ingest/");
        if bad {
            return Err(ConfigError::Invalid {
                file: file.to_string(),
                key: "web.telemetry_path".into(),
                reason: format!(
                    "{p:?} must be a path such as /metrics, and not one vitals serves itself (/, /healthz, /readyz, /-/..., /api/..., /ingest/...)"
                ),
            });
        }
        Ok(())
    }

    /// The system source: `[system]` with `[[process_groups]]`, as the
    /// variant of [`SourceConfig`] it runs as.
    pub fn system_source(&self) -> SourceConfig {
        SourceConfig::System(crate::sources::system::SystemSource {
            system: self.system.clone(),
            process_groups: self.process_groups.clone(),
        })
    }

    /// Every source to run, built: the system source first (when
    /// enabled), then `[[sources]]` in order. The `[[sources]]` were built
    /// when the file was checked; the system source is built here, as the
    /// command line may change `[system]` after the file was read. A
    /// configuration that was not checked (made in code) is built here
    /// too; a source that fails to build is left out, with an error logged.
    pub fn ready_sources(&self) -> Vec<(SourceConfig, Arc<dyn Ready>)> {
        let mut out = Vec::new();
        let system = self.system.enabled.then(|| self.system_source());
        let built = self.built.0.len() == self.sources.len();
        for (i, source) in system
            .into_iter()
            .chain(self.sources.iter().cloned())
            .enumerate()
        {
            let ready = match &source {
                SourceConfig::System(_) => source.prepare(),
                _ if built => Ok(self.built.0[i - usize::from(self.system.enabled)].clone()),
                _ => source.prepare(),
            };
            match ready {
                Ok(ready) => out.push((source, ready)),
                Err(error) => {
                    tracing::error!(source = %source.name(), %error, "Source not started: its configuration is invalid.");
                }
            }
        }
        out
    }

    /// Checks that need more than one key or a range; builds the sources.
    fn validate(&mut self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let keyed = |e: KeyError| invalid(&e.key, &e.reason);
        self.system_source().validate().map_err(keyed)?;
        if self.web.max_requests == 0 {
            return Err(invalid("web.max_requests", "must be at least 1"));
        }
        self.validate_web_in(file)?;
        if let Err((key, reason)) = self.web.limits().check() {
            return Err(invalid(&format!("web.{key}"), reason));
        }
        if self.store.ingest_queue == 0 {
            return Err(invalid("store.ingest_queue", "must be at least 1"));
        }
        let check_limits = |prefix: &str, l: crate::model::LabelLimits| {
            if l.max_label_value_bytes == 0 {
                return Err(invalid(
                    &format!("{prefix}max_label_value_bytes"),
                    "must be at least 1",
                ));
            }
            if l.max_label_bytes < l.max_label_value_bytes {
                return Err(invalid(
                    &format!("{prefix}max_label_bytes"),
                    "must be at least max_label_value_bytes",
                ));
            }
            if l.max_metric_name_bytes == 0 {
                return Err(invalid(
                    &format!("{prefix}max_metric_name_bytes"),
                    "must be at least 1",
                ));
            }
            Ok(())
        };
        check_limits("store.", self.store.label_limits())?;
        for (name, limits) in self.store.source_label_limits() {
            let prefix = format!("store.source_limits.{name}.");
            if !self.sources.iter().any(|s| s.name() == name) {
                return Err(invalid(
                    prefix.trim_end_matches('.'),
                    &format!("no source is named {name:?}"),
                ));
            }
            check_limits(&prefix, limits)?;
        }
        let d = &self.dashboard;
        if d.resolution.as_secs() < 1 || d.resolution.subsec_nanos() != 0 {
            return Err(invalid(
                "dashboard.resolution",
                "must be a whole number of seconds, at least 1s",
            ));
        }
        if d.history < d.resolution || d.history_points() > 86_400 {
            return Err(invalid(
                "dashboard.history",
                "must hold between 1 and 86400 points of dashboard.resolution",
            ));
        }
        if d.update_interval < Duration::from_millis(50) {
            return Err(invalid(
                "dashboard.update_interval",
                "must be at least 50ms",
            ));
        }
        if d.max_clients == 0 {
            return Err(invalid("dashboard.max_clients", "must be at least 1"));
        }
        if d.send_timeout < Duration::from_millis(100) {
            return Err(invalid("dashboard.send_timeout", "must be at least 100ms"));
        }
        if !(d.score_threshold > 0.0 && d.score_threshold <= 1.0) {
            return Err(invalid("dashboard.score_threshold", "must be in (0, 1]"));
        }
        if let Err((key, reason)) = self.detect.validate() {
            return Err(invalid(&key, &reason));
        }
        for (i, rule) in self.pipeline.iter().enumerate() {
            rule.validate()
                .map_err(|e| keyed(e.under(&format!("pipeline[{i}]"))))?;
        }
        if let Err((key, reason)) = crate::remote_write::config::validate_all(&self.remote_write) {
            return Err(invalid(&key, &reason));
        }
        if let Err((key, reason)) = self.history.validate() {
            return Err(invalid(&key, &reason));
        }
        let mut source_names = std::collections::HashSet::from(["system"]);
        let mut routes = std::collections::HashSet::new();
        let mut built = Vec::with_capacity(self.sources.len());
        for (i, s) in self.sources.iter().enumerate() {
            built.push(
                s.prepare()
                    .map_err(|e| keyed(e.under(&format!("sources[{i}]"))))?,
            );
            if let SourceConfig::Webhook(w) = s
                && !routes.insert(w.route())
            {
                return Err(invalid(
                    &format!("sources[{i}].path"),
                    &format!("route {:?} is used by two webhook sources", w.route()),
                ));
            }
            if !source_names.insert(s.name()) {
                return Err(invalid(
                    &format!("sources[{i}].name"),
                    &format!(
                        "source {:?} is defined twice (or uses the reserved name \"system\")",
                        s.name()
                    ),
                ));
            }
        }
        self.built = BuiltSources(built);
        Ok(())
    }
}

#[cfg(test)]
mod collector_tests {
    use super::*;

    #[test]
    fn collectors_keep_the_families_of_the_collectors_left_on() {
        let mut c = Collectors::default();
        assert!(c.keeps("vitals_cpu_usage_ratio") && c.keeps("vitals_load1"));
        assert!(c.set("meminfo", false) && !c.set("nonsense", false));
        assert!(!c.keeps("vitals_memory_total_bytes") && !c.keeps("vitals_swap_used_bytes"));
        assert!(c.keeps("vitals_cpus") && c.keeps("vitals_source_up") && c.keeps("up"));
        let mut c = Collectors::none();
        c.set("processgroups", true);
        assert!(c.keeps("vitals_process_group_up"));
        assert!(!c.keeps("vitals_network_receive_bytes_total"));
        assert!(
            !c.keeps("vitals_filesystem_size_bytes") && !c.keeps("vitals_disk_read_bytes_total")
        );
        assert!(!c.keeps("vitals_temperature_celsius") && !c.keeps("vitals_uptime_seconds"));
        // Not a system family: never dropped.
        assert!(c.keeps("vitals_anomaly_score"));
    }

    #[test]
    fn telemetry_path_must_be_a_free_path() {
        let mut cfg = Config::default();
        for ok in ["/metrics", "/node/metrics", "/m"] {
            cfg.web.telemetry_path = ok.into();
            assert!(cfg.validate_web().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "metrics",
            "/",
            "/healthz",
            "/-/reload",
            "/api/series",
            "/ingest/x",
            "/a b",
        ] {
            cfg.web.telemetry_path = bad.into();
            assert!(cfg.validate_web().is_err(), "{bad:?}");
        }
    }
}
