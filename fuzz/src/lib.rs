//! Entry points of the fuzz targets: one function per parser of outside
//! bytes. Each takes the raw input, must never panic, and checks a few
//! invariants of what the parser returns.
//!
//! The same functions replay the committed corpora in `cargo test`
//! (`tests/fuzz_corpus.rs` includes this file), so a crash found once stays
//! caught without cargo-fuzz. The configurations come from `examples/`, the
//! files users start from.

use std::sync::{Arc, OnceLock};

use vitals::config::{self, ConfigFormat, SourceConfig};
use vitals::mapping::Mapping;
use vitals::model::Sample;
use vitals::pipeline::rules::Expr;
use vitals::sources::aggregate;
use vitals::sources::logs::{self, LogsConfig};
use vitals::sources::record::{CsvRecord, JsonRecord, Record, split_csv};
use vitals::sources::webhook::{self, EventFormat, WebhookConfig};
use vitals::telemetry::Telemetry;

/// One fuzz target: its name and the function fed with the bytes.
pub type Target = (&'static str, fn(&[u8]));

/// A subscription's mapping with the labels its topic gives.
type TopicMapping = (Mapping, Vec<(String, String)>);

/// Every target by name (the directory of its corpus under `fuzz/corpus/`).
pub const TARGETS: &[Target] = &[
    ("mapping", mapping),
    ("webhook", webhook),
    ("logs", logs),
    ("rules", rules),
    ("config", config),
    ("webconfig", webconfig),
    ("mqtt_topic", mqtt_topic),
    ("relay_payload", relay_payload),
];

const NOW_MS: i64 = 1_700_000_000_000;

fn example(text: &str, name: &str) -> Vec<SourceConfig> {
    config::load_str(text, ConfigFormat::Toml, name)
        .unwrap_or_else(|e| panic!("{name} must load: {e}"))
        .sources
}

fn telemetry() -> Arc<Telemetry> {
    static T: OnceLock<Arc<Telemetry>> = OnceLock::new();
    T.get_or_init(|| Arc::new(Telemetry::new())).clone()
}

/// What every sample handed to the store must satisfy, whatever the input.
fn check_samples(samples: &[Sample]) {
    for s in samples {
        let labels = s.labels.as_str();
        assert!(
            !labels.contains('\n'),
            "a label value must be escaped: {labels:?}"
        );
        if !labels.is_empty() {
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "{labels:?}"
            );
        }
        assert!(
            vitals::mapping::valid_metric_name(&s.family.name),
            "{:?}",
            s.family.name
        );
    }
}

/// Payload mapping (MQTT, HTTP): the subscriptions of
/// `examples/mqtt-plant.toml` (JSON, string, CSV and plain). The first byte
/// picks the subscription, the rest is the payload.
pub fn mapping(data: &[u8]) {
    static M: OnceLock<Vec<TopicMapping>> = OnceLock::new();
    let maps = M.get_or_init(|| {
        let mut out = Vec::new();
        for s in example(
            include_str!("../../examples/mqtt-plant.toml"),
            "mqtt-plant.toml",
        ) {
            let SourceConfig::Mqtt(m) = s else { continue };
            for sub in &m.subscriptions {
                let mapping = Mapping::new(&sub.mapping).expect("example mapping is valid");
                let labels = vitals::sources::mqtt::match_topic(&sub.topic, &sub.topic)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                out.push((mapping, labels));
            }
        }
        assert!(out.len() >= 4, "the plant example covers every format");
        out
    });
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let (mapping, base) = &maps[pick as usize % maps.len()];
    let mut out = Vec::new();
    match mapping.map(payload, base, NOW_MS, &mut out) {
        Ok(n) => {
            assert_eq!(n, out.len());
            check_samples(&out);
        }
        Err(e) => {
            assert!(out.is_empty(), "nothing is appended on error");
            let _ = e.reason();
        }
    }
}

/// Webhook bodies: the sources of `examples/webhook.toml`, each as JSON and
/// as CSV (with and without configured columns). The first byte picks the
/// variant, the rest is the body; every event goes through the metrics and
/// rules as on the endpoint.
pub fn webhook(data: &[u8]) {
    static W: OnceLock<Vec<WebhookConfig>> = OnceLock::new();
    let cfgs = W.get_or_init(|| {
        let mut out = Vec::new();
        for s in example(include_str!("../../examples/webhook.toml"), "webhook.toml") {
            let SourceConfig::Webhook(w) = s else {
                continue;
            };
            let mut json = w.clone();
            json.format = EventFormat::Json;
            let mut csv = w.clone();
            csv.format = EventFormat::Csv;
            csv.csv_columns.clear();
            let mut csv_cols = w;
            csv_cols.format = EventFormat::Csv;
            csv_cols.csv_columns = [
                "id",
                "status",
                "amount",
                "currency",
                "merchant",
                "merchant_class",
            ]
            .map(String::from)
            .to_vec();
            out.extend([json, csv, csv_cols]);
        }
        out
    });
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let cfg = &cfgs[pick as usize % cfgs.len()];
    let columns: Option<Vec<Box<str>>> = (!cfg.csv_columns.is_empty()).then(|| {
        cfg.csv_columns
            .iter()
            .map(|c| Box::from(c.as_str()))
            .collect()
    });
    let mut metrics = aggregate::states(&cfg.metrics);
    let mut rules = vitals::pipeline::rules::RuleSet::new(&cfg.name, &cfg.rules);
    let mut events = Vec::new();
    let mut seen = 0;
    let result = webhook::parse_body(cfg.format, columns.as_deref(), body, |r| {
        seen += 1;
        for m in metrics.iter_mut() {
            let _ = m.observe(r);
        }
        rules.eval(r, NOW_MS, &mut events);
    });
    if let Ok(n) = result {
        assert_eq!(n, seen);
        // A JSON `[]` is an empty batch (accepted, nothing counted); CSV
        // without a data row is refused.
        assert!(
            n > 0 || cfg.format == EventFormat::Json,
            "an accepted CSV body holds at least one row"
        );
    }
    let mut out = Vec::new();
    for m in metrics.iter_mut() {
        m.flush(NOW_MS, &mut out);
    }
    rules.flush(NOW_MS, &mut out);
    check_samples(&out);
}

