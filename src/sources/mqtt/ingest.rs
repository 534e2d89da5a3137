//! The mapping side of the source: topic and payload of each message to
//! samples, the per-subscription cardinality budget, silent devices and the
//! source's self-metrics. Everything but the connection.

use std::sync::Arc;
use std::time::Instant;

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use rustc_hash::FxHashMap;

use super::config::MqttConfig;
use super::topic::TopicPattern;
use crate::model::{Batch, BatchMode, FamilyMeta, Labels, MetricKind, Sample};
use crate::payload::mapping::Mapping;
use crate::telemetry::Telemetry;

/// Silent-sensor state of one device.
pub(super) struct Device {
    pub(super) labels: Labels,
    pub(super) last_seen_ms: i64,
    pub(super) up: bool,
    /// A message arrived since the last tick.
    pub(super) dirty: bool,
}

/// Label set bookkeeping for the cardinality budget and expiry.
pub(super) struct LabelSet {
    pub(super) last_seen_ms: i64,
    /// Which metrics (by index, up to 64) have a series for this label set.
    pub(super) mask: u64,
}

/// Per-subscription self-metrics, resolved once.
pub(super) struct SubMetrics {
    pub(super) messages: IntCounter,
    pub(super) samples: IntCounter,
    pub(super) dropped_cardinality: IntCounter,
    pub(super) lag: Gauge,
    pub(super) series: IntGauge,
    pub(super) devices: IntGauge,
}

/// A compiled subscription and its bounded state.
pub(super) struct Sub {
    pub(super) name: String,
    pub(super) pattern: TopicPattern,
    /// Routing filter when `filter` is wider than `topic`.
    pub(super) route: Option<TopicPattern>,
    pub(super) qos: rumqttc::QoS,
    pub(super) mapping: Mapping,
    pub(super) families: Vec<Arc<FamilyMeta>>,
    pub(super) max_series: usize,
    /// Topic labels of the current message (names fixed, values reused).
    pub(super) base: Vec<(String, String)>,
    pub(super) sets: FxHashMap<Labels, LabelSet>,
    pub(super) series: usize,
    pub(super) silence: Option<Silence>,
    pub(super) m: SubMetrics,
    /// Receive time of the oldest message of this subscription in the batch.
    pub(super) oldest: Option<Instant>,
    pub(super) pending_messages: u64,
    pub(super) pending_samples: u64,
}

pub(super) struct Silence {
    pub(super) down_after_ms: i64,
    /// Slots of `base` that identify a device.
    pub(super) key_slots: Vec<usize>,
    pub(super) up: Arc<FamilyMeta>,
    pub(super) last_seen: Arc<FamilyMeta>,
    pub(super) devices: FxHashMap<Box<str>, Device>,
    pub(super) key: String,
}

/// Self-metrics of one MQTT source (constant label `source`), registered
/// when the source starts and unregistered when it stops (dropped), so a
/// source restarted by a reload registers cleanly and a removed one leaves
/// nothing behind.
pub(super) struct SourceMetrics {
    pub(super) registry: prometheus::Registry,
    pub(super) connected: IntGauge,
    pub(super) subscribed: IntGauge,
    pub(super) reconnects: IntCounter,
    pub(super) messages: IntCounterVec,
    pub(super) samples: IntCounterVec,
    pub(super) parse_errors: IntCounterVec,
    pub(super) dropped: IntCounterVec,
    pub(super) lag: GaugeVec,
    pub(super) series: IntGaugeVec,
    pub(super) devices: IntGaugeVec,
}

