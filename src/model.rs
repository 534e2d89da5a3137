//! The data that flows from sources through the pipeline into the store.
//!
//! A [`Sample`] is one value of one series at one instant. Sources group the
//! samples of one read (one tick, one MQTT message, one HTTP poll) into a
//! [`Batch`] and send it on the bounded ingest channel.

use std::sync::Arc;

/// Prometheus metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    Gauge,
    Counter,
    /// One of the `_bucket`, `_sum` or `_count` parts of a histogram: the
    /// family name carries the suffix and the store renders the three parts
    /// under one `# TYPE <base> histogram` header.
    Histogram,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// Name, type and help text of a metric family. Shared by every series of
/// the family, so it is reference counted rather than copied per sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyMeta {
    pub name: Arc<str>,
    pub kind: MetricKind,
    pub help: Arc<str>,
}

impl FamilyMeta {
    pub fn new(name: &str, kind: MetricKind, help: &str) -> Arc<Self> {
        Arc::new(FamilyMeta {
            name: name.into(),
            kind,
            help: help.into(),
        })
    }
}

/// A label set in canonical form: sorted by name, rendered once in the
/// Prometheus text format (`{a="x",b="y"}`, or empty for no labels).
///
/// The rendered form is both the store key and what a scrape writes, so a
/// scrape never re-escapes label values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Labels(Box<str>);

impl Labels {
    /// No labels.
    pub fn empty() -> Self {
        Labels(Box::from(""))
    }

    /// Build from pairs in any order; pairs with an empty value are left out
    /// (Prometheus treats an empty label value as an absent label).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Self {
        let mut sorted: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        if sorted.is_empty() {
            return Labels::empty();
        }
        let mut out = String::with_capacity(
            2 + sorted
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>(),
        );
        out.push('{');
        for (i, (k, v)) in sorted.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            crate::exposition::text::escape_label_value(v, &mut out);
            out.push('"');
        }
        out.push('}');
        Labels(out.into_boxed_str())
    }

    /// The rendered form, `{a="x"}` or the empty string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The label pairs, unescaped, in name order.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let s = self.0.as_ref();
        if s.len() < 2 {
            return out;
        }
        let body = &s[1..s.len() - 1];
        let mut chars = body.chars().peekable();
        loop {
            let mut name = String::new();
            for c in chars.by_ref() {
                if c == '=' {
                    break;
                }
                name.push(c);
            }
            if name.is_empty() {
                break;
            }
            // opening quote
            chars.next();
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => break,
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            out.push((name, value));
            // separating comma
            if chars.next().is_none() {
                break;
            }
        }
        out
    }

    /// The value of one label, if present.
    pub fn get(&self, name: &str) -> Option<String> {
        self.pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// A copy with one more label (replacing a label of the same name).
    pub fn with(&self, name: &str, value: &str) -> Labels {
        let mut pairs = self.pairs();
        pairs.retain(|(k, _)| k != name);
        pairs.push((name.to_string(), value.to_string()));
        Labels::from_pairs(&pairs)
    }
}

/// Bounds on the size of a series' identity, checked where a series is
/// created, so the cardinality budgets bound memory too: a source can hold
/// at most (its series budget) × (`max_label_bytes` + name + overhead).
///
/// The defaults are far above what devices and business events use (a
/// serial number, a topic segment, a merchant id: tens of bytes) and far
/// below what would let a few hundred messages take hundreds of MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelLimits {
    /// Longest label value, in bytes of UTF-8 (before escaping).
    pub max_label_value_bytes: usize,
    /// Most bytes of a series' whole label set as written on `/metrics`
    /// (`{a="x",b="y"}`: names, values, quotes and separators).
    pub max_label_bytes: usize,
    /// Longest metric name, in bytes.
    pub max_metric_name_bytes: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        LabelLimits {
            max_label_value_bytes: 1024,
            max_label_bytes: 4096,
            max_metric_name_bytes: 256,
        }
    }
}

/// Which bound of [`LabelLimits`] a series exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    MetricNameTooLong,
    LabelValueTooLong,
    LabelsTooLarge,
}

impl LimitExceeded {
    /// The bounded `reason` label of the drop.
    pub fn reason(self) -> &'static str {
        match self {
            LimitExceeded::MetricNameTooLong => "metric_name_too_long",
            LimitExceeded::LabelValueTooLong => "label_value_too_long",
            LimitExceeded::LabelsTooLarge => "labels_too_large",
        }
    }
}

impl LabelLimits {
    /// Check a metric name.
    pub fn check_name(&self, name: &str) -> Result<(), LimitExceeded> {
        if name.len() > self.max_metric_name_bytes {
            Err(LimitExceeded::MetricNameTooLong)
        } else {
            Ok(())
        }
    }

