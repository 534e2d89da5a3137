//! Static thresholds with hysteresis and a minimum duration: "temperature
//! above 90 °C for 30 s", cleared only once it is back below 85 °C.

use super::Detector;

/// Settings of one static threshold.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ThresholdSpec {
    /// Breached when the value is above this.
    pub above: Option<f64>,
    /// Breached when the value is below this.
    pub below: Option<f64>,
    /// Once active, the value must come back this far inside the limit to
    /// clear (hysteresis), so a value hovering at the limit does not flap.
    pub hysteresis: f64,
    /// The breach must last this long (ms) before the detector fires.
    pub for_ms: i64,
}

/// Fires (score 1) while the spec is breached for at least `for_ms`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StaticThreshold {
    spec: ThresholdSpec,
    /// Start of the current breach, if the value is beyond a limit.
    breach_since: Option<i64>,
    active: bool,
}

impl StaticThreshold {
    pub fn new(spec: ThresholdSpec) -> Self {
        StaticThreshold {
            spec,
            breach_since: None,
            active: false,
        }
    }

    fn beyond(&self, value: f64) -> bool {
        // While active, the limits move inwards by the hysteresis.
        let h = if self.active {
            self.spec.hysteresis.abs()
        } else {
            0.0
        };
        self.spec.above.is_some_and(|a| value > a - h)
            || self.spec.below.is_some_and(|b| value < b + h)
    }
}

impl Detector for StaticThreshold {
    fn observe(&mut self, ts_ms: i64, value: f64) -> f64 {
        if !value.is_finite() {
            return if self.active { 1.0 } else { 0.0 };
        }
        if self.beyond(value) {
            let since = *self.breach_since.get_or_insert(ts_ms);
            if ts_ms.saturating_sub(since) >= self.spec.for_ms {
                self.active = true;
            }
        } else {
            self.breach_since = None;
            self.active = false;
        }
        if self.active { 1.0 } else { 0.0 }
    }

    fn name(&self) -> &'static str {
        "threshold"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det() -> StaticThreshold {
        StaticThreshold::new(ThresholdSpec {
            above: Some(90.0),
            below: None,
            hysteresis: 5.0,
            for_ms: 30_000,
        })
    }

    #[test]
    fn fires_only_after_the_minimum_duration() {
        let mut d = det();
        assert_eq!(d.observe(0, 95.0), 0.0);
        assert_eq!(d.observe(20_000, 95.0), 0.0);
        assert_eq!(d.observe(30_000, 95.0), 1.0);
    }

    #[test]
    fn a_short_spike_does_not_fire() {
        let mut d = det();
        assert_eq!(d.observe(0, 95.0), 0.0);
        assert_eq!(d.observe(10_000, 50.0), 0.0);
        assert_eq!(d.observe(40_000, 95.0), 0.0);
    }

    #[test]
    fn hysteresis_keeps_it_active_until_well_below() {
        let mut d = det();
        d.observe(0, 95.0);
        assert_eq!(d.observe(30_000, 95.0), 1.0);
        assert_eq!(d.observe(31_000, 88.0), 1.0, "inside the hysteresis band");
        assert_eq!(d.observe(32_000, 84.0), 0.0, "cleared below 85");
        assert_eq!(
            d.observe(33_000, 88.0),
            0.0,
            "not re-armed until above 90 again"
        );
    }

    #[test]
    fn below_limit_and_noise_only() {
        let mut d = StaticThreshold::new(ThresholdSpec {
            above: None,
            below: Some(10.0),
            hysteresis: 0.0,
            for_ms: 0,
        });
        for i in 0..100 {
            assert_eq!(d.observe(i, 50.0 + (i % 7) as f64), 0.0);
        }
        assert_eq!(d.observe(100, 5.0), 1.0);
    }
}
