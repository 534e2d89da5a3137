//! Payload → samples mapping shared by the sources that receive documents
//! (MQTT messages, HTTP responses, webhook bodies).
//!
//! A [`MappingConfig`] is the raw, deserialized `[...mapping]` table; it is
//! compiled once into a [`Mapping`] (paths pre-parsed, metric families
//! created, names validated) so mapping a message does no parsing of the
//! configuration, no regex and as few allocations as possible.
//!
//! A message is all-or-nothing: if any present field cannot be mapped (a
//! wrong type, an unknown string, a non-finite value) the samples of that
//! message are discarded and the error names one bounded [`MapError::reason`].
//! A metric whose field is absent is skipped; a message (or array element)
//! that yields no sample at all is a `missing_field` error.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::time::{number_timestamp, text_timestamp};
use crate::model::{FamilyMeta, Labels, MetricKind, Sample};

pub use super::time::parse_rfc3339;

/// Payloads larger than this are refused unless `max_payload_bytes` says otherwise.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// How the payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON document; fields are addressed by JSON paths.
    #[default]
    Json,
    /// Comma (or `csv_delimiter`) separated lines; one sample set per record.
    Csv,
    /// The whole payload is one number (or a string from `values`).
    Plain,
    /// The whole payload is a string mapped to a number through `values`.
    String,
}

/// The raw mapping table as written in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    #[serde(default)]
    pub format: Format,
    /// JSON path to an array (one sample set per element) or an object (one
    /// sample set per member, the member name in label `each_key_label`).
    #[serde(default)]
    pub each: Option<String>,
    /// Label that receives the member name when `each` points at an object.
    #[serde(default)]
    pub each_key_label: Option<String>,
    /// Label name → JSON path (relative to the element; `$.x` is relative to
    /// the document root) or CSV column.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Path of the observation time: unix seconds, unix milliseconds or RFC 3339.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// CSV: the first line names the columns (else columns are 0-based indexes).
    #[serde(default = "default_true")]
    pub csv_header: bool,
    #[serde(default = "default_delimiter")]
    pub csv_delimiter: char,
    /// Larger payloads are refused with reason `too_large`.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    pub metrics: Vec<MetricConfig>,
}

fn default_true() -> bool {
    true
}

fn default_delimiter() -> char {
    ','
}

fn default_max_payload() -> usize {
    DEFAULT_MAX_PAYLOAD_BYTES
}

fn default_scale() -> f64 {
    1.0
}

/// One metric taken from each message (or element).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Metric name; `_<unit>` is appended when `unit` is set and the name
    /// does not already end with it.
    pub name: String,
    /// JSON path or CSV column (name, or index without a header). Not used
    /// for `plain` and `string` payloads.
    #[serde(default)]
    pub path: String,
    #[serde(default = "default_kind")]
    pub kind: MetricKind,
    #[serde(default)]
    pub help: Option<String>,
    /// Base unit (`celsius`, `pascals`, `ratio`, `seconds`...).
    #[serde(default)]
    pub unit: Option<String>,
    /// The exported value is `value * scale + offset`.
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// String payload values mapped to numbers (`ON = 1`, `OFF = 0`).
    #[serde(default)]
    pub values: BTreeMap<String, f64>,
    /// Value for strings missing from `values`; without it they are an error.
    #[serde(default)]
    pub default: Option<f64>,
}

fn default_kind() -> MetricKind {
    MetricKind::Gauge
}

/// Why a payload could not be mapped. [`MapError::reason`] is the bounded
/// label value for self-metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    #[error("The payload is not valid UTF-8.")]
    InvalidUtf8,
    #[error("The payload is not valid JSON: {0}.")]
    InvalidJson(String),
    #[error("The payload is not valid CSV: {0}.")]
    InvalidCsv(String),
    #[error("Field `{0}` is missing.")]
    MissingField(String),
    #[error("Field `{path}` is {found}, not a number, boolean or string.")]
    WrongType { path: String, found: &'static str },
    #[error("Field `{path}` holds string {value:?}, which has no mapping and no default.")]
    UnmappedString { path: String, value: String },
    #[error("Field `{0}` is not a finite number.")]
    NonFinite(String),
    #[error("The payload is {size} bytes, more than the limit of {max}.")]
    TooLarge { size: usize, max: usize },
    #[error("Field `{path}` holds an unreadable timestamp {value:?}.")]
    InvalidTimestamp { path: String, value: String },
}

impl MapError {
    /// Bounded reason for `..._errors_total{reason=...}`.
    pub fn reason(&self) -> &'static str {
        match self {
            MapError::InvalidUtf8 => "invalid_utf8",
            MapError::InvalidJson(_) => "invalid_json",
            MapError::InvalidCsv(_) => "invalid_csv",
            MapError::MissingField(_) => "missing_field",
            MapError::WrongType { .. } => "wrong_type",
            MapError::UnmappedString { .. } => "unmapped_string",
            MapError::NonFinite(_) => "non_finite",
            MapError::TooLarge { .. } => "too_large",
            MapError::InvalidTimestamp { .. } => "invalid_timestamp",
        }
    }
}

/// One step of a pre-parsed JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(Box<str>),
    Index(usize),
}

