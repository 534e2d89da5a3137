//! Which series and events a dashboard client receives.
//!
//! A client sends up to [`MAX_FILTERS`] filters; a series is streamed when
//! it matches any of them, and every series carries the bitmask of the
//! filters it matched (bit `i` for filter `i`), so one stream can feed
//! several views (the page uses filter 0 for the host overview and filter 1
//! for the user's filter). Within one filter, every given field must match:
//!
//! - `source`: any of these source names (exact).
//! - `metric`: any of these metric names; `*` matches any run of characters
//!   (`demo_*`, `*_celsius`).
//! - `labels`: for each label name, the series' value must be one of the
//!   listed values (a series without the label does not match).
//! - `text`: every whitespace-separated word occurs, case-insensitively, in
//!   `metric{labels} source`.
//!
//! An empty filter matches everything.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::exposition::text::escape_label_value;

/// At most this many filters per subscription (the mask is a `u8`).
pub const MAX_FILTERS: usize = 8;
/// At most this many values in one field (keeps matching cheap).
pub const MAX_VALUES: usize = 64;

/// One filter, as sent by a client.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    pub source: Vec<String>,
    pub metric: Vec<String>,
    pub labels: BTreeMap<String, Vec<String>>,
    pub text: String,
}

/// Why a filter was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    #[error("at most {MAX_FILTERS} filters are allowed")]
    TooManyFilters,
    #[error("filter field `{0}` has more than {MAX_VALUES} values")]
    TooManyValues(&'static str),
}

/// What a filter is matched against: one series, or the series of an event.
pub struct Subject<'a> {
    pub source: &'a str,
    pub metric: &'a str,
    /// The rendered label set, `{a="x",b="y"}`.
    pub labels: &'a str,
}

impl Filter {
    pub fn check(&self) -> Result<(), FilterError> {
        if self.source.len() > MAX_VALUES {
            return Err(FilterError::TooManyValues("source"));
        }
        if self.metric.len() > MAX_VALUES {
            return Err(FilterError::TooManyValues("metric"));
        }
        if self.labels.len() > MAX_VALUES || self.labels.values().any(|v| v.len() > MAX_VALUES) {
            return Err(FilterError::TooManyValues("labels"));
        }
        Ok(())
    }

    pub fn matches(&self, s: &Subject<'_>) -> bool {
        if !self.source.is_empty() && !self.source.iter().any(|x| x == s.source) {
            return false;
        }
        if !self.metric.is_empty() && !self.metric.iter().any(|p| glob(p, s.metric)) {
            return false;
        }
        for (name, values) in &self.labels {
            if !values.iter().any(|v| has_label(s.labels, name, v)) {
                return false;
            }
        }
        if !self.text.trim().is_empty() {
            let hay = format!("{}{} {}", s.metric, s.labels, s.source).to_lowercase();
            if !self
                .text
                .split_whitespace()
                .all(|w| hay.contains(&w.to_lowercase()))
            {
                return false;
            }
        }
        true
    }
}

/// The bitmask of `filters` that `s` matches (an empty list matches all).
pub fn mask(filters: &[Filter], s: &Subject<'_>) -> u8 {
    if filters.is_empty() {
        return 1;
    }
    filters
        .iter()
        .take(MAX_FILTERS)
        .enumerate()
        .filter(|(_, f)| f.matches(s))
        .fold(0u8, |m, (i, _)| m | (1 << i))
}

/// `*` matches any run of characters; everything else literally.
pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Whether the rendered label set has `name="value"`.
fn has_label(rendered: &str, name: &str, value: &str) -> bool {
    let mut needle = String::with_capacity(name.len() + value.len() + 4);
    needle.push_str(name);
    needle.push_str("=\"");
    escape_label_value(value, &mut needle);
    needle.push('"');
    rendered.match_indices(&needle).any(|(i, _)| {
        let before = rendered.as_bytes().get(i.wrapping_sub(1)).copied();
        let after = rendered.as_bytes().get(i + needle.len()).copied();
        matches!(before, Some(b'{' | b',')) && matches!(after, Some(b'}' | b','))
    })
}