impl SourceMetrics {
    fn new(source: &str, telemetry: &Telemetry) -> SourceMetrics {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("source", source);
        let sub = &["subscription"];
        let reason = &["subscription", "reason"];
        let m = SourceMetrics {
            registry: telemetry.registry().clone(),
            connected: IntGauge::with_opts(opts(
                "vitals_mqtt_connected",
                "Whether the MQTT source is connected to its broker (1) or not (0).",
            ))
            .expect("valid metric"),
            subscribed: IntGauge::with_opts(opts(
                "vitals_mqtt_subscribed",
                "Whether the broker acknowledged every subscription of the current connection (1) or not (0).",
            ))
            .expect("valid metric"),
            reconnects: IntCounter::with_opts(opts(
                "vitals_mqtt_reconnects_total",
                "Connections to the broker after the first one.",
            ))
            .expect("valid metric"),
            messages: IntCounterVec::new(
                opts(
                    "vitals_mqtt_messages_total",
                    "MQTT messages received, by subscription.",
                ),
                sub,
            )
            .expect("valid metric"),
            samples: IntCounterVec::new(
                opts(
                    "vitals_mqtt_samples_total",
                    "Samples produced from MQTT messages, by subscription.",
                ),
                sub,
            )
            .expect("valid metric"),
            parse_errors: IntCounterVec::new(
                opts(
                    "vitals_mqtt_parse_errors_total",
                    "MQTT messages that could not be mapped, by subscription and reason.",
                ),
                reason,
            )
            .expect("valid metric"),
            dropped: IntCounterVec::new(
                opts(
                    "vitals_mqtt_samples_dropped_total",
                    "Samples dropped by the MQTT source, by subscription and reason.",
                ),
                reason,
            )
            .expect("valid metric"),
            lag: GaugeVec::new(
                opts(
                    "vitals_mqtt_processing_lag_seconds",
                    "Age of the oldest message of the last batch handed to the pipeline.",
                ),
                sub,
            )
            .expect("valid metric"),
            series: IntGaugeVec::new(
                opts(
                    "vitals_mqtt_series",
                    "Value series currently tracked for a subscription (its budget is max_series).",
                ),
                sub,
            )
            .expect("valid metric"),
            devices: IntGaugeVec::new(
                opts(
                    "vitals_mqtt_devices",
                    "Devices currently tracked for silent-sensor detection.",
                ),
                sub,
            )
            .expect("valid metric"),
        };
        for c in m.collectors() {
            if let Err(error) = m.registry.register(c) {
                tracing::warn!(source, %error, "MQTT self-metric not registered.");
            }
        }
        m
    }

    fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 10] {
        [
            Box::new(self.connected.clone()),
            Box::new(self.subscribed.clone()),
            Box::new(self.reconnects.clone()),
            Box::new(self.messages.clone()),
            Box::new(self.samples.clone()),
            Box::new(self.parse_errors.clone()),
            Box::new(self.dropped.clone()),
            Box::new(self.lag.clone()),
            Box::new(self.series.clone()),
            Box::new(self.devices.clone()),
        ]
    }
}

impl Drop for SourceMetrics {
    fn drop(&mut self) {
        for c in self.collectors() {
            // Not registered (a failed registration) is fine here.
            let _ = self.registry.unregister(c);
        }
    }
}

/// Where a message went.
enum Route {
    Sub(usize),
    /// Matched the broker filter of this subscription but not its topic pattern.
    Unmatched(usize),
    None,
}

/// The mapping side of the source: everything but the connection.
pub(super) struct Ingest {
    pub(super) source: Arc<str>,
    pub(super) subs: Vec<Sub>,
    pub(super) ttl_ms: Option<i64>,
    pub(super) batch: Vec<Sample>,
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) metrics: SourceMetrics,
    /// Size bounds of a new label set (the source's, from the store), so
    /// the label sets and devices tracked here stay as bounded as the
    /// store's series.
    pub(super) limits: crate::model::LabelLimits,
}

