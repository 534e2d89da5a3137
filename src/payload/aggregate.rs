//! Event aggregation shared by the `logs` and `webhook` sources: how a
//! stream of records (log lines, pushed events) becomes counters (events
//! counted or a field summed), gauges (last value) and histograms.
//!
//! Unlike [`crate::mapping`], which turns one payload into the current
//! values it carries (a sensor reading, an API response), every record here
//! is one event that adds to running totals.
//!
//! The source keeps the running totals (counters, histogram buckets) and
//! sends the current value of every series that changed, so the store only
//! ever holds absolute values. New label sets beyond a metric's budget are
//! refused and counted, so a noisy field cannot grow memory without bound.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer};

use super::record::{FieldPath, Record};
use super::rules::Condition;
use crate::model::{FamilyMeta, Labels, MetricKind, Sample};

/// Buckets used when a histogram configures none (seconds, like the
/// Prometheus client libraries' defaults).
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How many label sets one metric may hold when nothing is configured.
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// Type of a mapped metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MappingKind {
    /// Counts records (or adds `value`).
    Counter,
    /// Takes the last `value`.
    Gauge,
    /// Observes `value` into buckets.
    Histogram,
}

/// A metric or label name, checked against the Prometheus rules when read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_name(s: &str, allow_colon: bool) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (allow_colon && c == ':'));
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':'))
}

/// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricName(pub Name);

impl<'de> Deserialize<'de> for MetricName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !valid_name(&s, true) {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
            )));
        }
        Ok(MetricName(Name(s)))
    }
}

/// A label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelName(pub Name);

impl<'de> Deserialize<'de> for LabelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !valid_name(&s, false) || s.starts_with("__") {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
            )));
        }
        Ok(LabelName(Name(s)))
    }
}

fn one() -> f64 {
    1.0
}

/// One mapped metric (`[[sources.metrics]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Metric name; counters must end in `_total`.
    pub name: MetricName,
    #[serde(rename = "type")]
    pub kind: MappingKind,
    #[serde(default)]
    pub help: String,
    /// Logs with `format = "regex"`: the regex (named captures are the
    /// fields). Lines it does not match do not count for this metric.
    #[serde(default, rename = "match")]
    pub pattern: Option<LineRegex>,
    /// Only records for which this condition holds count.
    #[serde(default)]
    pub when: Option<Condition>,
    /// Field holding the value: added by counters (default 1 per record),
    /// set by gauges, observed by histograms.
    #[serde(default)]
    pub value: Option<FieldPath>,
    /// Multiplies the value (e.g. 0.001 for milliseconds → seconds).
    #[serde(default = "one")]
    pub scale: f64,
    /// Label name → field whose value becomes the label value.
    #[serde(default)]
    pub labels: BTreeMap<LabelName, FieldPath>,
    /// Histogram bucket upper bounds, increasing (`+Inf` is implied).
    #[serde(default)]
    pub buckets: Option<Vec<f64>>,
    /// Most label sets this metric may hold; more are refused and counted.
    #[serde(default)]
    pub max_series: Option<usize>,
}

/// An unanchored regex for log lines, compiled when the config is read.
#[derive(Clone)]
pub struct LineRegex(pub regex::Regex);

impl std::fmt::Debug for LineRegex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for LineRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::Regex::new(&s)
            .map(LineRegex)
            .map_err(|e| serde::de::Error::custom(crate::select::regex_error(&s, &e)))
    }
}

impl MetricConfig {
    /// Checks between keys; returns (key relative to the metric, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let name = self.name.0.as_str();
        let bad = |k: &str, r: String| Err((k.to_string(), r));
        if let Some(reason) = super::mapping::reserved_metric_name(name) {
            return bad("name", reason);
        }
        match self.kind {
            MappingKind::Counter if !name.ends_with("_total") => {
                return bad("name", format!("counter {name:?} must end in `_total`"));
            }
            MappingKind::Gauge | MappingKind::Histogram if self.value.is_none() => {
                return bad("value", "gauges and histograms need a `value` field".into());
            }
            MappingKind::Gauge | MappingKind::Histogram if name.ends_with("_total") => {
                return bad(
                    "name",
                    format!("only counters may end in `_total` ({name:?})"),
                );
            }
            _ => {}
        }
        if self.kind == MappingKind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                if name.ends_with(suffix) {
                    return bad(
                        "name",
                        format!("a histogram name must not end in `{suffix}`"),
                    );
                }
            }
            if self.labels.keys().any(|l| l.0.as_str() == "le") {
                return bad("labels", "`le` is reserved for histogram buckets".into());
            }
            let buckets = self.buckets.as_deref().unwrap_or(&DEFAULT_BUCKETS);
            if buckets.is_empty()
                || buckets.iter().any(|b| !b.is_finite())
                || buckets.windows(2).any(|w| w[0] >= w[1])
            {
                return bad(
                    "buckets",
                    "must be finite, strictly increasing and not empty".into(),
                );
            }
        } else if self.buckets.is_some() {
            return bad("buckets", "only histograms have buckets".into());
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return bad("scale", "must be a finite, non-zero number".into());
        }
        if self.max_series == Some(0) {
            return bad("max_series", "must be at least 1".into());
        }
        if let Some(re) = &self.pattern {
            let names: Vec<&str> = re.0.capture_names().flatten().collect();
            for field in self.labels.values().chain(self.value.iter()) {
                if !names.contains(&field.as_str()) {
                    return bad("match", format!("the regex has no named capture `{field}`"));
                }
            }
        }
        Ok(())
    }
}

