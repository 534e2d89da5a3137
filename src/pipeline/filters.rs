//! Per-series noise filters and unit conversion, configured per metric
//! selector with `[[pipeline]]` rules (the first matching rule applies).
//!
//! Order for each sample: unit conversion (`scale`, `offset`), range check
//! (`min`, `max`), de-duplication (a timestamp not newer than the last kept
//! one), rate limit (`min_interval`), deadband (a change smaller than
//! `deadband` repeats the last kept value), smoothing (`ewma` or `median`).

use std::collections::BTreeMap;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::Deserialize;

use super::{Stage, Verdict};
use crate::key_error::KeyError;
use crate::model::{Labels, Sample};
use crate::select::Pattern;
use crate::stats::Window;

/// Most series whose filter state is kept; beyond it, state not used for
/// [`STALE_MS`] is dropped (and, failing that, all of it).
const MAX_SERIES: usize = 100_000;
const STALE_MS: i64 = 600_000;
/// Largest median smoothing window.
pub const MAX_MEDIAN: usize = 15;

/// Smoothing of a series' values.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Smoothing {
    /// Exponentially weighted moving average with this weight of the new value (0..1].
    Ewma(f64),
    /// Median of the last this many values (1..=15).
    Median(usize),
}

/// `[[pipeline]]`: filters for the series a selector matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineRule {
    /// Metric family name (anchored regex).
    pub metric: Pattern,
    /// Label matchers (anchored regexes); all must match.
    #[serde(default)]
    pub labels: BTreeMap<String, Pattern>,
    /// Unit conversion: `value * scale + offset` (e.g. °F to °C: 5/9, -160/9).
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Values outside [min, max] (after conversion) are dropped as `out_of_range`.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Drop samples whose timestamp is not newer than the last kept one.
    #[serde(default)]
    pub dedup: bool,
    /// Keep at most one sample per this interval per series.
    #[serde(default, with = "humantime_serde")]
    pub min_interval: Option<Duration>,
    /// Changes smaller than this repeat the last kept value.
    pub deadband: Option<f64>,
    pub smoothing: Option<Smoothing>,
    /// Run the anomaly detectors on these series (default true).
    #[serde(default = "yes")]
    pub detect: bool,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

impl PipelineRule {
    /// Problems with the key relative to the rule, for the config validator.
    pub fn validate(&self) -> Result<(), KeyError> {
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(KeyError::new("scale", "must be a finite, non-zero number"));
        }
        if !self.offset.is_finite() {
            return Err(KeyError::new("offset", "must be finite"));
        }
        if let (Some(a), Some(b)) = (self.min, self.max)
            && a > b
        {
            return Err(KeyError::new("min", format!("{a} is above max {b}")));
        }
        if self.deadband.is_some_and(|d| d.is_nan() || d < 0.0) {
            return Err(KeyError::new("deadband", "must be zero or more"));
        }
        match self.smoothing {
            Some(Smoothing::Ewma(a)) if !(a > 0.0 && a <= 1.0) => {
                Err(KeyError::new("smoothing", "ewma weight must be in (0, 1]"))
            }
            Some(Smoothing::Median(n)) if !(1..=MAX_MEDIAN).contains(&n) => Err(KeyError::new(
                "smoothing",
                format!("median window must be 1..={MAX_MEDIAN}"),
            )),
            _ => Ok(()),
        }
    }

    pub fn matches(&self, family: &str, labels: &Labels) -> bool {
        crate::select::matches(&self.metric, &self.labels, family, labels)
    }
}

#[derive(Debug, Clone)]
struct SeriesFilter {
    /// Index of the matching rule, or `None` when no rule matches.
    rule: Option<usize>,
    last_ts: Option<i64>,
    /// Last value passed on (after deadband and smoothing).
    last_kept: Option<f64>,
    ewma: Option<f64>,
    median: Option<Box<Window<MAX_MEDIAN>>>,
    seen_ms: i64,
}

/// The filter stage: applies the first matching `[[pipeline]]` rule.
pub struct Filters {
    rules: Vec<PipelineRule>,
    series: FxHashMap<(std::sync::Arc<str>, Labels), SeriesFilter>,
}

impl Filters {
    pub fn new(rules: Vec<PipelineRule>) -> Self {
        Filters {
            rules,
            series: FxHashMap::default(),
        }
    }

    /// Whether detection runs on the series (the first matching rule's `detect`).
    pub fn detect_enabled(&self, family: &str, labels: &Labels) -> bool {
        self.rules
            .iter()
            .find(|r| r.matches(family, labels))
            .is_none_or(|r| r.detect)
    }

    fn evict(&mut self, now_ms: i64) {
        self.series.retain(|_, s| now_ms - s.seen_ms < STALE_MS);
        if self.series.len() >= MAX_SERIES {
            self.series.clear();
        }
    }
}

