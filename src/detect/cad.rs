//! CAD OSE, the Contextual Anomaly Detector (open-source edition, Smirnov
//! and Kononov, NAB 2016), written from its public description: the
//! stream is turned into *facts*, a *context* joins a left semi-context
//! (facts of the recent past) to a right semi-context (facts of the
//! present), and the anomaly is the share of the present that no learned
//! context predicted.
//!
//! - **Its own normalisation.** CAD OSE maps each value into a fixed number
//!   of bits over the value range (`numNormValueBits = 3` in NAB). NAB gives
//!   it the file's minimum and maximum in advance, which a live exporter
//!   cannot know: here the range is learned as the stream goes, widened
//!   with a margin when a value falls outside it (the value is then a new
//!   fact by definition). The value becomes a [`BITS`]-bit level and its
//!   facts are the level's binary prefixes, coarse to fine, so nearby
//!   values share their coarse facts and a near miss is a partial match.
//! - **Left semi-contexts** are a bundle of the recent past at decreasing
//!   resolution: the last value at full resolution, the last two at one bit
//!   less, and so on up to [`LEFT`] steps back (CAD OSE keeps up to seven
//!   left semi-contexts). One more left semi-context is the set of contexts
//!   that were active at the previous step, CAD's "active neurons": it
//!   carries what the model itself recognised, not only the raw values.
//! - **Right semi-contexts** are the present value's prefix facts.
//! - A **context** (left, right) is learned the first time it is seen and
//!   is active when it is met again. The raw score is one minus the mean,
//!   over the bundle, of the deepest present fact predicted by that left
//!   semi-context: 0 when every left context predicted the exact level,
//!   1 when none predicted even the coarsest half of the range.
//!
//! CAD OSE's own rest period after a detection is the ensemble's
//! suppression here, and its threshold is the ensemble's.
//!
//! Memory is bounded: contexts live in two generations of a fixed bitset
//! (a rotating Bloom-like filter), so rare contexts are forgotten as the
//! series drifts and the state never grows.

use super::Detector;

/// Bits of the normalised value (CAD OSE uses 3 over the known range; the
/// learned range is wider than the data, so two more keep the resolution).
pub const BITS: u32 = 5;
/// Left semi-contexts: value histories of 1..=LEFT steps.
pub const LEFT: usize = 6;
const FILTER_BITS: usize = 4096;
const WORDS: usize = FILTER_BITS / 64;
/// A generation is retired after this many new contexts.
const GENERATION_INSERTS: u32 = 2800;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CadOse {
    lo: f64,
    hi: f64,
    /// Levels of the last LEFT values, most recent first (`u8::MAX` = none).
    history: [u8; LEFT],
    /// Which left semi-contexts fully predicted the previous value (bit k
    /// for history length k + 1): the "active neurons" of the last step.
    active: u8,
    #[serde(with = "serde_big_array::BigArray")]
    current: [u64; WORDS],
    #[serde(with = "serde_big_array::BigArray")]
    previous: [u64; WORDS],
    inserts: u32,
    seen: u32,
}

