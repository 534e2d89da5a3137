//! Validation: values that no metric can hold are dropped and counted.

use super::{Stage, Verdict};
use crate::model::Sample;

/// Drops NaN and infinite values.
pub struct Validate;

impl Stage for Validate {
    fn process(&mut self, sample: &mut Sample) -> Verdict {
        if sample.value.is_nan() {
            Verdict::Drop("nan")
        } else if sample.value.is_infinite() {
            Verdict::Drop("infinite")
        } else {
            Verdict::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FamilyMeta, Labels, MetricKind};

    #[test]
    fn drops_nan_and_infinities_only() {
        let f = FamilyMeta::new("x", MetricKind::Gauge, "x");
        let mut s = Sample {
            family: f,
            labels: Labels::empty(),
            value: 1.0,
            timestamp_ms: 0,
        };
        assert_eq!(Validate.process(&mut s), Verdict::Keep);
        s.value = f64::NAN;
        assert_eq!(Validate.process(&mut s), Verdict::Drop("nan"));
        s.value = f64::NEG_INFINITY;
        assert_eq!(Validate.process(&mut s), Verdict::Drop("infinite"));
    }
}