/// A JSON path parsed once: the one path syntax of every source (MQTT,
/// HTTP and webhook mappings, JSON log lines, event rules).
///
/// `a.b[0].c` walks object keys and array indexes; a numeric key indexes an
/// array too (`a.b.0.c`). The empty path (or `$`) is the value itself; a
/// leading `$.` makes the path start at the document root even inside
/// `each` elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: Box<str>,
    from_root: bool,
    segs: Vec<Seg>,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let mut rest = text.trim();
        let mut from_root = false;
        if rest == "$" {
            rest = "";
            from_root = true;
        } else if let Some(r) = rest.strip_prefix("$.").or_else(|| rest.strip_prefix('$')) {
            rest = r;
            from_root = true;
        }
        let mut segs = Vec::new();
        if !rest.is_empty() {
            for part in rest.split('.') {
                let (key, mut idx) = match part.find('[') {
                    Some(i) => (&part[..i], &part[i..]),
                    None => (part, ""),
                };
                if key.is_empty() && idx.is_empty() {
                    return Err(format!("invalid path {text:?}: empty segment"));
                }
                if !key.is_empty() {
                    segs.push(Seg::Key(key.into()));
                }
                while !idx.is_empty() {
                    let close = idx
                        .find(']')
                        .ok_or_else(|| format!("invalid path {text:?}: missing `]`"))?;
                    let n: usize = idx[1..close].trim().parse().map_err(|_| {
                        format!("invalid path {text:?}: array index must be a number")
                    })?;
                    segs.push(Seg::Index(n));
                    idx = &idx[close + 1..];
                    if !idx.is_empty() && !idx.starts_with('[') {
                        return Err(format!("invalid path {text:?}: text after `]`"));
                    }
                }
            }
        }
        Ok(JsonPath {
            text: text.into(),
            from_root,
            segs,
        })
    }

    /// Resolve against `v`.
    pub fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        let mut cur = v;
        for seg in &self.segs {
            cur = match (seg, cur) {
                (Seg::Key(k), Value::Object(m)) => m.get(k.as_ref())?,
                (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
                (Seg::Key(k), Value::Array(a)) => a.get(k.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Resolve relative to `element`, or to `root` for `$.` paths.
    fn get_in<'a>(&self, root: &'a Value, element: &'a Value) -> Option<&'a Value> {
        self.get(if self.from_root { root } else { element })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Look up a JSON path (`a.b[0].c`) in `v`. Parses `path` on every call;
/// hot paths should keep a [`JsonPath`] instead.
pub fn json_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    JsonPath::parse(path).ok()?.get(v)
}

/// Where a metric or label comes from.
#[derive(Debug, Clone)]
enum Field {
    Json(JsonPath),
    /// CSV column by header name.
    Column(Box<str>),
    /// CSV column by 0-based index.
    Index(usize),
    /// The whole payload (`plain` / `string`).
    Whole,
}

#[derive(Debug, Clone)]
struct CompiledMetric {
    family: Arc<FamilyMeta>,
    field: Field,
    scale: f64,
    offset: f64,
    values: Vec<(Box<str>, f64)>,
    default: Option<f64>,
}

/// A compiled, validated mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    format: Format,
    each: Option<JsonPath>,
    each_key_label: Box<str>,
    labels: Vec<(Box<str>, Field)>,
    timestamp: Option<Field>,
    csv_header: bool,
    csv_delimiter: char,
    max_payload_bytes: usize,
    metrics: Vec<CompiledMetric>,
}

/// Whether `s` is a valid Prometheus metric name.
pub fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Prefixes of vitals' own metric families (self-metrics, the system
/// source, the anomaly families, the process collector): a configured
/// metric may not start with one, so it can never take the name of a
/// family vitals writes itself (which made `/metrics` invalid).
pub const RESERVED_PREFIXES: [&str; 2] = ["vitals_", "process_"];

/// Why a configured metric name is refused because of its prefix, if it is.
pub fn reserved_metric_name(name: &str) -> Option<String> {
    RESERVED_PREFIXES
        .iter()
        .find(|p| name.starts_with(**p))
        .map(|p| format!("{name:?} starts with `{p}`, which is reserved for vitals' own metrics"))
}

/// Whether `s` is a valid Prometheus label name (not reserved `__...`).
pub fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

impl Mapping {
    /// Validate and compile. The error is a sentence naming the offending
    /// key (relative to the mapping table).
    pub fn new(cfg: &MappingConfig) -> Result<Mapping, String> {
        if cfg.metrics.is_empty() {
            return Err("`metrics` must list at least one metric".into());
        }
        if cfg.max_payload_bytes == 0 {
            return Err("`max_payload_bytes` must be at least 1".into());
        }
        let json = cfg.format == Format::Json;
        let csv = cfg.format == Format::Csv;
        let whole = !json && !csv;
        if !json && (cfg.each.is_some() || cfg.each_key_label.is_some()) {
            return Err("`each` and `each_key_label` only apply to format = \"json\"".into());
        }
        if whole && (!cfg.labels.is_empty() || cfg.timestamp.is_some()) {
            return Err(format!(
                "`labels` and `timestamp` need fields; format = \"{}\" has none",
                format_name(cfg.format)
            ));
        }
        if csv
            && (cfg.csv_delimiter == '"'
                || cfg.csv_delimiter == '\n'
                || cfg.csv_delimiter == '\r'
                || !cfg.csv_delimiter.is_ascii())
        {
            return Err(
                "`csv_delimiter` must be one ASCII character other than a quote or a newline"
                    .into(),
            );
        }
        let field = |key: &str, path: &str| -> Result<Field, String> {
            match cfg.format {
                Format::Json => JsonPath::parse(path)
                    .map(Field::Json)
                    .map_err(|e| format!("`{key}`: {e}")),
                Format::Csv if cfg.csv_header => {
                    if path.is_empty() {
                        Err(format!("`{key}`: needs a CSV column name"))
                    } else {
                        Ok(Field::Column(path.into()))
                    }
                }
                Format::Csv => path.trim().parse().map(Field::Index).map_err(|_| {
                    format!(
                        "`{key}`: without csv_header the column is a 0-based index, not {path:?}"
                    )
                }),
                Format::Plain | Format::String => Ok(Field::Whole),
            }
        };
        let each = cfg
            .each
            .as_deref()
            .map(|p| JsonPath::parse(p).map_err(|e| format!("`each`: {e}")))
            .transpose()?;
        let each_key_label = cfg.each_key_label.clone().unwrap_or_else(|| "key".into());
        if !valid_label_name(&each_key_label) {
            return Err(format!(
                "`each_key_label`: {each_key_label:?} is not a valid label name"
            ));
        }
        let mut labels = Vec::with_capacity(cfg.labels.len());
        for (name, path) in &cfg.labels {
            if !valid_label_name(name) {
                return Err(format!("`labels.{name}`: not a valid label name"));
            }
            labels.push((
                Box::<str>::from(name.as_str()),
                field(&format!("labels.{name}"), path)?,
            ));
        }
        let timestamp = cfg
            .timestamp
            .as_deref()
            .map(|p| field("timestamp", p))
            .transpose()?;
        let mut metrics = Vec::with_capacity(cfg.metrics.len());
        let mut names = std::collections::HashSet::new();
        for (i, m) in cfg.metrics.iter().enumerate() {
            let key = format!("metrics[{i}]");
            let mut name = m.name.clone();
            if let Some(unit) = m.unit.as_deref() {
                if unit.is_empty() || !unit.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("`{key}.unit`: {unit:?} is not a valid unit"));
                }
                let suffix = format!("_{unit}");
                let base = name.strip_suffix("_total").unwrap_or(&name);
                if !base.ends_with(&suffix) {
                    name = match m.kind {
                        MetricKind::Counter if name.ends_with("_total") => {
                            format!("{base}{suffix}_total")
                        }
                        _ => format!("{name}{suffix}"),
                    };
                }
            }
            if !valid_metric_name(&name) {
                return Err(format!("`{key}.name`: {name:?} is not a valid metric name"));
            }
            if let Some(reason) = reserved_metric_name(&name) {
                return Err(format!("`{key}.name`: {reason}"));
            }
            if m.kind == MetricKind::Counter && !name.ends_with("_total") {
                return Err(format!(
                    "`{key}.name`: counter {name:?} must end with `_total`"
                ));
            }
            if !names.insert(name.clone()) {
                return Err(format!("`{key}.name`: {name:?} is mapped twice"));
            }
            if whole && !m.path.is_empty() {
                return Err(format!(
                    "`{key}.path`: format = \"{}\" maps the whole payload; remove `path`",
                    format_name(cfg.format)
                ));
            }
            if !whole && m.path.is_empty() && !json {
                return Err(format!("`{key}.path`: needs a field"));
            }
            if cfg.format == Format::String && m.values.is_empty() {
                return Err(format!(
                    "`{key}.values`: format = \"string\" needs a string → number table"
                ));
            }
            if !m.scale.is_finite() || !m.offset.is_finite() {
                return Err(format!("`{key}`: scale and offset must be finite"));
            }
            if m.values.values().any(|v| !v.is_finite())
                || m.default.is_some_and(|d| !d.is_finite())
            {
                return Err(format!("`{key}`: values and default must be finite"));
            }
            let help = match &m.help {
                Some(h) if !h.trim().is_empty() => h.clone(),
                _ if m.path.is_empty() => "Mapped from the message payload.".to_string(),
                _ => format!("Mapped from payload field {}.", m.path),
            };
            metrics.push(CompiledMetric {
                family: FamilyMeta::new(&name, m.kind, &help),
                field: field(&format!("{key}.path"), &m.path)?,
                scale: m.scale,
                offset: m.offset,
                values: m
                    .values
                    .iter()
                    .map(|(k, v)| (Box::from(k.as_str()), *v))
                    .collect(),
                default: m.default,
            });
        }
        Ok(Mapping {
            format: cfg.format,
            each,
            each_key_label: each_key_label.into(),
            labels,
            timestamp,
            csv_header: cfg.csv_header,
            csv_delimiter: cfg.csv_delimiter,
            max_payload_bytes: cfg.max_payload_bytes,
            metrics,
        })
    }

    /// The families this mapping produces, in configuration order.
    pub fn families(&self) -> impl Iterator<Item = &Arc<FamilyMeta>> {
        self.metrics.iter().map(|m| &m.family)
    }

    /// Number of metrics per sample set.
    pub fn metric_count(&self) -> usize {
        self.metrics.len()
    }

    /// Names of the labels taken from the payload (plus `each_key_label`
    /// when iterating an object).
    pub fn label_names(&self) -> impl Iterator<Item = &str> {
        self.labels.iter().map(|(n, _)| n.as_ref())
    }

    /// Map one payload to samples appended to `out`, each labelled with
    /// `base_labels` (e.g. from the topic) plus the payload labels, stamped
    /// with the payload timestamp or `now_ms`. Returns how many samples were
    /// appended; on error nothing is appended.
    pub fn map(
        &self,
        payload: &[u8],
        base_labels: &[(String, String)],
        now_ms: i64,
        out: &mut Vec<Sample>,
    ) -> Result<usize, MapError> {
        if payload.len() > self.max_payload_bytes {
            return Err(MapError::TooLarge {
                size: payload.len(),
                max: self.max_payload_bytes,
            });
        }
        let start = out.len();
        let result = match self.format {
            Format::Json => self.map_json(payload, base_labels, now_ms, out),
            Format::Csv => self.map_csv(payload, base_labels, now_ms, out),
            Format::Plain | Format::String => self.map_whole(payload, base_labels, now_ms, out),
        };
        match result {
            Ok(()) if out.len() > start => Ok(out.len() - start),
            Ok(()) => {
                out.truncate(start);
                Err(MapError::MissingField(self.first_path().to_string()))
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    fn first_path(&self) -> &str {
        match self.metrics.first().map(|m| &m.field) {
            Some(Field::Json(p)) => p.as_str(),
            Some(Field::Column(c)) => c,
            _ => "",
        }
    }

    fn map_json(
        &self,
        payload: &[u8],
        base: &[(String, String)],
        now_ms: i64,
        out: &mut Vec<Sample>,
    ) -> Result<(), MapError> {
        let doc: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                if std::str::from_utf8(payload).is_err() {
                    return Err(MapError::InvalidUtf8);
                }
                return Err(MapError::InvalidJson(e.to_string()));
            }
        };
        let mut pairs: Vec<(&str, Cow<'_, str>)> =
            Vec::with_capacity(base.len() + self.labels.len() + 1);
        match &self.each {
            None => self.map_element(&doc, &doc, None, base, &mut pairs, now_ms, out),
            Some(path) => match path.get(&doc) {
                Some(Value::Array(items)) => {
                    for item in items {
                        self.map_element(&doc, item, None, base, &mut pairs, now_ms, out)?;
                    }
                    Ok(())
                }
                Some(Value::Object(members)) => {
                    for (key, item) in members {
                        self.map_element(&doc, item, Some(key), base, &mut pairs, now_ms, out)?;
                    }
                    Ok(())
                }
                Some(other) => Err(MapError::WrongType {
                    path: path.as_str().to_string(),
                    found: type_name(other),
                }),
                None => Err(MapError::MissingField(path.as_str().to_string())),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn map_element<'a>(
        &'a self,
        root: &'a Value,
        element: &'a Value,
        each_key: Option<&'a str>,
        base: &'a [(String, String)],
        pairs: &mut Vec<(&'a str, Cow<'a, str>)>,
        now_ms: i64,
        out: &mut Vec<Sample>,
    ) -> Result<(), MapError> {
        let lookup = |f: &Field| match f {
            Field::Json(p) => p.get_in(root, element),
            _ => None,
        };
        // Values first: an element without any metric adds no label work.
        let first = out.len();
        let mut produced = 0usize;
        let mut values: [f64; 16] = [0.0; 16];
        let mut present: [bool; 16] = [false; 16];
        for (i, m) in self.metrics.iter().enumerate() {
            let Some(v) = lookup(&m.field) else { continue };
            let path = || field_name(&m.field);
            let raw = match v {
                Value::Number(n) => n.as_f64().ok_or_else(|| MapError::NonFinite(path()))?,
                Value::Bool(b) => f64::from(u8::from(*b)),
                Value::String(s) => m.value_of_text(s, path)?,
                Value::Null => continue,
                other => {
                    return Err(MapError::WrongType {
                        path: path(),
                        found: type_name(other),
                    });
                }
            };
            let value = raw * m.scale + m.offset;
            if !value.is_finite() {
                return Err(MapError::NonFinite(path()));
            }
            if i < 16 {
                values[i] = value;
                present[i] = true;
            } else {
                // Rare: more than 16 metrics; push directly with labels later.
                out.push(Sample {
                    family: m.family.clone(),
                    labels: Labels::empty(),
                    value,
                    timestamp_ms: 0,
                });
            }
            produced += 1;
        }
        if produced == 0 {
            return Ok(());
        }
        let ts = match &self.timestamp {
            Some(f) => match lookup(f) {
                Some(v) => json_timestamp(v).ok_or_else(|| MapError::InvalidTimestamp {
                    path: field_name(f),
                    value: truncate(&v.to_string()),
                })?,
                None => now_ms,
            },
            None => now_ms,
        };
        pairs.clear();
        pairs.extend(
            base.iter()
                .map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_str()))),
        );
        for (name, f) in &self.labels {
            match lookup(f) {
                Some(Value::String(s)) => pairs.push((name, Cow::Borrowed(s.as_str()))),
                Some(Value::Number(n)) => pairs.push((name, Cow::Owned(n.to_string()))),
                Some(Value::Bool(b)) => {
                    pairs.push((name, Cow::Borrowed(if *b { "true" } else { "false" })))
                }
                Some(Value::Null) | None => {}
                Some(other) => {
                    return Err(MapError::WrongType {
                        path: field_name(f),
                        found: type_name(other),
                    });
                }
            }
        }
        if let Some(k) = each_key {
            pairs.push((&self.each_key_label, Cow::Borrowed(k)));
        }
        let labels = Labels::from_pairs(pairs);
        for s in &mut out[first..] {
            s.labels = labels.clone();
            s.timestamp_ms = ts;
        }
        self.push_samples(&values, &present, labels, ts, out);
        Ok(())
    }

    /// Push the first 16 metrics' values (those marked present).
    fn push_samples(
        &self,
        values: &[f64; 16],
        present: &[bool; 16],
        labels: Labels,
        ts: i64,
        out: &mut Vec<Sample>,
    ) {
        let last = present.iter().rposition(|p| *p);
        let mut labels = Some(labels);
        for (i, m) in self.metrics.iter().take(16).enumerate() {
            if !present[i] {
                continue;
            }
            // The last sample takes the label set itself: one clone fewer.
            let l = if Some(i) == last {
                labels.take().unwrap_or_default()
            } else {
                labels.clone().unwrap_or_default()
            };
            out.push(Sample {
                family: m.family.clone(),
                labels: l,
                value: values[i],
                timestamp_ms: ts,
            });
        }
    }

    fn map_csv(
        &self,
        payload: &[u8],
        base: &[(String, String)],
        now_ms: i64,
        out: &mut Vec<Sample>,
    ) -> Result<(), MapError> {
        let text = std::str::from_utf8(payload).map_err(|_| MapError::InvalidUtf8)?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let mut header: Vec<Cow<'_, str>> = Vec::new();
        if self.csv_header {
            let line = lines
                .next()
                .ok_or_else(|| MapError::InvalidCsv("no header line".into()))?;
            split_csv(line, self.csv_delimiter, &mut header)?;
        }
        let mut cells: Vec<Cow<'_, str>> = Vec::new();
        let mut pairs: Vec<(&str, Cow<'_, str>)> = Vec::new();
        for line in lines {
            cells.clear();
            split_csv(line, self.csv_delimiter, &mut cells)?;
            let cell = |f: &Field| -> Option<&str> {
                let i = match f {
                    Field::Index(i) => *i,
                    Field::Column(name) => header.iter().position(|h| h.trim() == name.as_ref())?,
                    _ => return None,
                };
                cells.get(i).map(|c| c.trim()).filter(|c| !c.is_empty())
            };
            let mut values = [0.0; 16];
            let mut present = [false; 16];
            let first = out.len();
            let mut produced = 0;
            for (i, m) in self.metrics.iter().enumerate() {
                let Some(text) = cell(&m.field) else { continue };
                let value = m.value_of_text(text, || field_name(&m.field))? * m.scale + m.offset;
                if !value.is_finite() {
                    return Err(MapError::NonFinite(field_name(&m.field)));
                }
                if i < 16 {
                    values[i] = value;
                    present[i] = true;
                } else {
                    out.push(Sample {
                        family: m.family.clone(),
                        labels: Labels::empty(),
                        value,
                        timestamp_ms: 0,
                    });
                }
                produced += 1;
            }
            if produced == 0 {
                continue;
            }
            let ts = match self.timestamp.as_ref() {
                Some(f) => match cell(f) {
                    Some(t) => text_timestamp(t).ok_or_else(|| MapError::InvalidTimestamp {
                        path: field_name(f),
                        value: truncate(t),
                    })?,
                    None => now_ms,
                },
                None => now_ms,
            };
            pairs.clear();
            pairs.extend(
                base.iter()
                    .map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_str()))),
            );
            for (name, f) in &self.labels {
                if let Some(v) = cell(f) {
                    pairs.push((name, Cow::Owned(v.to_string())));
                }
            }
            let labels = Labels::from_pairs(&pairs);
            for s in &mut out[first..] {
                s.labels = labels.clone();
                s.timestamp_ms = ts;
            }
            self.push_samples(&values, &present, labels, ts, out);
        }
        Ok(())
    }

    fn map_whole(
        &self,
        payload: &[u8],
        base: &[(String, String)],
        now_ms: i64,
        out: &mut Vec<Sample>,
    ) -> Result<(), MapError> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| MapError::InvalidUtf8)?
            .trim();
        let labels = Labels::from_pairs(base);
        for m in &self.metrics {
            let value = m.value_of_text(text, || "payload".to_string())? * m.scale + m.offset;
            if !value.is_finite() {
                return Err(MapError::NonFinite("payload".into()));
            }
            out.push(Sample {
                family: m.family.clone(),
                labels: labels.clone(),
                value,
                timestamp_ms: now_ms,
            });
        }
        Ok(())
    }
}

