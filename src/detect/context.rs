//! A contextual novelty detector: the learned model of the ensemble.
//!
//! Each value is quantised into one of [`LEVELS`] levels of the range seen so
//! far; the detector remembers which short sequences of levels (the current
//! level alone, the last two, the last three) it has met before. The raw
//! score is the share of the current sequences that are new: a value never
//! seen, or a familiar value arriving in an unfamiliar context (a changed
//! shape, rhythm or slope). Memory is two fixed bitsets used as a rotating
//! filter, so old contexts are eventually forgotten and the state never grows.

use super::Detector;

/// Quantisation levels across the learned range.
pub const LEVELS: f64 = 20.0;
/// Bits per filter generation.
const BITS: usize = 2048;
const WORDS: usize = BITS / 64;
/// A generation is retired after this many inserts.
const GENERATION_INSERTS: u32 = 1500;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ContextNovelty {
    lo: f64,
    hi: f64,
    /// Levels of the last two values, most recent first (`u32::MAX` = none).
    prev: [u32; 2],
    /// How far the last value lay outside the range seen before it, as a
    /// share of that range (0 inside).
    excess: f64,
    #[serde(with = "serde_big_array::BigArray")]
    current: [u64; WORDS],
    #[serde(with = "serde_big_array::BigArray")]
    previous: [u64; WORDS],
    inserts: u32,
    seen: u32,
}

impl Default for ContextNovelty {
    fn default() -> Self {
        ContextNovelty {
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            prev: [u32::MAX; 2],
            excess: 0.0,
            current: [0; WORDS],
            previous: [0; WORDS],
            inserts: 0,
            seen: 0,
        }
    }
}

fn mix(mut h: u64) -> u64 {
    // A 64-bit finaliser: spreads every input bit over the result.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl ContextNovelty {
    pub fn new() -> Self {
        Self::default()
    }

    fn level(&self, value: f64) -> u32 {
        let span = self.hi - self.lo;
        if span.is_nan() || span <= 0.0 {
            return 0;
        }
        (((value - self.lo) / span) * LEVELS)
            .floor()
            .clamp(0.0, LEVELS) as u32
    }

    /// How far the last value lay beyond the range seen before it, as a
    /// share of that range; 0 for a value inside it (or the first ones).
    pub fn excess(&self) -> f64 {
        self.excess
    }

    fn contains(&self, h: u64) -> bool {
        let bit = (h % BITS as u64) as usize;
        let (w, m) = (bit / 64, 1u64 << (bit % 64));
        self.current[w] & m != 0 || self.previous[w] & m != 0
    }

    fn insert(&mut self, h: u64) {
        let bit = (h % BITS as u64) as usize;
        let (w, m) = (bit / 64, 1u64 << (bit % 64));
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

/// A value beyond the whole range the context detector has seen, by at
/// least this share of that range, scores 1 at once (after learning): a
/// jump that large needs no run of novel contexts to be believed.
pub const RANGE_JUMP: f64 = 0.25;

impl Detector for ContextNovelty {
    fn beyond_range(&self) -> bool {
        self.excess >= RANGE_JUMP
    }

    fn observe(&mut self, _ts_ms: i64, value: f64) -> f64 {
        self.seen = self.seen.saturating_add(1);
        // Grow the range; a value outside it is novel by definition.
        let outside = value < self.lo || value > self.hi;
        let span = self.hi - self.lo;
        self.excess = if outside && span > 0.0 && span.is_finite() {
            ((value - self.hi).max(self.lo - value) / span).min(f64::MAX)
        } else {
            0.0
        };
        if outside {
            if self.lo.is_finite() {
                // Leave a margin so the next small excursion is not new again.
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
        let c0 = self.level(value) as u64;
        let [c1, c2] = self.prev.map(u64::from);
        let keys = [
            mix(1 << 60 | c0),
            mix(2 << 60 | c1 << 20 | c0),
            mix(3 << 60 | c2 << 40 | c1 << 20 | c0),
        ];
        let weights = [0.4, 0.3, 0.3];
        let mut score = 0.0;
        for (k, w) in keys.iter().zip(weights) {
            if !self.contains(*k) {
                score += w;
            }
        }
        if outside && self.seen > 1 {
            score = 1.0;
        }
        for k in keys {
            self.insert(k);
        }
        self.prev = [c0 as u32, self.prev[0]];
        score
    }

    fn name(&self) -> &'static str {
        "context"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::*;

    #[test]
    fn a_repeated_pattern_becomes_familiar() {
        let mut d = ContextNovelty::new();
        let series = seasonal(2000, 50, 0.0, 5);
        let scores: Vec<f64> = series
            .iter()
            .enumerate()
            .map(|(i, v)| d.observe(i as i64, *v))
            .collect();
        let late: f64 = scores[1500..].iter().sum::<f64>() / 500.0;
        assert!(late < 0.05, "mean novelty after learning {late}");
    }

    #[test]
    fn a_spike_and_a_changed_shape_are_novel() {
        let mut d = ContextNovelty::new();
        let series = seasonal(2000, 50, 0.0, 6);
        for (i, v) in series.iter().enumerate() {
            d.observe(i as i64, *v);
        }
        assert_eq!(d.observe(2000, 100.0), 1.0, "a new extreme");
        // A familiar level reached by an unfamiliar jump (top to bottom at once).
        let mut d = ContextNovelty::new();
        for (i, v) in series.iter().enumerate() {
            d.observe(i as i64, *v);
        }
        d.observe(2000, 10.0);
        d.observe(2001, 10.0);
        assert!(d.observe(2002, -10.0) > 0.2);
    }

    #[test]
    fn excess_measures_a_jump_beyond_the_learned_range() {
        let mut d = ContextNovelty::new();
        for i in 0..100 {
            d.observe(i, (i % 10) as f64);
            assert!(i < 10 || d.excess() == 0.0, "inside the range at {i}");
        }
        d.observe(100, 20.0);
        assert!(d.excess() > 0.9, "{}", d.excess());
        d.observe(101, 5.0);
        assert_eq!(d.excess(), 0.0);
    }
}
