//! Detection on live series: the per-series state kept in the store, the
//! anomaly events published on the [`EventBus`], and the view of that state
//! ([`Anomaly`]) that [`crate::exposition`] writes as the
//! `vitals_anomaly_*` families at scrape time.

use super::threshold::ThresholdSpec;
use super::{DetectConfig, DetectorKind, Ensemble};
use crate::events::{Event, EventBus, Severity};
use crate::model::{Labels, MetricKind, Sample};
use crate::pipeline::filters::PipelineRule;

/// Per-series detector state, kept in the store next to the series.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SeriesDetector {
    /// `None` when detection is switched off for the series by a rule.
    ensemble: Option<Ensemble>,
    /// Labels of the anomaly families: `metric="<family>"` plus the series'
    /// own labels (its `metric` label renamed `exported_metric`). Not
    /// saved: rebuilt from the series key on restore.
    #[serde(skip)]
    labels: Labels,
    events: u64,
    /// Counters are scored as per-second rates: the previous (ts, value).
    previous: Option<(i64, f64)>,
    /// Whether anything was scored yet (nothing is exported before).
    scored: bool,
    /// Minimum effect size and hold period between score and event.
    gate: super::gate::Gate,
}

impl SeriesDetector {
    /// Saved state of the series `family{labels}`, its anomaly labels
    /// rebuilt (they are not saved).
    pub fn with_labels(mut self, family: &str, labels: &Labels) -> Self {
        self.labels = anomaly_labels(family, labels);
        self
    }

    /// What a scrape exports of the state: `None` before anything was
    /// scored or when detection is off for the series.
    pub fn anomaly(&self) -> Option<Anomaly<'_>> {
        let ensemble = self.ensemble.as_ref().filter(|_| self.scored)?;
        let last = ensemble.last();
        Some(Anomaly {
            labels: &self.labels,
            score: last.score,
            active: last.active,
            events: self.events,
            band: last.band,
            last,
        })
    }

    /// Bytes of state: the struct and what it owns.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.labels.as_str().len()
            + self
                .ensemble
                .as_ref()
                .map_or(0, |e| e.state_bytes() - std::mem::size_of::<Ensemble>())
    }
}

/// The exported state of one scored series (see [`SeriesDetector::anomaly`]).
pub struct Anomaly<'a> {
    /// Labels of the anomaly families (see [`anomaly_labels`]).
    pub labels: &'a Labels,
    /// Ensemble score of the last sample (0..1).
    pub score: f64,
    /// In an anomaly: from an event until the suppression period ends.
    pub active: bool,
    /// Anomaly events of the series so far.
    pub events: u64,
    /// Band of normal values, once the detectors have one.
    pub band: Option<super::Band>,
    last: &'a super::ensemble::Output,
}

impl Anomaly<'_> {
    /// Each detector's score of the last sample by detector name: the
    /// ensemble's members, then the static threshold if one applies.
    pub fn detector_scores(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        DetectorKind::ALL
            .iter()
            .zip(self.last.members)
            .filter(|(_, v)| *v >= 0.0)
            .map(|(k, v)| (k.as_str(), v as f64))
            .chain(self.last.threshold.map(|t| ("threshold", t as f64)))
    }
}

/// Labels of the anomaly families for a series of `family`.
pub fn anomaly_labels(family: &str, labels: &Labels) -> Labels {
    let mut pairs: Vec<(String, String)> = labels
        .pairs()
        .into_iter()
        .map(|(k, v)| {
            if k == "metric" {
                ("exported_metric".to_string(), v)
            } else {
                (k, v)
            }
        })
        .collect();
    pairs.push(("metric".to_string(), family.to_string()));
    Labels::from_pairs(&pairs)
}

/// The detection step of the pipeline.
pub struct Detect {
    cfg: DetectConfig,
    /// The `[[pipeline]]` rules, for their `detect` switch.
    rules: Vec<PipelineRule>,
    events: EventBus,
}

impl Detect {
    pub fn new(cfg: DetectConfig, rules: Vec<PipelineRule>, events: EventBus) -> Self {
        Detect { cfg, rules, events }
    }