impl Stage for Filters {
    fn process(&mut self, sample: &mut Sample) -> Verdict {
        if self.rules.is_empty() {
            return Verdict::Keep;
        }
        let key = (sample.family.name.clone(), sample.labels.clone());
        if !self.series.contains_key(&key) {
            if self.series.len() >= MAX_SERIES {
                self.evict(sample.timestamp_ms);
            }
            let rule = self
                .rules
                .iter()
                .position(|r| r.matches(&sample.family.name, &sample.labels));
            let median = match rule.and_then(|r| self.rules[r].smoothing) {
                Some(Smoothing::Median(_)) => Some(Box::default()),
                _ => None,
            };
            self.series.insert(
                key.clone(),
                SeriesFilter {
                    rule,
                    last_ts: None,
                    last_kept: None,
                    ewma: None,
                    median,
                    seen_ms: sample.timestamp_ms,
                },
            );
        }
        let Some(state) = self.series.get_mut(&key) else {
            return Verdict::Keep;
        };
        state.seen_ms = sample.timestamp_ms;
        let Some(rule) = state.rule.map(|i| &self.rules[i]) else {
            return Verdict::Keep;
        };
        let mut v = sample.value * rule.scale + rule.offset;
        if !v.is_finite() {
            return Verdict::Drop("infinite");
        }
        if rule.min.is_some_and(|m| v < m) || rule.max.is_some_and(|m| v > m) {
            return Verdict::Drop("out_of_range");
        }
        if let Some(last) = state.last_ts {
            if rule.dedup && sample.timestamp_ms <= last {
                return Verdict::Drop("duplicate");
            }
            if let Some(iv) = rule.min_interval
                && sample.timestamp_ms - last < iv.as_millis() as i64
            {
                return Verdict::Drop("rate_limited");
            }
        }
        state.last_ts = Some(sample.timestamp_ms);
        if let (Some(db), Some(last)) = (rule.deadband, state.last_kept)
            && (v - last).abs() < db
        {
            v = last;
        }
        match rule.smoothing {
            Some(Smoothing::Ewma(a)) => {
                let e = state.ewma.map_or(v, |e| e + a * (v - e));
                state.ewma = Some(e);
                v = e;
            }
            Some(Smoothing::Median(n)) => {
                if let Some(w) = &mut state.median {
                    w.push(v);
                    // The window holds MAX_MEDIAN values; the median is of the last n.
                    let keep = w.len().min(n);
                    let mut recent: Vec<f64> = w.iter().skip(w.len() - keep).collect();
                    recent.sort_by(f64::total_cmp);
                    v = recent[recent.len() / 2];
                }
            }
            None => {}
        }
        state.last_kept = Some(v);
        sample.value = v;
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FamilyMeta, MetricKind};

    fn rule(toml_text: &str) -> PipelineRule {
        #[derive(Deserialize)]
        struct W {
            pipeline: Vec<PipelineRule>,
        }
        let w: W = config::Config::builder()
            .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        w.pipeline.into_iter().next().unwrap()
    }

    fn feed(f: &mut Filters, values: &[(i64, f64)]) -> Vec<Result<f64, &'static str>> {
        let fam = FamilyMeta::new("temp", MetricKind::Gauge, "t");
        values
            .iter()
            .map(|(ts, v)| {
                let mut s = Sample {
                    family: fam.clone(),
                    labels: Labels::from_pairs(&[("sensor", "a")]),
                    value: *v,
                    timestamp_ms: *ts,
                };
                match f.process(&mut s) {
                    Verdict::Keep => Ok(s.value),
                    Verdict::Drop(r) => Err(r),
                }
            })
            .collect()
    }

    #[test]
    fn converts_units_then_checks_the_range() {
        let mut f = Filters::new(vec![rule(
            "[[pipeline]]\nmetric = \"temp\"\nscale = 0.5\noffset = -10\nmin = -50\nmax = 100\n",
        )]);
        assert_eq!(
            feed(&mut f, &[(1, 100.0), (2, 400.0)]),
            vec![Ok(40.0), Err("out_of_range")]
        );
    }

    #[test]
    fn dedup_and_rate_limit() {
        let mut f = Filters::new(vec![rule(
            "[[pipeline]]\nmetric = \"temp\"\ndedup = true\nmin_interval = \"10ms\"\n",
        )]);
        let out = feed(
            &mut f,
            &[(100, 1.0), (100, 1.0), (90, 1.0), (105, 2.0), (110, 3.0)],
        );
        assert_eq!(
            out,
            vec![
                Ok(1.0),
                Err("duplicate"),
                Err("duplicate"),
                Err("rate_limited"),
                Ok(3.0)
            ]
        );
    }

    #[test]
    fn deadband_and_smoothing() {
        let mut f = Filters::new(vec![rule(
            "[[pipeline]]\nmetric = \"temp\"\ndeadband = 0.5\n",
        )]);
        let out = feed(&mut f, &[(1, 10.0), (2, 10.3), (3, 10.6), (4, 10.8)]);
        assert_eq!(out, vec![Ok(10.0), Ok(10.0), Ok(10.6), Ok(10.6)]);
        let mut f = Filters::new(vec![rule(
            "[[pipeline]]\nmetric = \"temp\"\nsmoothing = { ewma = 0.5 }\n",
        )]);
        assert_eq!(
            feed(&mut f, &[(1, 0.0), (2, 10.0), (3, 10.0)]),
            vec![Ok(0.0), Ok(5.0), Ok(7.5)]
        );
        let mut f = Filters::new(vec![rule(
            "[[pipeline]]\nmetric = \"temp\"\nsmoothing = { median = 3 }\n",
        )]);
        let out = feed(&mut f, &[(1, 1.0), (2, 100.0), (3, 2.0), (4, 3.0)]);
        assert_eq!(out, vec![Ok(1.0), Ok(100.0), Ok(2.0), Ok(3.0)]);
    }

    #[test]
    fn unmatched_series_pass_untouched_and_detect_defaults_on() {
        let mut f = Filters::new(vec![rule(
            "[[pipeline]]\nmetric = \"other\"\nscale = 2\ndetect = false\n",
        )]);
        assert_eq!(feed(&mut f, &[(1, 3.0)]), vec![Ok(3.0)]);
        assert!(f.detect_enabled("temp", &Labels::empty()));
        assert!(!f.detect_enabled("other", &Labels::empty()));
    }
}
