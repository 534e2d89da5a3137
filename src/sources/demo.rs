//! `type = "demo"`: a generator of plant-like sensor series and business
//! series, with occasional injected anomalies, which the detectors score
//! like any other series, and fraud-rule hits published on the event bus.
//!
//! It exists so a new user sees a lively dashboard without wiring a broker,
//! and so the browser test and the dashboard benchmark have data that does
//! not depend on other sources. Everything it produces is named `demo_*`
//! and carries its own `source` name; nothing pretends to be a real device.
//!
//! Per device (`line` × `device`): temperature, pressure, vibration and
//! motor current, smooth periodic signals plus noise. Optionally one device
//! per run goes silent for a minute every five (to show silent-device
//! highlighting). Business series: orders and revenue per channel, payment
//! latency per provider, active sessions.
//!
//! Every `anomaly_every`, one device's temperature (the next device in
//! turn) jumps above [`OVERHEAT_C`] for a few seconds. The demo brings its
//! own detector for that: a static threshold ([`thresholds`], added to the
//! `[detect]` thresholds when a demo source is configured), so the one
//! ingest task scores the spike, records the score with the point and
//! publishes the `anomaly` event (reason `demo_injected_spike`) as it does
//! for every series; the usual suppression period applies per series. Now
//! and then a `rule` event flags an order as potential fraud.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::events::{Event, Severity};
use crate::key_error::KeyError;
use crate::model::{Batch, BatchMode, FamilyMeta, Labels, MetricKind, Sample, now_ms};
use crate::sources::SourceContext;

/// `[[sources]] type = "demo"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    pub name: String,
    /// How often every series gets a new value.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Production lines (`line` label L1, L2, ...).
    #[serde(default = "default_lines")]
    pub lines: usize,
    /// Devices per line; each has four sensor series.
    #[serde(default = "default_devices")]
    pub devices_per_line: usize,
    /// Also generate business series and fraud-rule events.
    #[serde(default = "default_true")]
    pub business: bool,
    /// Inject a temperature anomaly this often; `0s` never.
    #[serde(default = "default_anomaly_every", with = "humantime_serde")]
    pub anomaly_every: Duration,
    /// Let the last device of the first line stop reporting for one minute
    /// in every five.
    #[serde(default = "default_true")]
    pub silent_device: bool,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_lines() -> usize {
    2
}
fn default_devices() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_anomaly_every() -> Duration {
    Duration::from_secs(60)
}

impl DemoConfig {
    /// Range checks; the error's key is relative to the source.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.name.is_empty() {
            return Err(KeyError::new("name", "must not be empty"));
        }
        if self.interval < Duration::from_millis(100) {
            return Err(KeyError::new("interval", "must be at least 100ms"));
        }
        if self.lines == 0 || self.lines > 100 {
            return Err(KeyError::new("lines", "must be between 1 and 100"));
        }
        if self.devices_per_line == 0 || self.devices_per_line > 1000 {
            return Err(KeyError::new("devices_per_line", "must be between 1 and 1000"));
        }
        Ok(())
    }
}

/// The bearing temperature the demo's threshold flags: above every normal
/// value and below every spike (see [`NORMAL_MAX_C`], [`SPIKE_MIN_C`]).
pub const OVERHEAT_C: f64 = 75.0;
/// Highest normal temperature: base at most 65, wave 4, noise 0.4 × 3.464.
const NORMAL_MAX_C: f64 = 65.0 + 4.0 + 0.4 * 3.464;
/// Lowest spike: base at least 55, wave −4, noise −0.4 × 3.464, spike 26.
const SPIKE_MIN_C: f64 = 55.0 - 4.0 - 0.4 * 3.464 + SPIKE_MIN_HEIGHT;
/// Spikes are 26 to 36 °C high.
const SPIKE_MIN_HEIGHT: f64 = 26.0;
// Every build checks the margins, not only the tests.
const _: () = assert!(NORMAL_MAX_C + 2.0 < OVERHEAT_C && SPIKE_MIN_C > OVERHEAT_C);

/// The demo's own detector: a static threshold on its temperature series,
/// firing events with the reason `demo_injected_spike`.
pub fn thresholds() -> Vec<crate::detect::ThresholdRule> {
    vec![crate::detect::ThresholdRule {
        metric: crate::select::Pattern::new("demo_temperature_celsius")
            .expect("a literal family name is a valid pattern"),
        labels: Default::default(),
        above: Some(OVERHEAT_C),
        below: None,
        hysteresis: 2.0,
        for_: None,
        reason: Some("demo_injected_spike".into()),
    }]
}

/// Small deterministic PRNG (xorshift64*), so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal noise (sum of uniforms), mean 0, sd ~1.
    fn noise(&mut self) -> f64 {
        (0..4).map(|_| self.unit()).sum::<f64>() * 1.732 - 3.464
    }
}

