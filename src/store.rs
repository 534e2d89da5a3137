//! The in-memory store: per series, the latest value, when it was seen and
//! which source owns it. [`crate::exposition`] writes it as `/metrics` at
//! scrape time.
//!
//! Later stages hang their per-series state here (detector state, history
//! ring for the live dashboard); the store also enforces per-source
//! cardinality budgets and expiry so memory stays bounded.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::model::{FamilyMeta, LabelLimits, Labels, LimitExceeded, MetricKind, Sample};

/// One series: the latest value of one label set of one family.
#[derive(Debug, Clone)]
pub struct Series {
    pub value: f64,
    /// When the value was observed (ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// The source instance that owns the series (for snapshots, budgets, expiry).
    pub source: Arc<str>,
    /// Store generation of the last update; snapshot batches remove the
    /// series of their source that they did not touch.
    generation: u64,
    /// Anomaly detector state, created by the pipeline's detect step.
    pub detect: Option<Box<crate::detect::live::SeriesDetector>>,
    /// Store-wide unique id, never reused (the live dashboard refers to
    /// series by it).
    pub id: u64,
    /// Value of the store's change counter at the last update, so the
    /// dashboard can find what changed since it last looked.
    pub seq: u64,
    /// Recent points for the live dashboard (empty when history is off).
    pub history: History,
}

impl Series {
    /// Attach an anomaly score (0..1) to the history point of `timestamp_ms`.
    /// The ingest task calls it in the same store write as the
    /// [`Store::upsert`] of that sample (the dashboard then sends value and
    /// score together).
    pub fn record_score(&mut self, timestamp_ms: i64, score: f64) -> bool {
        self.history.set_score(timestamp_ms, score)
    }
}

/// Seconds between the Unix epoch and the origin of history offsets
/// (2020-01-01T00:00:00Z); `u32` offsets from it last until 2156.
pub const HISTORY_EPOCH_S: i64 = 1_577_836_800;

/// One history point: 12 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds since [`HISTORY_EPOCH_S`], rounded down to the resolution.
    pub t: u32,
    pub value: f32,
    /// Anomaly score in [0, 1]; NaN when no detector scored the point.
    pub score: f32,
}

impl Point {
    /// The point's time in milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> i64 {
        (HISTORY_EPOCH_S + self.t as i64) * 1000
    }
}

/// A bounded ring of recent points of one series, at most one point per
/// `resolution` (a later sample in the same slot replaces the value).
#[derive(Debug, Clone, Default)]
pub struct History {
    points: std::collections::VecDeque<Point>,
}

/// Shape of every series' history, set once from the dashboard config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryShape {
    /// Points kept per series; 0 disables history.
    pub capacity: usize,
    /// Slot width in seconds (at least 1).
    pub resolution_s: u32,
}

/// History slot of a timestamp, `None` before the history epoch.
pub fn history_slot(timestamp_ms: i64, resolution_s: u32) -> Option<u32> {
    let s = timestamp_ms.div_euclid(1000) - HISTORY_EPOCH_S;
    let res = resolution_s.max(1) as i64;
    u32::try_from(s - s.rem_euclid(res)).ok()
}

impl History {
    fn push(&mut self, shape: HistoryShape, timestamp_ms: i64, value: f64) {
        if shape.capacity == 0 {
            return;
        }
        let Some(t) = history_slot(timestamp_ms, shape.resolution_s) else {
            return;
        };
        match self.points.back_mut() {
            Some(last) if last.t == t => {
                last.value = value as f32;
                return;
            }
            // Out of order: the latest value still updates, the history
            // only moves forward.
            Some(last) if last.t > t => return,
            _ => {}
        }
        if self.points.len() >= shape.capacity {
            self.points.pop_front();
        }
        if self.points.capacity() == 0 {
            // Grow gradually: a series that updates once a minute never
            // needs the full ring.
            self.points.reserve_exact(shape.capacity.min(64));
        }
        self.points.push_back(Point {
            t,
            value: value as f32,
            score: f32::NAN,
        });
    }

    fn set_score(&mut self, timestamp_ms: i64, score: f64) -> bool {
        let Some(first) = self.points.front() else {
            return false;
        };
        // The newest point at or before the timestamp holds it (the slot
        // of a sample starts at or before the sample's second).
        let s = timestamp_ms.div_euclid(1000) - HISTORY_EPOCH_S;
        if s < first.t as i64 {
            return false;
        }
        for p in self.points.iter_mut().rev() {
            if (p.t as i64) <= s {
                p.score = score as f32;
                return true;
            }
        }
        false
    }

