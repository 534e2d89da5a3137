//! The decision layer between the ensemble's score and an event: a score
//! over the threshold becomes an event only when the deviation is also
//! material (a minimum effect size against the series' own level and
//! typical variation) and, for bursty families, lasts (a hold period).
//!
//! A high score says "this is unusual for the series"; on a live host much
//! that is unusual is immaterial: loopback traffic jumping from 2 to 9 kB/s,
//! a process group's memory moving by a few per cent, a sensor's noise. The
//! gate keeps a slow, outlier-resistant estimate of the series' level and
//! of its typical absolute deviation (the scale), and asks of the value at
//! an event that `|value − level|` be at least `min_sigma` scales and at
//! least `min_rel` of `|level|`. A series that was constant (a process
//! group's `up`, a sensor that never moved) has a scale of 0, so any change
//! is material: the failures that matter most are never gated away.
//!
//! [`Effect`] is the rule; [`effect_for`] gives the built-in rule of each
//! family of the system source; every other series gets the `[detect]`
//! `min_effect` rule.

use crate::model::MetricKind;

/// Weight of a new sample in the level and scale estimates (about the last
/// 100 samples).
const ALPHA: f64 = 0.01;
/// Deviations are clipped at this many scales before they update the
/// estimates, so that one spike moves the level by little.
const CLIP: f64 = 3.0;
/// Samples before the gate judges anything (the ensemble learns longer).
const WARM: u32 = 20;

/// Which deviations count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    Both,
    /// Only values below the level (a count of processes that falls).
    Down,
}

/// The minimum effect of a series' family.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Effect {
    /// `|value − level|` at least this many typical deviations.
    pub min_sigma: f64,
    /// `|value − level|` at least this share of `|level|`.
    pub min_rel: f64,
    /// `|value − level|` at least this much, in the series' unit.
    pub min_abs: f64,
    /// Samples the material deviation must last (against the level before
    /// it started) before the event fires; 0 or 1: at once.
    pub hold: u32,
    pub direction: Direction,
}

impl Effect {
    /// The rule for a series without a family rule: `min_sigma` typical
    /// deviations, at once.
    pub const fn generic(min_sigma: f64) -> Self {
        Effect {
            min_sigma,
            min_rel: 0.0,
            min_abs: 0.0,
            hold: 0,
            direction: Direction::Both,
        }
    }
}

/// Rates of byte and packet counters (network, disk) on a busy host: a
/// burst is normal; an event needs at least double (or at most none of)
/// the usual rate, beyond 3 typical deviations, for a minute of samples.
pub const BURSTY_RATE: Effect = Effect {
    min_sigma: 3.0,
    min_rel: 1.0,
    min_abs: 0.0,
    hold: 60,
    direction: Direction::Both,
};

/// CPU, memory, open files and exits of a process group: half again (or
/// half less) than usual, beyond 3 typical deviations, for 30 samples. A
/// group that dies or crash-loops shows in its `up` and process count,
/// which keep the generic rule and the [`PROCESS_COUNT`] rule.
pub const PROCESS_USAGE: Effect = Effect {
    min_sigma: 3.0,
    min_rel: 0.5,
    min_abs: 0.0,
    hold: 30,
    direction: Direction::Both,
};

/// A process group's process count: only a fall is a failure (more
/// workers is not), and a fall of any size beyond the usual variation.
pub const PROCESS_COUNT: Effect = Effect {
    min_sigma: 3.0,
    min_rel: 0.0,
    min_abs: 0.0,
    hold: 0,
    direction: Direction::Down,
};

/// CPU time per mode and CPU (a rate in CPUs): a mode doubling (or
/// stopping) by at least a tenth of a CPU, for 30 samples; `steal` or
/// `iowait` going from 0 to 0.01 is not news.
pub const CPU_MODE_RATE: Effect = Effect {
    min_sigma: 3.0,
    min_rel: 1.0,
    min_abs: 0.1,
    hold: 30,
    direction: Direction::Both,
};