impl CompiledMetric {
    /// A text value: the `values` table first, then a number, then `default`.
    fn value_of_text(&self, s: &str, path: impl Fn() -> String) -> Result<f64, MapError> {
        let t = s.trim();
        if let Some((_, v)) = self.values.iter().find(|(k, _)| k.as_ref() == t) {
            return Ok(*v);
        }
        if let Ok(v) = t.parse::<f64>() {
            if !v.is_finite() {
                return Err(MapError::NonFinite(path()));
            }
            return Ok(v);
        }
        match t {
            "true" | "TRUE" | "True" if self.values.is_empty() => return Ok(1.0),
            "false" | "FALSE" | "False" if self.values.is_empty() => return Ok(0.0),
            _ => {}
        }
        self.default.ok_or_else(|| MapError::UnmappedString {
            path: path(),
            value: truncate(t),
        })
    }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Json => "json",
        Format::Csv => "csv",
        Format::Plain => "plain",
        Format::String => "string",
    }
}

fn field_name(f: &Field) -> String {
    match f {
        Field::Json(p) => p.as_str().to_string(),
        Field::Column(c) => c.to_string(),
        Field::Index(i) => format!("column {i}"),
        Field::Whole => "payload".to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Keep error details short (they end up in logs, never in labels).
fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Split one CSV record with the one CSV splitter of every source.
fn split_csv<'a>(line: &'a str, delim: char, out: &mut Vec<Cow<'a, str>>) -> Result<(), MapError> {
    // `Mapping::new` admits ASCII delimiters only.
    super::csv::split_csv_with(line, delim as u8, out)
        .map_err(|e| MapError::InvalidCsv(e.to_string()))
}

fn json_timestamp(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => number_timestamp(n.as_f64()?),
        Value::String(s) => text_timestamp(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(toml_text: &str) -> Mapping {
        let cfg: MappingConfig = toml::from_str(toml_text).expect("valid mapping toml");
        Mapping::new(&cfg).expect("valid mapping")
    }

    fn map(m: &Mapping, payload: &str) -> Result<Vec<Sample>, MapError> {
        let mut out = Vec::new();
        m.map(
            payload.as_bytes(),
            &[("device".to_string(), "d1".to_string())],
            1_000,
            &mut out,
        )?;
        Ok(out)
    }

    fn render(samples: &[Sample]) -> Vec<String> {
        let mut v: Vec<String> = samples
            .iter()
            .map(|s| {
                format!(
                    "{}{} {} @{}",
                    s.family.name,
                    s.labels.as_str(),
                    s.value,
                    s.timestamp_ms
                )
            })
            .collect();
        v.sort();
        v
    }

    const PLANT: &str = r#"
        labels = { line = "meta.line" }
        [[metrics]]
        name = "plant_temperature_celsius"
        path = "temp"
        scale = 0.1
        [[metrics]]
        name = "plant_valve_open"
        path = "valve"
        values = { open = 1, closed = 0 }
        [[metrics]]
        name = "plant_pressure_pascals"
        path = "p[1].v"
    "#;

    #[test]
    fn json_fields_nested_paths_scale_and_strings() {
        let m = mapping(PLANT);
        let out = map(
            &m,
            r#"{"temp":215,"valve":"open","meta":{"line":"L2"},"p":[{"v":1},{"v":101325}]}"#,
        )
        .unwrap();
        assert_eq!(
            render(&out),
            vec![
                r#"plant_pressure_pascals{device="d1",line="L2"} 101325 @1000"#,
                r#"plant_temperature_celsius{device="d1",line="L2"} 21.5 @1000"#,
                r#"plant_valve_open{device="d1",line="L2"} 1 @1000"#,
            ]
        );
    }

    #[test]
    fn absent_fields_are_skipped_but_an_empty_message_is_missing_field() {
        let m = mapping(PLANT);
        let out = map(&m, r#"{"temp":200}"#).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            map(&m, r#"{"other":1}"#).unwrap_err().reason(),
            "missing_field"
        );
    }

    #[test]
    fn bad_json_payloads_are_classified_and_append_nothing() {
        let m = mapping(PLANT);
        let cases: &[(&[u8], &str)] = &[
            (b"{\"temp\":", "invalid_json"),
            (b"\xff\xfe{}", "invalid_utf8"),
            (br#"{"temp":{"x":1}}"#, "wrong_type"),
            (br#"{"temp":[1]}"#, "wrong_type"),
            (br#"{"valve":"half"}"#, "unmapped_string"),
            (br#"{"temp":"NaN"}"#, "non_finite"),
            (br#"{"temp":"-inf"}"#, "non_finite"),
            (br#"{"temp":1e999}"#, "invalid_json"),
            (br#"{"temp":1,"meta":{"line":[1]}}"#, "wrong_type"),
        ];
        for (payload, reason) in cases {
            let mut out = Vec::new();
            let err = m.map(payload, &[], 0, &mut out).unwrap_err();
            assert_eq!(
                err.reason(),
                *reason,
                "{}",
                String::from_utf8_lossy(payload)
            );
            assert!(out.is_empty());
        }
        let big = vec![b' '; DEFAULT_MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            m.map(&big, &[], 0, &mut Vec::new()).unwrap_err().reason(),
            "too_large"
        );
    }

    #[test]
    fn unknown_strings_use_the_default_when_configured() {
        let m = mapping(
            r#"
            [[metrics]]
            name = "door_open"
            path = "state"
            values = { ON = 1, OFF = 0 }
            default = -1
        "#,
        );
        assert_eq!(map(&m, r#"{"state":"ON"}"#).unwrap()[0].value, 1.0);
        assert_eq!(map(&m, r#"{"state":"weird"}"#).unwrap()[0].value, -1.0);
        assert_eq!(map(&m, r#"{"state":true}"#).unwrap()[0].value, 1.0);
        assert_eq!(map(&m, r#"{"state":"0.5"}"#).unwrap()[0].value, 0.5);
    }

    #[test]
    fn each_array_elements_with_root_labels_and_timestamps() {
        let m = mapping(
            r#"
            each = "readings"
            labels = { sensor = "id", site = "$.site" }
            timestamp = "ts"
            [[metrics]]
            name = "humidity_ratio"
            path = "h"
            scale = 0.01
        "#,
        );
        let out = map(
            &m,
            r#"{"site":"north","readings":[
                {"id":"a","h":40,"ts":1700000000},
                {"id":"b","h":50,"ts":1700000000123},
                {"id":"c","h":60,"ts":"2023-11-14T22:13:20.5+01:00"},
                {"id":"d","h":70}]}"#,
        )
        .unwrap();
        assert_eq!(
            render(&out),
            vec![
                r#"humidity_ratio{device="d1",sensor="a",site="north"} 0.4 @1700000000000"#,
                r#"humidity_ratio{device="d1",sensor="b",site="north"} 0.5 @1700000000123"#,
                r#"humidity_ratio{device="d1",sensor="c",site="north"} 0.6 @1699996400500"#,
                r#"humidity_ratio{device="d1",sensor="d",site="north"} 0.7000000000000001 @1000"#,
            ]
        );
        assert_eq!(
            map(&m, r#"{"readings":{"a":1}}"#).unwrap_err().reason(),
            "missing_field"
        );
        assert_eq!(
            map(&m, r#"{"readings":[{"h":1,"ts":"yesterday"}]}"#)
                .unwrap_err()
                .reason(),
            "invalid_timestamp"
        );
        assert_eq!(
            map(&m, r#"{"readings":3}"#).unwrap_err().reason(),
            "wrong_type"
        );
    }

    #[test]
    fn each_object_members_become_a_label() {
        let m = mapping(
            r#"
            each = "sensors"
            each_key_label = "sensor"
            [[metrics]]
            name = "vibration_mm_per_second"
            path = "rms"
        "#,
        );
        let out = map(&m, r#"{"sensors":{"s1":{"rms":1.5},"s2":{"rms":2}}}"#).unwrap();
        assert_eq!(
            render(&out),
            vec![
                r#"vibration_mm_per_second{device="d1",sensor="s1"} 1.5 @1000"#,
                r#"vibration_mm_per_second{device="d1",sensor="s2"} 2 @1000"#,
            ]
        );
    }

    #[test]
    fn csv_with_header_quotes_and_without_header() {
        let m = mapping(
            r#"
            format = "csv"
            labels = { probe = "probe" }
            timestamp = "time"
            [[metrics]]
            name = "t_celsius"
            path = "temp"
            [[metrics]]
            name = "h_ratio"
            path = "hum"
        "#,
        );
        let out = map(
            &m,
            "time,probe,temp,hum\r\n1700000000,\"p,1\",21.5,0.4\r\n1700000001,p2,22,\n",
        )
        .unwrap();
        assert_eq!(
            render(&out),
            vec![
                r#"h_ratio{device="d1",probe="p,1"} 0.4 @1700000000000"#,
                r#"t_celsius{device="d1",probe="p,1"} 21.5 @1700000000000"#,
                r#"t_celsius{device="d1",probe="p2"} 22 @1700000001000"#,
            ]
        );
        assert_eq!(map(&m, "temp\n\"x").unwrap_err().reason(), "invalid_csv");
        assert_eq!(
            map(&m, "temp\nabc").unwrap_err().reason(),
            "unmapped_string"
        );
        let by_index = mapping(
            r#"
            format = "csv"
            csv_header = false
            csv_delimiter = ";"
            [[metrics]]
            name = "p_pascals"
            path = "1"
        "#,
        );
        assert_eq!(map(&by_index, "x;101325").unwrap()[0].value, 101325.0);
        // Quoting as the csv crate reads it, as the logs and webhook
        // sources do (one splitter).
        assert_eq!(map(&by_index, "\"a;b\";\"7\"").unwrap()[0].value, 7.0);
        assert_eq!(
            map(&by_index, "x;1\"2").unwrap_err().reason(),
            "unmapped_string"
        );
        let bad = MappingConfig {
            csv_delimiter: 'é',
            ..toml::from_str("format = \"csv\"\n[[metrics]]\nname = \"a\"\npath = \"a\"").unwrap()
        };
        assert!(Mapping::new(&bad).unwrap_err().contains("ASCII"));
    }

    #[test]
    fn plain_and_string_payloads() {
        let plain = mapping(
            r#"
            format = "plain"
            [[metrics]]
            name = "t_celsius"
            offset = -273.15
        "#,
        );
        let out = map(&plain, " 300.15\n").unwrap();
        assert!((out[0].value - 27.0).abs() < 1e-9);
        assert_eq!(out[0].labels.as_str(), r#"{device="d1"}"#);
        assert_eq!(map(&plain, "inf").unwrap_err().reason(), "non_finite");
        assert_eq!(map(&plain, "warm").unwrap_err().reason(), "unmapped_string");
        let string = mapping(
            r#"
            format = "string"
            [[metrics]]
            name = "relay_on"
            values = { ON = 1, OFF = 0 }
            default = 0
        "#,
        );
        assert_eq!(map(&string, "ON").unwrap()[0].value, 1.0);
        assert_eq!(map(&string, "??").unwrap()[0].value, 0.0);
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_key() {
        let bad = |text: &str| -> String {
            let cfg: MappingConfig = toml::from_str(text).expect("parses");
            Mapping::new(&cfg).unwrap_err()
        };
        assert!(bad("metrics = []").contains("metrics"));
        assert!(bad("[[metrics]]\nname = \"a-b\"\npath = \"x\"").contains("metrics[0].name"));
        assert!(
            bad("[[metrics]]\nname = \"c\"\nkind = \"counter\"\npath = \"x\"").contains("_total")
        );
        assert!(bad("[[metrics]]\nname = \"c\"\npath = \"x[a]\"").contains("metrics[0].path"));
        assert!(bad("labels = { \"__x\" = \"a\" }\n[[metrics]]\nname = \"c\"").contains("labels"));
        assert!(bad("format = \"string\"\n[[metrics]]\nname = \"c\"").contains("values"));
        assert!(
            bad("format = \"plain\"\n[[metrics]]\nname = \"c\"\npath = \"x\"").contains("path")
        );
        assert!(
            bad("format = \"csv\"\ncsv_header = false\n[[metrics]]\nname = \"c\"\npath = \"x\"")
                .contains("index")
        );
        assert!(toml::from_str::<MappingConfig>("formt = \"json\"\nmetrics = []").is_err());
    }

    #[test]
    fn unit_is_appended_once() {
        let m = mapping(
            r#"
            [[metrics]]
            name = "boiler_temperature"
            unit = "celsius"
            path = "t"
            [[metrics]]
            name = "pump_runtime_total"
            kind = "counter"
            unit = "seconds"
            path = "r"
        "#,
        );
        let names: Vec<&str> = m.families().map(|f| f.name.as_ref()).collect();
        assert_eq!(
            names,
            vec!["boiler_temperature_celsius", "pump_runtime_seconds_total"]
        );
    }

    #[test]
    fn json_path_helper_and_parser() {
        let v: Value = serde_json::from_str(r#"{"a":{"b":[{"c":1},[2,3]]}}"#).unwrap();
        assert_eq!(json_path(&v, "a.b[0].c"), Some(&Value::from(1)));
        assert_eq!(json_path(&v, "a.b[1][1]"), Some(&Value::from(3)));
        assert_eq!(json_path(&v, "$.a.b[0].c"), Some(&Value::from(1)));
        assert_eq!(json_path(&v, ""), Some(&v));
        assert_eq!(json_path(&v, "a.x"), None);
        assert_eq!(json_path(&v, "a.b[9]"), None);
        // The dotted index form of the logs and webhook sources is the same path.
        assert_eq!(json_path(&v, "a.b.0.c"), Some(&Value::from(1)));
        assert_eq!(json_path(&v, "a.b.1.1"), Some(&Value::from(3)));
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse("a[1").is_err());
    }

    #[test]
    fn rfc3339_parsing() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00.25Z"),
            Some(951_868_800_250)
        );
        assert_eq!(
            parse_rfc3339("2000-03-01 01:00:00+01:00"),
            Some(951_868_800_000)
        );
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00"), None);
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
        // Days that do not exist (the hand-written parser took them).
        assert_eq!(parse_rfc3339("2020-02-31T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2021-02-29T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339("2020-02-29T00:00:00Z"),
            Some(1_582_934_400_000)
        );
    }

    #[test]
    fn more_than_sixteen_metrics_still_get_labels() {
        let mut text = String::from("labels = { d = \"id\" }\n");
        for i in 0..20 {
            text.push_str(&format!("[[metrics]]\nname = \"m{i}\"\npath = \"v{i}\"\n"));
        }
        let m = mapping(&text);
        let mut payload = String::from("{\"id\":\"x\"");
        for i in 0..20 {
            payload.push_str(&format!(",\"v{i}\":{i}"));
        }
        payload.push('}');
        let out = map(&m, &payload).unwrap();
        assert_eq!(out.len(), 20);
        assert!(
            out.iter()
                .all(|s| s.labels.as_str() == r#"{d="x",device="d1"}"#)
        );
    }
}