    /// Points, oldest first.
    pub fn points(&self) -> std::collections::vec_deque::Iter<'_, Point> {
        self.points.iter()
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Bytes held by the ring (for tests and the memory estimate).
    pub fn heap_bytes(&self) -> usize {
        self.points.capacity() * std::mem::size_of::<Point>()
    }
}

/// All series of one metric family.
#[derive(Debug)]
pub struct Family {
    pub meta: Arc<FamilyMeta>,
    pub series: FxHashMap<Labels, Series>,
}

/// Per-source limits and bookkeeping.
#[derive(Debug, Default, Clone)]
struct SourceBook {
    /// Series currently owned by the source.
    series: usize,
    /// Most series the source may own; `None` is unlimited.
    budget: Option<usize>,
    /// Series not updated for this long are removed; `None` never expires.
    ttl_ms: Option<i64>,
    /// Size bounds of the source's new series; `None`: the store default.
    limits: Option<LabelLimits>,
}

/// Why the store refused a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A new series would exceed the source's cardinality budget.
    Cardinality,
    /// The family already exists with another type.
    TypeConflict,
    /// The metric name or the label set is larger than the source's
    /// [`LabelLimits`] allow.
    Limit(LimitExceeded),
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Cardinality => "cardinality",
            Refused::TypeConflict => "type_conflict",
            Refused::Limit(l) => l.reason(),
        }
    }
}

/// A series that left the store (expired, missing from a snapshot, its
/// source removed), for the staleness markers of remote write.
#[derive(Debug, Clone)]
pub struct Ended {
    pub family: Arc<str>,
    pub labels: Labels,
    /// Time of its last sample (ms).
    pub last_ms: i64,
    /// It had detector state (so an anomaly score series ends with it).
    pub scored: bool,
}

#[derive(Debug, Default)]
pub struct Store {
    /// Series removed since the last [`Store::take_ended`]; `None` when
    /// nobody asked to track them.
    ended: Option<Vec<Ended>>,
    families: FxHashMap<Arc<str>, Family>,
    sources: FxHashMap<Arc<str>, SourceBook>,
    generation: u64,
    series: usize,
    /// Bytes of the metric names and rendered label sets of every series:
    /// what the label limits bound.
    label_bytes: usize,
    /// Size bounds of new series for sources without their own.
    default_limits: LabelLimits,
    /// Export per-detector scores (`vitals_anomaly_detector_score`).
    detector_scores: bool,
    /// Shape of the per-series history ring (the live dashboard's).
    history: HistoryShape,
    next_id: u64,
    /// Bumped on every change; shared so the dashboard can poll it without
    /// taking the store lock.
    changes: Arc<std::sync::atomic::AtomicU64>,
    /// Detector state restored at start (taken by a series when it comes
    /// back) and the idempotency windows saved with it.
    pub persisted: crate::detect::persisted::Persisted,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Export per-detector anomaly scores as well as the ensemble's.
    pub fn set_detector_scores(&mut self, on: bool) {
        self.detector_scores = on;
    }

    /// Whether per-detector anomaly scores are exported.
    pub fn detector_scores(&self) -> bool {
        self.detector_scores
    }

    /// Keep up to `capacity` points per series at `resolution` (whole
    /// seconds, at least 1) for the live dashboard. Memory is bounded by
    /// `capacity * 12 bytes` times the series the budgets admit.
    pub fn set_history(&mut self, capacity: usize, resolution: std::time::Duration) {
        self.history = HistoryShape {
            capacity,
            resolution_s: resolution.as_secs().clamp(1, u32::MAX as u64) as u32,
        };
    }

    pub fn history_shape(&self) -> HistoryShape {
        self.history
    }

    /// The change counter: bumped on every upsert (with its score) and removal.
    pub fn changes(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.changes.clone()
    }