impl Default for CadOse {
    fn default() -> Self {
        CadOse {
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            history: [u8::MAX; LEFT],
            active: 0,
            current: [0; WORDS],
            previous: [0; WORDS],
            inserts: 0,
            seen: 0,
        }
    }
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl CadOse {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value's level in 0..2^BITS over the learned range.
    fn level(&self, value: f64) -> u8 {
        let span = self.hi - self.lo;
        if span.is_nan() || span <= 0.0 {
            return 0;
        }
        let n = (1u32 << BITS) as f64;
        (((value - self.lo) / span) * n).floor().clamp(0.0, n - 1.0) as u8
    }

    /// Left semi-context `k` (0-based): the last k + 1 levels at BITS - k
    /// bits each (at least 2), or `None` while the history is short. The
    /// extra one, `k == LEFT`, is the previous step's active contexts
    /// together with the previous level.
    fn left(&self, k: usize) -> Option<u64> {
        if k == LEFT {
            let l = self.history[0];
            return (l != u8::MAX)
                .then(|| (LEFT as u64 + 1) << 56 | (self.active as u64) << 8 | l as u64);
        }
        let shift = (k as u32).min(BITS - 2);
        let mut key = (k as u64 + 1) << 56;
        for (i, l) in self.history[..=k].iter().enumerate() {
            if *l == u8::MAX {
                return None;
            }
            key ^= mix(((*l >> shift) as u64) << 8 | i as u64);
        }
        Some(key)
    }

    fn slot(h: u64) -> (usize, u64) {
        let bit = (h % FILTER_BITS as u64) as usize;
        (bit / 64, 1u64 << (bit % 64))
    }

    fn contains(&self, h: u64) -> bool {
        let (w, m) = Self::slot(h);
        self.current[w] & m != 0 || self.previous[w] & m != 0
    }

    fn insert(&mut self, h: u64) {
        let (w, m) = Self::slot(h);
        if self.current[w] & m == 0 {
            self.current[w] |= m;
            self.inserts += 1;
            if self.inserts >= GENERATION_INSERTS {
                self.previous = self.current;
                self.current = [0; WORDS];
                self.inserts = 0;
            }
        }
    }
}

/// The context (left, right fact): right fact `d` is the level's first
/// d + 1 bits.
fn context(left: u64, level: u8, d: u32) -> u64 {
    mix(left ^ mix(0xcad0_0000 | (d as u64) << 8 | (level >> (BITS - 1 - d)) as u64))
}

impl Detector for CadOse {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> f64 {
        self.seen = self.seen.saturating_add(1);
        let outside = value < self.lo || value > self.hi;
        if outside {
            if self.lo.is_finite() {
                let pad = 0.1 * (self.hi - self.lo).max(value.abs() * 1e-9);
                if value < self.lo {
                    self.lo = value - pad;
                } else {
                    self.hi = value + pad;
                }
            } else {
                self.lo = value;
                self.hi = value;
            }
        }
        let level = self.level(value);
        let mut matched = 0.0;
        let mut bundles = 0u32;
        let mut active = 0u8;
        for k in 0..=LEFT {
            let Some(left) = self.left(k) else { continue };
            bundles += 1;
            // The deepest right fact this left semi-context predicted.
            let mut depth = 0;
            for d in 0..BITS {
                if self.contains(context(left, level, d)) {
                    depth = d + 1;
                } else {
                    break;
                }
            }
            matched += depth as f64 / BITS as f64;
            if depth == BITS && k < LEFT {
                active |= 1 << k;
            }
            for d in 0..BITS {
                self.insert(context(left, level, d));
            }
        }
        let mut score = if bundles == 0 {
            0.0
        } else {
            1.0 - matched / bundles as f64
        };
        if outside && self.seen > 1 {
            score = 1.0;
        }
        self.history.copy_within(0..LEFT - 1, 1);
        self.history[0] = level;
        self.active = active;
        score
    }

    fn name(&self) -> &'static str {
        "cad_ose"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::*;

    #[test]
    fn a_repeated_pattern_becomes_familiar_and_a_changed_one_is_novel() {
        let mut d = CadOse::new();
        let series = seasonal(3000, 50, 0.0, 5);
        let scores: Vec<f64> = series
            .iter()
            .enumerate()
            .map(|(i, v)| d.observe(i as i64, *v))
            .collect();
        let late: f64 = scores[2500..].iter().sum::<f64>() / 500.0;
        assert!(late < 0.05, "mean anomaly after learning {late}");
        // A familiar level in an unfamiliar order: the top, then the bottom.
        let top = series.iter().cloned().fold(f64::MIN, f64::max);
        let bottom = series.iter().cloned().fold(f64::MAX, f64::min);
        d.observe(3000, top);
        d.observe(3001, top);
        assert!(d.observe(3002, bottom) > 0.3);
    }

    #[test]
    fn a_new_extreme_scores_one() {
        let mut d = CadOse::new();
        for (i, v) in noise(1000, 3).iter().enumerate() {
            d.observe(i as i64, *v);
        }
        assert_eq!(d.observe(1000, 1e6), 1.0);
    }
}