    /// Check a label set (one pass over its rendered form, no allocation).
    pub fn check_labels(&self, labels: &Labels) -> Result<(), LimitExceeded> {
        let s = labels.as_str().as_bytes();
        // The value check comes first, so a set that is too large because
        // of one long value says so. Values are the quoted parts; an escape
        // (`\\`, `\"`, `\n`) stands for one byte of the value. The scan
        // stops at the first value over the bound.
        if s.len() > self.max_label_value_bytes {
            self.check_values(s)?;
        }
        if s.len() > self.max_label_bytes {
            return Err(LimitExceeded::LabelsTooLarge);
        }
        Ok(())
    }

    fn check_values(&self, s: &[u8]) -> Result<(), LimitExceeded> {
        let (mut in_value, mut escaped, mut len) = (false, false, 0usize);
        for &b in s {
            if !in_value {
                if b == b'"' {
                    in_value = true;
                    len = 0;
                }
                continue;
            }
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
                continue;
            } else if b == b'"' {
                in_value = false;
                continue;
            }
            len += 1;
            if len > self.max_label_value_bytes {
                return Err(LimitExceeded::LabelValueTooLong);
            }
        }
        Ok(())
    }

    /// Both checks.
    pub fn check(&self, name: &str, labels: &Labels) -> Result<(), LimitExceeded> {
        self.check_name(name)?;
        self.check_labels(labels)
    }
}

/// One value of one series.
#[derive(Debug, Clone)]
pub struct Sample {
    pub family: Arc<FamilyMeta>,
    pub labels: Labels,
    pub value: f64,
    /// Milliseconds since the Unix epoch when the value was observed.
    pub timestamp_ms: i64,
}

/// How the store treats the series a batch does not mention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchMode {
    /// The batch is the source's complete current view: any series of this
    /// source missing from it (an unmounted disk, a vanished sensor) is
    /// removed from the store.
    Snapshot,
    /// The batch only adds or updates series; others stay until they expire.
    Update,
    /// The source stopped (removed or changed by a reload): remove every
    /// series of it, including its `<source>/<part>` sub-keys. Sent by the
    /// supervisor as the source's last message, so batches it queued before
    /// stopping cannot bring its series back; carries no samples.
    Remove,
}

/// The samples of one read of one source.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Name of the source instance that produced the batch.
    pub source: Arc<str>,
    pub mode: BatchMode,
    pub samples: Vec<Sample>,
}

/// Current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_escaped_and_round_trip() {
        let l = Labels::from_pairs(&[("b", "x\"y"), ("a", "1\\2\n3")]);
        assert_eq!(l.as_str(), r#"{a="1\\2\n3",b="x\"y"}"#);
        assert_eq!(
            l.pairs(),
            vec![
                ("a".to_string(), "1\\2\n3".to_string()),
                ("b".to_string(), "x\"y".to_string())
            ]
        );
        assert_eq!(l.get("b").as_deref(), Some("x\"y"));
    }

    #[test]
    fn empty_values_are_dropped_and_empty_set_renders_nothing() {
        let l = Labels::from_pairs(&[("a", "")]);
        assert!(l.is_empty());
        assert_eq!(l.as_str(), "");
        assert!(l.pairs().is_empty());
    }

    #[test]
    fn with_replaces_existing_label() {
        let l = Labels::from_pairs(&[("a", "1")])
            .with("a", "2")
            .with("c", "3");
        assert_eq!(l.as_str(), r#"{a="2",c="3"}"#);
    }

    #[test]
    fn label_limits_bound_values_the_whole_set_and_the_name() {
        let limits = LabelLimits {
            max_label_value_bytes: 4,
            max_label_bytes: 24,
            max_metric_name_bytes: 5,
        };
        let ok = Labels::from_pairs(&[("a", "1234"), ("b", "x\"\\y")]);
        assert_eq!(
            limits.check("abcde", &ok),
            Ok(()),
            "escapes count as one byte"
        );
        assert_eq!(
            limits.check("abcdef", &ok),
            Err(LimitExceeded::MetricNameTooLong)
        );
        let long = Labels::from_pairs(&[("a", "12345")]);
        assert_eq!(
            limits.check_labels(&long),
            Err(LimitExceeded::LabelValueTooLong)
        );
        let long = Labels::from_pairs(&[("a", "1"), ("b", "12\n45")]);
        assert_eq!(
            limits.check_labels(&long),
            Err(LimitExceeded::LabelValueTooLong)
        );
        // Every value short, the set too large.
        let many = Labels::from_pairs(&[("a", "1234"), ("b", "1234"), ("c", "1234")]);
        assert_eq!(
            limits.check_labels(&many),
            Err(LimitExceeded::LabelsTooLarge)
        );
        assert_eq!(limits.check_labels(&Labels::empty()), Ok(()));
        // A multi-byte value is measured in bytes.
        let wide = Labels::from_pairs(&[("a", "éé€")]);
        assert_eq!(
            limits.check_labels(&wide),
            Err(LimitExceeded::LabelValueTooLong)
        );
    }
}