impl Ingest {
    pub(super) fn new(cfg: &MqttConfig, telemetry: Arc<Telemetry>) -> Result<Ingest, String> {
        let metrics = SourceMetrics::new(&cfg.name, &telemetry);
        let mut subs = Vec::new();
        for s in &cfg.subscriptions {
            let pattern = TopicPattern::parse(&s.topic)?;
            let route = s.filter.as_deref().map(TopicPattern::parse).transpose()?;
            let mapping = Mapping::new(&s.mapping)?;
            let name = s.name.clone().unwrap_or_else(|| s.topic.clone());
            let silence = s.expected_interval.map(|iv| {
                let key_slots = match &s.device_labels {
                    Some(dl) => dl
                        .iter()
                        .filter_map(|l| pattern.labels.iter().position(|x| x == l))
                        .collect(),
                    None => (0..pattern.labels.len()).collect(),
                };
                Silence {
                    down_after_ms: (iv * s.down_after).as_millis() as i64,
                    key_slots,
                    up: FamilyMeta::new(
                        &format!("{}_device_up", s.device_prefix),
                        MetricKind::Gauge,
                        "Whether a device reported within its expected interval times down_after (1) or has gone silent (0).",
                    ),
                    last_seen: FamilyMeta::new(
                        &format!("{}_device_last_seen_timestamp_seconds", s.device_prefix),
                        MetricKind::Gauge,
                        "Unix time of the last message from a device.",
                    ),
                    devices: FxHashMap::default(),
                    key: String::new(),
                }
            });
            let l = [name.as_str()];
            let m = SubMetrics {
                messages: metrics.messages.with_label_values(&l),
                samples: metrics.samples.with_label_values(&l),
                dropped_cardinality: metrics.dropped.with_label_values(&[&name, "cardinality"]),
                lag: metrics.lag.with_label_values(&l),
                series: metrics.series.with_label_values(&l),
                devices: metrics.devices.with_label_values(&l),
            };
            subs.push(Sub {
                families: mapping.families().cloned().collect(),
                base: pattern
                    .labels
                    .iter()
                    .map(|l| (l.clone(), String::new()))
                    .collect(),
                name,
                route,
                qos: qos(s.qos.unwrap_or(cfg.qos)),
                mapping,
                max_series: s.max_series,
                sets: FxHashMap::default(),
                series: 0,
                silence,
                m,
                oldest: None,
                pending_messages: 0,
                pending_samples: 0,
                pattern,
            });
        }
        Ok(Ingest {
            source: cfg.name.as_str().into(),
            subs,
            ttl_ms: (!cfg.series_ttl.is_zero()).then_some(cfg.series_ttl.as_millis() as i64),
            batch: Vec::with_capacity(1024),
            telemetry,
            metrics,
            limits: crate::model::LabelLimits::default(),
        })
    }

    fn route(&mut self, topic: &str) -> Route {
        for (i, sub) in self.subs.iter_mut().enumerate() {
            let base = &mut sub.base;
            for (_, v) in base.iter_mut() {
                v.clear();
            }
            let routed = match &sub.route {
                Some(r) => r.matches(topic, |_, _| {}),
                None => true,
            };
            if !routed {
                continue;
            }
            if sub
                .pattern
                .matches(topic, |slot, value| base[slot].1.push_str(value))
            {
                return Route::Sub(i);
            }
            if sub.route.is_some() {
                return Route::Unmatched(i);
            }
        }
        Route::None
    }

