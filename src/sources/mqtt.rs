//! The MQTT source: subscribe to topic filters on one broker and map every
//! message (topic segments + payload) to samples.
//!
//! Exactly one task polls the rumqttc event loop. On a connection error it
//! logs, marks the source down and sleeps with exponential backoff before
//! polling again (rumqttc alone would reconnect in a tight loop). Samples are
//! collected in one batch per burst of messages read from the socket, so the
//! ingest channel sees one send per burst, not one per message.
//!
//! Per subscription the source keeps bounded state: the label sets it has
//! produced (for the cardinality budget) and, when an expected reporting
//! interval is configured, one entry per device for the silent-sensor
//! gauges `<prefix>_device_up` and `<prefix>_device_last_seen_timestamp_seconds`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use rumqttc::v5;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer};

use super::SourceContext;
use crate::mapping::{Mapping, MappingConfig, valid_label_name, valid_metric_name};
use crate::model::{Batch, BatchMode, FamilyMeta, Labels, MetricKind, Sample, now_ms};
use crate::telemetry::Telemetry;

/// Most samples held before a batch is sent even in the middle of a burst.
const MAX_BATCH: usize = 4096;
/// Messages per second above which reads are coalesced (`read_coalesce`).
const COALESCE_ABOVE: u64 = 5_000;
/// Longest a sample waits in an unsent batch.
const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// Period of the silent-device and expiry bookkeeping.
const TICK: Duration = Duration::from_secs(1);

/// `[[sources]] type = "mqtt"`: one broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub name: String,
    #[serde(default = "default_host")]
    pub host: String,
    /// Defaults to 1883, or 8883 with `tls`.
    #[serde(default)]
    pub port: Option<u16>,
    /// Defaults to `vitals-<name>`; must be unique per broker (replicas of a
    /// shared subscription need distinct ids).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// The password itself (prefer `password_env` or `password_file`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File whose content (trailing newline removed) is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default, deserialize_with = "de_protocol")]
    pub protocol: Protocol,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// false keeps a persistent session: the broker queues QoS 1 messages
    /// while vitals is away (MQTT 5: for `session_expiry`).
    #[serde(default = "default_true")]
    pub clean_session: bool,
    /// MQTT 5 persistent sessions: how long the broker keeps the session.
    #[serde(default = "default_session_expiry", with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Default QoS of the subscriptions (0 or 1).
    #[serde(default)]
    pub qos: u8,
    /// Largest MQTT packet accepted from the broker. Larger payloads are
    /// refused by the mapping (`max_payload_bytes`) before this is reached.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// First delay after a connection error; doubles up to `reconnect_max`.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Value series not updated for this long are removed instead of
    /// exporting frozen values (`0s` keeps them forever).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub series_ttl: Duration,
    /// Under load, wait this long after a burst before reading again so the
    /// next read returns many messages at once (fewer wake-ups and system
    /// calls per message). `0s` disables it.
    #[serde(default = "default_coalesce", with = "humantime_serde")]
    pub read_coalesce: Duration,
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// A password that never shows up in logs or `Debug` output (one secret
/// type for every source, so reload compares them all by value).
pub use super::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM CA bundle for the broker certificate; the system roots without it.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key for mutual TLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    V311,
    V5,
}

/// One topic filter and how its messages become samples.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// The `subscription` label of self-metrics; defaults to `topic`.
    #[serde(default)]
    pub name: Option<String>,
    /// Topic filter with optional label captures: `factory/+line/+device/telemetry`
    /// subscribes to `factory/+/+/telemetry` and labels samples with `line`
    /// and `device`. `$share/<group>/...` makes it a shared subscription.
    pub topic: String,
    /// Filter sent to the broker when it should be wider than `topic`
    /// (messages it brings that `topic` does not match count as
    /// `unmatched_topic`).
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub qos: Option<u8>,
    /// Most value series this subscription may create; samples of further
    /// label sets are dropped and counted (`reason="cardinality"`).
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// How often each device is expected to report; enables the
    /// `<device_prefix>_device_up` and `..._device_last_seen_timestamp_seconds` gauges.
    #[serde(default, with = "humantime_serde")]
    pub expected_interval: Option<Duration>,
    /// A device is down after `expected_interval × down_after` of silence.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// Prefix of the device gauges.
    #[serde(default = "default_device_prefix")]
    pub device_prefix: String,
    /// Topic labels that identify a device (default: every captured label).
    #[serde(default)]
    pub device_labels: Option<Vec<String>>,
    pub mapping: MappingConfig,
}

fn default_host() -> String {
    "localhost".into()
}
fn default_true() -> bool {
    true
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_packet() -> usize {
    16 * 1024 * 1024
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
fn default_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_coalesce() -> Duration {
    Duration::from_millis(1)
}
fn default_max_series() -> usize {
    100_000
}
fn default_down_after() -> u32 {
    3
}
fn default_device_prefix() -> String {
    "mqtt".into()
}

fn de_protocol<'de, D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        I(i64),
        F(f64),
    }
    let text = match Raw::deserialize(d)? {
        Raw::S(s) => s,
        Raw::I(i) => i.to_string(),
        Raw::F(f) => f.to_string(),
    };
    match text.trim().trim_start_matches(['v', 'V']) {
        "3.1.1" | "3" | "4" | "311" => Ok(Protocol::V311),
        "5" | "5.0" => Ok(Protocol::V5),
        other => Err(serde::de::Error::custom(format!(
            "unknown MQTT protocol {other:?}; expected \"3.1.1\" or \"5\""
        ))),
    }
}