    fn bump(&self) -> u64 {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::Release)
            + 1
    }

    /// Current value of the change counter.
    pub fn seq(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Record the series that leave the store (see [`Store::take_ended`]).
    pub fn track_ended(&mut self) {
        self.ended.get_or_insert_with(Vec::new);
    }

    /// The series removed since the last call (empty unless tracked).
    pub fn take_ended(&mut self) -> Vec<Ended> {
        self.ended.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Limit the number of series `source` may own.
    pub fn set_budget(&mut self, source: &str, max_series: Option<usize>) {
        self.book(source).budget = max_series;
    }

    /// Size bounds of new series: `default` for every source, `per_source`
    /// (by source name) replacing it for some. Replaces earlier settings;
    /// series already held are kept.
    pub fn set_label_limits<'a>(
        &mut self,
        default: LabelLimits,
        per_source: impl IntoIterator<Item = (&'a str, LabelLimits)>,
    ) {
        self.default_limits = default;
        for book in self.sources.values_mut() {
            book.limits = None;
        }
        for (source, limits) in per_source {
            self.book(source).limits = Some(limits);
        }
    }

    /// The size bounds of the new series of `source` (a `<source>/<part>`
    /// sub-key has those of its source).
    pub fn label_limits(&self, source: &str) -> LabelLimits {
        limits_of(&self.sources, self.default_limits, source)
    }

    /// Bytes of the metric names and label sets of every series held.
    pub fn label_bytes(&self) -> usize {
        self.label_bytes
    }

    /// Remove series of `source` not updated within `ttl`.
    pub fn set_ttl(&mut self, source: &str, ttl: Option<std::time::Duration>) {
        self.book(source).ttl_ms = ttl.map(|d| d.as_millis() as i64);
    }

    fn book(&mut self, source: &str) -> &mut SourceBook {
        if !self.sources.contains_key(source) {
            self.sources
                .insert(Arc::from(source), SourceBook::default());
        }
        self.sources.get_mut(source).expect("inserted above")
    }

    /// Start applying one batch; returns the generation to pass to
    /// [`Store::upsert`] and [`Store::retain_generation`].
    pub fn begin_batch(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Insert or update the series of `sample`, owned by `source`.
    pub fn upsert(
        &mut self,
        source: &Arc<str>,
        sample: &Sample,
        generation: u64,
    ) -> Result<&mut Series, Refused> {
        let meta = &sample.family;
        if !self.families.contains_key(meta.name.as_ref()) {
            limits_of(&self.sources, self.default_limits, source)
                .check_name(&meta.name)
                .map_err(Refused::Limit)?;
            self.families.insert(
                meta.name.clone(),
                Family {
                    meta: meta.clone(),
                    series: FxHashMap::default(),
                },
            );
        }
        let family = self
            .families
            .get_mut(meta.name.as_ref())
            .expect("inserted above");
        if family.meta.kind != meta.kind {
            return Err(Refused::TypeConflict);
        }
        // Look up before inserting: the hot path (an existing series) must
        // not clone the label set.
        if !family.series.contains_key(&sample.labels) {
            limits_of(&self.sources, self.default_limits, source)
                .check(&meta.name, &sample.labels)
                .map_err(Refused::Limit)?;
            let book = match self.sources.get_mut(source.as_ref()) {
                Some(b) => b,
                None => self.sources.entry(source.clone()).or_default(),
            };
            if book.budget.is_some_and(|max| book.series >= max) {
                return Err(Refused::Cardinality);
            }
            book.series += 1;
            self.series += 1;
            self.label_bytes += series_bytes(&meta.name, &sample.labels);
            self.next_id += 1;
            family.series.insert(
                sample.labels.clone(),
                Series {
                    value: sample.value,
                    timestamp_ms: sample.timestamp_ms,
                    source: source.clone(),
                    generation,
                    detect: self.persisted.take_detector(&meta.name, &sample.labels),
                    id: self.next_id,
                    seq: 0,
                    history: History::default(),
                },
            );
        }
        let seq = self
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::Release)
            + 1;
        let series = family
            .series
            .get_mut(&sample.labels)
            .expect("inserted above");
        series.value = sample.value;
        series.timestamp_ms = sample.timestamp_ms;
        series.generation = generation;
        series.seq = seq;
        series
            .history
            .push(self.history, sample.timestamp_ms, sample.value);
        Ok(series)
    }

    /// Remove the series of `source` that were not updated in `generation`
    /// (the batch was a complete snapshot of the source).
    pub fn retain_generation(&mut self, source: &str, generation: u64) -> usize {
        self.remove_where(|s| s.source.as_ref() == source && s.generation != generation)
    }

    /// Remove every series of sources with a TTL that were last updated
    /// before `now_ms - ttl`. Returns how many were removed.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        if self.sources.values().all(|b| b.ttl_ms.is_none()) {
            return 0;
        }
        let ttls: FxHashMap<Arc<str>, i64> = self
            .sources
            .iter()
            .filter_map(|(k, b)| b.ttl_ms.map(|t| (k.clone(), t)))
            .collect();
        self.remove_where(|s| {
            ttls.get(&s.source)
                .is_some_and(|ttl| now_ms - s.timestamp_ms > *ttl)
        })
    }

    /// Remove every series of a source (e.g. a source removed on reload),
    /// including those it sent under sub-keys `<source>/<part>` (the `sql`
    /// source keeps one snapshot per query that way).
    pub fn remove_source(&mut self, source: &str) -> usize {
        self.remove_where(|s| {
            s.source
                .strip_prefix(source)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// Drop the anomaly detector state of every series (the detectors were
    /// reconfigured by a reload); the next sample of a series starts afresh.
    pub fn reset_detectors(&mut self) {
        self.persisted.forget_detectors();
        for family in self.families.values_mut() {
            for s in family.series.values_mut() {
                s.detect = None;
            }
        }
        self.bump();
    }

    fn remove_where(&mut self, mut pred: impl FnMut(&Series) -> bool) -> usize {
        let mut removed = 0;
        let mut bytes = 0;
        let sources = &mut self.sources;
        let ended = &mut self.ended;
        for family in self.families.values_mut() {
            let name = &family.meta.name;
            family.series.retain(|labels, s| {
                if pred(s) {
                    removed += 1;
                    bytes += series_bytes(name, labels);
                    if let Some(ended) = ended.as_mut() {
                        ended.push(Ended {
                            family: name.clone(),
                            labels: labels.clone(),
                            last_ms: s.timestamp_ms,
                            scored: s.detect.is_some(),
                        });
                    }
                    if let Some(b) = sources.get_mut(s.source.as_ref()) {
                        b.series = b.series.saturating_sub(1);
                    }
                    false
                } else {
                    true
                }
            });
        }
        self.families.retain(|_, f| !f.series.is_empty());
        self.series -= removed;
        self.label_bytes -= bytes;
        if removed > 0 {
            self.bump();
        }
        removed
    }

    /// Number of series held.
    pub fn len(&self) -> usize {
        self.series
    }

    pub fn is_empty(&self) -> bool {
        self.series == 0
    }

    /// Number of series owned by `source`.
    pub fn source_len(&self, source: &str) -> usize {
        self.sources.get(source).map_or(0, |b| b.series)
    }

    /// One series, if present.
    pub fn get(&self, family: &str, labels: &Labels) -> Option<&Series> {
        self.families.get(family)?.series.get(labels)
    }

    /// Every family, in no particular order.
    pub fn families(&self) -> impl Iterator<Item = &Family> {
        self.families.values()
    }
}

/// The limits of `source` (or of the source a `<source>/<part>` sub-key
/// belongs to), else `default`.
fn limits_of(
    sources: &FxHashMap<Arc<str>, SourceBook>,
    default: LabelLimits,
    source: &str,
) -> LabelLimits {
    let own = |key: &str| sources.get(key).and_then(|b| b.limits);
    own(source)
        .or_else(|| source.split_once('/').and_then(|(parent, _)| own(parent)))
        .unwrap_or(default)
}

/// What one series adds to [`Store::label_bytes`].
fn series_bytes(name: &str, labels: &Labels) -> usize {
    name.len() + labels.as_str().len()
}

/// Convenience for sources: a gauge or counter family.
pub fn family(name: &str, kind: MetricKind, help: &str) -> Arc<FamilyMeta> {
    FamilyMeta::new(name, kind, help)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetricKind;

    fn sample(f: &Arc<FamilyMeta>, dev: &str, v: f64, ts: i64) -> Sample {
        Sample {
            family: f.clone(),
            labels: Labels::from_pairs(&[("device", dev)]),
            value: v,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn snapshot_removes_series_missing_from_the_next_batch() {
        let mut store = Store::new();
        let src: Arc<str> = "system".into();
        let f = family("t_celsius", MetricKind::Gauge, "t");
        let g = store.begin_batch();
        store.upsert(&src, &sample(&f, "a", 1.0, 0), g).unwrap();
        store.upsert(&src, &sample(&f, "b", 1.0, 0), g).unwrap();
        store.retain_generation("system", g);
        assert_eq!(store.len(), 2);
        let g = store.begin_batch();
        store.upsert(&src, &sample(&f, "a", 2.0, 1), g).unwrap();
        assert_eq!(store.retain_generation("system", g), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.source_len("system"), 1);
        assert_eq!(
            store
                .get("t_celsius", &Labels::from_pairs(&[("device", "a")]))
                .unwrap()
                .value,
            2.0
        );
    }

    #[test]
    fn remove_source_takes_its_sub_keys_but_not_other_sources() {
        let mut store = Store::new();
        let f = family("v", MetricKind::Gauge, "v");
        let g = store.begin_batch();
        for (src, dev) in [("db/a", "1"), ("db/b", "2"), ("db", "3"), ("dbx/a", "4")] {
            let src: Arc<str> = src.into();
            store.upsert(&src, &sample(&f, dev, 1.0, 0), g).unwrap();
        }
        assert_eq!(store.remove_source("db"), 3);
        assert_eq!(store.len(), 1);
        assert_eq!(store.source_len("dbx/a"), 1);
    }

    #[test]
    fn budget_refuses_new_series_but_updates_existing_ones() {
        let mut store = Store::new();
        let src: Arc<str> = "mqtt".into();
        store.set_budget("mqtt", Some(2));
        let f = family("v", MetricKind::Gauge, "v");
        let g = store.begin_batch();
        for d in ["a", "b"] {
            store.upsert(&src, &sample(&f, d, 1.0, 0), g).unwrap();
        }
        assert_eq!(
            store.upsert(&src, &sample(&f, "c", 1.0, 0), g).unwrap_err(),
            Refused::Cardinality
        );
        assert!(store.upsert(&src, &sample(&f, "a", 5.0, 0), g).is_ok());
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn label_limits_refuse_oversized_new_series_and_bytes_are_accounted() {
        let mut store = Store::new();
        let small = LabelLimits {
            max_label_value_bytes: 8,
            max_label_bytes: 64,
            max_metric_name_bytes: 16,
        };
        store.set_label_limits(LabelLimits::default(), [("db", small)]);
        let f = family("v", MetricKind::Gauge, "v");
        let g = store.begin_batch();
        let long = "x".repeat(9);
        for src in ["db", "db/q1"] {
            let src: Arc<str> = src.into();
            assert_eq!(
                store
                    .upsert(&src, &sample(&f, &long, 1.0, 0), g)
                    .unwrap_err(),
                Refused::Limit(LimitExceeded::LabelValueTooLong),
                "{src} has the small limits"
            );
        }
        let other: Arc<str> = "other".into();
        store.upsert(&other, &sample(&f, &long, 1.0, 0), g).unwrap();
        let huge = "x".repeat(2000);
        assert_eq!(
            store
                .upsert(&other, &sample(&f, &huge, 1.0, 0), g)
                .unwrap_err(),
            Refused::Limit(LimitExceeded::LabelValueTooLong),
            "the default bounds everyone else"
        );
        let long_name = family(&"n".repeat(300), MetricKind::Gauge, "n");
        assert_eq!(
            store
                .upsert(&other, &sample(&long_name, "a", 1.0, 0), g)
                .unwrap_err()
                .reason(),
            "metric_name_too_long"
        );
        assert_eq!(store.families().count(), 1, "no empty family left behind");
        assert_eq!(store.len(), 1);
        assert_eq!(
            store.label_bytes(),
            "v".len() + r#"{device="xxxxxxxxx"}"#.len()
        );
        store.remove_source("other");
        assert_eq!(store.label_bytes(), 0);
        // A reload's new limits replace the old ones.
        store.set_label_limits(LabelLimits::default(), []);
        let db: Arc<str> = "db".into();
        assert!(store.upsert(&db, &sample(&f, &long, 1.0, 0), g).is_ok());
    }

    #[test]
    fn ttl_expires_only_stale_series_of_that_source() {
        let mut store = Store::new();
        let mqtt: Arc<str> = "mqtt".into();
        let sys: Arc<str> = "system".into();
        store.set_ttl("mqtt", Some(std::time::Duration::from_secs(10)));
        let f = family("v", MetricKind::Gauge, "v");
        let g = store.begin_batch();
        store.upsert(&mqtt, &sample(&f, "old", 1.0, 0), g).unwrap();
        store
            .upsert(&mqtt, &sample(&f, "new", 1.0, 15_000), g)
            .unwrap();
        store.upsert(&sys, &sample(&f, "sys", 1.0, 0), g).unwrap();
        assert_eq!(store.expire(20_000), 1);
        assert!(
            store
                .get("v", &Labels::from_pairs(&[("device", "old")]))
                .is_none()
        );
        assert!(
            store
                .get("v", &Labels::from_pairs(&[("device", "sys")]))
                .is_some()
        );
    }

    #[test]
    fn type_conflicts_are_refused() {
        let mut store = Store::new();
        let src: Arc<str> = "s".into();
        let g = store.begin_batch();
        store
            .upsert(
                &src,
                &sample(&family("x", MetricKind::Gauge, "x"), "a", 1.0, 0),
                g,
            )
            .unwrap();
        let err = store
            .upsert(
                &src,
                &sample(&family("x", MetricKind::Counter, "x"), "a", 1.0, 0),
                g,
            )
            .unwrap_err();
        assert_eq!(err, Refused::TypeConflict);
    }
}