    /// Map one message into the pending batch.
    pub(super) fn on_message(&mut self, topic: &str, payload: &[u8], received: Instant, now: i64) {
        let i = match self.route(topic) {
            Route::Sub(i) => i,
            Route::Unmatched(i) => {
                let sub = &mut self.subs[i];
                sub.pending_messages += 1;
                self.metrics
                    .parse_errors
                    .with_label_values(&[&sub.name, "unmatched_topic"])
                    .inc();
                self.telemetry.source_error(
                    &self.source,
                    "unmatched_topic",
                    &format_args!("Topic {topic:?} does not match {:?}.", sub.pattern.filter),
                );
                return;
            }
            Route::None => {
                self.metrics
                    .parse_errors
                    .with_label_values(&["", "unmatched_topic"])
                    .inc();
                self.telemetry.source_error(
                    &self.source,
                    "unmatched_topic",
                    &format_args!("Topic {topic:?} matches no subscription."),
                );
                return;
            }
        };
        let sub = &mut self.subs[i];
        sub.pending_messages += 1;
        sub.oldest.get_or_insert(received);
        if let Some(s) = &mut sub.silence {
            s.key.clear();
            for (n, slot) in s.key_slots.iter().enumerate() {
                if n > 0 {
                    s.key.push('\u{1f}');
                }
                s.key.push_str(&sub.base[*slot].1);
            }
            let count = s.devices.len();
            match s.devices.get_mut(s.key.as_str()) {
                Some(d) => {
                    d.last_seen_ms = now;
                    d.dirty = true;
                }
                None if count < sub.max_series => {
                    let pairs: Vec<(&str, &str)> = s
                        .key_slots
                        .iter()
                        .map(|slot| (sub.base[*slot].0.as_str(), sub.base[*slot].1.as_str()))
                        .collect();
                    let labels = Labels::from_pairs(&pairs);
                    // A device over the label limits is not tracked; its
                    // samples (whose labels hold the device's) are dropped
                    // and counted by the same check below.
                    if self.limits.check_labels(&labels).is_ok() {
                        s.devices.insert(
                            s.key.as_str().into(),
                            Device {
                                labels,
                                last_seen_ms: now,
                                up: false,
                                dirty: true,
                            },
                        );
                    }
                }
                None => {
                    sub.m.dropped_cardinality.inc();
                    self.telemetry.sample_dropped(
                        &self.source,
                        "cardinality",
                        &format_args!("Subscription {:?} tracks max_series devices.", sub.name),
                    );
                }
            }
        }
        let start = self.batch.len();
        match sub.mapping.map(payload, &sub.base, now, &mut self.batch) {
            Ok(_) => {}
            Err(error) => {
                let reason = error.reason();
                self.metrics
                    .parse_errors
                    .with_label_values(&[&sub.name, reason])
                    .inc();
                if let Some(suppressed) = self.telemetry.should_log(&self.source, reason) {
                    tracing::warn!(
                        source = %self.source,
                        subscription = %sub.name,
                        topic,
                        reason,
                        %error,
                        suppressed,
                        "MQTT message could not be mapped."
                    );
                }
                self.telemetry.count_source_errors(&self.source, reason, 1);
                return;
            }
        }
        // Cardinality budget: new (label set, metric) pairs count as series.
        // Samples of one element share their label set: one lookup per group.
        let mut write = start;
        let mut dropped = 0u64;
        let end = self.batch.len();
        let mut read = start;
        while read < end {
            let mut group_end = read + 1;
            while group_end < end && self.batch[group_end].labels == self.batch[read].labels {
                group_end += 1;
            }
            let labels = &self.batch[read].labels;
            if !sub.sets.contains_key(labels)
                && let Err(exceeded) = self.limits.check_labels(labels)
            {
                let n = (group_end - read) as u64;
                let reason = exceeded.reason();
                self.telemetry
                    .samples_dropped
                    .with_label_values(&[&self.source, reason])
                    .inc_by(n);
                if let Some(suppressed) = self.telemetry.should_log(&self.source, reason) {
                    tracing::warn!(
                        source = %self.source,
                        subscription = %sub.name,
                        bytes = labels.as_str().len(),
                        suppressed,
                        "Label set over the source's label limits; samples dropped."
                    );
                }
                read = group_end;
                continue;
            }
            if !sub.sets.contains_key(labels) && sub.series < sub.max_series {
                sub.sets.insert(
                    labels.clone(),
                    LabelSet {
                        last_seen_ms: now,
                        mask: 0,
                    },
                );
            }
            let mut set = sub.sets.get_mut(labels);
            for k in read..group_end {
                let keep = match set.as_deref_mut() {
                    Some(set) => {
                        set.last_seen_ms = now;
                        let family = &self.batch[k].family;
                        let bit = sub
                            .families
                            .iter()
                            .position(|f| Arc::ptr_eq(f, family))
                            .map_or(0, |i| 1u64 << i);
                        if set.mask & bit != 0 {
                            true
                        } else if sub.series < sub.max_series {
                            set.mask |= bit;
                            sub.series += 1;
                            true
                        } else {
                            false
                        }
                    }
                    None => false,
                };
                if keep {
                    self.batch.swap(write, k);
                    write += 1;
                } else {
                    dropped += 1;
                }
            }
            read = group_end;
        }
        self.batch.truncate(write);
        sub.pending_samples += (write - start) as u64;
        if dropped > 0 {
            sub.m.dropped_cardinality.inc_by(dropped);
            self.telemetry
                .samples_dropped
                .with_label_values(&[&self.source, "cardinality"])
                .inc_by(dropped);
            if let Some(suppressed) = self.telemetry.should_log(&self.source, "cardinality") {
                tracing::warn!(
                    source = %self.source,
                    subscription = %sub.name,
                    max_series = sub.max_series,
                    suppressed,
                    "Cardinality budget reached; samples of new series dropped."
                );
            }
        }
    }