impl MqttConfig {
    /// Checks beyond the types; the error is (key relative to the source, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, r: String| Err((k.to_string(), r));
        if self.host.trim().is_empty() {
            return bad("host", "must not be empty".into());
        }
        if self.qos > 1 {
            return bad("qos", "only QoS 0 and 1 are supported".into());
        }
        if [
            self.password.is_some(),
            self.password_env.is_some(),
            self.password_file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count()
            > 1
        {
            return bad(
                "password",
                "set only one of password, password_env, password_file".into(),
            );
        }
        if let Some(t) = &self.tls
            && t.cert_file.is_some() != t.key_file.is_some()
        {
            return bad("tls", "cert_file and key_file must be set together".into());
        }
        if self.keep_alive != Duration::ZERO && self.keep_alive < Duration::from_secs(1) {
            return bad("keep_alive", "must be 0s or at least 1s".into());
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return bad(
                "reconnect_min",
                "must be above 0 and at most reconnect_max".into(),
            );
        }
        if self.max_packet_bytes < 1024 {
            return bad("max_packet_bytes", "must be at least 1024".into());
        }
        if self.read_coalesce > Duration::from_millis(100) {
            return bad("read_coalesce", "must be at most 100ms".into());
        }
        if self.subscriptions.is_empty() {
            return bad("subscriptions", "needs at least one subscription".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.subscriptions.iter().enumerate() {
            let key = |k: &str| format!("subscriptions[{i}].{k}");
            let topic = TopicPattern::parse(&s.topic).map_err(|r| (key("topic"), r))?;
            if let Some(f) = &s.filter {
                TopicPattern::parse(f).map_err(|r| (key("filter"), r))?;
            }
            if s.qos.is_some_and(|q| q > 1) {
                return Err((key("qos"), "only QoS 0 and 1 are supported".into()));
            }
            if s.max_series == 0 {
                return Err((key("max_series"), "must be at least 1".into()));
            }
            let mapping = Mapping::new(&s.mapping).map_err(|r| (key("mapping"), r))?;
            if mapping.metric_count() > 64 {
                return Err((
                    key("mapping.metrics"),
                    "at most 64 metrics per subscription".into(),
                ));
            }
            let name = s.name.clone().unwrap_or_else(|| s.topic.clone());
            if !names.insert(name.clone()) {
                return Err((
                    key("name"),
                    format!("subscription {name:?} is defined twice"),
                ));
            }
            for l in mapping.label_names() {
                if topic.labels.iter().any(|t| t == l) {
                    return Err((
                        key("mapping.labels"),
                        format!("label {l:?} is also captured from the topic"),
                    ));
                }
            }
            if let Some(iv) = s.expected_interval {
                if iv < Duration::from_millis(100) {
                    return Err((key("expected_interval"), "must be at least 100ms".into()));
                }
                if s.down_after == 0 {
                    return Err((key("down_after"), "must be at least 1".into()));
                }
                if !valid_metric_name(&format!("{}_device_up", s.device_prefix)) {
                    return Err((
                        key("device_prefix"),
                        "not a valid metric name prefix".into(),
                    ));
                }
                if !self.series_ttl.is_zero() && self.series_ttl <= iv * s.down_after {
                    return Err((
                        "series_ttl".into(),
                        format!(
                            "must be longer than subscriptions[{i}] expected_interval × down_after"
                        ),
                    ));
                }
            }
            if let Some(dl) = &s.device_labels {
                for l in dl {
                    if !topic.labels.contains(l) {
                        return Err((
                            key("device_labels"),
                            format!("{l:?} is not captured by the topic"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    fn password(&self) -> Result<Option<String>, String> {
        if let Some(p) = &self.password {
            return Ok(Some(p.expose().to_string()));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| format!("environment variable {var} is not set"));
        }
        if let Some(path) = &self.password_file {
            return std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|e| format!("cannot read password file {}: {e}", path.display()));
        }
        Ok(None)
    }
}

/// One segment of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Box<str>),
    /// `+`, capturing into label slot `Some(i)`.
    Plus(Option<usize>),
    /// `#` (last only), capturing the rest into label slot `Some(i)`.
    Hash(Option<usize>),
}

/// A parsed topic filter with label captures.
#[derive(Debug, Clone)]
struct TopicPattern {
    segs: Vec<Seg>,
    /// Captured label names, by slot.
    labels: Vec<String>,
    /// What is sent to the broker (captures stripped, `$share/` kept).
    filter: String,
}

impl TopicPattern {
    fn parse(text: &str) -> Result<TopicPattern, String> {
        let (share, rest) = match text.strip_prefix("$share/") {
            Some(r) => match r.split_once('/') {
                Some((group, rest)) if !group.is_empty() && !group.contains(['+', '#']) => {
                    (Some(group), rest)
                }
                _ => return Err(format!("{text:?}: expected $share/<group>/<filter>")),
            },
            None => (None, text),
        };
        if rest.is_empty() {
            return Err("topic filter must not be empty".into());
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        let mut labels = Vec::new();
        let mut filter = String::new();
        if let Some(g) = share {
            filter.push_str("$share/");
            filter.push_str(g);
            filter.push('/');
        }
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                filter.push('/');
            }
            let capture = |name: &str, labels: &mut Vec<String>| -> Result<Option<usize>, String> {
                if name.is_empty() {
                    return Ok(None);
                }
                if !valid_label_name(name) {
                    return Err(format!("{text:?}: {name:?} is not a valid label name"));
                }
                if labels.iter().any(|l| l == name) {
                    return Err(format!("{text:?}: label {name:?} is captured twice"));
                }
                labels.push(name.to_string());
                Ok(Some(labels.len() - 1))
            };
            if let Some(name) = p.strip_prefix('+') {
                segs.push(Seg::Plus(capture(name, &mut labels)?));
                filter.push('+');
            } else if let Some(name) = p.strip_prefix('#') {
                if i + 1 != parts.len() {
                    return Err(format!("{text:?}: `#` must be the last level"));
                }
                segs.push(Seg::Hash(capture(name, &mut labels)?));
                filter.push('#');
            } else if p.contains(['+', '#']) {
                return Err(format!(
                    "{text:?}: `+` and `#` must start a level (`+name` captures a label)"
                ));
            } else {
                segs.push(Seg::Lit((*p).into()));
                filter.push_str(p);
            }
        }
        Ok(TopicPattern {
            segs,
            labels,
            filter,
        })
    }

    /// Match `topic`; on success call `capture(slot, value)` for captures.
    fn matches(&self, topic: &str, mut capture: impl FnMut(usize, &str)) -> bool {
        let mut rest = Some(topic);
        for seg in &self.segs {
            if let Seg::Hash(slot) = seg {
                // `#` also matches the parent level (`a/#` matches `a`).
                if let (Some(slot), Some(r)) = (slot, rest) {
                    capture(*slot, r);
                }
                return true;
            }
            let Some(r) = rest else { return false };
            let (level, next) = match r.find('/') {
                Some(i) => (&r[..i], Some(&r[i + 1..])),
                None => (r, None),
            };
            match seg {
                Seg::Lit(l) if l.as_ref() == level => {}
                Seg::Lit(_) => return false,
                Seg::Plus(slot) => {
                    if let Some(slot) = slot {
                        capture(*slot, level);
                    }
                }
                // Handled before splitting the level.
                Seg::Hash(_) => return true,
            }
            rest = next;
        }
        rest.is_none()
    }
}

/// Match `topic` against a subscription's `topic` pattern as the source
/// does: `Ok(Some(labels))` with the captured labels when it matches,
/// `Ok(None)` when not, `Err` when the pattern is invalid. Used by the fuzz
/// targets and the corpus replay test.
pub fn match_topic(pattern: &str, topic: &str) -> Result<Option<Vec<(String, String)>>, String> {
    let p = TopicPattern::parse(pattern)?;
    let mut values = vec![String::new(); p.labels.len()];
    if !p.matches(topic, |slot, v| values[slot] = v.to_string()) {
        return Ok(None);
    }
    Ok(Some(p.labels.iter().cloned().zip(values).collect()))
}

/// Silent-sensor state of one device.
struct Device {
    labels: Labels,
    last_seen_ms: i64,
    up: bool,
    /// A message arrived since the last tick.
    dirty: bool,
}

/// Label set bookkeeping for the cardinality budget and expiry.
struct LabelSet {
    last_seen_ms: i64,
    /// Which metrics (by index, up to 64) have a series for this label set.
    mask: u64,
}

/// Per-subscription self-metrics, resolved once.
struct SubMetrics {
    messages: IntCounter,
    samples: IntCounter,
    dropped_cardinality: IntCounter,
    lag: Gauge,
    series: IntGauge,
    devices: IntGauge,
}

/// A compiled subscription and its bounded state.
struct Sub {
    name: String,
    pattern: TopicPattern,
    /// Routing filter when `filter` is wider than `topic`.
    route: Option<TopicPattern>,
    qos: rumqttc::QoS,
    mapping: Mapping,
    families: Vec<Arc<FamilyMeta>>,
    max_series: usize,
    /// Topic labels of the current message (names fixed, values reused).
    base: Vec<(String, String)>,
    sets: FxHashMap<Labels, LabelSet>,
    series: usize,
    silence: Option<Silence>,
    m: SubMetrics,
    /// Receive time of the oldest message of this subscription in the batch.
    oldest: Option<Instant>,
    pending_messages: u64,
    pending_samples: u64,
}

struct Silence {
    down_after_ms: i64,
    /// Slots of `base` that identify a device.
    key_slots: Vec<usize>,
    up: Arc<FamilyMeta>,
    last_seen: Arc<FamilyMeta>,
    devices: FxHashMap<Box<str>, Device>,
    key: String,
}

/// Self-metrics of one MQTT source (constant label `source`), registered
/// when the source starts and unregistered when it stops (dropped), so a
/// source restarted by a reload registers cleanly and a removed one leaves
/// nothing behind.
struct SourceMetrics {
    registry: prometheus::Registry,
    connected: IntGauge,
    subscribed: IntGauge,
    reconnects: IntCounter,
    messages: IntCounterVec,
    samples: IntCounterVec,
    parse_errors: IntCounterVec,
    dropped: IntCounterVec,
    lag: GaugeVec,
    series: IntGaugeVec,
    devices: IntGaugeVec,
}

impl SourceMetrics {
    fn new(source: &str, telemetry: &Telemetry) -> SourceMetrics {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("source", source);
        let sub = &["subscription"];
        let reason = &["subscription", "reason"];
        let m = SourceMetrics {
            registry: telemetry.registry().clone(),
            connected: IntGauge::with_opts(opts(
                "vitals_mqtt_connected",
                "Whether the MQTT source is connected to its broker (1) or not (0).",
            ))
            .expect("valid metric"),
            subscribed: IntGauge::with_opts(opts(
                "vitals_mqtt_subscribed",
                "Whether the broker acknowledged every subscription of the current connection (1) or not (0).",
            ))
            .expect("valid metric"),
            reconnects: IntCounter::with_opts(opts(
                "vitals_mqtt_reconnects_total",
                "Connections to the broker after the first one.",
            ))
            .expect("valid metric"),
            messages: IntCounterVec::new(
                opts(
                    "vitals_mqtt_messages_total",
                    "MQTT messages received, by subscription.",
                ),
                sub,
            )
            .expect("valid metric"),
            samples: IntCounterVec::new(
                opts(
                    "vitals_mqtt_samples_total",
                    "Samples produced from MQTT messages, by subscription.",
                ),
                sub,
            )
            .expect("valid metric"),
            parse_errors: IntCounterVec::new(
                opts(
                    "vitals_mqtt_parse_errors_total",
                    "MQTT messages that could not be mapped, by subscription and reason.",
                ),
                reason,
            )
            .expect("valid metric"),
            dropped: IntCounterVec::new(
                opts(
                    "vitals_mqtt_samples_dropped_total",
                    "Samples dropped by the MQTT source, by subscription and reason.",
                ),
                reason,
            )
            .expect("valid metric"),
            lag: GaugeVec::new(
                opts(
                    "vitals_mqtt_processing_lag_seconds",
                    "Age of the oldest message of the last batch handed to the pipeline.",
                ),
                sub,
            )
            .expect("valid metric"),
            series: IntGaugeVec::new(
                opts(
                    "vitals_mqtt_series",
                    "Value series currently tracked for a subscription (its budget is max_series).",
                ),
                sub,
            )
            .expect("valid metric"),
            devices: IntGaugeVec::new(
                opts(
                    "vitals_mqtt_devices",
                    "Devices currently tracked for silent-sensor detection.",
                ),
                sub,
            )
            .expect("valid metric"),
        };
        for c in m.collectors() {
            if let Err(error) = m.registry.register(c) {
                tracing::warn!(source, %error, "MQTT self-metric not registered.");
            }
        }
        m
    }

    fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 10] {
        [
            Box::new(self.connected.clone()),
            Box::new(self.subscribed.clone()),
            Box::new(self.reconnects.clone()),
            Box::new(self.messages.clone()),
            Box::new(self.samples.clone()),
            Box::new(self.parse_errors.clone()),
            Box::new(self.dropped.clone()),
            Box::new(self.lag.clone()),
            Box::new(self.series.clone()),
            Box::new(self.devices.clone()),
        ]
    }
}

impl Drop for SourceMetrics {
    fn drop(&mut self) {
        for c in self.collectors() {
            // Not registered (a failed registration) is fine here.
            let _ = self.registry.unregister(c);
        }
    }
}

/// Where a message went.
enum Route {
    Sub(usize),
    /// Matched the broker filter of this subscription but not its topic pattern.
    Unmatched(usize),
    None,
}

/// The mapping side of the source: everything but the connection.
struct Ingest {
    source: Arc<str>,
    subs: Vec<Sub>,
    ttl_ms: Option<i64>,
    batch: Vec<Sample>,
    telemetry: Arc<Telemetry>,
    metrics: SourceMetrics,
    /// Size bounds of a new label set (the source's, from the store), so
    /// the label sets and devices tracked here stay as bounded as the
    /// store's series.
    limits: crate::model::LabelLimits,
}

impl Ingest {
    fn new(cfg: &MqttConfig, telemetry: Arc<Telemetry>) -> Result<Ingest, String> {
        let metrics = SourceMetrics::new(&cfg.name, &telemetry);
        let mut subs = Vec::new();
        for s in &cfg.subscriptions {
            let pattern = TopicPattern::parse(&s.topic)?;
            let route = s.filter.as_deref().map(TopicPattern::parse).transpose()?;
            let mapping = Mapping::new(&s.mapping)?;
            let name = s.name.clone().unwrap_or_else(|| s.topic.clone());
            let silence = s.expected_interval.map(|iv| {
                let key_slots = match &s.device_labels {
                    Some(dl) => dl
                        .iter()
                        .filter_map(|l| pattern.labels.iter().position(|x| x == l))
                        .collect(),
                    None => (0..pattern.labels.len()).collect(),
                };
                Silence {
                    down_after_ms: (iv * s.down_after).as_millis() as i64,
                    key_slots,
                    up: FamilyMeta::new(
                        &format!("{}_device_up", s.device_prefix),
                        MetricKind::Gauge,
                        "Whether a device reported within its expected interval times down_after (1) or has gone silent (0).",
                    ),
                    last_seen: FamilyMeta::new(
                        &format!("{}_device_last_seen_timestamp_seconds", s.device_prefix),
                        MetricKind::Gauge,
                        "Unix time of the last message from a device.",
                    ),
                    devices: FxHashMap::default(),
                    key: String::new(),
                }
            });
            let l = [name.as_str()];
            let m = SubMetrics {
                messages: metrics.messages.with_label_values(&l),
                samples: metrics.samples.with_label_values(&l),
                dropped_cardinality: metrics.dropped.with_label_values(&[&name, "cardinality"]),
                lag: metrics.lag.with_label_values(&l),
                series: metrics.series.with_label_values(&l),
                devices: metrics.devices.with_label_values(&l),
            };
            subs.push(Sub {
                families: mapping.families().cloned().collect(),
                base: pattern
                    .labels
                    .iter()
                    .map(|l| (l.clone(), String::new()))
                    .collect(),
                name,
                route,
                qos: qos(s.qos.unwrap_or(cfg.qos)),
                mapping,
                max_series: s.max_series,
                sets: FxHashMap::default(),
                series: 0,
                silence,
                m,
                oldest: None,
                pending_messages: 0,
                pending_samples: 0,
                pattern,
            });
        }
        Ok(Ingest {
            source: cfg.name.as_str().into(),
            subs,
            ttl_ms: (!cfg.series_ttl.is_zero()).then_some(cfg.series_ttl.as_millis() as i64),
            batch: Vec::with_capacity(1024),
            telemetry,
            metrics,
            limits: crate::model::LabelLimits::default(),
        })
    }

    fn route(&mut self, topic: &str) -> Route {
        for (i, sub) in self.subs.iter_mut().enumerate() {
            let base = &mut sub.base;
            for (_, v) in base.iter_mut() {
                v.clear();
            }
            let routed = match &sub.route {
                Some(r) => r.matches(topic, |_, _| {}),
                None => true,
            };
            if !routed {
                continue;
            }
            if sub
                .pattern
                .matches(topic, |slot, value| base[slot].1.push_str(value))
            {
                return Route::Sub(i);
            }
            if sub.route.is_some() {
                return Route::Unmatched(i);
            }
        }
        Route::None
    }

    /// Map one message into the pending batch.
    fn on_message(&mut self, topic: &str, payload: &[u8], received: Instant, now: i64) {
        let i = match self.route(topic) {
            Route::Sub(i) => i,
            Route::Unmatched(i) => {
                let sub = &mut self.subs[i];
                sub.pending_messages += 1;
                self.metrics
                    .parse_errors
                    .with_label_values(&[&sub.name, "unmatched_topic"])
                    .inc();
                self.telemetry.source_error(
                    &self.source,
                    "unmatched_topic",
                    &format_args!("Topic {topic:?} does not match {:?}.", sub.pattern.filter),
                );
                return;
            }
            Route::None => {
                self.metrics
                    .parse_errors
                    .with_label_values(&["", "unmatched_topic"])
                    .inc();
                self.telemetry.source_error(
                    &self.source,
                    "unmatched_topic",
                    &format_args!("Topic {topic:?} matches no subscription."),
                );
                return;
            }
        };
        let sub = &mut self.subs[i];
        sub.pending_messages += 1;
        sub.oldest.get_or_insert(received);
        if let Some(s) = &mut sub.silence {
            s.key.clear();
            for (n, slot) in s.key_slots.iter().enumerate() {
                if n > 0 {
                    s.key.push('\u{1f}');
                }
                s.key.push_str(&sub.base[*slot].1);
            }
            let count = s.devices.len();
            match s.devices.get_mut(s.key.as_str()) {
                Some(d) => {
                    d.last_seen_ms = now;
                    d.dirty = true;
                }
                None if count < sub.max_series => {
                    let pairs: Vec<(&str, &str)> = s
                        .key_slots
                        .iter()
                        .map(|slot| (sub.base[*slot].0.as_str(), sub.base[*slot].1.as_str()))
                        .collect();
                    let labels = Labels::from_pairs(&pairs);
                    // A device over the label limits is not tracked; its
                    // samples (whose labels hold the device's) are dropped
                    // and counted by the same check below.
                    if self.limits.check_labels(&labels).is_ok() {
                        s.devices.insert(
                            s.key.as_str().into(),
                            Device {
                                labels,
                                last_seen_ms: now,
                                up: false,
                                dirty: true,
                            },
                        );
                    }
                }
                None => {
                    sub.m.dropped_cardinality.inc();
                    self.telemetry.sample_dropped(
                        &self.source,
                        "cardinality",
                        &format_args!("Subscription {:?} tracks max_series devices.", sub.name),
                    );
                }
            }
        }
        let start = self.batch.len();
        match sub.mapping.map(payload, &sub.base, now, &mut self.batch) {
            Ok(_) => {}
            Err(error) => {
                let reason = error.reason();
                self.metrics
                    .parse_errors
                    .with_label_values(&[&sub.name, reason])
                    .inc();
                if let Some(suppressed) = self.telemetry.should_log(&self.source, reason) {
                    tracing::warn!(
                        source = %self.source,
                        subscription = %sub.name,
                        topic,
                        reason,
                        %error,
                        suppressed,
                        "MQTT message could not be mapped."
                    );
                }
                self.telemetry
                    .source_errors
                    .with_label_values(&[&self.source, reason])
                    .inc();
                return;
            }
        }
        // Cardinality budget: new (label set, metric) pairs count as series.
        // Samples of one element share their label set: one lookup per group.
        let mut write = start;
        let mut dropped = 0u64;
        let end = self.batch.len();
        let mut read = start;
        while read < end {
            let mut group_end = read + 1;
            while group_end < end && self.batch[group_end].labels == self.batch[read].labels {
                group_end += 1;
            }
            let labels = &self.batch[read].labels;
            if !sub.sets.contains_key(labels)
                && let Err(exceeded) = self.limits.check_labels(labels)
            {
                let n = (group_end - read) as u64;
                let reason = exceeded.reason();
                self.telemetry
                    .samples_dropped
                    .with_label_values(&[&self.source, reason])
                    .inc_by(n);
                if let Some(suppressed) = self.telemetry.should_log(&self.source, reason) {
                    tracing::warn!(
                        source = %self.source,
                        subscription = %sub.name,
                        bytes = labels.as_str().len(),
                        suppressed,
                        "Label set over the source's label limits; samples dropped."
                    );
                }
                read = group_end;
                continue;
            }
            if !sub.sets.contains_key(labels) && sub.series < sub.max_series {
                sub.sets.insert(
                    labels.clone(),
                    LabelSet {
                        last_seen_ms: now,
                        mask: 0,
                    },
                );
            }
            let mut set = sub.sets.get_mut(labels);
            for k in read..group_end {
                let keep = match set.as_deref_mut() {
                    Some(set) => {
                        set.last_seen_ms = now;
                        let family = &self.batch[k].family;
                        let bit = sub
                            .families
                            .iter()
                            .position(|f| Arc::ptr_eq(f, family))
                            .map_or(0, |i| 1u64 << i);
                        if set.mask & bit != 0 {
                            true
                        } else if sub.series < sub.max_series {
                            set.mask |= bit;
                            sub.series += 1;
                            true
                        } else {
                            false
                        }
                    }
                    None => false,
                };
                if keep {
                    self.batch.swap(write, k);
                    write += 1;
                } else {
                    dropped += 1;
                }
            }
            read = group_end;
        }
        self.batch.truncate(write);
        sub.pending_samples += (write - start) as u64;
        if dropped > 0 {
            sub.m.dropped_cardinality.inc_by(dropped);
            self.telemetry
                .samples_dropped
                .with_label_values(&[&self.source, "cardinality"])
                .inc_by(dropped);
            if let Some(suppressed) = self.telemetry.should_log(&self.source, "cardinality") {
                tracing::warn!(
                    source = %self.source,
                    subscription = %sub.name,
                    max_series = sub.max_series,
                    suppressed,
                    "Cardinality budget reached; samples of new series dropped."
                );
            }
        }
    }

    /// Once a second: silent-device gauges and forgetting expired label sets.
    fn tick(&mut self, now: i64) {
        for sub in &mut self.subs {
            if let Some(ttl) = self.ttl_ms {
                let before = sub.sets.len();
                let mut removed = 0usize;
                sub.sets.retain(|_, set| {
                    let keep = now - set.last_seen_ms <= ttl;
                    if !keep {
                        removed += set.mask.count_ones() as usize;
                    }
                    keep
                });
                if sub.sets.len() != before {
                    sub.series = sub.series.saturating_sub(removed);
                }
            }
            sub.m.series.set(sub.series as i64);
            let Some(s) = &mut sub.silence else { continue };
            for d in s.devices.values_mut() {
                if d.dirty {
                    d.dirty = false;
                    d.up = true;
                    self.batch.push(Sample {
                        family: s.last_seen.clone(),
                        labels: d.labels.clone(),
                        value: d.last_seen_ms as f64 / 1000.0,
                        timestamp_ms: now,
                    });
                    self.batch.push(Sample {
                        family: s.up.clone(),
                        labels: d.labels.clone(),
                        value: 1.0,
                        timestamp_ms: now,
                    });
                } else if d.up && now - d.last_seen_ms > s.down_after_ms {
                    d.up = false;
                    self.batch.push(Sample {
                        family: s.up.clone(),
                        labels: d.labels.clone(),
                        value: 0.0,
                        timestamp_ms: now,
                    });
                }
            }
            if let Some(ttl) = self.ttl_ms {
                let forget = ttl + s.down_after_ms;
                s.devices.retain(|_, d| now - d.last_seen_ms <= forget);
            }
            sub.m.devices.set(s.devices.len() as i64);
        }
    }

    /// Take the pending batch (if any) and publish the per-subscription counters.
    fn take_batch(&mut self) -> Option<Batch> {
        let now = Instant::now();
        for sub in &mut self.subs {
            if sub.pending_messages > 0 {
                sub.m.messages.inc_by(sub.pending_messages);
                sub.pending_messages = 0;
            }
            if sub.pending_samples > 0 {
                sub.m.samples.inc_by(sub.pending_samples);
                sub.pending_samples = 0;
            }
            if let Some(t) = sub.oldest.take() {
                sub.m.lag.set(now.duration_since(t).as_secs_f64());
            }
        }
        if self.batch.is_empty() {
            return None;
        }
        let samples = std::mem::replace(&mut self.batch, Vec::with_capacity(1024));
        Some(Batch {
            source: self.source.clone(),
            mode: BatchMode::Update,
            samples,
        })
    }
}

fn qos(q: u8) -> rumqttc::QoS {
    if q >= 1 {
        rumqttc::QoS::AtLeastOnce
    } else {
        rumqttc::QoS::AtMostOnce
    }
}

fn qos5(q: rumqttc::QoS) -> v5::mqttbytes::QoS {
    match q {
        rumqttc::QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// A connection error of either protocol version.
enum ConnError {
    V4(rumqttc::ConnectionError),
    V5(v5::ConnectionError),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::V4(e) => write!(f, "{e}"),
            ConnError::V5(e) => write!(f, "{e}"),
        }
    }
}

fn io_reason(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    if e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    {
        return "tls";
    }
    match e.kind() {
        ConnectionRefused => "connection_refused",
        TimedOut => "timeout",
        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe => "connection_lost",
        InvalidData => "tls",
        _ => "io",
    }
}

/// Whether a TLS (rustls) error is anywhere in the chain of `e`.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

impl ConnError {
    /// Bounded reason label.
    fn reason(&self) -> &'static str {
        let tls = match self {
            ConnError::V4(e) => is_tls(e),
            ConnError::V5(e) => is_tls(e),
        };
        if tls {
            return "tls";
        }
        use rumqttc::ConnectReturnCode as C4;
        use v5::mqttbytes::v5::ConnectReturnCode as C5;
        match self {
            ConnError::V4(e) => match e {
                rumqttc::ConnectionError::ConnectionRefused(
                    C4::BadUserNamePassword | C4::NotAuthorized,
                ) => "not_authorized",
                rumqttc::ConnectionError::ConnectionRefused(_) => "refused",
                rumqttc::ConnectionError::Tls(_) => "tls",
                rumqttc::ConnectionError::Io(e) => io_reason(e),
                rumqttc::ConnectionError::NetworkTimeout
                | rumqttc::ConnectionError::FlushTimeout => "timeout",
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::Io(e)) => io_reason(e),
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted) => {
                    "connection_lost"
                }
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp) => {
                    "timeout"
                }
                _ => "protocol",
            },
            ConnError::V5(e) => match e {
                v5::ConnectionError::ConnectionRefused(
                    C5::BadUserNamePassword | C5::NotAuthorized,
                ) => "not_authorized",
                v5::ConnectionError::ConnectionRefused(_) => "refused",
                v5::ConnectionError::Tls(_) => "tls",
                v5::ConnectionError::Io(e) => io_reason(e),
                v5::ConnectionError::Timeout(_) => "timeout",
                v5::ConnectionError::MqttState(v5::StateError::Io(e)) => io_reason(e),
                v5::ConnectionError::MqttState(v5::StateError::ConnectionAborted) => {
                    "connection_lost"
                }
                v5::ConnectionError::MqttState(v5::StateError::AwaitPingResp) => "timeout",
                _ => "protocol",
            },
        }
    }
}

/// The client of either protocol version. Only the source task touches it.
enum Conn {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

/// What one poll of the event loop yielded, reduced to what the source needs.
enum Polled {
    Connected,
    /// A message was mapped into the batch.
    Message,
    SubscribeRefused(usize),
    Other,
}

impl Conn {
    fn new(
        cfg: &MqttConfig,
        password: Option<String>,
        tls: Option<rumqttc::TlsConfiguration>,
    ) -> Conn {
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("vitals-{}", cfg.name));
        let mut net = rumqttc::NetworkOptions::new();
        // A large socket buffer absorbs bursts while a batch is handed on.
        net.set_tcp_recv_buffer_size(4 * 1024 * 1024);
        net.set_connection_timeout(10);
        let transport = match tls {
            Some(t) => rumqttc::Transport::tls_with_config(t),
            None => rumqttc::Transport::tcp(),
        };
        match cfg.protocol {
            Protocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(client_id, cfg.host.clone(), cfg.port());
                o.set_keep_alive(cfg.keep_alive)
                    .set_clean_session(cfg.clean_session)
                    .set_max_packet_size(cfg.max_packet_bytes, 64 * 1024)
                    .set_transport(transport);
                if let Some(u) = &cfg.username {
                    o.set_credentials(u.clone(), password.unwrap_or_default());
                }
                let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
                el.set_network_options(net);
                Conn::V4(client, Box::new(el))
            }
            Protocol::V5 => {
                let mut o = v5::MqttOptions::new(client_id, cfg.host.clone(), cfg.port());
                o.set_keep_alive(cfg.keep_alive)
                    .set_clean_start(cfg.clean_session)
                    .set_max_packet_size(Some(cfg.max_packet_bytes as u32))
                    .set_transport(transport)
                    .set_network_options(net);
                if !cfg.clean_session {
                    o.set_session_expiry_interval(Some(cfg.session_expiry.as_secs() as u32));
                }
                if let Some(u) = &cfg.username {
                    o.set_credentials(u.clone(), password.unwrap_or_default());
                }
                let (client, el) = v5::AsyncClient::new(o, 16);
                Conn::V5(client, Box::new(el))
            }
        }
    }

