//! Streaming anomaly detection: detectors, the likelihood layer, the
//! ensemble whose score is exported, NAB scoring and the backtest replay.
//!
//! Every detector implements [`Detector`]: it sees one sample at a time,
//! never looks ahead, keeps a fixed amount of state and does O(1) or
//! O(log n) work per sample.
//!
//! - [`threshold`]: static limits with hysteresis and a minimum duration.
//! - [`robust`]: rolling median/MAD z-score and an EWMA/CUSUM change detector.
//! - [`context`]: the learned model, novelty of short contexts of quantised values.
//! - [`seasonal`]: hour-of-week baseline for business series.
//! - [`cad`]: CAD OSE, contexts of left and right semi-contexts of facts.
//! - [`artime`]: adaptive resonance (fuzzy ART) on short windows, as ARTime.
//! - [`likelihood`]: turns a raw score into a calibrated, log-scaled likelihood.
//! - [`ensemble`]: combines them, applies the threshold and alert suppression.
//! - [`gate`]: minimum effect size and hold periods, per family, between the score and an event.
//! - [`live`]: per-series state in the store, anomaly events and `/metrics` families.
//! - [`nab`]: the Numenta Anomaly Benchmark scoring.
//! - [`backtest`]: CSV replay through the same pipeline stages and ensemble.

pub mod artime;
pub mod backtest;
pub mod cad;
pub mod context;
pub mod ensemble;
pub mod gate;
pub mod likelihood;
pub mod live;
pub mod nab;
pub mod persisted;
pub mod robust;
pub mod seasonal;
pub mod state;
/// Streaming statistics are a leaf of their own ([`crate::stats`]), used by pipeline filters too.
pub use crate::stats;
pub mod threshold;

#[cfg(test)]
pub(crate) mod testdata;

use serde::Deserialize;

pub use ensemble::{DetectorKind, Ensemble, Output};

/// One streaming detector.
pub trait Detector {
    /// Fold in one sample (`ts_ms` since the Unix epoch) and return its
    /// anomaly score in [0, 1]. Never sees later samples.
    fn observe(&mut self, ts_ms: i64, value: f64) -> f64;

    /// Bounded name, used as the `detector` label value.
    fn name(&self) -> &'static str;

    /// Expected value and band, where the detector has them.
    fn band(&self) -> Option<Band> {
        None
    }

    /// The last value lay so far beyond everything seen that it needs no
    /// build-up of evidence: once its likelihood layer has learned, the
    /// ensemble takes the member's score as 1.
    fn beyond_range(&self) -> bool {
        false
    }
}

/// Expected value and a band of normal values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Band {
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
}

/// How each member's raw score becomes a likelihood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LikelihoodKind {
    /// Short mean against exponentially weighted moments of the raw score.
    #[default]
    Ewm,
    /// Numenta's published anomaly likelihood (windowed normal fit).
    Numenta,
}

/// `[detect]`: the anomaly detection that runs on every series.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Run the ensemble on every gauge and counter (counters as rates),
    /// except series whose `[[pipeline]]` rule says `detect = false`.
    pub enabled: bool,
    /// 0..1: higher flags more; moves the ensemble's one threshold.
    pub sensitivity: f64,
    /// Samples after an anomaly event during which no new event fires
    /// (and `vitals_anomaly_flag` stays 1), except for a much stronger
    /// anomaly (see [`ensemble::REFIRE_MARGIN`]).
    pub suppress: u32,
    /// Samples a series is observed before it can be flagged.
    pub learning: u32,
    /// Members of the ensemble.
    pub detectors: Vec<DetectorKind>,
    /// The likelihood layer applied to each member's raw score.
    pub likelihood: LikelihoodKind,
    /// Static thresholds for selected series; they join the ensemble and
    /// fire without learning.
    pub thresholds: Vec<ThresholdRule>,
    /// Publish per-detector scores as `vitals_anomaly_detector_score`.
    pub detector_scores: bool,
    /// Minimum effect size: an event needs the value at least this many
    /// typical (mean absolute) deviations from the series' level (0: off).
    pub min_effect: f64,
    /// The built-in rules of the system source's bursty families (network
    /// and disk rates, process groups): see [`gate::effect_for`].
    pub family_rules: bool,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            enabled: true,
            sensitivity: 0.5,
            suppress: ensemble::DEFAULT_SUPPRESS,
            learning: ensemble::DEFAULT_LEARNING,
            // CUSUM and the median/MAD z-score are opt-in: on heavy-tailed
            // real series they raise more false alarms than the anomalies
            // they add (on NAB, median_mad brings 200 more false positives
            // for no more windows found).
            detectors: vec![DetectorKind::Context, DetectorKind::Seasonal],
            likelihood: LikelihoodKind::Ewm,
            thresholds: Vec::new(),
            detector_scores: false,
            min_effect: DEFAULT_MIN_EFFECT,
            family_rules: true,
        }
    }
}

/// Default `[detect] min_effect`, in typical deviations: off, as every
/// value tried costs NAB points out of fold (1: −1.6, 3: −8.8 standard);
/// the system source's families have their own rules.
pub const DEFAULT_MIN_EFFECT: f64 = 0.0;

impl DetectConfig {
    /// The gate rule of a series of `family`.
    pub fn effect(&self, family: &str, kind: crate::model::MetricKind) -> gate::Effect {
        self.family_rules
            .then(|| gate::effect_for(family, kind))
            .flatten()
            .unwrap_or(gate::Effect::generic(self.min_effect))
    }

    /// The ensemble threshold for the configured sensitivity.
    pub fn threshold(&self) -> f64 {
        ensemble::threshold_for(self.sensitivity)
    }

    /// Problems as (key, reason), for the config validator.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(0.0..=1.0).contains(&self.sensitivity) {
            return Err((
                "detect.sensitivity".into(),
                "must be between 0 and 1".into(),
            ));
        }
        if !self.min_effect.is_finite() || self.min_effect < 0.0 {
            return Err((
                "detect.min_effect".into(),
                "must be a non-negative number".into(),
            ));
        }
        for (i, t) in self.thresholds.iter().enumerate() {
            if t.above.is_none() && t.below.is_none() {
                return Err((
                    format!("detect.thresholds[{i}]"),
                    "needs `above` or `below`".into(),
                ));
            }
            if !t.hysteresis.is_finite() || t.hysteresis < 0.0 {
                return Err((
                    format!("detect.thresholds[{i}].hysteresis"),
                    "must be a non-negative number".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A static threshold for the series a selector matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    /// Metric family name (anchored regex).
    pub metric: crate::select::Pattern,
    /// Label matchers (anchored regexes); all must match.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, crate::select::Pattern>,
    pub above: Option<f64>,
    pub below: Option<f64>,
    #[serde(default)]
    pub hysteresis: f64,
    /// How long the limit must be breached before it fires.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub for_: Option<std::time::Duration>,
    /// The `reason` of the anomaly events it fires (`threshold` when unset).
    #[serde(default)]
    pub reason: Option<String>,
}

impl ThresholdRule {
    pub fn matches(&self, family: &str, labels: &crate::model::Labels) -> bool {
        crate::select::matches(&self.metric, &self.labels, family, labels)
    }

    pub fn spec(&self) -> threshold::ThresholdSpec {
        threshold::ThresholdSpec {
            above: self.above,
            below: self.below,
            hysteresis: self.hysteresis,
            for_ms: self.for_.map_or(0, |d| d.as_millis() as i64),
        }
    }
}