    fn new_state(&self, sample: &Sample) -> SeriesDetector {
        let name = &sample.family.name;
        let on = self
            .rules
            .iter()
            .find(|r| r.matches(name, &sample.labels))
            .is_none_or(|r| r.detect);
        let statics: Vec<ThresholdSpec> = self
            .cfg
            .thresholds
            .iter()
            .filter(|t| t.matches(name, &sample.labels))
            .map(|t| t.spec())
            .collect();
        SeriesDetector {
            ensemble: on.then(|| Ensemble::new(&self.cfg, &statics)),
            labels: anomaly_labels(name, &sample.labels),
            events: 0,
            previous: None,
            scored: false,
            gate: super::gate::Gate::new(self.cfg.effect(name, sample.family.kind)),
        }
    }

    /// Score `sample` with the series' state (created on first use) and
    /// publish an event when an anomaly starts. Returns the ensemble score
    /// when the sample was scored.
    pub fn observe(
        &self,
        source: &str,
        sample: &Sample,
        slot: &mut Option<Box<SeriesDetector>>,
    ) -> Option<f64> {
        // Histogram parts (buckets, sums, counts) are not scored one by one.
        if sample.family.kind == MetricKind::Histogram {
            return None;
        }
        let state = slot.get_or_insert_with(|| Box::new(self.new_state(sample)));
        let Some(ensemble) = &mut state.ensemble else {
            return None;
        };
        let value = match sample.family.kind {
            MetricKind::Gauge => Some(sample.value),
            MetricKind::Counter => {
                let rate = state.previous.and_then(|(t0, v0)| {
                    let dt = (sample.timestamp_ms - t0) as f64 / 1000.0;
                    // A reset or a non-advancing clock gives no rate.
                    (dt > 0.0 && sample.value >= v0).then(|| (sample.value - v0) / dt)
                });
                state.previous = Some((sample.timestamp_ms, sample.value));
                rate
            }
            MetricKind::Histogram => None,
        };
        let value = value?;
        let gate = &mut state.gate;
        let out = ensemble.step_gated(sample.timestamp_ms, value, |raw, threshold| {
            gate.apply(value, raw, threshold)
        });
        state.scored = true;
        if out.event {
            state.events += 1;
            let reason = match strongest(&out.members, &self.cfg.detectors, out.threshold) {
                "threshold" => self.threshold_reason(sample),
                reason => reason,
            };
            tracing::info!(
                source,
                metric = %sample.family.name,
                labels = sample.labels.as_str(),
                value,
                expected = out.band.map(|b| b.expected),
                score = out.score,
                reason,
                "Anomaly event."
            );
            self.events.publish(Event {
                kind: "anomaly",
                severity: Severity::Warning,
                timestamp_ms: sample.timestamp_ms,
                source: source.to_string(),
                metric: sample.family.name.to_string(),
                labels: sample.labels.as_str().to_string(),
                value,
                expected: out.band.map(|b| b.expected),
                lower: out.band.map(|b| b.lower),
                upper: out.band.map(|b| b.upper),
                score: out.score,
                reason: reason.to_string(),
            });
        }
        Some(out.score)
    }

    /// The `reason` of an event a static threshold fired: the first
    /// matching rule's own, else `threshold`.
    fn threshold_reason(&self, sample: &Sample) -> &str {
        self.cfg
            .thresholds
            .iter()
            .filter(|t| t.matches(&sample.family.name, &sample.labels))
            .find_map(|t| t.reason.as_deref())
            .unwrap_or("threshold")
    }
}

