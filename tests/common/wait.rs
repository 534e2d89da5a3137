//! Waiting for a series of a running `vitals` to reach a value.

use std::time::Duration;

use super::{Vitals, sample_value, wait_for};

/// How long the `wait_*` helpers wait.
pub const WAIT: Duration = Duration::from_secs(30);

/// The value of `name{parts}` in the current `/metrics`.
pub fn metric(v: &Vitals, name: &str, parts: &[&str]) -> Option<f64> {
    sample_value(&v.metrics(), name, parts)
}

/// Wait (at most [`WAIT`]) until `name{parts}` has value `want`.
pub fn wait_value(v: &Vitals, name: &str, parts: &[&str], want: f64) {
    wait_for(WAIT, &format!("{name}{parts:?} == {want}"), || {
        (metric(v, name, parts) == Some(want)).then_some(())
    });
}

/// Wait (at most [`WAIT`]) until no series `name{parts}` is left.
pub fn wait_absent(v: &Vitals, name: &str, parts: &[&str]) {
    wait_for(WAIT, &format!("{name}{parts:?} to disappear"), || {
        metric(v, name, parts).is_none().then_some(())
    });
}
