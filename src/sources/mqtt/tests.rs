use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::*;
use super::ingest::*;
use super::topic::*;
use crate::telemetry::Telemetry;

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
        c.validate().unwrap_err().key,
        "subscriptions[0].mapping.labels"
    );
    let mut c = cfg(BASE);
    c.series_ttl = Duration::from_secs(1);
    assert_eq!(c.validate().unwrap_err().key, "series_ttl");
    let mut c = cfg(BASE);
    c.qos = 2;
    assert_eq!(c.validate().unwrap_err().key, "qos");
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
    let mut ing = ingest(&BASE.replace("max_series = 3", "max_series = 3\nfilter = \"factory/#\""));
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
