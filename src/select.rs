//! Metric selectors: a family name regex plus label matchers, and the
//! anchored [`Pattern`] they (and the include/exclude lists of the system
//! source) are made of. A leaf: it knows only the label set.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::model::Labels;

/// A regex, compiled when the configuration is read so a bad one is
/// reported with its key. Include/exclude patterns match whole names.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let regex = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }

    /// True for the empty pattern, which as an exclude list means "exclude nothing".
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(|e| serde::de::Error::custom(regex_error(&s, &e)))
    }
}

/// The config error for a regex that does not compile, on one line: the
/// regex crate's message spans several lines, the last one says what is wrong.
pub fn regex_error(source: &str, e: &regex::Error) -> String {
    let msg = e.to_string();
    let last = msg
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    format!("invalid regex {source:?}: {last}")
}

/// True when `family` matches `metric` and every matcher matches the label
/// of that name (an absent label matches as the empty string).
pub fn matches(
    metric: &Pattern,
    matchers: &BTreeMap<String, Pattern>,
    family: &str,
    labels: &Labels,
) -> bool {
    if !metric.is_match(family) {
        return false;
    }
    if matchers.is_empty() {
        return true;
    }
    let pairs = labels.pairs();
    matchers.iter().all(|(name, re)| {
        let v = pairs
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str());
        re.is_match(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_label_matchers_must_all_match() {
        let metric = Pattern::new("vitals_cpu_.*").unwrap();
        let mut m = BTreeMap::new();
        m.insert("cpu".to_string(), Pattern::new("0|1").unwrap());
        let l0 = Labels::from_pairs(&[("cpu", "0")]);
        let l7 = Labels::from_pairs(&[("cpu", "7")]);
        assert!(matches(&metric, &m, "vitals_cpu_usage_ratio", &l0));
        assert!(!matches(&metric, &m, "vitals_cpu_usage_ratio", &l7));
        assert!(!matches(&metric, &m, "vitals_memory_bytes", &l0));
        assert!(!matches(
            &metric,
            &m,
            "vitals_cpu_usage_ratio",
            &Labels::empty()
        ));
    }
}