/// Why a record did not count for a metric (bounded label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The `when` condition is false (not an error).
    Filtered,
    /// The value field is absent.
    MissingValue,
    /// The value field is not a number.
    NotNumber,
    /// A counter would decrease.
    Negative,
    /// A new label set beyond the budget.
    Cardinality,
    /// A new label set larger than the source's label limits.
    Limit(crate::model::LimitExceeded),
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::Filtered => "filtered",
            Skip::MissingValue => "missing_value",
            Skip::NotNumber => "not_a_number",
            Skip::Negative => "negative_counter_increment",
            Skip::Cardinality => "cardinality",
            Skip::Limit(l) => l.reason(),
        }
    }
}

struct Hist {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    /// One label set per bucket, `le` included; built once.
    bucket_labels: Vec<Labels>,
}

struct SeriesState {
    labels: Labels,
    value: f64,
    hist: Option<Box<Hist>>,
    dirty: bool,
}

/// Running state of one mapped metric.
pub struct MetricState {
    pub cfg: MetricConfig,
    family: Arc<FamilyMeta>,
    /// Histogram parts (`_bucket`, `_sum`, `_count`).
    parts: Option<[Arc<FamilyMeta>; 3]>,
    buckets: Vec<f64>,
    max_series: usize,
    /// Label values joined by U+001F → index into `series`.
    index: FxHashMap<Box<str>, usize>,
    series: Vec<SeriesState>,
    dirty: Vec<usize>,
    key: String,
    values: Vec<String>,
    /// Size bounds of a new label set, so the state kept per series is
    /// bounded as the store's is (the store checks again).
    limits: crate::model::LabelLimits,
}

impl MetricState {
    pub fn new(cfg: MetricConfig) -> Self {
        let name = cfg.name.0.as_str().to_string();
        let help = if cfg.help.is_empty() {
            format!("Mapped metric {name}.")
        } else {
            cfg.help.clone()
        };
        let kind = match cfg.kind {
            MappingKind::Counter => MetricKind::Counter,
            MappingKind::Gauge => MetricKind::Gauge,
            MappingKind::Histogram => MetricKind::Histogram,
        };
        let parts = (cfg.kind == MappingKind::Histogram).then(|| {
            ["_bucket", "_sum", "_count"]
                .map(|suffix| FamilyMeta::new(&format!("{name}{suffix}"), kind, &help))
        });
        let buckets = cfg
            .buckets
            .clone()
            .unwrap_or_else(|| DEFAULT_BUCKETS.to_vec());
        MetricState {
            family: FamilyMeta::new(&name, kind, &help),
            parts,
            buckets,
            max_series: cfg.max_series.unwrap_or(DEFAULT_MAX_SERIES),
            index: FxHashMap::default(),
            series: Vec::new(),
            dirty: Vec::new(),
            key: String::new(),
            values: vec![String::new(); cfg.labels.len()],
            limits: crate::model::LabelLimits::default(),
            cfg,
        }
    }

    /// Bound new label sets by `limits` instead of the defaults.
    pub fn set_limits(&mut self, limits: crate::model::LabelLimits) {
        self.limits = limits;
    }