    /// Once a second: silent-device gauges and forgetting expired label sets.
    pub(super) fn tick(&mut self, now: i64) {
        for sub in &mut self.subs {
            if let Some(ttl) = self.ttl_ms {
                let before = sub.sets.len();
                let mut removed = 0usize;
                sub.sets.retain(|_, set| {
                    let keep = now - set.last_seen_ms <= ttl;
                    if !keep {
                        removed += set.mask.count_ones() as usize;
                    }
                    keep
                });
                if sub.sets.len() != before {
                    sub.series = sub.series.saturating_sub(removed);
                }
            }
            sub.m.series.set(sub.series as i64);
            let Some(s) = &mut sub.silence else { continue };
            for d in s.devices.values_mut() {
                if d.dirty {
                    d.dirty = false;
                    d.up = true;
                    self.batch.push(Sample {
                        family: s.last_seen.clone(),
                        labels: d.labels.clone(),
                        value: d.last_seen_ms as f64 / 1000.0,
                        timestamp_ms: now,
                    });
                    self.batch.push(Sample {
                        family: s.up.clone(),
                        labels: d.labels.clone(),
                        value: 1.0,
                        timestamp_ms: now,
                    });
                } else if d.up && now - d.last_seen_ms > s.down_after_ms {
                    d.up = false;
                    self.batch.push(Sample {
                        family: s.up.clone(),
                        labels: d.labels.clone(),
                        value: 0.0,
                        timestamp_ms: now,
                    });
                }
            }
            if let Some(ttl) = self.ttl_ms {
                let forget = ttl + s.down_after_ms;
                s.devices.retain(|_, d| now - d.last_seen_ms <= forget);
            }
            sub.m.devices.set(s.devices.len() as i64);
        }
    }

    /// Take the pending batch (if any) and publish the per-subscription counters.
    pub(super) fn take_batch(&mut self) -> Option<Batch> {
        let now = Instant::now();
        for sub in &mut self.subs {
            if sub.pending_messages > 0 {
                sub.m.messages.inc_by(sub.pending_messages);
                sub.pending_messages = 0;
            }
            if sub.pending_samples > 0 {
                sub.m.samples.inc_by(sub.pending_samples);
                sub.pending_samples = 0;
            }
            if let Some(t) = sub.oldest.take() {
                sub.m.lag.set(now.duration_since(t).as_secs_f64());
            }
        }
        if self.batch.is_empty() {
            return None;
        }
        let samples = std::mem::replace(&mut self.batch, Vec::with_capacity(1024));
        Some(Batch {
            source: self.source.clone(),
            mode: BatchMode::Update,
            samples,
        })
    }
}

fn qos(q: u8) -> rumqttc::QoS {
    if q >= 1 {
        rumqttc::QoS::AtLeastOnce
    } else {
        rumqttc::QoS::AtMostOnce
    }
}

pub(super) fn sub_filter(s: &Sub) -> String {
    match &s.route {
        Some(r) => r.filter.clone(),
        None => s.pattern.filter.clone(),
    }
}
