//! Webhook payloads: Alertmanager's version "4" and Grafana's version "1",
//! both turned into one [`Notification`] that the outbox stores and the
//! templates render.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a payload was refused (answered 400; the text is safe to echo).
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("field `version` is missing or not a string")]
    NoVersion,
    #[error(
        "unsupported payload version {0:?} (Alertmanager \"4\" and Grafana \"1\" are understood)"
    )]
    Version(String),
    #[error("field `{field}`: {reason}")]
    Field { field: String, reason: String },
}

/// Where a notification came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Alertmanager,
    Grafana,
}

/// One alert group notification, as stored in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notification {
    pub origin: Origin,
    pub receiver: String,
    /// `firing` or `resolved`.
    pub status: String,
    pub group_key: String,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    pub external_url: String,
    pub truncated_alerts: u64,
    /// Grafana's `title` and `message` (empty for Alertmanager).
    pub title: String,
    pub message: String,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    pub generator_url: String,
    pub fingerprint: String,
    pub silence_url: String,
    pub dashboard_url: String,
    pub panel_url: String,
    pub values: BTreeMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AmPayload {
    #[allow(dead_code)]
    version: String,
    group_key: String,
    #[serde(default)]
    truncated_alerts: u64,
    status: String,
    receiver: String,
    #[serde(default)]
    group_labels: BTreeMap<String, String>,
    #[serde(default)]
    common_labels: BTreeMap<String, String>,
    #[serde(default)]
    common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    external_url: String,
    // Grafana only.
    #[serde(default)]
    org_id: Option<i64>,
    #[serde(default)]
    title: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    state: String,
    alerts: Vec<AmAlert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AmAlert {
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    starts_at: String,
    #[serde(default)]
    ends_at: String,
    #[serde(default, rename = "generatorURL")]
    generator_url: String,
    #[serde(default)]
    fingerprint: String,
    #[serde(default, rename = "silenceURL")]
    silence_url: Option<String>,
    #[serde(default, rename = "dashboardURL")]
    dashboard_url: Option<String>,
    #[serde(default, rename = "panelURL")]
    panel_url: Option<String>,
    #[serde(default)]
    values: Option<BTreeMap<String, f64>>,
}

/// Parse a webhook body. The version decides the dialect: "4" is
/// Alertmanager, "1" (with `orgId`) is Grafana; anything else is refused.
pub fn parse(body: &[u8]) -> Result<Notification, PayloadError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
    let version = value
        .get("version")
        .and_then(|v| v.as_str())
        .ok_or(PayloadError::NoVersion)?
        .to_string();
    let origin = match version.as_str() {
        "4" => Origin::Alertmanager,
        "1" => Origin::Grafana,
        other => return Err(PayloadError::Version(other.to_string())),
    };
    let p: AmPayload = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        PayloadError::Field {
            field,
            reason: e.into_inner().to_string(),
        }
    })?;
    if origin == Origin::Grafana && p.org_id.is_none() {
        return Err(PayloadError::Field {
            field: "orgId".into(),
            reason: "missing field (required for a Grafana version \"1\" payload)".into(),
        });
    }
    for (field, s) in [("status", &p.status)] {
        if s != "firing" && s != "resolved" {
            return Err(PayloadError::Field {
                field: field.into(),
                reason: format!("must be \"firing\" or \"resolved\", not {s:?}"),
            });
        }
    }
    if p.group_key.is_empty() {
        return Err(PayloadError::Field {
            field: "groupKey".into(),
            reason: "must not be empty".into(),
        });
    }
    let mut alerts = Vec::with_capacity(p.alerts.len());
    for (i, a) in p.alerts.into_iter().enumerate() {
        if a.status != "firing" && a.status != "resolved" {
            return Err(PayloadError::Field {
                field: format!("alerts[{i}].status"),
                reason: format!("must be \"firing\" or \"resolved\", not {:?}", a.status),
            });
        }
        let strip = |m: BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.into_iter()
                .filter(|(k, _)| !(k.starts_with("__") && k.ends_with("__")))
                .collect()
        };
        let labels = strip(a.labels);
        let fingerprint = if a.fingerprint.is_empty() {
            fingerprint(&labels)
        } else {
            a.fingerprint
        };
        alerts.push(Alert {
            status: a.status,
            labels,
            annotations: strip(a.annotations),
            starts_at: a.starts_at,
            ends_at: a.ends_at,
            generator_url: a.generator_url,
            fingerprint,
            silence_url: a.silence_url.unwrap_or_default(),
            dashboard_url: a.dashboard_url.unwrap_or_default(),
            panel_url: a.panel_url.unwrap_or_default(),
            values: a.values.unwrap_or_default(),
        });
    }
    if alerts.is_empty() {
        return Err(PayloadError::Field {
            field: "alerts".into(),
            reason: "must hold at least one alert".into(),
        });
    }
    let _ = p.state;
    Ok(Notification {
        origin,
        receiver: p.receiver,
        status: p.status,
        group_key: p.group_key,
        group_labels: p.group_labels,
        common_labels: p.common_labels,
        common_annotations: p.common_annotations,
        external_url: p.external_url,
        truncated_alerts: p.truncated_alerts,
        title: p.title,
        message: p.message,
        alerts,
    })
}