/// Log lines: the sources of `examples/logs.toml` (regex, JSON lines, CSV
/// with a header line) plus a CSV source with configured columns. The first
/// byte picks the source, the rest is the file content.
pub fn logs(data: &[u8]) {
    static L: OnceLock<Vec<LogsConfig>> = OnceLock::new();
    let cfgs = L.get_or_init(|| {
        let mut out = Vec::new();
        for s in example(include_str!("../../examples/logs.toml"), "logs.toml") {
            let SourceConfig::Logs(mut l) = s else {
                continue;
            };
            // Small enough that the fuzzer reaches the over-long line path.
            l.max_line_bytes = 256;
            if !l.csv_columns.is_empty() || l.format != logs::LogFormat::Csv {
                out.push(l);
                continue;
            }
            let mut cols = l.clone();
            cols.csv_columns = ["time", "sensor", "unit", "value"]
                .map(String::from)
                .to_vec();
            out.extend([l, cols]);
        }
        assert!(out.len() >= 3, "the logs example covers every format");
        out
    });
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let cfg = &cfgs[pick as usize % cfgs.len()];
    let (samples, _events) = logs::process_lines(cfg, telemetry(), bytes, NOW_MS);
    check_samples(&samples);
}

/// Event-rule expressions: the first line is the expression, the rest a
/// record to evaluate it on (JSON, or else one CSV row whose columns are
/// `a,b,c,...`).
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expr, record) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(expr) = Expr::parse(expr) else { return };
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(record) {
        expr.eval(&JsonRecord(&v) as &dyn Record);
    } else if let Ok(fields) = split_csv(record) {
        let columns: Vec<Box<str>> = (0..fields.len())
            .map(|i| Box::from(((b'a' + (i % 26) as u8) as char).to_string()))
            .collect();
        expr.eval(&CsvRecord {
            columns: &columns,
            fields: &fields,
        });
    }
    let empty = serde_json::Value::Object(Default::default());
    expr.eval(&JsonRecord(&empty));
}

/// Configuration files: first byte even → TOML, odd → YAML; the rest is the
/// file. Loading reads no other file.
pub fn config(data: &[u8]) {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let format = if pick % 2 == 0 {
        ConfigFormat::Toml
    } else {
        ConfigFormat::Yaml
    };
    if let Err(e) = config::load_str(text, format, "fuzz.toml") {
        let line = e.to_string();
        assert!(!line.contains('\n'), "errors are one line: {line:?}");
    }
}

/// The web configuration file (YAML). Inputs that could name a device or
/// special file as a certificate are skipped: reading `/dev/zero` would
/// stall the fuzzer, not find a bug.
pub fn webconfig(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains('\\')
        || ["dev", "proc", "sys", "fd"]
            .iter()
            .any(|w| text.contains(w))
    {
        return;
    }
    let base = std::path::Path::new("/nonexistent/vitals-fuzz");
    let _ = vitals::web::webconfig::WebConfig::load_str(text, "web.yml", base);
}

/// MQTT topic patterns and topics: the first line is the pattern (as in a
/// subscription's `topic`), the rest the topic of a message.
pub fn mqtt_topic(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, topic) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(Some(labels)) = vitals::sources::mqtt::match_topic(pattern, topic) else {
        return;
    };
    for (name, value) in &labels {
        assert!(vitals::mapping::valid_label_name(name), "{name:?}");
        assert!(
            topic.contains(value.as_str()),
            "{value:?} is part of {topic:?}"
        );
    }
}

/// The relay's webhook bodies (Alertmanager version "4", Grafana version
/// "1"): the whole input is the body. An accepted one goes on through what
/// the relay does with it before delivery: de-duplication and group keys,
/// the built-in e-mail templates and the length-aware SMS summary.
pub fn relay_payload(data: &[u8]) {
    use vitals::relay::payload;
    use vitals::relay::templates::{self, Templates};
    static T: OnceLock<Templates> = OnceLock::new();
    let Ok(n) = payload::parse(data) else {
        return;
    };
    assert!(!n.alerts.is_empty(), "an accepted payload holds an alert");
    assert!(n.status == "firing" || n.status == "resolved");
    for a in &n.alerts {
        assert!(a.status == "firing" || a.status == "resolved");
        assert!(!a.fingerprint.is_empty());
        assert!(
            !a.labels
                .keys()
                .any(|k| k.starts_with("__") && k.ends_with("__")),
            "internal labels are stripped: {:?}",
            a.labels
        );
        let _ = a.name();
    }
    assert_eq!(n.dedup_key().len(), 32);
    assert_eq!(n.group_hash().len(), 16);
    let t = T.get_or_init(|| Templates::new(None, None, None, None).expect("built-in templates"));
    let (subject, _text, _html) = t
        .email(&n)
        .expect("the built-in e-mail templates render any accepted payload");
    assert!(!subject.contains('\n'), "the subject is one line");
    for segments in [1, 3] {
        let sms = t
            .sms(&n, segments)
            .expect("the built-in SMS summary never fails");
        assert!(
            templates::fits(&sms, segments),
            "{} units do not fit {segments} segment(s)",
            sms.len()
        );
    }
}
