//! Small numeric building blocks shared by the detectors and the pipeline
//! filters: tail probabilities, an exponentially weighted mean/variance and
//! a fixed-size sliding window with an O(log n) median.

/// Complementary error function, with a relative error below about 1.2e-7
/// everywhere (a Chebyshev-fitted rational approximation), so very small
/// tail probabilities keep their order of magnitude.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Probability that a standard normal variable exceeds `z`.
pub fn normal_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Exponentially weighted mean and variance.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Ewm {
    pub mean: f64,
    pub var: f64,
    /// Samples seen, saturating; used for warm-up decisions.
    pub n: u32,
    alpha: f64,
}

impl Ewm {
    pub fn new(alpha: f64) -> Self {
        Ewm {
            mean: 0.0,
            var: 0.0,
            n: 0,
            alpha: alpha.clamp(1e-6, 1.0),
        }
    }

    /// Fold in `x`. During warm-up the weight is 1/n, so the first samples
    /// give an ordinary mean instead of being dominated by the first value.
    pub fn update(&mut self, x: f64) {
        self.n = self.n.saturating_add(1);
        let a = self.alpha.max(1.0 / self.n as f64);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }

    pub fn std(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }
}

/// The last `N` values with their sorted copy, for rolling medians and
/// quantiles: O(log N) search plus an O(N) memmove of at most N floats.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Window<const N: usize> {
    #[serde(with = "serde_big_array::BigArray")]
    ring: [f64; N],
    #[serde(with = "serde_big_array::BigArray")]
    sorted: [f64; N],
    len: usize,
    head: usize,
}

impl<const N: usize> Default for Window<N> {
    fn default() -> Self {
        Window {
            ring: [0.0; N],
            sorted: [0.0; N],
            len: 0,
            head: 0,
        }
    }
}

impl<const N: usize> Window<N> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Add `x` (finite), evicting the oldest value when full.
    pub fn push(&mut self, x: f64) {
        if self.len == N {
            let old = self.ring[self.head];
            let i = self.position(old);
            self.sorted.copy_within(i + 1..self.len, i);
            self.len -= 1;
        } else {
            // The ring is filled in order until it is full.
        }
        self.ring[self.head] = x;
        self.head = (self.head + 1) % N;
        let i = self.sorted[..self.len].partition_point(|v| *v < x);
        self.sorted.copy_within(i..self.len, i + 1);
        self.sorted[i] = x;
        self.len += 1;
    }

    fn position(&self, x: f64) -> usize {
        let i = self.sorted[..self.len].partition_point(|v| *v < x);
        i.min(self.len.saturating_sub(1))
    }

    /// Quantile `q` in [0, 1] (nearest rank); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let i = ((self.len - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(self.sorted[i])
    }

    pub fn median(&self) -> Option<f64> {
        self.quantile(0.5)
    }

    /// Values in arrival order, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        let start = if self.len == N { self.head } else { 0 };
        (0..self.len).map(move |k| self.ring[(start + k) % N])
    }

    /// The sorted values.
    pub fn sorted(&self) -> &[f64] {
        &self.sorted[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_matches_known_values() {
        assert!((normal_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_tail(1.96) - 0.024_997_9).abs() < 1e-6);
        let t = normal_tail(6.0);
        assert!((t / 9.865_876e-10 - 1.0).abs() < 1e-3, "{t}");
        assert!((normal_tail(-1.0) - 0.841_344_7).abs() < 1e-6);
    }

    #[test]
    fn window_keeps_median_of_the_last_n() {
        let mut w = Window::<5>::default();
        for x in [5.0, 1.0, 4.0, 2.0, 3.0] {
            w.push(x);
        }
        assert_eq!(w.median(), Some(3.0));
        w.push(100.0); // evicts 5
        assert_eq!(w.sorted(), &[1.0, 2.0, 3.0, 4.0, 100.0]);
        w.push(100.0); // evicts 1
        w.push(100.0); // evicts 4
        assert_eq!(w.median(), Some(100.0));
        assert_eq!(
            w.iter().collect::<Vec<_>>(),
            vec![2.0, 3.0, 100.0, 100.0, 100.0]
        );
    }

    #[test]
    fn ewm_starts_as_a_plain_mean() {
        let mut e = Ewm::new(0.01);
        for x in [1.0, 2.0, 3.0] {
            e.update(x);
        }
        assert!((e.mean - 2.0).abs() < 1e-12);
    }
}