/// The member with the highest score (the event's `reason`).
fn strongest(members: &[f32], kinds: &[DetectorKind], threshold: Option<f32>) -> &'static str {
    if threshold.is_some_and(|t| t >= 1.0) {
        return "threshold";
    }
    DetectorKind::ALL
        .iter()
        .zip(members)
        .filter(|(k, _)| kinds.contains(k))
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or("ensemble", |(k, _)| k.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FamilyMeta;

    #[test]
    fn anomaly_labels_rename_a_metric_label() {
        let l = anomaly_labels(
            "x_total",
            &Labels::from_pairs(&[("metric", "a"), ("cpu", "0")]),
        );
        assert_eq!(
            l.as_str(),
            r#"{cpu="0",exported_metric="a",metric="x_total"}"#
        );
    }

    /// Anomaly events of one series of `family` fed `values`, one a second.
    fn events_of(cfg: &DetectConfig, family: &str, kind: MetricKind, values: &[f64]) -> Vec<usize> {
        let bus = EventBus::new(4096);
        let mut rx = bus.subscribe();
        let d = Detect::new(cfg.clone(), vec![], bus);
        let fam = FamilyMeta::new(family, kind, "t");
        let mut slot = None;
        let t0 = 1_764_633_600_000i64;
        for (i, v) in values.iter().enumerate() {
            let s = Sample {
                family: fam.clone(),
                labels: Labels::from_pairs(&[("device", "lo")]),
                value: *v,
                timestamp_ms: t0 + i as i64 * 1000,
            };
            d.observe("system", &s, &mut slot);
        }
        let mut at = Vec::new();
        while let Ok(e) = rx.try_recv() {
            at.push(((e.timestamp_ms - t0) / 1000) as usize);
        }
        at
    }

    /// The detector configuration of main before the gate: every deviation
    /// with a high score fires.
    fn ungated() -> DetectConfig {
        DetectConfig {
            min_effect: 0.0,
            family_rules: false,
            ..DetectConfig::default()
        }
    }

    /// Per-second counter values of a rate series.
    fn counter(rates: &[f64]) -> Vec<f64> {
        rates
            .iter()
            .scan(0.0, |c, r| {
                *c += r;
                Some(*c)
            })
            .collect()
    }

    /// Loopback traffic as on a busy build host: a few kB/s of jitter and,
    /// every few minutes, a burst of 5 to 40 s at up to a thousand times
    /// the rate (a test talking to a local broker).
    fn loopback(seconds: usize) -> Vec<f64> {
        let n = crate::detect::testdata::noise(seconds, 21);
        let mut rates: Vec<f64> = n.iter().map(|v| 2000.0 + 600.0 * v.abs()).collect();
        let mut i = 400;
        let mut k = 0usize;
        while i + 60 < seconds {
            let len = 5 + (k * 7) % 36;
            let height = 1e4 * (1 + (k * 13) % 100) as f64;
            for r in &mut rates[i..i + len] {
                *r += height * (1.0 + 0.3 * n[i % n.len()]);
            }
            i += 150 + (k * 37) % 300;
            k += 1;
        }
        counter(&rates)
    }

    #[test]
    fn loopback_bursts_do_not_fire_at_defaults_but_did_without_the_gate() {
        let values = loopback(3 * 3600);
        let fam = "vitals_network_receive_bytes_total";
        let ev = events_of(&DetectConfig::default(), fam, MetricKind::Counter, &values);
        assert!(ev.is_empty(), "{ev:?}");
        let before = events_of(&ungated(), fam, MetricKind::Counter, &values);
        assert!(before.len() >= 5, "the series is a real test: {before:?}");
    }

    #[test]
    fn a_lasting_outage_of_a_busy_interface_still_fires() {
        let n = crate::detect::testdata::noise(1800, 22);
        let mut rates: Vec<f64> = n.iter().map(|v| 1e6 + 1e5 * v).collect();
        for r in &mut rates[1200..] {
            *r = 0.0;
        }
        let ev = events_of(
            &DetectConfig::default(),
            "vitals_network_transmit_bytes_total",
            MetricKind::Counter,
            &counter(&rates),
        );
        // After the hold period (a minute of samples).
        assert!(ev.iter().any(|t| (1200..1300).contains(t)), "{ev:?}");
    }

    #[test]
    fn a_process_group_that_dies_fires_on_up_and_on_its_process_count() {
        let mut up = vec![1.0; 900];
        up.extend([0.0; 100]);
        let ev = events_of(
            &DetectConfig::default(),
            "vitals_process_group_up",
            MetricKind::Gauge,
            &up,
        );
        assert!(ev.iter().any(|t| (900..905).contains(t)), "{ev:?}");
        let mut procs: Vec<f64> = (0..900).map(|i| 3.0 + ((i / 97) % 2) as f64).collect();
        procs.extend([0.0; 100]);
        let ev = events_of(
            &DetectConfig::default(),
            "vitals_process_group_processes",
            MetricKind::Gauge,
            &procs,
        );
        assert!(ev.iter().any(|t| (900..905).contains(t)), "{ev:?}");
    }

    #[test]
    fn a_filling_disk_fires() {
        // 50 GB free with a few MB of churn, then 200 MB/s written.
        let n = crate::detect::testdata::noise(1200, 23);
        let mut free: Vec<f64> = n.iter().map(|v| 5e10 + 2e6 * v).collect();
        for (i, f) in free.iter_mut().enumerate().skip(900) {
            *f -= 2e8 * (i - 899) as f64;
        }
        let ev = events_of(
            &DetectConfig::default(),
            "vitals_filesystem_available_bytes",
            MetricKind::Gauge,
            &free,
        );
        assert!(ev.iter().any(|t| (900..960).contains(t)), "{ev:?}");
    }

    #[test]
    fn sensor_jitter_does_not_fire_at_defaults_and_a_step_does() {
        // A hwmon temperature: 0.1 °C noise with rare 0.5 °C glitches for
        // two hours, then a 3 °C step.
        let n = crate::detect::testdata::noise(7800, 24);
        let mut t: Vec<f64> = n
            .iter()
            .enumerate()
            .map(|(i, v)| 21.0 + 0.1 * v + if i % 611 == 0 { 0.5 } else { 0.0 })
            .collect();
        for v in &mut t[7200..] {
            *v += 3.0;
        }
        let fam = "vitals_hwmon_temperature_celsius";
        let ev = events_of(&DetectConfig::default(), fam, MetricKind::Gauge, &t);
        assert_eq!(
            ev.iter().filter(|t| **t < 7200).count(),
            0,
            "jitter fired: {ev:?}"
        );
        assert!(ev.iter().any(|t| (7200..7210).contains(t)), "{ev:?}");
        let before = events_of(&ungated(), fam, MetricKind::Gauge, &t);
        assert!(
            before.iter().any(|t| *t < 7200),
            "the jitter is a real test: {before:?}"
        );
        // A sensor of another source (MQTT) keeps min_effect (0 by
        // default): its step fires too.
        let ev = events_of(
            &DetectConfig::default(),
            "plant_temperature_celsius",
            MetricKind::Gauge,
            &t,
        );
        assert!(ev.iter().any(|t| (7200..7210).contains(t)), "{ev:?}");
        let strict = DetectConfig {
            min_effect: 3.0,
            ..DetectConfig::default()
        };
        let ev = events_of(&strict, "plant_temperature_celsius", MetricKind::Gauge, &t);
        assert!(!ev.iter().any(|t| *t < 7200), "min_effect = 3: {ev:?}");
        assert!(ev.iter().any(|t| (7200..7210).contains(t)), "{ev:?}");
    }

    #[test]
    fn events_are_published_on_the_rising_edge_only() {
        let bus = EventBus::new(16);
        let mut rx = bus.subscribe();
        let d = Detect::new(DetectConfig::default(), vec![], bus);
        let fam = FamilyMeta::new("load", MetricKind::Gauge, "l");
        let mut slot = None;
        let noise = crate::detect::testdata::noise(1200, 3);
        for (i, v) in noise.iter().enumerate() {
            let value = if i >= 1000 { v + 30.0 } else { *v };
            let s = Sample {
                family: fam.clone(),
                labels: Labels::from_pairs(&[("host", "a")]),
                value,
                timestamp_ms: i as i64 * 1000,
            };
            d.observe("test", &s, &mut slot);
        }
        let ev = rx.try_recv().expect("one event");
        assert_eq!(ev.kind, "anomaly");
        assert_eq!(ev.metric, "load");
        assert!(ev.timestamp_ms >= 1_000_000);
        assert!(rx.try_recv().is_err(), "suppressed after the first");
        let state = slot.unwrap();
        assert_eq!(state.events, 1);
        assert!(state.state_bytes() <= 4096, "{}", state.state_bytes());
    }
}