    /// True when the next poll will read from the network (no buffered events).
    fn drained(&self) -> bool {
        match self {
            Conn::V4(_, el) => el.state.events.is_empty(),
            Conn::V5(_, el) => el.state.events.is_empty(),
        }
    }

    fn subscribe(&self, subs: &[Sub]) -> Result<(), String> {
        match self {
            Conn::V4(c, _) => c
                .try_subscribe_many(
                    subs.iter()
                        .map(|s| rumqttc::SubscribeFilter::new(sub_filter(s), s.qos)),
                )
                .map_err(|e| e.to_string()),
            Conn::V5(c, _) => c
                .try_subscribe_many(
                    subs.iter()
                        .map(|s| v5::mqttbytes::v5::Filter::new(sub_filter(s), qos5(s.qos))),
                )
                .map_err(|e| e.to_string()),
        }
    }

    async fn poll(&mut self, ingest: &mut Ingest) -> Result<Polled, ConnError> {
        match self {
            Conn::V4(_, el) => {
                use rumqttc::{Event, Packet};
                match el.poll().await.map_err(ConnError::V4)? {
                    Event::Incoming(Packet::Publish(p)) => {
                        ingest.on_message(&p.topic, &p.payload, Instant::now(), now_ms());
                        Ok(Polled::Message)
                    }
                    Event::Incoming(Packet::ConnAck(_)) => Ok(Polled::Connected),
                    Event::Incoming(Packet::SubAck(a)) => Ok(Polled::SubscribeRefused(
                        a.return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .count(),
                    )),
                    _ => Ok(Polled::Other),
                }
            }
            Conn::V5(_, el) => {
                use v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
                match el.poll().await.map_err(ConnError::V5)? {
                    v5::Event::Incoming(Packet::Publish(p)) => {
                        match std::str::from_utf8(&p.topic) {
                            Ok(topic) => {
                                ingest.on_message(topic, &p.payload, Instant::now(), now_ms())
                            }
                            Err(_) => ingest.telemetry.source_error(
                                &ingest.source,
                                "invalid_topic",
                                &"Topic name is not valid UTF-8.",
                            ),
                        }
                        Ok(Polled::Message)
                    }
                    v5::Event::Incoming(Packet::ConnAck(_)) => Ok(Polled::Connected),
                    v5::Event::Incoming(Packet::SubAck(a)) => Ok(Polled::SubscribeRefused(
                        a.return_codes
                            .iter()
                            .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                            .count(),
                    )),
                    _ => Ok(Polled::Other),
                }
            }
        }
    }
}