    /// Apply one record; `Err` says why it did not count.
    pub fn observe(&mut self, record: &dyn Record) -> Result<(), Skip> {
        if let Some(when) = &self.cfg.when
            && !when.eval(record)
        {
            return Err(Skip::Filtered);
        }
        let value = match &self.cfg.value {
            None => 1.0,
            Some(f) => {
                let v = record.get(f).ok_or(Skip::MissingValue)?;
                v.as_f64().ok_or(Skip::NotNumber)? * self.cfg.scale
            }
        };
        if !value.is_finite() {
            return Err(Skip::NotNumber);
        }
        if self.cfg.kind == MappingKind::Counter && value < 0.0 {
            return Err(Skip::Negative);
        }
        self.key.clear();
        for (i, field) in self.cfg.labels.values().enumerate() {
            if i > 0 {
                self.key.push('\u{1f}');
            }
            if let Some(v) = record.get(field) {
                v.write_str(&mut self.key);
            }
        }
        let idx = match self.index.get(self.key.as_str()) {
            Some(&i) => i,
            None => {
                if self.series.len() >= self.max_series {
                    return Err(Skip::Cardinality);
                }
                self.new_series(record)?
            }
        };
        let s = &mut self.series[idx];
        match self.cfg.kind {
            MappingKind::Counter => s.value += value,
            MappingKind::Gauge => s.value = value,
            MappingKind::Histogram => {
                if let Some(h) = s.hist.as_mut() {
                    let b = self.buckets.partition_point(|&le| le < value);
                    h.counts[b] += 1;
                    h.sum += value;
                    h.count += 1;
                }
            }
        }
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(idx);
        }
        Ok(())
    }

    fn new_series(&mut self, record: &dyn Record) -> Result<usize, Skip> {
        for (slot, field) in self.values.iter_mut().zip(self.cfg.labels.values()) {
            slot.clear();
            if let Some(v) = record.get(field) {
                v.write_str(slot);
            }
        }
        let pairs: Vec<(&str, &str)> = self
            .cfg
            .labels
            .keys()
            .map(|k| k.0.as_str())
            .zip(self.values.iter().map(String::as_str))
            .collect();
        let labels = Labels::from_pairs(&pairs);
        self.limits.check_labels(&labels).map_err(Skip::Limit)?;
        let hist = (self.cfg.kind == MappingKind::Histogram).then(|| {
            let mut bucket_labels: Vec<Labels> = self
                .buckets
                .iter()
                .map(|le| {
                    let mut s = String::new();
                    crate::exposition::text::write_value(*le, &mut s);
                    labels.with("le", &s)
                })
                .collect();
            bucket_labels.push(labels.with("le", "+Inf"));
            Box::new(Hist {
                counts: vec![0; self.buckets.len() + 1],
                sum: 0.0,
                count: 0,
                bucket_labels,
            })
        });
        self.series.push(SeriesState {
            labels,
            value: 0.0,
            hist,
            dirty: false,
        });
        let idx = self.series.len() - 1;
        self.index.insert(self.key.as_str().into(), idx);
        Ok(idx)
    }

    /// Samples of every series changed since the last flush.
    pub fn flush(&mut self, timestamp_ms: i64, out: &mut Vec<Sample>) {
        for idx in self.dirty.drain(..) {
            let s = &mut self.series[idx];
            s.dirty = false;
            match (&s.hist, &self.parts) {
                (Some(h), Some([bucket, sum, count])) => {
                    let mut cumulative = 0u64;
                    for (n, labels) in h.counts.iter().zip(&h.bucket_labels) {
                        cumulative += n;
                        out.push(Sample {
                            family: bucket.clone(),
                            labels: labels.clone(),
                            value: cumulative as f64,
                            timestamp_ms,
                        });
                    }
                    out.push(Sample {
                        family: sum.clone(),
                        labels: s.labels.clone(),
                        value: h.sum,
                        timestamp_ms,
                    });
                    out.push(Sample {
                        family: count.clone(),
                        labels: s.labels.clone(),
                        value: h.count as f64,
                        timestamp_ms,
                    });
                }
                _ => out.push(Sample {
                    family: self.family.clone(),
                    labels: s.labels.clone(),
                    value: s.value,
                    timestamp_ms,
                }),
            }
        }
    }
}

/// Build the states of a source's metrics.
pub fn states(metrics: &[MetricConfig]) -> Vec<MetricState> {
    metrics.iter().cloned().map(MetricState::new).collect()
}