/// Alertmanager's fingerprint: FNV-1a 64 over the labels sorted by name as
/// `name 0xff value 0xff`, printed as 16 hex digits.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut feed = |b: &[u8]| {
        for &c in b {
            h ^= c as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for (k, v) in labels {
        feed(k.as_bytes());
        feed(&[0xff]);
        feed(v.as_bytes());
        feed(&[0xff]);
    }
    format!("{h:016x}")
}

impl Notification {
    /// The de-duplication key: receiver + groupKey + status + the sorted set
    /// of (fingerprint, status), hashed.
    pub fn dedup_key(&self) -> String {
        let mut pairs: Vec<(&str, &str)> = self
            .alerts
            .iter()
            .map(|a| (a.fingerprint.as_str(), a.status.as_str()))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut h = Sha256::new();
        for part in [&self.receiver, &self.group_key, &self.status] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for (f, s) in pairs {
            h.update(f.as_bytes());
            h.update([1]);
            h.update(s.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..16])
    }

    /// A short stable hash of the group key (thread ids, SMS references).
    pub fn group_hash(&self) -> String {
        let h = Sha256::digest(format!("{}\0{}", self.receiver, self.group_key).as_bytes());
        hex::encode(&h[..8])
    }

    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter().filter(|a| a.status == "firing")
    }

    pub fn resolved(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter().filter(|a| a.status == "resolved")
    }
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("alert")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const AM: &str = r#"{"version":"4","groupKey":"{}:{alertname=\"DiskFull\"}","truncatedAlerts":0,
      "status":"firing","receiver":"ops","groupLabels":{"alertname":"DiskFull"},
      "commonLabels":{"alertname":"DiskFull","severity":"critical"},"commonAnnotations":{},
      "externalURL":"http://am:9093","alerts":[{"status":"firing","labels":{"alertname":"DiskFull","severity":"critical","instance":"a"},
      "annotations":{"summary":"Disk full"},"startsAt":"2024-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z",
      "generatorURL":"http://prom/graph","fingerprint":"98a374897dac15c8"}]}"#;

    #[test]
    fn parses_alertmanager_v4() {
        let n = parse(AM.as_bytes()).unwrap();
        assert_eq!(n.origin, Origin::Alertmanager);
        assert_eq!(n.receiver, "ops");
        assert_eq!(n.alerts[0].name(), "DiskFull");
        assert_eq!(n.alerts[0].annotations["summary"], "Disk full");
    }

    #[test]
    fn parses_grafana_v1_and_strips_internal_labels() {
        let body = r#"{"version":"1","orgId":1,"state":"alerting","title":"[FIRING:1] High","message":"m",
          "groupKey":"g","status":"firing","receiver":"graf","alerts":[{"status":"firing",
          "labels":{"alertname":"High","__alert_rule_uid__":"x"},"annotations":{},"startsAt":"2024-01-01T00:00:00Z",
          "values":{"A":1.5},"dashboardURL":"http://g/d","silenceURL":"http://g/s","panelURL":""}]}"#;
        let n = parse(body.as_bytes()).unwrap();
        assert_eq!(n.origin, Origin::Grafana);
        assert_eq!(n.alerts[0].values["A"], 1.5);
        assert!(!n.alerts[0].labels.contains_key("__alert_rule_uid__"));
        assert_eq!(n.alerts[0].fingerprint, fingerprint(&n.alerts[0].labels));
    }

    #[test]
    fn refuses_bad_input_with_clear_errors() {
        assert!(matches!(parse(b"{"), Err(PayloadError::Json(_))));
        assert!(matches!(
            parse(br#"{"version":"3"}"#),
            Err(PayloadError::Version(v)) if v == "3"
        ));
        let e = parse(br#"{"version":"4","status":"firing","receiver":"x","alerts":[]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("groupKey"), "{e}");
        let grafana_without_org = AM.replace("\"version\":\"4\"", "\"version\":\"1\"");
        assert!(
            parse(grafana_without_org.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("orgId")
        );
    }

    #[test]
    fn fingerprint_matches_alertmanager() {
        // Alertmanager's fingerprint of {alertname="DiskFull"}: FNV-1a over
        // "alertname\xffDiskFull\xff".
        let labels = BTreeMap::from([("alertname".to_string(), "DiskFull".to_string())]);
        assert_eq!(fingerprint(&labels), "744e61ca074bea90");
    }

    #[test]
    fn dedup_key_ignores_alert_order_but_not_status() {
        let n = parse(AM.as_bytes()).unwrap();
        let mut m = n.clone();
        m.alerts.push(n.alerts[0].clone());
        m.alerts[1].fingerprint = "0000000000000001".into();
        let mut r = m.clone();
        r.alerts.reverse();
        assert_eq!(m.dedup_key(), r.dedup_key());
        assert_ne!(n.dedup_key(), m.dedup_key());
        let mut resolved = n.clone();
        resolved.status = "resolved".into();
        assert_ne!(n.dedup_key(), resolved.dedup_key());
    }
}