fn sub_filter(s: &Sub) -> String {
    match &s.route {
        Some(r) => r.filter.clone(),
        None => s.pattern.filter.clone(),
    }
}

/// Build the rustls client configuration from the TLS section.
fn tls_config(t: &TlsConfig) -> Result<rumqttc::TlsConfiguration, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("bad CA file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the broker with".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("bad certificate {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate rejected: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

/// Run one MQTT source until shutdown.
pub async fn run(cfg: MqttConfig, ctx: SourceContext) {
    let name = cfg.name.clone();
    let broker = format!("{}:{}", cfg.host, cfg.port());
    let telemetry = ctx.telemetry.clone();
    telemetry.source_down(&name, "mqtt");
    let mut ingest = match Ingest::new(&cfg, telemetry.clone()) {
        Ok(i) => i,
        Err(error) => {
            tracing::error!(source = %name, %error, "MQTT source not started.");
            return;
        }
    };
    if let Some(ttl) = ingest.ttl_ms {
        ctx.store
            .write()
            .set_ttl(&name, Some(Duration::from_millis(ttl as u64)));
    }
    ingest.limits = ctx.store.read().label_limits(&name);
    let setup = cfg
        .password()
        .and_then(|p| cfg.tls.as_ref().map(tls_config).transpose().map(|t| (p, t)));
    let (password, tls) = match setup {
        Ok(v) => v,
        Err(error) => {
            telemetry
                .source_errors
                .with_label_values(&[&name, "config"])
                .inc();
            tracing::error!(source = %name, broker = %broker, %error, "MQTT source cannot connect: its credentials or TLS files are unusable.");
            ctx.shutdown.cancelled().await;
            return;
        }
    };
    let mut conn = Conn::new(&cfg, password, tls);
    let mut backoff = cfg.reconnect_min;
    let mut connections = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Batching policy. A network read that had to wait means vitals is
    // ahead of the stream: flush what it has (latency), and under load sleep
    // `read_coalesce` so the next read returns many messages at once. A read
    // that found data waiting means vitals is behind: keep filling the batch.
    let mut waited = true;
    // Bounds how long a sample waits in a batch that is not flushed yet.
    let flush_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(flush_timer);
    let mut armed = false;
    let mut messages_this_tick = 0u64;
    let mut rate = 0u64;
    loop {
        let network_read = conn.drained();
        let started = network_read.then(Instant::now);
        let polled = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break,
            _ = tick.tick() => {
                rate = messages_this_tick;
                messages_this_tick = 0;
                ingest.tick(now_ms());
                if let Some(b) = ingest.take_batch()
                    && !send(&ctx, b).await
                {
                    break;
                }
                armed = false;
                continue;
            }
            _ = &mut flush_timer, if armed => {
                armed = false;
                if let Some(b) = ingest.take_batch()
                    && !send(&ctx, b).await
                {
                    break;
                }
                continue;
            }
            p = conn.poll(&mut ingest) => p,
        };
        if let Some(t) = started {
            waited = t.elapsed() > Duration::from_micros(50);
        }
        match polled {
            Ok(Polled::Message) => {
                messages_this_tick += 1;
                let full = ingest.batch.len() >= MAX_BATCH;
                if full || (waited && conn.drained()) {
                    armed = false;
                    if let Some(b) = ingest.take_batch()
                        && !send(&ctx, b).await
                    {
                        break;
                    }
                    if !full && rate >= COALESCE_ABOVE && !cfg.read_coalesce.is_zero() {
                        tokio::select! {
                            _ = ctx.shutdown.cancelled() => break,
                            _ = tokio::time::sleep(cfg.read_coalesce) => {}
                        }
                    }
                } else if !armed && !ingest.batch.is_empty() {
                    flush_timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + FLUSH_AFTER);
                    armed = true;
                }
            }
            Ok(Polled::Connected) => {
                connections += 1;
                if connections > 1 {
                    ingest.metrics.reconnects.inc();
                }
                ingest.metrics.connected.set(1);
                backoff = cfg.reconnect_min;
                telemetry.source_ok(&name, "mqtt", Duration::ZERO);
                tracing::info!(source = %name, broker = %broker, "Connected to the MQTT broker.");
                if let Err(error) = conn.subscribe(&ingest.subs) {
                    telemetry.source_error(&name, "subscribe", &error);
                }
            }
            Ok(Polled::SubscribeRefused(0)) => ingest.metrics.subscribed.set(1),
            Ok(Polled::SubscribeRefused(n)) => {
                ingest.metrics.subscribed.set(0);
                telemetry
                    .source_errors
                    .with_label_values(&[&name, "subscribe_refused"])
                    .inc_by(n as u64);
                tracing::error!(source = %name, broker = %broker, refused = n, "The broker refused subscriptions (check its ACL and the filters).");
            }
            Ok(_) => {}
            Err(error) => {
                let reason = error.reason();
                ingest.metrics.connected.set(0);
                ingest.metrics.subscribed.set(0);
                telemetry.source_down(&name, "mqtt");
                telemetry
                    .source_errors
                    .with_label_values(&[&name, reason])
                    .inc();
                if let Some(b) = ingest.take_batch()
                    && !send(&ctx, b).await
                {
                    break;
                }
                if let Some(suppressed) = telemetry.should_log(&name, reason) {
                    tracing::warn!(source = %name, broker = %broker, reason, %error, retry_in = ?backoff, suppressed, "MQTT connection failed; retrying.");
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(cfg.reconnect_max);
            }
        }
    }
    if let Some(b) = ingest.take_batch() {
        let _ = ctx.tx.send(b).await;
    }
    ingest.metrics.connected.set(0);
    if let Conn::V4(c, _) = &conn {
        let _ = c.try_disconnect();
    } else if let Conn::V5(c, _) = &conn {
        let _ = c.try_disconnect();
    }
}

/// Hand a batch to the pipeline, waiting for room; false on shutdown.
async fn send(ctx: &SourceContext, batch: Batch) -> bool {
    tokio::select! {
        r = ctx.tx.send(batch) => r.is_ok(),
        _ = ctx.shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> MqttConfig {
        toml::from_str(text).expect("valid mqtt toml")
    }

    const BASE: &str = r#"
        name = "plant"
        series_ttl = "1m"
        [[subscriptions]]
        topic = "factory/+line/+device/telemetry"
        max_series = 3
        expected_interval = "1s"
        down_after = 2
        [subscriptions.mapping]
        [[subscriptions.mapping.metrics]]
        name = "t_celsius"
        path = "t"
        [[subscriptions.mapping.metrics]]
        name = "h_ratio"
        path = "h"
    "#;

    #[test]
    fn topic_patterns_capture_labels_and_build_filters() {
        let p = TopicPattern::parse("$share/g1/factory/+line/+device/#rest").unwrap();
        assert_eq!(p.filter, "$share/g1/factory/+/+/#");
        assert_eq!(p.labels, vec!["line", "device", "rest"]);
        let mut got = vec![String::new(); 3];
        assert!(p.matches("factory/L1/d7/a/b", |i, v| got[i] = v.to_string()));
        assert_eq!(got, vec!["L1", "d7", "a/b"]);
        assert!(!p.matches("factory/L1", |_, _| {}));
        let q = TopicPattern::parse("sensors/+/state").unwrap();
        assert!(q.matches("sensors/x/state", |_, _| {}));
        assert!(!q.matches("sensors/x/state/extra", |_, _| {}));
        assert!(!q.matches("sensors/x", |_, _| {}));
        assert!(TopicPattern::parse("a/b+/c").is_err());
        assert!(TopicPattern::parse("a/#/c").is_err());
        assert!(TopicPattern::parse("$share//a").is_err());
        assert!(TopicPattern::parse("a/+x/+x").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = cfg(BASE);
        c.subscriptions[0]
            .mapping
            .labels
            .insert("line".into(), "x".into());
        assert_eq!(
            c.validate().unwrap_err().0,
            "subscriptions[0].mapping.labels"
        );
        let mut c = cfg(BASE);
        c.series_ttl = Duration::from_secs(1);
        assert_eq!(c.validate().unwrap_err().0, "series_ttl");
        let mut c = cfg(BASE);
        c.qos = 2;
        assert_eq!(c.validate().unwrap_err().0, "qos");
        assert!(cfg(BASE).validate().is_ok());
        assert!(toml::from_str::<MqttConfig>(&format!("{BASE}\nbogus = 1")).is_err());
        let c = cfg(&format!("protocol = \"5\"\n{BASE}"));
        assert_eq!(c.protocol, Protocol::V5);
        let s = format!("{:?}", cfg(&format!("password = \"hunter2\"\n{BASE}")));
        assert!(!s.contains("hunter2"));
    }

    fn ingest(text: &str) -> Ingest {
        Ingest::new(&cfg(text), Arc::new(Telemetry::new())).unwrap()
    }

    #[test]
    fn messages_become_labelled_samples_within_the_budget() {
        let mut ing = ingest(BASE);
        let t = Instant::now();
        ing.on_message("factory/L1/d1/telemetry", br#"{"t":20,"h":0.5}"#, t, 1000);
        ing.on_message("factory/L1/d2/telemetry", br#"{"t":21,"h":0.4}"#, t, 1000);
        ing.on_message("factory/L1/d1/telemetry", br#"{"t":22}"#, t, 1000);
        let b = ing.take_batch().unwrap();
        let lines: Vec<String> = b
            .samples
            .iter()
            .map(|s| format!("{}{} {}", s.family.name, s.labels.as_str(), s.value))
            .collect();
        // Budget 3: d2's humidity is the fourth series and is dropped.
        assert_eq!(
            lines,
            vec![
                r#"t_celsius{device="d1",line="L1"} 20"#,
                r#"h_ratio{device="d1",line="L1"} 0.5"#,
                r#"t_celsius{device="d2",line="L1"} 21"#,
                r#"t_celsius{device="d1",line="L1"} 22"#,
            ]
        );
        assert_eq!(ing.subs[0].m.dropped_cardinality.get(), 1);
        assert_eq!(ing.subs[0].m.messages.get(), 3);
        ing.on_message("other/topic", b"{}", t, 1000);
        ing.on_message("factory/L1/d1/telemetry", b"{bad", t, 1000);
        assert_eq!(
            ing.metrics
                .parse_errors
                .with_label_values(&["factory/+line/+device/telemetry", "invalid_json"])
                .get(),
            1
        );
        assert_eq!(
            ing.metrics
                .parse_errors
                .with_label_values(&["", "unmatched_topic"])
                .get(),
            1
        );
    }

    #[test]
    fn silent_devices_go_down_and_are_forgotten_after_the_ttl() {
        let mut ing = ingest(BASE);
        let t = Instant::now();
        ing.on_message("factory/L1/d1/telemetry", br#"{"t":20}"#, t, 10_000);
        ing.take_batch();
        ing.tick(10_500);
        let b = ing.take_batch().unwrap();
        let up: Vec<(String, f64)> = b
            .samples
            .iter()
            .map(|s| (s.family.name.to_string(), s.value))
            .collect();
        assert_eq!(
            up,
            vec![
                ("mqtt_device_last_seen_timestamp_seconds".to_string(), 10.0),
                ("mqtt_device_up".to_string(), 1.0)
            ]
        );
        ing.tick(11_500);
        assert!(ing.take_batch().is_none(), "still within 2 × 1s");
        ing.tick(12_500);
        let b = ing.take_batch().unwrap();
        assert_eq!(b.samples.len(), 1);
        assert_eq!(b.samples[0].family.name.as_ref(), "mqtt_device_up");
        assert_eq!(b.samples[0].value, 0.0);
        // TTL 1m + 2s: then the device and its label sets are forgotten.
        ing.tick(10_000 + 62_001);
        assert_eq!(ing.subs[0].silence.as_ref().unwrap().devices.len(), 0);
        assert_eq!(ing.subs[0].series, 0);
    }

    #[test]
    fn a_wider_filter_counts_unmatched_topics() {
        let mut ing =
            ingest(&BASE.replace("max_series = 3", "max_series = 3\nfilter = \"factory/#\""));
        assert_eq!(sub_filter(&ing.subs[0]), "factory/#");
        ing.on_message("factory/L1/status", b"1", Instant::now(), 0);
        assert_eq!(
            ing.metrics
                .parse_errors
                .with_label_values(&["factory/+line/+device/telemetry", "unmatched_topic"])
                .get(),
            1
        );
    }
}