/// Filters from a query string (`/api/ws?source=a&metric=x_*&label=line:L1&text=hot`):
/// one filter; `label` takes `name:value` or `name=value`; repeated keys
/// add values. Returns the filter, the requested window in seconds, and the
/// keys that were not understood.
pub fn from_query(query: &str) -> (Filter, Option<u64>, Vec<String>) {
    let mut f = Filter::default();
    let mut window = None;
    let mut unknown = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        match k.as_str() {
            "source" if !v.is_empty() => f.source.push(v),
            "metric" if !v.is_empty() => f.metric.push(v),
            "label" => match v.split_once([':', '=']) {
                Some((name, value)) if !name.is_empty() => f
                    .labels
                    .entry(name.to_string())
                    .or_default()
                    .push(value.to_string()),
                _ => unknown.push(format!("label={v}")),
            },
            "text" => {
                if !f.text.is_empty() {
                    f.text.push(' ');
                }
                f.text.push_str(&v);
            }
            "window" => match v.parse::<u64>() {
                Ok(w) => window = Some(w),
                Err(_) => unknown.push(format!("window={v}")),
            },
            "source" | "metric" => {}
            _ => unknown.push(k),
        }
    }
    (f, window, unknown)
}

/// Decode `%XX` escapes and `+` as space; invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subj<'a>(source: &'a str, metric: &'a str, labels: &'a str) -> Subject<'a> {
        Subject {
            source,
            metric,
            labels,
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(Filter::default().matches(&subj("s", "m", "")));
        assert_eq!(mask(&[], &subj("s", "m", "")), 1);
    }

    #[test]
    fn fields_are_anded_and_values_ored() {
        let f = Filter {
            source: vec!["demo".into()],
            metric: vec!["demo_*_celsius".into(), "x".into()],
            labels: BTreeMap::from([("line".into(), vec!["L1".into(), "L2".into()])]),
            text: "PRESS-01".into(),
        };
        let labels = r#"{device="press-01",line="L2"}"#;
        assert!(f.matches(&subj("demo", "demo_temperature_celsius", labels)));
        assert!(!f.matches(&subj("other", "demo_temperature_celsius", labels)));
        assert!(!f.matches(&subj("demo", "demo_pressure_pascals", labels)));
        assert!(!f.matches(&subj(
            "demo",
            "demo_temperature_celsius",
            r#"{device="press-01",line="L3"}"#
        )));
        assert!(!f.matches(&subj(
            "demo",
            "demo_temperature_celsius",
            r#"{device="press-02",line="L1"}"#
        )));
    }

    #[test]
    fn label_match_is_exact_not_substring() {
        let f = Filter {
            labels: BTreeMap::from([("line".into(), vec!["L1".into()])]),
            ..Filter::default()
        };
        assert!(!f.matches(&subj("s", "m", r#"{line="L10"}"#)));
        assert!(!f.matches(&subj("s", "m", r#"{xline="L1"}"#)));
        assert!(!f.matches(&subj("s", "m", "")));
        assert!(f.matches(&subj("s", "m", r#"{a="1",line="L1"}"#)));
    }

    #[test]
    fn mask_sets_one_bit_per_matching_filter() {
        let sys = Filter {
            source: vec!["system".into()],
            ..Filter::default()
        };
        let user = Filter {
            text: "cpu".into(),
            ..Filter::default()
        };
        assert_eq!(
            mask(
                &[sys.clone(), user.clone()],
                &subj("system", "vitals_cpu_usage_ratio", "")
            ),
            3
        );
        assert_eq!(
            mask(
                &[sys.clone(), user.clone()],
                &subj("system", "vitals_load1", "")
            ),
            1
        );
        assert_eq!(mask(&[sys, user], &subj("demo", "demo_x", "")), 0);
    }

    #[test]
    fn globs() {
        assert!(glob("a*", "abc"));
        assert!(glob("*c", "abc"));
        assert!(glob("a*c", "abc"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxc"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("*", ""));
        assert!(!glob("abc", "abcd"));
    }

    #[test]
    fn query_strings_become_one_filter() {
        let (f, w, unknown) = from_query(
            "source=demo&metric=demo_%2A&label=line:L1&label=line%3DL2&text=hot+spot&window=300&bogus=1",
        );
        assert_eq!(f.source, vec!["demo"]);
        assert_eq!(f.metric, vec!["demo_*"]);
        assert_eq!(f.labels["line"], vec!["L1", "L2"]);
        assert_eq!(f.text, "hot spot");
        assert_eq!(w, Some(300));
        assert_eq!(unknown, vec!["bogus"]);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