/// CPU usage ratios (0..1): a move of at least a tenth of the CPUs beyond
/// 3 typical deviations, for 30 samples (a saturated CPU dipping from 1.0
/// to 0.99 is not news).
pub const CPU_RATIO: Effect = Effect {
    min_sigma: 3.0,
    min_rel: 0.0,
    min_abs: 0.1,
    hold: 30,
    direction: Direction::Both,
};

/// The other families of the system source.
pub const SYSTEM: Effect = Effect::generic(3.0);

/// The built-in rule of a family of the system source (`vitals_*`),
/// `None` for every other family (which gets [`Effect::generic`] with
/// `[detect] min_effect`).
pub fn effect_for(family: &str, kind: MetricKind) -> Option<Effect> {
    let counter = kind == MetricKind::Counter;
    match family {
        "vitals_network_receive_bytes_total"
        | "vitals_network_transmit_bytes_total"
        | "vitals_network_receive_packets_total"
        | "vitals_network_transmit_packets_total"
        | "vitals_disk_read_bytes_total"
        | "vitals_disk_written_bytes_total"
            if counter =>
        {
            Some(BURSTY_RATE)
        }
        "vitals_cpu_seconds_total" if counter => Some(CPU_MODE_RATE),
        "vitals_cpu_usage_ratio" | "vitals_cpu_core_usage_ratio" => Some(CPU_RATIO),
        "vitals_process_group_cpu_seconds_total"
        | "vitals_process_group_resident_memory_bytes"
        | "vitals_process_group_open_files"
        | "vitals_process_group_exits_total" => Some(PROCESS_USAGE),
        "vitals_process_group_processes" => Some(PROCESS_COUNT),
        // The other system families (up, filesystems, memory, load,
        // temperatures): 3 typical deviations, at once.
        f if f.starts_with("vitals_") => Some(SYSTEM),
        _ => None,
    }
}

/// Per-series state of the gate: the rule, the level and scale estimates
/// and a pending event waiting for its hold period.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gate {
    effect: Effect,
    level: f64,
    scale: f64,
    n: u32,
    /// Samples the current material deviation has lasted (0: none pending).
    pending: u32,
    /// Level, scale and raw score when the pending deviation started.
    from_level: f64,
    from_scale: f64,
    from_raw: f64,
}

/// The gate of a series without a rule and with `min_effect = 0`: judges
/// nothing away (also the blank state the saved-state fingerprint encodes).
impl Default for Gate {
    fn default() -> Self {
        Gate::new(Effect::generic(0.0))
    }
}

impl Gate {
    pub fn new(effect: Effect) -> Self {
        Gate {
            effect,
            level: 0.0,
            scale: 0.0,
            n: 0,
            pending: 0,
            from_level: 0.0,
            from_scale: 0.0,
            from_raw: 0.0,
        }
    }

    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// Whether `value` deviates materially from `level` with `scale`.
    fn material(&self, value: f64, level: f64, scale: f64) -> bool {
        let d = value - level;
        if self.effect.direction == Direction::Down && d >= 0.0 {
            return false;
        }
        let d = d.abs();
        // A scale of 0 (a constant series) makes any change material; the
        // tiny relative floor only absorbs floating-point noise.
        let floor = 1e-9 * level.abs();
        d > floor
            && d >= self.effect.min_sigma * scale
            && d >= self.effect.min_rel * level.abs()
            && d >= self.effect.min_abs
    }

    /// The ensemble's raw score for `value` as the alarm should see it: the
    /// score itself when the deviation is material (and, with a hold, has
    /// lasted), 0 otherwise. `threshold` is the alarm's, for the hold: a
    /// pending event starts where the score reaches it.
    pub fn apply(&mut self, value: f64, raw: f64, threshold: f64) -> f64 {
        let out = if self.n < WARM {
            raw
        } else if self.effect.hold <= 1 {
            if self.material(value, self.level, self.scale) {
                raw
            } else {
                0.0
            }
        } else if self.pending > 0 {
            // Judged against the level from before the deviation, which
            // the running estimate is slowly following.
            if self.material(value, self.from_level, self.from_scale) {
                self.pending += 1;
                if self.pending >= self.effect.hold {
                    self.pending = 0;
                    raw.max(self.from_raw)
                } else {
                    0.0
                }
            } else {
                self.pending = 0;
                0.0
            }
        } else {
            if raw >= threshold && self.material(value, self.level, self.scale) {
                self.pending = 1;
                self.from_level = self.level;
                self.from_scale = self.scale;
                self.from_raw = raw;
            }
            0.0
        };
        self.update(value);
        out
    }