struct Device {
    labels: Labels,
    /// Phase offset so devices do not move in lockstep.
    phase: f64,
    /// Base temperature of this device.
    base: f64,
}

struct Families {
    temperature: Arc<FamilyMeta>,
    pressure: Arc<FamilyMeta>,
    vibration: Arc<FamilyMeta>,
    current: Arc<FamilyMeta>,
    orders: Arc<FamilyMeta>,
    revenue: Arc<FamilyMeta>,
    latency: Arc<FamilyMeta>,
    sessions: Arc<FamilyMeta>,
}

impl Families {
    fn new() -> Self {
        use MetricKind::{Counter as C, Gauge as G};
        let f = FamilyMeta::new;
        Families {
            temperature: f(
                "demo_temperature_celsius",
                G,
                "Demo: bearing temperature of a device.",
            ),
            pressure: f(
                "demo_pressure_pascals",
                G,
                "Demo: hydraulic pressure of a device.",
            ),
            vibration: f(
                "demo_vibration_velocity_meters_per_second",
                G,
                "Demo: vibration velocity (RMS) of a device.",
            ),
            current: f(
                "demo_motor_current_amperes",
                G,
                "Demo: motor current of a device.",
            ),
            orders: f("demo_orders_total", C, "Demo: orders placed, by channel."),
            revenue: f(
                "demo_revenue_euros_total",
                C,
                "Demo: order revenue in euros, by channel.",
            ),
            latency: f(
                "demo_payment_latency_seconds",
                G,
                "Demo: recent payment authorisation latency, by provider.",
            ),
            sessions: f(
                "demo_active_sessions",
                G,
                "Demo: shoppers currently on the site.",
            ),
        }
    }
}

/// An anomaly in progress: which device, until when.
struct Spike {
    device: usize,
    ticks_left: u32,
    height: f64,
}

impl super::Source for DemoConfig {
    const KIND: &'static str = "demo";
    type Built = ();

    fn name(&self) -> &str {
        &self.name
    }

    fn build(&self) -> Result<(), KeyError> {
        Ok(self.validate()?)
    }

    fn start(&self, _: &(), ctx: SourceContext, health: super::Health) -> super::Started {
        super::Started::task(run(self.clone(), ctx, health))
    }
}

