//! The anomaly likelihood layer: turns any raw score stream into a
//! calibrated probability that the recent behaviour is unusual.
//!
//! The short-term mean of the raw score is compared with the long-run
//! distribution of the raw score itself (a normal fitted by exponentially
//! weighted moments). Measuring the short mean against the spread of single
//! raw scores, not of their averages, makes one isolated high score count
//! for little: only a run of unusual scores is rare. The tail probability
//! is mapped to a log scale so that a score of 0.5 means "one in
//! [`LOG_SPAN`]^0.5" and 1 means "one in `LOG_SPAN`".

use super::stats::{Ewm, normal_tail};

/// Short averaging window (samples).
const SHORT: usize = 8;
/// Tail probability that maps to score 1.
pub const LOG_SPAN: f64 = 1e10;

#[derive(Debug, Clone)]
pub struct Likelihood {
    short: [f32; SHORT],
    idx: u8,
    short_len: usize,
    /// ln(1 / LOG_SPAN).
    log_span: f64,
    filled: u8,
    dist: Ewm,
    /// Samples before any likelihood is given.
    learning: u32,
    /// Lowest standard deviation of the raw score that is believed.
    min_std: f64,
}

impl Likelihood {
    pub fn new(learning: u32, alpha: f64, min_std: f64) -> Self {
        Likelihood {
            short: [0.0; SHORT],
            idx: 0,
            log_span: (1.0 / LOG_SPAN).ln(),
            short_len: SHORT,
            filled: 0,
            dist: Ewm::new(alpha),
            learning,
            min_std,
        }
    }

    /// Past its learning period: scores are given.
    pub fn ready(&self) -> bool {
        self.dist.n >= self.learning
    }

    /// Fold in one raw score in [0, 1]; returns the log-scaled likelihood
    /// in [0, 1].
    pub fn update(&mut self, raw: f64) -> f64 {
        let raw = if raw.is_finite() {
            raw.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let short = self.short_len as u8;
        self.short[self.idx as usize] = raw as f32;
        self.idx = (self.idx + 1) % short;
        self.filled = (self.filled + 1).min(short);
        let m = self.short[..self.filled as usize]
            .iter()
            .map(|v| *v as f64)
            .sum::<f64>()
            / self.filled as f64;
        let out = if self.dist.n >= self.learning {
            let sd = self.dist.std().max(self.min_std);
            let tail = normal_tail((m - self.dist.mean) / sd).max(1e-300);
            (tail.ln() / self.log_span).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.dist.update(raw);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_noise_stays_low_and_a_burst_goes_high() {
        let mut l = Likelihood::new(100, 0.002, 0.01);
        let mut max_quiet: f64 = 0.0;
        for i in 0..2000u64 {
            let raw = ((i * 2654435761) % 100) as f64 / 500.0; // 0..0.2
            let s = l.update(raw);
            if i > 200 {
                max_quiet = max_quiet.max(s);
            }
        }
        assert!(max_quiet < 0.3, "{max_quiet}");
        let burst = (0..8).map(|_| l.update(1.0)).fold(0.0, f64::max);
        assert!(burst > 0.9, "{burst}");
    }

    #[test]
    fn nothing_during_learning() {
        let mut l = Likelihood::new(50, 0.01, 0.01);
        for _ in 0..50 {
            assert_eq!(l.update(1.0), 0.0);
        }
    }
}