    fn update(&mut self, value: f64) {
        self.n = self.n.saturating_add(1);
        if self.n == 1 {
            self.level = value;
            return;
        }
        let a = ALPHA.max(1.0 / self.n as f64);
        let d = value - self.level;
        // Clipped, so a spike moves the estimates by little; the clip
        // never falls below a tenth of the level, so a series that was
        // constant still follows a lasting change.
        let clip = (CLIP * self.scale).max(0.1 * self.level.abs());
        let dc = if self.n > WARM && clip > 0.0 {
            d.clamp(-clip, clip)
        } else {
            d
        };
        self.level += a * dc;
        self.scale += a * (dc.abs() - self.scale);
    }
}

/// Bytes of gate state per series.
pub const STATE_BYTES: usize = std::mem::size_of::<Gate>();

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::noise;

    fn feed(g: &mut Gate, values: &[f64], raw: f64) -> Vec<f64> {
        values.iter().map(|v| g.apply(*v, raw, 0.2)).collect()
    }

    #[test]
    fn noise_is_immaterial_and_a_step_is_material() {
        let mut g = Gate::new(Effect::generic(3.0));
        let n = noise(2000, 1);
        let out = feed(&mut g, &n, 1.0);
        let passed = out[100..].iter().filter(|s| **s > 0.0).count();
        // Noise beyond 3 mean absolute deviations (2.4 standard
        // deviations) is rare: about 1.6 % of samples, against all of them
        // without the gate.
        assert!(passed < 60, "{passed}");
        assert_eq!(g.apply(n[0] + 10.0, 1.0, 0.2), 1.0);
    }

    #[test]
    fn a_constant_series_makes_any_change_material() {
        let mut g = Gate::new(Effect::generic(3.0));
        feed(&mut g, &[1.0; 500], 0.0);
        assert_eq!(g.apply(0.0, 0.9, 0.2), 0.9);
    }

    #[test]
    fn a_relative_minimum_ignores_small_moves_of_a_large_level() {
        let mut g = Gate::new(Effect {
            hold: 0,
            ..PROCESS_USAGE
        });
        let level: Vec<f64> = noise(500, 2).iter().map(|v| 1e8 + 1e5 * v).collect();
        feed(&mut g, &level, 0.0);
        assert_eq!(g.apply(1.2e8, 1.0, 0.2), 0.0, "20 % is not half again");
        assert_eq!(g.apply(1.6e8, 1.0, 0.2), 1.0);
    }

    #[test]
    fn a_burst_shorter_than_the_hold_is_dropped_and_a_lasting_one_fires_once() {
        let mut g = Gate::new(BURSTY_RATE);
        let base: Vec<f64> = noise(600, 3).iter().map(|v| 1000.0 + 50.0 * v).collect();
        feed(&mut g, &base, 0.0);
        // A 20-sample burst to 50 times the rate, with high scores.
        let burst = feed(&mut g, &[50_000.0; 20], 1.0);
        assert!(burst.iter().all(|s| *s == 0.0), "{burst:?}");
        feed(&mut g, &base[..100], 0.0);
        // A lasting one: the score is high only at its start.
        let mut out = vec![g.apply(50_000.0, 1.0, 0.2)];
        out.extend(feed(&mut g, &[50_000.0; 100], 0.0));
        let fired: Vec<usize> = (0..out.len()).filter(|i| out[*i] > 0.0).collect();
        assert_eq!(fired, vec![BURSTY_RATE.hold as usize - 1], "{out:?}");
    }

    #[test]
    fn a_process_count_that_falls_is_material_one_that_grows_is_not() {
        let mut g = Gate::new(PROCESS_COUNT);
        feed(&mut g, &[4.0; 300], 0.0);
        assert_eq!(g.apply(9.0, 1.0, 0.2), 0.0);
        assert_eq!(g.apply(3.0, 1.0, 0.2), 1.0);
    }
}
