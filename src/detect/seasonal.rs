//! A seasonal baseline for business series: the typical value of each hour
//! of the week (hour of day × day of week), learned as an exponentially
//! weighted mean and variance per slot.

use super::{Band, Detector, robust::z_to_score};

const SLOTS: usize = 24 * 7;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Seasonal {
    #[serde(with = "serde_big_array::BigArray")]
    mean: [f32; SLOTS],
    #[serde(with = "serde_big_array::BigArray")]
    var: [f32; SLOTS],
    #[serde(with = "serde_big_array::BigArray")]
    count: [u8; SLOTS],
    /// Whole-series statistics: floor of the per-slot deviation.
    global: super::stats::Ewm,
    band: Option<Band>,
}

impl Default for Seasonal {
    fn default() -> Self {
        Seasonal {
            mean: [0.0; SLOTS],
            var: [0.0; SLOTS],
            count: [0; SLOTS],
            global: super::stats::Ewm::new(0.001),
            band: None,
        }
    }
}

impl Seasonal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hour of the week, 0 = Monday 00:00 UTC.
    pub fn slot(ts_ms: i64) -> usize {
        let hours = ts_ms.div_euclid(HOUR_MS);
        // 1970-01-01 was a Thursday: shift so that Monday is slot 0.
        (hours + 3 * 24).rem_euclid(SLOTS as i64) as usize
    }
}

impl Detector for Seasonal {
    fn observe(&mut self, ts_ms: i64, value: f64) -> f64 {
        let s = Self::slot(ts_ms);
        let n = self.count[s];
        let mean = self.mean[s] as f64;
        let floor = (0.25 * self.global.std())
            .max(1e-9 * value.abs())
            .max(1e-12);
        let sd = (self.var[s] as f64).max(0.0).sqrt().max(floor);
        let score = if n >= 3 {
            self.band = Some(Band {
                expected: mean,
                lower: mean - 3.0 * sd,
                upper: mean + 3.0 * sd,
            });
            z_to_score((value - mean) / sd)
        } else {
            self.band = None;
            0.0
        };
        let n1 = n.saturating_add(1);
        self.count[s] = n1;
        let a = (1.0 / n1 as f64).max(0.05);
        let d = value - mean;
        self.mean[s] = (mean + a * d) as f32;
        self.var[s] = ((1.0 - a) * (self.var[s] as f64 + a * d * d)) as f32;
        self.global.update(value);
        score
    }

    fn name(&self) -> &'static str {
        "seasonal"
    }

    fn band(&self) -> Option<Band> {
        self.band
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_zero_is_monday_midnight() {
        // 2024-01-01 was a Monday.
        assert_eq!(Seasonal::slot(1_704_067_200_000), 0);
        assert_eq!(Seasonal::slot(1_704_067_200_000 + 25 * HOUR_MS), 25);
    }

    #[test]
    fn learns_the_daily_shape_and_flags_an_off_hours_peak() {
        let mut d = Seasonal::new();
        let start = 1_704_067_200_000i64;
        let day_value = |h: i64| {
            if (9..17).contains(&(h % 24)) {
                100.0
            } else {
                10.0
            }
        };
        let mut worst_normal: f64 = 0.0;
        for h in 0..(24 * 7 * 4) {
            let noise = ((h * 7919) % 11) as f64 / 10.0;
            let s = d.observe(start + h * HOUR_MS, day_value(h) + noise);
            if h >= 24 * 7 * 3 {
                worst_normal = worst_normal.max(s);
            }
        }
        assert!(worst_normal < 0.1, "{worst_normal}");
        // 100 at 03:00 is normal at noon but not at night.
        let night = start + (24 * 7 * 4 + 3) * HOUR_MS;
        assert!(d.observe(night, 100.0) > 0.3);
        let b = d.band().unwrap();
        assert!(b.expected < 20.0);
    }
}
