//! `[[sources]] type = "mqtt"`: the section, its defaults and its checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::topic::TopicPattern;
use crate::key_error::KeyError;
use crate::payload::mapping::{Mapping, MappingConfig, valid_metric_name};

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
pub use crate::sources::secret::Secret;

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
    /// Checks beyond the types; the error's key is relative to the source.
    pub fn validate(&self) -> Result<(), KeyError> {
        let bad = |k: &str, r: String| Err(KeyError::at(k.to_string(), r));
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
                return Err(KeyError::at(key("qos"), "only QoS 0 and 1 are supported".into()));
            }
            if s.max_series == 0 {
                return Err(KeyError::at(key("max_series"), "must be at least 1".into()));
            }
            let mapping = Mapping::new(&s.mapping).map_err(|r| (key("mapping"), r))?;
            if mapping.metric_count() > 64 {
                return Err(KeyError::at(
                    key("mapping.metrics"),
                    "at most 64 metrics per subscription".into(),
                ));
            }
            let name = s.name.clone().unwrap_or_else(|| s.topic.clone());
            if !names.insert(name.clone()) {
                return Err(KeyError::at(
                    key("name"),
                    format!("subscription {name:?} is defined twice"),
                ));
            }
            for l in mapping.label_names() {
                if topic.labels.iter().any(|t| t == l) {
                    return Err(KeyError::at(
                        key("mapping.labels"),
                        format!("label {l:?} is also captured from the topic"),
                    ));
                }
            }
            if let Some(iv) = s.expected_interval {
                if iv < Duration::from_millis(100) {
                    return Err(KeyError::at(key("expected_interval"), "must be at least 100ms".into()));
                }
                if s.down_after == 0 {
                    return Err(KeyError::at(key("down_after"), "must be at least 1".into()));
                }
                if !valid_metric_name(&format!("{}_device_up", s.device_prefix)) {
                    return Err(KeyError::at(
                        key("device_prefix"),
                        "not a valid metric name prefix".into(),
                    ));
                }
                if !self.series_ttl.is_zero() && self.series_ttl <= iv * s.down_after {
                    return Err(KeyError::at(
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
                        return Err(KeyError::at(
                            key("device_labels"),
                            format!("{l:?} is not captured by the topic"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    pub(super) fn password(&self) -> Result<Option<String>, String> {
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
