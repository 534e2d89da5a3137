//! Small synthetic series for the detector tests.

/// Deterministic standard-normal-ish noise (sum of uniforms).
pub fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            let mut acc = 0.0;
            for _ in 0..12 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 11) as f64 / (1u64 << 53) as f64;
            }
            acc - 6.0
        })
        .collect()
}

/// Noise with a level shift of `height` at `at`.
pub fn step(n: usize, at: usize, height: f64, seed: u64) -> Vec<f64> {
    noise(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| if i >= at { v + height } else { v })
        .collect()
}

/// Noise with a linear drift of `slope` per sample from `at`.
pub fn drift(n: usize, at: usize, slope: f64, seed: u64) -> Vec<f64> {
    noise(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| v + slope * i.saturating_sub(at) as f64)
        .collect()
}

/// A square-ish periodic pattern (period `period`) plus `noise_level` noise.
pub fn seasonal(n: usize, period: usize, noise_level: f64, seed: u64) -> Vec<f64> {
    noise(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let phase = (i % period) as f64 / period as f64;
            10.0 * (2.0 * std::f64::consts::PI * phase).sin() + noise_level * v
        })
        .collect()
}
