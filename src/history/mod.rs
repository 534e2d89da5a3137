//! On-disk history: raw samples, 1-minute and 1-hour rollups, anomaly
//! scores and events, kept across restarts (see `docs/history.md`).
//!
//! The ingest task hands every stored sample (and the anomaly score of
//! each scored one) to a [`Tap`], which appends it to an in-memory buffer
//! under one short lock per batch; the event bus is buffered the same way.
//! One flusher task writes the buffer every `flush_interval` in a single
//! redb transaction ([`disk`]), which also compacts closed raw windows,
//! writes their rollups and applies retention and `max_bytes`. A crash
//! loses at most the unflushed buffer; a failed write (a full disk) keeps
//! the buffer, bounded, and the next flush tries again. [`HistoryReader`]
//! answers queries from the file and the buffer together.

pub mod codec;
pub mod config;
pub mod disk;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use redb::Database;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::HistoryConfig;
use disk::{Gen, HOUR, MINUTE, RAW_WINDOW, SeriesInfo, floor};

use crate::model::{FamilyMeta, Labels, MetricKind, Sample};
use crate::query::reader::{Matcher, RangeSeries, ReadError, SeriesReader, StoredEvent};
use crate::telemetry::Telemetry;

/// Most points and events buffered (unflushed, or waiting for a disk that
/// refuses writes); beyond it the oldest generation is dropped and counted.
pub const BUFFER_MAX: usize = 1 << 19;

/// Why history could not start.
pub type HistoryError = disk::DiskError;

/// Self-metrics of the history store.
struct Metrics {
    bytes: IntGaugeVec,
    written: IntCounter,
    errors: IntCounterVec,
    dropped: IntCounterVec,
    oldest: GaugeVec,
    buffered: IntGauge,
    flush_seconds: Gauge,
    compaction_seconds: Gauge,
}