/// Validate a list of metrics and rules; keys are relative to the source.
pub fn validate_all(
    metrics: &[MetricConfig],
    rules: &[super::rules::RuleConfig],
) -> Result<(), (String, String)> {
    let mut names = std::collections::HashSet::new();
    for (i, m) in metrics.iter().enumerate() {
        m.validate()
            .map_err(|(k, r)| (format!("metrics[{i}].{k}"), r))?;
        if !names.insert(m.name.0.as_str()) {
            return Err((
                format!("metrics[{i}].name"),
                format!("metric {:?} is defined twice", m.name.0.as_str()),
            ));
        }
    }
    let mut rule_names = std::collections::HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        if !valid_name(&r.name, false) {
            return Err((
                format!("rules[{i}].name"),
                "must be a short identifier ([a-zA-Z_][a-zA-Z0-9_]*)".into(),
            ));
        }
        if !rule_names.insert(r.name.as_str()) {
            return Err((
                format!("rules[{i}].name"),
                format!("rule {:?} is defined twice", r.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::record::JsonRecord;

    fn metric(v: serde_json::Value) -> MetricState {
        let cfg: MetricConfig = serde_json::from_value(v).unwrap();
        cfg.validate().unwrap();
        MetricState::new(cfg)
    }

    fn feed(m: &mut MetricState, json: &str) -> Result<(), Skip> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        m.observe(&JsonRecord(&v))
    }

    #[test]
    fn counter_counts_by_label_and_flushes_changed_series_only() {
        let mut m = metric(serde_json::json!({
            "name": "events_total", "type": "counter", "labels": {"status": "status"}
        }));
        feed(&mut m, r#"{"status":"ok"}"#).unwrap();
        feed(&mut m, r#"{"status":"ok"}"#).unwrap();
        feed(&mut m, r#"{"status":"failed"}"#).unwrap();
        let mut out = Vec::new();
        m.flush(0, &mut out);
        let mut got: Vec<(String, f64)> = out
            .iter()
            .map(|s| (s.labels.as_str().to_string(), s.value))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                (r#"{status="failed"}"#.to_string(), 1.0),
                (r#"{status="ok"}"#.to_string(), 2.0)
            ]
        );
        feed(&mut m, r#"{"status":"ok"}"#).unwrap();
        out.clear();
        m.flush(0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value, 3.0);
    }

    #[test]
    fn budget_refuses_new_label_sets_only() {
        let mut m = metric(serde_json::json!({
            "name": "e_total", "type": "counter", "labels": {"m": "m"}, "max_series": 2
        }));
        feed(&mut m, r#"{"m":"a"}"#).unwrap();
        feed(&mut m, r#"{"m":"b"}"#).unwrap();
        assert_eq!(feed(&mut m, r#"{"m":"c"}"#), Err(Skip::Cardinality));
        feed(&mut m, r#"{"m":"a"}"#).unwrap();
    }

    #[test]
    fn histogram_emits_cumulative_buckets_sum_and_count() {
        let mut m = metric(serde_json::json!({
            "name": "amount_inr", "type": "histogram", "value": "amount",
            "buckets": [1000.0, 100000.0]
        }));
        for a in [10, 5000, 125000, 999] {
            feed(&mut m, &format!(r#"{{"amount":{a}}}"#)).unwrap();
        }
        assert_eq!(feed(&mut m, r#"{"amount":"x"}"#), Err(Skip::NotNumber));
        assert_eq!(feed(&mut m, r#"{}"#), Err(Skip::MissingValue));
        let mut out = Vec::new();
        m.flush(0, &mut out);
        let got: Vec<(String, String, f64)> = out
            .iter()
            .map(|s| {
                (
                    s.family.name.to_string(),
                    s.labels.as_str().to_string(),
                    s.value,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("amount_inr_bucket".into(), r#"{le="1000"}"#.into(), 2.0),
                ("amount_inr_bucket".into(), r#"{le="100000"}"#.into(), 3.0),
                ("amount_inr_bucket".into(), r#"{le="+Inf"}"#.into(), 4.0),
                ("amount_inr_sum".into(), "".into(), 131009.0),
                ("amount_inr_count".into(), "".into(), 4.0),
            ]
        );
    }

    #[test]
    fn validation_enforces_prometheus_conventions() {
        let cases = [
            (
                serde_json::json!({"name": "events", "type": "counter"}),
                "name",
            ),
            (serde_json::json!({"name": "g", "type": "gauge"}), "value"),
            (
                serde_json::json!({"name": "h", "type": "histogram", "value": "v", "buckets": [2.0, 1.0]}),
                "buckets",
            ),
            (
                serde_json::json!({"name": "h_count", "type": "histogram", "value": "v"}),
                "name",
            ),
            (
                serde_json::json!({"name": "c_total", "type": "counter", "match": "(?P<a>x)", "labels": {"b": "b"}}),
                "match",
            ),
        ];
        for (v, key) in cases {
            let cfg: MetricConfig = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(cfg.validate().unwrap_err().0, key, "{v}");
        }
        assert!(
            serde_json::from_value::<MetricConfig>(
                serde_json::json!({"name": "a-b", "type": "gauge", "value": "v"})
            )
            .is_err()
        );
        assert!(
            serde_json::from_value::<MetricConfig>(
                serde_json::json!({"name": "ab", "type": "gauge", "value": "v", "labels": {"__x": "y"}})
            )
            .is_err()
        );
    }
}
