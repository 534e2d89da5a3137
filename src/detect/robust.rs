//! Robust statistics: a rolling median/MAD z-score and an EWMA-based CUSUM
//! change detector.

use super::{Band, Detector, stats};

/// Window of the rolling median (samples).
pub const MEDIAN_WINDOW: usize = 32;

/// Surprisal of a z-score in [0, 1]: `-log10` of its two-sided tail
/// probability over [`SURPRISAL_SPAN`], so ordinary values stay near 0
/// (mean 0.43 / span under a normal) and one extreme value reaches 1.
/// A sparse raw score lets the likelihood layer see a single spike.
pub fn z_to_score(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    let tail = (2.0 * stats::normal_tail(z.abs())).clamp(1e-300, 1.0);
    (-tail.log10() / SURPRISAL_SPAN).clamp(0.0, 1.0)
}

/// Decades of tail probability that map to a raw score of 1.
pub const SURPRISAL_SPAN: f64 = 48.0;

/// Distance from the rolling median in units of the rolling MAD (scaled to
/// a standard deviation). The MAD is the rolling median of recent absolute
/// deviations, which keeps the work per sample O(log n).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MedianMad {
    values: stats::Window<MEDIAN_WINDOW>,
    deviations: stats::Window<MEDIAN_WINDOW>,
    band: Option<Band>,
}

impl MedianMad {
    pub fn new() -> Self {
        Self::default()
    }

    fn scale(&self, median: f64) -> f64 {
        let mad = self.deviations.median().unwrap_or(0.0) * 1.4826;
        // A constant series has MAD 0; a floor relative to the level keeps
        // the z-score finite and makes any real change stand out.
        mad.max(1e-6 * median.abs()).max(1e-12)
    }
}

impl Detector for MedianMad {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> f64 {
        let score = match self.values.median() {
            Some(median) if self.values.len() >= 8 => {
                let scale = self.scale(median);
                self.band = Some(Band {
                    expected: median,
                    lower: median - 3.0 * scale,
                    upper: median + 3.0 * scale,
                });
                z_to_score((value - median) / scale)
            }
            _ => 0.0,
        };
        self.values.push(value);
        if let Some(m) = self.values.median() {
            self.deviations.push((value - m).abs());
        }
        score
    }

    fn name(&self) -> &'static str {
        "median_mad"
    }

    fn band(&self) -> Option<Band> {
        self.band
    }
}

/// Two-sided CUSUM on the residual of an exponentially weighted mean,
/// standardised by the exponentially weighted deviation. Catches level
/// shifts and slow drifts that a point-wise z-score misses.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cusum {
    ewm: stats::Ewm,
    pos: f64,
    neg: f64,
    /// Allowance per sample, in standard deviations.
    k: f64,
    /// Decision interval, in standard deviations.
    h: f64,
}

impl Default for Cusum {
    fn default() -> Self {
        Cusum::new(0.01, 0.5, 8.0)
    }
}

impl Cusum {
    pub fn new(alpha: f64, k: f64, h: f64) -> Self {
        Cusum {
            ewm: stats::Ewm::new(alpha),
            pos: 0.0,
            neg: 0.0,
            k,
            h,
        }
    }
}

impl Detector for Cusum {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> f64 {
        let mut score = 0.0;
        if self.ewm.n >= 16 {
            let sd = self.ewm.std().max(1e-6 * self.ewm.mean.abs()).max(1e-12);
            let r = ((value - self.ewm.mean) / sd).clamp(-6.0, 6.0);
            self.pos = (self.pos + r - self.k).max(0.0);
            self.neg = (self.neg - r - self.k).max(0.0);
            score = (self.pos.max(self.neg) / self.h).min(1.0);
            if score >= 1.0 {
                // Alarm: restart both sums so the next change is measured afresh.
                self.pos = 0.0;
                self.neg = 0.0;
            }
        }
        self.ewm.update(value);
        score
    }

    fn name(&self) -> &'static str {
        "cusum"
    }

    fn band(&self) -> Option<Band> {
        (self.ewm.n >= 16).then(|| {
            let sd = self.ewm.std();
            Band {
                expected: self.ewm.mean,
                lower: self.ewm.mean - 3.0 * sd,
                upper: self.ewm.mean + 3.0 * sd,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::*;

    #[test]
    fn median_mad_scores_a_spike_and_not_noise() {
        let mut d = MedianMad::new();
        let scores: Vec<f64> = noise(500, 1)
            .iter()
            .enumerate()
            .map(|(i, v)| d.observe(i as i64, *v))
            .collect();
        // 0.2 is a two-sided tail of about 1e-9.6 (z = 6.3).
        let high = scores[100..].iter().filter(|s| **s > 0.2).count();
        assert!(high < 3, "noise only: {high} extreme scores");
        assert!(d.observe(500, 10.0) > 0.4, "spike");
        let b = d.band().unwrap();
        assert!(b.lower < 0.0 && b.upper > 0.0 && b.expected.abs() < 0.5);
    }

    #[test]
    fn median_mad_handles_a_constant_series_and_a_step() {
        let mut d = MedianMad::new();
        for i in 0..100 {
            assert_eq!(d.observe(i, 5.0), 0.0);
        }
        assert_eq!(d.observe(100, 6.0), 1.0);
    }

    #[test]
    fn cusum_detects_a_step_and_a_drift_but_not_noise() {
        let mut d = Cusum::default();
        let mut hit_noise = false;
        for (i, v) in noise(400, 2).iter().enumerate() {
            hit_noise |= d.observe(i as i64, *v) >= 1.0;
        }
        assert!(!hit_noise, "noise only");
        let stepped = step(400, 200, 2.0, 3);
        let mut d = Cusum::default();
        let first = stepped
            .iter()
            .enumerate()
            .position(|(i, v)| d.observe(i as i64, *v) >= 1.0);
        assert!(
            matches!(first, Some(i) if (200..230).contains(&i)),
            "{first:?}"
        );
        let drifted = drift(600, 200, 0.02, 4);
        let mut d = Cusum::default();
        let first = drifted
            .iter()
            .enumerate()
            .position(|(i, v)| d.observe(i as i64, *v) >= 1.0);
        assert!(
            matches!(first, Some(i) if (200..400).contains(&i)),
            "{first:?}"
        );
    }
}