/// Run until shutdown.
pub async fn run(cfg: DemoConfig, ctx: SourceContext, health: super::Health) {
    let name: Arc<str> = Arc::from(cfg.name.as_str());
    let fam = Families::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ cfg.name.len() as u64);
    let mut devices = Vec::new();
    for l in 0..cfg.lines {
        for d in 0..cfg.devices_per_line {
            devices.push(Device {
                labels: Labels::from_pairs(&[
                    ("line", format!("L{}", l + 1)),
                    ("device", format!("press-{:02}", d + 1)),
                ]),
                phase: rng.unit() * std::f64::consts::TAU,
                base: 55.0 + 10.0 * rng.unit(),
            });
        }
    }
    let channels = ["web", "app", "store"];
    let providers = ["card", "wallet"];
    let mut orders = [0.0f64; 3];
    let mut revenue = [0.0f64; 3];
    let silent = cfg.silent_device.then_some(cfg.devices_per_line - 1);
    let started = Instant::now();
    let mut spike: Option<Spike> = None;
    // Spikes move from device to device, so each one lands on a series
    // that is not in a suppression period of an earlier one.
    let mut next_spike = (rng.next() % devices.len() as u64) as usize;
    let mut last_anomaly = Instant::now();
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = ctx.shutdown.cancelled() => break,
        }
        let tick_started = Instant::now();
        let ts = now_ms();
        let t = started.elapsed().as_secs_f64();
        let mut samples = Vec::with_capacity(devices.len() * 4 + 10);

        if !cfg.anomaly_every.is_zero()
            && spike.is_none()
            && last_anomaly.elapsed() >= cfg.anomaly_every
        {
            last_anomaly = Instant::now();
            spike = Some(Spike {
                device: next_spike,
                ticks_left: 5,
                height: SPIKE_MIN_HEIGHT + 10.0 * rng.unit(),
            });
            next_spike = (next_spike + 1) % devices.len();
        }
        let in_silence = (t % 300.0) >= 120.0 && (t % 300.0) < 180.0;
        for (i, dev) in devices.iter().enumerate() {
            if silent == Some(i) && in_silence {
                continue;
            }
            let wave = (t / 90.0 + dev.phase).sin();
            let expected = dev.base + 4.0 * wave;
            let mut temperature = expected + 0.4 * rng.noise();
            if let Some(s) = spike.as_ref().filter(|s| s.device == i) {
                temperature += s.height;
            }
            let sample = |family: &Arc<FamilyMeta>, value: f64| Sample {
                family: family.clone(),
                labels: dev.labels.clone(),
                value,
                timestamp_ms: ts,
            };
            samples.push(sample(&fam.temperature, temperature));
            samples.push(sample(
                &fam.pressure,
                2.0e5 + 8.0e3 * (t / 40.0 + dev.phase).cos() + 500.0 * rng.noise(),
            ));
            samples.push(sample(
                &fam.vibration,
                (0.0025 + 0.0008 * (t / 7.0 + dev.phase).sin() + 0.0002 * rng.noise()).max(0.0),
            ));
            samples.push(sample(&fam.current, 12.0 + 1.5 * wave + 0.3 * rng.noise()));
        }
        if let Some(s) = spike.as_mut() {
            s.ticks_left -= 1;
            if s.ticks_left == 0 {
                spike = None;
            }
        }

        if cfg.business {
            let daily = 1.0 + 0.5 * (t / 300.0).sin();
            for (c, channel) in channels.iter().enumerate() {
                let labels = Labels::from_pairs(&[("channel", *channel)]);
                let n = (daily * (3 - c) as f64 * rng.unit() * 2.0).round();
                orders[c] += n;
                let value = n * (30.0 + 40.0 * rng.unit());
                revenue[c] += value;
                samples.push(Sample {
                    family: fam.orders.clone(),
                    labels: labels.clone(),
                    value: orders[c],
                    timestamp_ms: ts,
                });
                samples.push(Sample {
                    family: fam.revenue.clone(),
                    labels: labels.clone(),
                    value: revenue[c],
                    timestamp_ms: ts,
                });
                // Now and then an order far above the usual basket.
                if c == 0 && rng.unit() < 0.01 {
                    let amount = 900.0 + 2000.0 * rng.unit();
                    ctx.events.publish(Event {
                        kind: "rule",
                        severity: if amount > 2000.0 {
                            Severity::Critical
                        } else {
                            Severity::Warning
                        },
                        timestamp_ms: ts,
                        source: cfg.name.clone(),
                        metric: fam.orders.name.to_string(),
                        labels: labels.as_str().to_string(),
                        value: amount,
                        expected: None,
                        lower: None,
                        upper: Some(800.0),
                        score: 1.0,
                        reason: "demo_fraud_amount_over_limit".into(),
                    });
                }
            }
            for (p, provider) in providers.iter().enumerate() {
                samples.push(Sample {
                    family: fam.latency.clone(),
                    labels: Labels::from_pairs(&[("provider", *provider)]),
                    value: (0.18 + 0.1 * p as f64 + 0.03 * rng.noise()).max(0.01),
                    timestamp_ms: ts,
                });
            }
            samples.push(Sample {
                family: fam.sessions.clone(),
                labels: Labels::empty(),
                value: (400.0 * daily + 20.0 * rng.noise()).round(),
                timestamp_ms: ts,
            });
        }

        let batch = Batch {
            source: name.clone(),
            mode: BatchMode::Update,
            samples,
        };
        tokio::select! {
            r = ctx.tx.send(batch) => if r.is_err() { break },
            _ = ctx.shutdown.cancelled() => break,
        }
        health.collected(tick_started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::DetectConfig;
    use crate::detect::live::Detect;
    use crate::events::EventBus;

    #[test]
    fn its_threshold_fires_on_every_spike_with_its_reason_and_never_on_normal_values() {
        const { assert!(NORMAL_MAX_C + 2.0 < OVERHEAT_C && SPIKE_MIN_C > OVERHEAT_C) };
        let bus = EventBus::new(16);
        let mut rx = bus.subscribe();
        let cfg = DetectConfig {
            thresholds: thresholds(),
            ..DetectConfig::default()
        };
        let d = Detect::new(cfg, vec![], bus);
        let fam = Families::new().temperature;
        let mut slot = None;
        let mut scores = Vec::new();
        for (i, v) in [NORMAL_MAX_C, NORMAL_MAX_C, SPIKE_MIN_C, NORMAL_MAX_C]
            .into_iter()
            .enumerate()
        {
            let s = Sample {
                family: fam.clone(),
                labels: Labels::from_pairs(&[("line", "L1"), ("device", "press-01")]),
                value: v,
                timestamp_ms: 1_764_633_600_000 + i as i64 * 1000,
            };
            scores.push(d.observe("plant", &s, &mut slot).expect("scored"));
        }
        assert!(scores[..2].iter().all(|s| *s < 0.5), "{scores:?}");
        assert_eq!(scores[2], 1.0, "{scores:?}");
        let e = rx.try_recv().expect("the spike's event");
        assert_eq!(
            (e.kind, e.reason.as_str(), e.metric.as_str()),
            ("anomaly", "demo_injected_spike", "demo_temperature_celsius")
        );
        assert!(rx.try_recv().is_err(), "one event");
    }

    #[test]
    fn noise_is_centred_and_deterministic() {
        let mut a = Rng(42);
        let mut b = Rng(42);
        let xs: Vec<f64> = (0..10_000).map(|_| a.noise()).collect();
        let ys: Vec<f64> = (0..10_000).map(|_| b.noise()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
    }
}
