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

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

/// Numenta's anomaly likelihood as published (Ahmad, Lavin, Purdy & Agha,
/// "Unsupervised real-time anomaly detection for streaming data", 2017):
/// the raw scores of a long historic window of `W` samples are modelled as
/// a normal (sample mean and variance), the mean of the last `W'` = 10 raw
/// scores is compared with it, and the likelihood is `1 − Q((μ̃ − μ) / σ)`;
/// reported, as NAB does, on a log scale where 1 means a tail of
/// [`LOG_SPAN`]. The paper's window (about 8,600 samples, re-estimated every
/// 100) would need 34 KiB per member; the window is kept as the sums of its
/// last [`BLOCKS`] blocks of [`BLOCK`] samples instead, which is the same
/// windowed estimate at the re-estimation granularity, in 0.7 KiB.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NumentaLikelihood {
    short: [f32; NUMENTA_SHORT],
    idx: u8,
    filled: u8,
    /// (sum, sum of squares) of each completed block, a ring.
    #[serde(with = "serde_big_array::BigArray")]
    blocks: [(f32, f32); BLOCKS],
    head: u8,
    full_blocks: u8,
    /// The block being filled.
    open: (f64, f64, u32),
    /// The fitted normal, re-estimated when a block completes.
    mean: f64,
    std: f64,
    seen: u32,
    learning: u32,
    min_std: f64,
}

/// Short averaging window W' of the published likelihood.
pub const NUMENTA_SHORT: usize = 10;
/// Samples per block (the re-estimation period).
pub const BLOCK: u32 = 100;
/// Blocks in the historic window (87 × 100 ≈ 8,640 samples, a month of
/// 5-minute data).
pub const BLOCKS: usize = 87;

impl NumentaLikelihood {
    pub fn new(learning: u32, min_std: f64) -> Self {
        NumentaLikelihood {
            short: [0.0; NUMENTA_SHORT],
            idx: 0,
            filled: 0,
            blocks: [(0.0, 0.0); BLOCKS],
            head: 0,
            full_blocks: 0,
            open: (0.0, 0.0, 0),
            mean: 0.0,
            std: 0.0,
            seen: 0,
            learning,
            min_std,
        }
    }

    pub fn ready(&self) -> bool {
        self.seen >= self.learning
    }

    fn estimate(&mut self) {
        let (mut s, mut q, mut n) = (self.open.0, self.open.1, self.open.2 as f64);
        for b in &self.blocks[..self.full_blocks as usize] {
            s += b.0 as f64;
            q += b.1 as f64;
            n += BLOCK as f64;
        }
        if n >= 2.0 {
            self.mean = s / n;
            self.std = ((q - s * s / n) / (n - 1.0)).max(0.0).sqrt();
        }
    }

    pub fn update(&mut self, raw: f64) -> f64 {
        let raw = if raw.is_finite() {
            raw.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.short[self.idx as usize] = raw as f32;
        self.idx = ((self.idx as usize + 1) % NUMENTA_SHORT) as u8;
        self.filled = (self.filled + 1).min(NUMENTA_SHORT as u8);
        let m = self.short[..self.filled as usize]
            .iter()
            .map(|v| *v as f64)
            .sum::<f64>()
            / self.filled as f64;
        let out = if self.seen >= self.learning {
            let sd = self.std.max(self.min_std);
            let tail = normal_tail((m - self.mean) / sd).max(1e-300);
            (tail.ln() / (1.0 / LOG_SPAN).ln()).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.seen = self.seen.saturating_add(1);
        self.open.0 += raw;
        self.open.1 += raw * raw;
        self.open.2 += 1;
        if self.open.2 >= BLOCK {
            self.blocks[self.head as usize] = (self.open.0 as f32, self.open.1 as f32);
            self.head = ((self.head as usize + 1) % BLOCKS) as u8;
            self.full_blocks = (self.full_blocks + 1).min(BLOCKS as u8);
            self.open = (0.0, 0.0, 0);
            self.estimate();
        } else if self.full_blocks == 0 {
            // Until the first block completes, estimate from what there is.
            self.estimate();
        }
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
    fn numenta_likelihood_ignores_steady_noise_and_flags_a_run() {
        let mut l = NumentaLikelihood::new(300, 0.01);
        let mut max_quiet: f64 = 0.0;
        for i in 0..20_000u64 {
            let raw = ((i * 2654435761) % 100) as f64 / 500.0;
            let s = l.update(raw);
            if i > 400 {
                max_quiet = max_quiet.max(s);
            }
        }
        assert!(max_quiet < 0.3, "{max_quiet}");
        // One high raw score among ordinary ones is not rare enough...
        let single = l.update(1.0);
        assert!(single < 0.5, "{single}");
        // ...a run of them is.
        let run = (0..10).map(|_| l.update(1.0)).fold(0.0, f64::max);
        assert!(run > 0.9, "{run}");
    }

    #[test]
    fn nothing_during_learning() {
        let mut l = Likelihood::new(50, 0.01, 0.01);
        for _ in 0..50 {
            assert_eq!(l.update(1.0), 0.0);
        }
    }
}