impl Metrics {
    fn register(t: &Telemetry) -> Metrics {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(t: &Telemetry, c: C) -> C {
            t.registry()
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let m = Metrics {
            bytes: reg(
                t,
                IntGaugeVec::new(
                    Opts::new(
                        "vitals_history_bytes",
                        "Bytes of history kept on disk per tier (keys and compressed chunks; the file adds page overhead).",
                    ),
                    &["tier"],
                )
                .expect("valid metric"),
            ),
            written: reg(
                t,
                IntCounter::new(
                    "vitals_history_samples_written_total",
                    "Samples committed to the history store.",
                )
                .expect("valid metric"),
            ),
            errors: reg(
                t,
                IntCounterVec::new(
                    Opts::new(
                        "vitals_history_write_errors_total",
                        "Failed history flushes, by reason (disk_full, io, corrupt, in_use, other).",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            dropped: reg(
                t,
                IntCounterVec::new(
                    Opts::new(
                        "vitals_history_samples_dropped_total",
                        "Samples and events never written to history, by reason (buffer_full, events_lagged).",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            oldest: reg(
                t,
                GaugeVec::new(
                    Opts::new(
                        "vitals_history_oldest_timestamp_seconds",
                        "Unix time of the oldest data each history tier holds.",
                    ),
                    &["tier"],
                )
                .expect("valid metric"),
            ),
            buffered: reg(
                t,
                IntGauge::new(
                    "vitals_history_buffered_samples",
                    "Samples and events received but not yet written to disk.",
                )
                .expect("valid metric"),
            ),
            flush_seconds: reg(
                t,
                Gauge::new(
                    "vitals_history_flush_duration_seconds",
                    "Wall time of the last history flush (its whole transaction).",
                )
                .expect("valid metric"),
            ),
            compaction_seconds: reg(
                t,
                Gauge::new(
                    "vitals_history_compaction_duration_seconds",
                    "Wall time of the compaction, rollups and retention of the last flush.",
                )
                .expect("valid metric"),
            ),
        };
        for reason in ["disk_full", "io", "corrupt", "in_use", "other"] {
            m.errors.with_label_values(&[reason]);
        }
        for reason in ["buffer_full", "events_lagged"] {
            m.dropped.with_label_values(&[reason]);
        }
        m
    }

    fn set_bytes(&self, bytes: &[u64; 4]) {
        for (i, t) in disk::TIERS.iter().enumerate() {
            self.bytes.with_label_values(&[t]).set(bytes[i] as i64);
        }
    }
}

/// The series index and the buffer, under one lock.
#[derive(Default)]
struct Inner {
    series: Vec<SeriesInfo>,
    by_key: FxHashMap<Arc<str>, FxHashMap<Labels, u32>>,
    /// Series `0..persisted` are in the file.
    persisted: usize,
    current: Gen,
    /// Taken for writing (or refused by the disk), oldest first.
    pending: VecDeque<Arc<Gen>>,
    /// Raw windows in the file not yet compacted.
    dirty: FxHashSet<(u32, i64)>,
    /// Points and events in `current` and `pending`.
    buffered: usize,
}

impl Inner {
    fn id(&mut self, family: &FamilyMeta, labels: &Labels) -> u32 {
        if let Some(id) = self.by_key.get(&*family.name).and_then(|m| m.get(labels)) {
            return *id;
        }
        let id = self.series.len() as u32;
        self.series.push(SeriesInfo::new(
            family.name.clone(),
            labels.clone(),
            family.kind != MetricKind::Gauge,
        ));
        self.by_key
            .entry(family.name.clone())
            .or_default()
            .insert(labels.clone(), id);
        id
    }

    /// Make room for `n` more; returns how many were dropped.
    fn make_room(&mut self, n: usize) -> usize {
        let mut dropped = 0;
        while self.buffered + n > BUFFER_MAX {
            match self.pending.pop_front() {
                Some(g) => {
                    self.buffered -= g.n;
                    dropped += g.n;
                }
                None => break,
            }
        }
        dropped
    }
}

struct Shared {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// `None` while the file is closed after a failed write.
    db: RwLock<Option<Arc<Database>>>,
    metrics: Metrics,
    /// Oldest timestamp per tier (ms), `i64::MAX` for none.
    oldest: [AtomicI64; 4],
    raw_retention_ms: i64,
}

/// The ingest task's handle on the history; cheap to clone.
#[derive(Clone)]
pub struct Tap {
    shared: Arc<Shared>,
    score: Arc<FamilyMeta>,
    /// The anomaly labels of each scored series, made once: building them
    /// per score costs more than the rest of the tap.
    score_labels: Arc<Mutex<ScoreLabels>>,
    /// Dropped with the last tap: the flusher then writes what is left.
    _alive: mpsc::Sender<()>,
}

/// Per family, per series: its anomaly labels. Grows as the history's
/// series index does (one entry per scored series).
type ScoreLabels = FxHashMap<Arc<str>, FxHashMap<Labels, Labels>>;

impl Tap {
    fn new(shared: Arc<Shared>, alive: mpsc::Sender<()>) -> Tap {
        Tap {
            shared,
            score: FamilyMeta::new(
                "vitals_anomaly_score",
                MetricKind::Gauge,
                "Ensemble anomaly score of the series (0..1).",
            ),
            score_labels: Arc::default(),
            _alive: alive,
        }
    }

    /// A score sample of the series `family{labels}` (the same series
    /// remote write sends: `vitals_anomaly_score{metric="<family>",...}`).
    pub fn score_sample(
        &self,
        family: &str,
        labels: &Labels,
        timestamp_ms: i64,
        score: f64,
    ) -> Sample {
        let mut cache = self.score_labels.lock();
        let labels = match cache.get(family).and_then(|m| m.get(labels)) {
            Some(l) => l.clone(),
            None => {
                let l = crate::detect::live::anomaly_labels(family, labels);
                cache
                    .entry(Arc::from(family))
                    .or_default()
                    .insert(labels.clone(), l.clone());
                l
            }
        };
        drop(cache);
        Sample {
            family: self.score.clone(),
            labels,
            value: score,
            timestamp_ms,
        }
    }

    /// Buffer stored samples (never waits on the disk).
    pub fn send(&self, samples: &[Sample]) {
        if samples.is_empty() {
            return;
        }
        let mut inner = self.shared.inner.lock();
        let dropped = inner.make_room(samples.len());
        for s in samples {
            let id = inner.id(&s.family, &s.labels);
            inner
                .current
                .points
                .entry(id)
                .or_default()
                .push((s.timestamp_ms, s.value));
        }
        inner.current.n += samples.len();
        inner.buffered += samples.len();
        drop(inner);
        if dropped > 0 {
            self.shared
                .metrics
                .dropped
                .with_label_values(&["buffer_full"])
                .inc_by(dropped as u64);
        }
    }
}

/// The running history: the ingest tap and the reader.
pub struct History {
    pub tap: Tap,
    pub reader: Arc<HistoryReader>,
}

/// Open the store and start the flusher; `None` when `[history]` is off.
pub fn start(
    cfg: &HistoryConfig,
    telemetry: &Telemetry,
    events: &crate::events::EventBus,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Option<History>, HistoryError> {
    if !cfg.enabled {
        return Ok(None);
    }
    let (db, loaded) = disk::open(&cfg.path)?;
    let metrics = Metrics::register(telemetry);
    metrics.set_bytes(&loaded.bytes);
    let mut inner = Inner {
        persisted: loaded.series.len(),
        dirty: loaded.dirty,
        ..Inner::default()
    };
    for s in loaded.series {
        let id = inner.series.len() as u32;
        inner
            .by_key
            .entry(s.family.clone())
            .or_default()
            .insert(s.labels.clone(), id);
        inner.series.push(s);
    }
    tracing::info!(path = %cfg.path.join(disk::FILE).display(), series = inner.series.len(), "History store opened.");
    let shared = Arc::new(Shared {
        dir: cfg.path.clone(),
        inner: Mutex::new(inner),
        db: RwLock::new(Some(Arc::new(db))),
        metrics,
        oldest: std::array::from_fn(|_| AtomicI64::new(i64::MAX)),
        raw_retention_ms: cfg.raw_retention.as_millis() as i64,
    });
    let (alive_tx, alive_rx) = mpsc::channel(1);
    let limits = limits_of(cfg);
    tracker.spawn(flusher(
        shared.clone(),
        loaded.bytes,
        cfg.flush_interval,
        limits,
        alive_rx,
    ));
    tracker.spawn(record_events(shared.clone(), events.subscribe(), shutdown));
    Ok(Some(History {
        tap: Tap::new(shared.clone(), alive_tx),
        reader: Arc::new(HistoryReader { shared }),
    }))
}

/// What a flush applies, from the configuration.
fn limits_of(cfg: &HistoryConfig) -> disk::Limits {
    disk::Limits {
        retention: [
            cfg.raw_retention.as_millis() as i64,
            cfg.minute_retention.as_millis() as i64,
            cfg.hour_retention.as_millis() as i64,
            cfg.minute_retention.as_millis() as i64,
        ],
        max_bytes: cfg.max_bytes,
        grace_ms: (cfg.flush_interval.as_millis() as i64).max(1000),
    }
}

/// A store flushed by hand instead of by the flusher task, so
/// `benches/history.rs` can time one flush; not for use in vitals.
#[doc(hidden)]
pub struct ManualStore {
    pub tap: Tap,
    pub reader: HistoryReader,
    writer: Option<disk::Writer>,
    limits: disk::Limits,
}

impl ManualStore {
    /// Open `cfg.path` (its retention and `max_bytes` apply at each flush).
    pub fn open(cfg: &HistoryConfig) -> Result<ManualStore, HistoryError> {
        let (reader, bytes) = HistoryReader::open_with(&cfg.path, cfg.raw_retention)?;
        let tap = Tap::new(reader.shared.clone(), mpsc::channel(1).0);
        Ok(ManualStore {
            tap,
            reader,
            writer: Some(disk::Writer::new(bytes)),
            limits: limits_of(cfg),
        })
    }

    /// One flush of what the tap buffered; false when it failed.
    pub fn flush(&mut self) -> bool {
        let mut failing = false;
        let w = self.writer.take().expect("writer is back after each flush");
        self.writer = Some(flush_once(
            &self.reader.shared,
            w,
            self.limits,
            &mut failing,
        ));
        !failing
    }
}

async fn record_events(
    shared: Arc<Shared>,
    mut rx: tokio::sync::broadcast::Receiver<Arc<crate::events::Event>>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let ev = tokio::select! {
            r = rx.recv() => r,
            _ = shutdown.cancelled() => break,
        };
        match ev {
            Ok(ev) => {
                let stored = StoredEvent {
                    timestamp_ms: ev.timestamp_ms,
                    kind: ev.kind.to_string(),
                    severity: format!("{:?}", ev.severity).to_lowercase(),
                    source: ev.source.clone(),
                    metric: ev.metric.clone(),
                    labels: ev.labels.clone(),
                    value: ev.value,
                    score: ev.score,
                    reason: ev.reason.clone(),
                };
                let mut inner = shared.inner.lock();
                let dropped = inner.make_room(1);
                inner.current.events.push(stored);
                inner.current.n += 1;
                inner.buffered += 1;
                drop(inner);
                if dropped > 0 {
                    shared
                        .metrics
                        .dropped
                        .with_label_values(&["buffer_full"])
                        .inc_by(dropped as u64);
                }
            }
            Err(RecvError::Lagged(n)) => shared
                .metrics
                .dropped
                .with_label_values(&["events_lagged"])
                .inc_by(n),
            Err(RecvError::Closed) => break,
        }
    }
}

/// Write the buffer every `every` until the last tap is gone, then once more.
async fn flusher(
    shared: Arc<Shared>,
    bytes: [u64; 4],
    every: Duration,
    limits: disk::Limits,
    mut alive: mpsc::Receiver<()>,
) {
    let mut writer = Some(disk::Writer::new(bytes));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing = false;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = alive.recv() => true,
        };
        let s = shared.clone();
        let w = writer.take().expect("writer is back after each flush");
        let f = failing;
        let step = tokio::task::spawn_blocking(move || {
            let mut f = f;
            let w = flush_once(&s, w, limits, &mut f);
            (w, f)
        })
        .await;
        match step {
            Ok((w, f)) => {
                writer = Some(w);
                failing = f;
            }
            Err(error) => {
                tracing::error!(%error, "History flush task failed; history stops.");
                return;
            }
        }
        if last {
            break;
        }
    }
    tracing::debug!("History flusher stopped.");
}

/// Open the file again after a failed write: it comes back at its last
/// commit, which also resets what the writer counted.
fn reopen(shared: &Shared, writer: &mut disk::Writer) -> Result<Arc<Database>, HistoryError> {
    *shared.db.write() = None;
    let (db, loaded) = disk::reopen(&shared.dir)?;
    let db = Arc::new(db);
    *writer = disk::Writer::new(loaded.bytes);
    let mut inner = shared.inner.lock();
    inner.persisted = loaded.series.len();
    inner.dirty = loaded.dirty;
    drop(inner);
    *shared.db.write() = Some(db.clone());
    Ok(db)
}

/// One flush (the buffer stays until a flush commits it).
fn flush_once(
    shared: &Shared,
    mut writer: disk::Writer,
    limits: disk::Limits,
    failing: &mut bool,
) -> disk::Writer {
    let m = &shared.metrics;
    let (new_series, gens, counters, dirty) = {
        let mut inner = shared.inner.lock();
        if inner.current.n > 0 {
            let g = std::mem::take(&mut inner.current);
            inner.pending.push_back(Arc::new(g));
        }
        let new_series: Vec<(u32, SeriesInfo)> = inner.series[inner.persisted..]
            .iter()
            .enumerate()
            .map(|(i, s)| ((inner.persisted + i) as u32, s.clone()))
            .collect();
        let gens: Vec<Arc<Gen>> = inner.pending.iter().cloned().collect();
        let counters: Vec<bool> = inner.series.iter().map(|s| s.counter).collect();
        (new_series, gens, counters, inner.dirty.clone())
    };
    let db = shared.db.read().clone();
    let db = match db {
        Some(db) => db,
        None => match reopen(shared, &mut writer) {
            Ok(db) => db,
            Err(error) => {
                m.errors.with_label_values(&[error.reason()]).inc();
                if !*failing {
                    *failing = true;
                    tracing::error!(%error, "History store cannot be reopened; samples stay buffered (bounded) until it can.");
                }
                update_buffered(shared);
                return writer;
            }
        },
    };
    let started = std::time::Instant::now();
    let now = crate::model::now_ms();
    let result = writer.flush(
        &db,
        &shared.dir.join(disk::FILE),
        &new_series,
        &gens,
        &counters,
        &dirty,
        limits,
        now,
    );
    m.flush_seconds.set(started.elapsed().as_secs_f64());
    match result {
        Ok(done) => {
            if *failing {
                *failing = false;
                tracing::info!(path = %shared.dir.display(), "History writes succeed again.");
            }
            m.written.inc_by(done.samples);
            m.compaction_seconds.set(done.compaction_seconds);
            m.set_bytes(&done.bytes);
            for (i, t) in disk::TIERS.iter().enumerate() {
                let o = done.oldest[i];
                shared.oldest[i].store(o.unwrap_or(i64::MAX), Ordering::Relaxed);
                match o {
                    Some(ms) => m.oldest.with_label_values(&[t]).set(ms as f64 / 1000.0),
                    None => {
                        let _ = m.oldest.remove_label_values(&[t]);
                    }
                }
            }
            let mut inner = shared.inner.lock();
            inner.persisted = inner
                .persisted
                .max(new_series.last().map_or(0, |s| s.0 as usize + 1));
            inner
                .pending
                .retain(|p| !gens.iter().any(|g| Arc::ptr_eq(g, p)));
            inner.buffered = inner.current.n + inner.pending.iter().map(|g| g.n).sum::<usize>();
            inner.dirty.extend(done.dirtied);
            for k in &done.compacted {
                inner.dirty.remove(k);
            }
            drop(inner);
            update_buffered(shared);
            writer
        }
        Err(error) => {
            m.errors.with_label_values(&[error.reason()]).inc();
            if !*failing {
                *failing = true;
                tracing::error!(%error, "History flush failed; samples stay buffered (bounded) and the next flush tries again.");
            }
            drop(db);
            let mut inner = shared.inner.lock();
            let dropped = inner.make_room(0);
            drop(inner);
            if dropped > 0 {
                m.dropped
                    .with_label_values(&["buffer_full"])
                    .inc_by(dropped as u64);
            }
            update_buffered(shared);
            // Readers get the file back at once if it opens; otherwise
            // the next flush tries again.
            let _ = reopen(shared, &mut writer);
            writer
        }
    }
}

fn update_buffered(shared: &Shared) {
    let n = shared.inner.lock().buffered;
    shared.metrics.buffered.set(n as i64);
}

/// Reads history: the file and what is still buffered.
pub struct HistoryReader {
    shared: Arc<Shared>,
}

impl HistoryReader {
    /// Open a store directory for reading alone (tools and tests; fails
    /// while a running vitals holds it).
    pub fn open(dir: &Path) -> Result<HistoryReader, HistoryError> {
        Ok(HistoryReader::open_with(dir, Duration::MAX)?.0)
    }

    /// [`HistoryReader::open`] with the raw retention reads assume, and
    /// the bytes the file holds per tier.
    fn open_with(
        dir: &Path,
        raw_retention: Duration,
    ) -> Result<(HistoryReader, [u64; 4]), HistoryError> {
        let (db, loaded) = disk::open(dir)?;
        let bytes = loaded.bytes;
        let mut inner = Inner {
            persisted: loaded.series.len(),
            dirty: loaded.dirty,
            ..Inner::default()
        };
        for s in loaded.series {
            let id = inner.series.len() as u32;
            inner
                .by_key
                .entry(s.family.clone())
                .or_default()
                .insert(s.labels.clone(), id);
            inner.series.push(s);
        }
        let registry = Telemetry::new();
        let reader = HistoryReader {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                inner: Mutex::new(inner),
                db: RwLock::new(Some(Arc::new(db))),
                metrics: Metrics::register(&registry),
                oldest: std::array::from_fn(|_| AtomicI64::new(i64::MAX)),
                raw_retention_ms: i64::try_from(raw_retention.as_millis()).unwrap_or(i64::MAX),
            }),
        };
        Ok((reader, bytes))
    }
}

/// One matching series with its buffered points in range.
struct Hit {
    id: u32,
    labels: Vec<(String, String)>,
    counter: bool,
    buffered: Vec<(i64, f64)>,
}

fn matches(info: &SeriesInfo, matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| {
        let v = if m.name == "__name__" {
            &*info.family
        } else {
            info.pairs
                .iter()
                .find(|(k, _)| *k == m.name)
                .map_or("", |(_, v)| v.as_str())
        };
        m.matches(v)
    })
}

/// Tier step for a query step: raw below a minute, minutes below an hour.
fn tier_step(step_ms: i64) -> i64 {
    if step_ms >= HOUR {
        HOUR
    } else if step_ms >= MINUTE {
        MINUTE
    } else {
        0
    }
}

impl HistoryReader {
    fn hits(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> (Vec<Hit>, FxHashSet<(u32, i64)>) {
        let inner = self.shared.inner.lock();
        let mut hits = Vec::new();
        for (id, info) in inner.series.iter().enumerate() {
            if !matches(info, matchers) {
                continue;
            }
            let id = id as u32;
            let mut buffered = Vec::new();
            // Points a little before `start` too: counters need the value
            // before a window.
            let from = floor(start, RAW_WINDOW) - RAW_WINDOW;
            for g in inner.pending.iter().map(|g| &**g).chain([&inner.current]) {
                if let Some(p) = g.points.get(&id) {
                    buffered.extend(p.iter().filter(|p| p.0 >= from && p.0 <= end));
                }
            }
            hits.push(Hit {
                id,
                labels: {
                    let mut l = info.pairs.clone();
                    l.push(("__name__".into(), info.family.to_string()));
                    l.sort();
                    l
                },
                counter: info.counter,
                buffered,
            });
        }
        (hits, inner.dirty.clone())
    }

    fn db(&self) -> Option<Arc<Database>> {
        self.shared.db.read().clone()
    }

    /// Points of one series from a tier (0 = raw). A rollup point is
    /// stamped at its interval's end, so the interval holding `end` (the
    /// current one, for a range ending now) has none; with `newest` it is
    /// answered from raw: the rollup of its samples up to `end`, stamped at
    /// the newest of them.
    #[allow(clippy::too_many_arguments)]
    fn points(
        &self,
        r: Option<&disk::Reader<'_>>,
        hit: &Hit,
        dirty: &FxHashSet<(u32, i64)>,
        tier: i64,
        start: i64,
        end: i64,
        newest: bool,
    ) -> Result<Vec<(i64, f64)>, ReadError> {
        let raw_in = |from: i64, to: i64| -> Result<Vec<(i64, f64)>, ReadError> {
            let mut p = match r {
                Some(r) => r.raw(hit.id, from, to)?,
                None => Vec::new(),
            };
            p.extend(hit.buffered.iter().filter(|p| p.0 >= from && p.0 <= to));
            codec::sort_dedup(&mut p);
            Ok(p)
        };
        if tier == 0 {
            return raw_in(start, end);
        }
        // Rows starting in [start - tier, end]: the point of a row is at
        // its end, so the row ending at `start` counts.
        let first = floor(start, tier) - tier;
        let mut rows = match r {
            Some(r) => r.rows(tier, hit.id, first, end)?,
            None => Vec::new(),
        };
        // Windows whose rollups are not (or no longer) right on disk:
        // dirty ones, buffered ones, and recent ones raw still holds.
        let mut redo: FxHashSet<i64> = FxHashSet::default();
        for p in &hit.buffered {
            redo.insert(floor(p.0, RAW_WINDOW));
        }
        let recent = crate::model::now_ms().saturating_sub(self.shared.raw_retention_ms);
        let mut w = floor(first, RAW_WINDOW);
        let covered: FxHashSet<i64> = rows.iter().map(|r| floor(r.start, RAW_WINDOW)).collect();
        while w <= end {
            if dirty.contains(&(hit.id, w)) || (!covered.contains(&w) && w + RAW_WINDOW > recent) {
                redo.insert(w);
            }
            w += RAW_WINDOW;
        }
        redo.retain(|w| *w + RAW_WINDOW > first && *w <= end);
        // The interval holding `end`, and its raw points up to `end`.
        let open = floor(end, tier);
        let mut partial: Option<Vec<(i64, f64)>> = None;
        if !redo.is_empty() {
            let lo = *redo.iter().min().expect("not empty");
            let hi = *redo.iter().max().expect("not empty") + RAW_WINDOW - 1;
            let pts = raw_in(lo, hi)?;
            if newest && lo <= open && end <= hi {
                let a = pts.partition_point(|p| p.0 < open);
                let b = pts.partition_point(|p| p.0 <= end);
                partial = Some(pts[a..b].to_vec());
            }
            let prev = if hit.counter {
                let before = raw_in(lo - RAW_WINDOW, lo - 1)?;
                before.last().map(|p| p.1)
            } else {
                None
            };
            // Rows of a redone window replace stored ones.
            rows.retain(|r| !redo.contains(&floor(r.start, RAW_WINDOW)));
            let mut prev = prev;
            let mut i = 0;
            let mut wins: Vec<i64> = redo.iter().copied().collect();
            wins.sort_unstable();
            for w in wins {
                // Points of this window; a counter's previous value is the
                // last point before it.
                while i < pts.len() && pts[i].0 < w {
                    prev = Some(pts[i].1);
                    i += 1;
                }
                let j = pts[i..].partition_point(|p| p.0 < w + RAW_WINDOW) + i;
                rows.extend(
                    codec::rollup(
                        &pts[i..j],
                        if hit.counter { prev } else { None },
                        tier,
                        hit.counter,
                    )
                    .into_iter()
                    .filter(|r| r.start >= first && r.start <= end),
                );
                if j > i {
                    prev = Some(pts[j - 1].1);
                }
                i = j;
            }
        }
        rows.sort_by_key(|r| r.start);
        let mut out: Vec<(i64, f64)> = rows
            .iter()
            .map(|row| row.point(tier, hit.counter))
            .filter(|p| p.0 >= start && p.0 <= end)
            .collect();
        if newest {
            let pts = match partial {
                Some(p) => p,
                None => raw_in(open, end)?,
            };
            if let Some(&(last, _)) = pts.last() {
                // One interval: the gauge's mean so far, the counter's
                // last value. After the previous interval's point (at
                // `open`) even when its only sample is at `open`.
                let row = codec::rollup(&pts, None, tier, hit.counter)[0];
                let at = last.max(open + 1);
                if at >= start && at <= end {
                    out.push((at, row.point(tier, hit.counter).1));
                }
            }
        }
        Ok(out)
    }
}

impl SeriesReader for HistoryReader {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<RangeSeries>, ReadError> {
        let (hits, dirty) = self.hits(matchers, start_ms, end_ms);
        let db = self.db();
        let path = self.shared.dir.join(disk::FILE);
        let reader = match &db {
            Some(db) => Some(disk::Reader::new(db, &path)?),
            None => None,
        };
        let tier = tier_step(step_ms);
        let mut out = Vec::new();
        for hit in &hits {
            let mut points =
                self.points(reader.as_ref(), hit, &dirty, tier, start_ms, end_ms, true)?;
            // A finer tier cut by its retention: older points from the
            // next tier.
            let mut t = tier;
            while t < HOUR {
                let coarser = if t == 0 { MINUTE } else { HOUR };
                let first = points.first().map_or(end_ms + 1, |p| p.0);
                if first <= start_ms + coarser.max(step_ms) {
                    break;
                }
                let mut older = self.points(
                    reader.as_ref(),
                    hit,
                    &dirty,
                    coarser,
                    start_ms,
                    first - 1,
                    false,
                )?;
                if older.is_empty() {
                    t = coarser;
                    continue;
                }
                older.extend(points);
                points = older;
                t = coarser;
            }
            if !points.is_empty() {
                out.push(RangeSeries {
                    labels: hit.labels.clone(),
                    points,
                });
            }
        }
        Ok(out)
    }

    fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Vec<(String, String)>>, ReadError> {
        let (hits, _) = self.hits(matchers, start_ms, end_ms);
        let db = self.db();
        let path = self.shared.dir.join(disk::FILE);
        let reader = match &db {
            Some(db) => Some(disk::Reader::new(db, &path)?),
            None => None,
        };
        let mut out = Vec::new();
        for hit in hits {
            let buffered = hit
                .buffered
                .iter()
                .any(|p| p.0 >= start_ms && p.0 <= end_ms);
            let on_disk = match &reader {
                Some(r) => r.has_any(hit.id, start_ms, end_ms)?,
                None => false,
            };
            if buffered || on_disk {
                out.push(hit.labels);
            }
        }
        Ok(out)
    }

    fn events(
        &self,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, ReadError> {
        let mut out = match self.db() {
            Some(db) => {
                let path = self.shared.dir.join(disk::FILE);
                disk::Reader::new(&db, &path)?.events(start_ms, end_ms, limit)?
            }
            None => Vec::new(),
        };
        let inner = self.shared.inner.lock();
        for g in inner.pending.iter().map(|g| &**g).chain([&inner.current]) {
            out.extend(
                g.events
                    .iter()
                    .filter(|e| e.timestamp_ms >= start_ms && e.timestamp_ms <= end_ms)
                    .cloned(),
            );
        }
        drop(inner);
        out.sort_by_key(|e| e.timestamp_ms);
        out.dedup();
        out.truncate(limit);
        Ok(out)
    }

    fn oldest_ms(&self) -> Option<i64> {
        let disk = self
            .shared
            .oldest
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .min()
            .filter(|o| *o != i64::MAX);
        let inner = self.shared.inner.lock();
        let buffered = inner
            .pending
            .iter()
            .map(|g| &**g)
            .chain([&inner.current])
            .flat_map(|g| {
                g.points
                    .values()
                    .filter_map(|p| p.iter().map(|p| p.0).min())
            })
            .min();
        match (disk, buffered) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests;
