//! ARTime-style detection (Hampton, the NAB record holder): adaptive
//! resonance theory on short windows of the stream, written from its
//! public description, not from its code.
//!
//! - The last [`WINDOW`] values, normalised over the learned range (widened
//!   with a margin when a value falls outside it), form a feature vector
//!   `x` in [0, 1]^W, complement coded as `I = (x, 1 - x)` so that every
//!   input has the same norm `|I| = W` and a category is a box.
//! - A fuzzy ART network of at most [`CATEGORIES`] categories: the choice of
//!   category `j` is `|I ∧ w_j| / (α + |w_j|)`; it *resonates* when its match
//!   `|I ∧ w_j| / |I|` reaches the vigilance, and then learns slowly
//!   (`w_j ← β (I ∧ w_j) + (1 − β) w_j`). An input that resonates with no
//!   category founds a new one (replacing the least used when full).
//! - Dual vigilance, as in ARTime's distributed dual-vigilance ART: above
//!   the upper vigilance an input is normal; between the lower and the
//!   upper one it is a partial anomaly; below the lower one (nothing learned
//!   looks like it) it scores 1.
//! - The vigilance adapts to the series: the upper vigilance follows the
//!   typical best match (its exponentially weighted mean minus two standard
//!   deviations, within bounds), so a noisy series gets coarser categories
//!   and a clean one finer ones, and new categories stay rare.
//!
//! ARTime's own masking after a detection is the ensemble's suppression.
//! State: the categories as bytes, the window, a few statistics.

use super::Detector;
use super::stats::Ewm;

/// Values per feature window.
pub const WINDOW: usize = 8;
/// Categories at most.
pub const CATEGORIES: usize = 16;
const DIM: usize = 2 * WINDOW;
/// Choice parameter α.
const ALPHA: f64 = 0.001;
/// Learning rate β of a resonating category.
const BETA: f64 = 0.1;
/// Bounds of the upper vigilance; the lower one sits this far below it.
const VIGILANCE: (f64, f64) = (0.75, 0.97);
const LOWER_GAP: f64 = 0.12;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ArTime {
    lo: f64,
    hi: f64,
    /// The last values, oldest first once full.
    window: [f64; WINDOW],
    len: u8,
    head: u8,
    /// Category weights scaled to 0..=255.
    weights: [[u8; DIM]; CATEGORIES],
    /// Decaying use counts (the least used is replaced when full).
    uses: [f32; CATEGORIES],
    categories: u8,
    /// The best match per input, for the vigilance.
    best: Ewm,
}

impl Default for ArTime {
    fn default() -> Self {
        ArTime {
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            window: [0.0; WINDOW],
            len: 0,
            head: 0,
            weights: [[0; DIM]; CATEGORIES],
            uses: [0.0; CATEGORIES],
            categories: 0,
            best: Ewm::new(0.005),
        }
    }
}

impl ArTime {
    pub fn new() -> Self {
        Self::default()
    }

    fn vigilance(&self) -> f64 {
        if self.best.n < 50 {
            return VIGILANCE.1;
        }
        (self.best.mean - 2.0 * self.best.std()).clamp(VIGILANCE.0, VIGILANCE.1)
    }

    /// The complement-coded input, scaled to 0..=255.
    fn input(&self) -> [u8; DIM] {
        let span = self.hi - self.lo;
        let mut out = [0u8; DIM];
        for k in 0..WINDOW {
            let v = self.window[(self.head as usize + k) % WINDOW];
            let x = if span > 0.0 && span.is_finite() {
                ((v - self.lo) / span).clamp(0.0, 1.0)
            } else {
                0.5
            };
            let q = (x * 255.0).round() as u8;
            out[k] = q;
            out[WINDOW + k] = 255 - q;
        }
        out
    }
}

fn norm(v: &[u8; DIM]) -> u32 {
    v.iter().map(|x| *x as u32).sum()
}

fn overlap(a: &[u8; DIM], b: &[u8; DIM]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (*x).min(*y) as u32).sum()
}

impl Detector for ArTime {
    fn observe(&mut self, _ts_ms: i64, value: f64) -> f64 {
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
        self.window[self.head as usize] = value;
        self.head = ((self.head as usize + 1) % WINDOW) as u8;
        if (self.len as usize) < WINDOW {
            self.len += 1;
            return 0.0;
        }
        let input = self.input();
        let size = (WINDOW * 255) as f64;
        // Categories by choice, best first; the first that resonates wins.
        let upper = self.vigilance();
        let lower = (upper - LOWER_GAP).max(0.0);
        let mut best_match: f64 = 0.0;
        let mut winner: Option<usize> = None;
        let mut best_choice = -1.0;
        for j in 0..self.categories as usize {
            let o = overlap(&input, &self.weights[j]) as f64;
            let m = o / size;
            best_match = best_match.max(m);
            if m >= upper {
                let t = o / (ALPHA + norm(&self.weights[j]) as f64);
                if t > best_choice {
                    best_choice = t;
                    winner = Some(j);
                }
            }
        }
        for u in &mut self.uses[..self.categories as usize] {
            *u *= 0.999;
        }
        match winner {
            Some(j) => {
                let w = &mut self.weights[j];
                for (wk, ik) in w.iter_mut().zip(&input) {
                    let and = (*wk).min(*ik) as f64;
                    *wk = (BETA * and + (1.0 - BETA) * *wk as f64).round() as u8;
                }
                self.uses[j] += 1.0;
            }
            None => {
                let j = if (self.categories as usize) < CATEGORIES {
                    self.categories += 1;
                    self.categories as usize - 1
                } else {
                    (0..CATEGORIES)
                        .min_by(|a, b| self.uses[*a].total_cmp(&self.uses[*b]))
                        .unwrap_or(0)
                };
                self.weights[j] = input;
                self.uses[j] = 1.0;
            }
        }
        let learned = self.best.n >= 50;
        self.best.update(best_match);
        if outside || !learned {
            return if outside && learned { 1.0 } else { 0.0 };
        }
        if best_match >= upper {
            0.0
        } else if best_match <= lower {
            1.0
        } else {
            (upper - best_match) / (upper - lower)
        }
    }

    fn name(&self) -> &'static str {
        "artime"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::*;

    #[test]
    fn a_repeated_pattern_resonates_and_a_new_shape_does_not() {
        let mut d = ArTime::new();
        let series = seasonal(3000, 50, 0.1, 7);
        let scores: Vec<f64> = series
            .iter()
            .enumerate()
            .map(|(i, v)| d.observe(i as i64, *v))
            .collect();
        let late: f64 = scores[2500..].iter().sum::<f64>() / 500.0;
        assert!(late < 0.05, "mean anomaly after learning {late}");
        // Top and bottom in turn for a whole window: a shape the sine
        // never had, with every value inside the learned range.
        let worst = (0..WINDOW + 2)
            .map(|i| d.observe(3000 + i as i64, if i % 2 == 0 { 9.5 } else { -9.5 }))
            .fold(0.0, f64::max);
        assert!(worst > 0.5, "{worst}");
    }
}
