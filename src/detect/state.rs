//! Detector state and webhook idempotency windows kept across restarts.
//!
//! Every [`SAVE_INTERVAL`] and once more on a clean shutdown, the detector
//! state of every series in the store and the idempotency window of every
//! webhook source are written to [`FILE_NAME`] in `[history] path` (a
//! temporary file, fsync, rename: a crash leaves the previous file or the
//! new one, never half of one). At start, before the first sample, the file
//! is read back: a series takes its saved state when it reappears (within
//! [`RESTORE_GRACE`]; state of series that do not come back is then
//! dropped), a webhook source its window. `[history] enabled = false` keeps
//! nothing.
//!
//! The file is postcard (serde) behind a small header: a magic, the format
//! version and the SHA-256 of the rest. Detector state is only restored when
//! it was saved by the same build shape (version, and the encoding of blank
//! detectors, which changes with their fields and parameters) and the same
//! `[detect]` and `[[pipeline]]` configuration (the digest a reload compares
//! too); otherwise the detectors start fresh with an info log, as after a
//! reload that changed `[detect]`. Idempotency windows do not depend on
//! `[detect]`. An unreadable or damaged file is a warning naming the path;
//! everything then starts fresh.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use prometheus::{Gauge, IntCounter, IntGauge};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::live::SeriesDetector;
pub use super::persisted::{Digest32, Persisted, SavedWindow, WindowState};
use super::{DetectConfig, DetectorKind, Ensemble, LikelihoodKind};
use crate::history::config::HistoryConfig;
use crate::model::Labels;
use crate::pipeline::filters::PipelineRule;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Name of the state file in `[history] path`.
pub const FILE_NAME: &str = "detectors.state";
/// How often the state is saved while running (and once on shutdown). A
/// crash loses at most this much learning; the whole state is rewritten
/// each time (a few KiB per series), so it is not saved at every history
/// flush.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(300);
/// How long restored state waits for its series to come back before it is
/// dropped (a slow source polls once an hour).
pub const RESTORE_GRACE: Duration = Duration::from_secs(3600);

const MAGIC: [u8; 8] = *b"vitalsDS";
/// Bumped when the layout of the file (not of the detectors) changes.
const FORMAT: u32 = 1;

/// Why the state could not be saved or read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged or not a vitals state file: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot encode the detector state: {0}")]
    Encode(postcard::Error),
}

/// The digest of what detector state is built from: `[detect]` (without
/// `detector_scores`, which only changes what is exported) and the
/// `[[pipeline]]` rules (their `detect` switch). A reload resets the
/// detectors when it differs; a restart ignores saved state when it does.
pub fn config_fingerprint(detect: &DetectConfig, pipeline: &[PipelineRule]) -> Digest32 {
    let mut detect = detect.clone();
    detect.detector_scores = false;
    Sha256::digest(format!("{detect:?}{pipeline:?}").as_bytes()).into()
}

/// The digest of the shape of detector state in this build: its version
/// and the encoding of blank detectors of every kind (which changes when a
/// detector gains a field or a parameter changes).
pub fn build_fingerprint() -> Digest32 {
    let mut h = Sha256::new();
    h.update(FORMAT.to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    for likelihood in [LikelihoodKind::Ewm, LikelihoodKind::Numenta] {
        let cfg = DetectConfig {
            detectors: DetectorKind::ALL.to_vec(),
            likelihood,
            ..DetectConfig::default()
        };
        let statics = [super::threshold::ThresholdSpec {
            above: Some(1.0),
            below: None,
            hysteresis: 0.0,
            for_ms: 0,
        }];
        let blank = (SeriesDetector::default(), Ensemble::new(&cfg, &statics));
        // Encoding plain data into a Vec cannot fail.
        h.update(postcard::to_stdvec(&blank).unwrap_or_default());
    }
    h.finalize().into()
}

/// The file's header, before the body it checks.
#[derive(Serialize, Deserialize)]
struct Header {
    magic: [u8; 8],
    format: u32,
    /// SHA-256 of the body.
    body: Digest32,
}

/// The detector part's header, after the windows.
#[derive(Serialize, Deserialize)]
struct DetectHeader {
    build: Digest32,
    config: Digest32,
    saved_ms: i64,
    series: u64,
}

#[derive(Serialize)]
struct EntryRef<'a> {
    family: &'a str,
    labels: Vec<(String, String)>,
    state: &'a SeriesDetector,
}

#[derive(Deserialize)]
struct Entry {
    family: String,
    labels: Vec<(String, String)>,
    state: SeriesDetector,
}

/// Encode the detector state of `store` (series in it, and restored state
/// still waiting) and `windows`.
fn encode(
    store: &Store,
    windows: &[WindowState],
    build: &Digest32,
    saved_ms: i64,
) -> Result<(Vec<u8>, u64), postcard::Error> {
    let p = &store.persisted;
    let mut entries: Vec<EntryRef<'_>> = Vec::new();
    for family in store.families() {
        for (labels, series) in &family.series {
            if let Some(state) = series.detect.as_deref() {
                entries.push(EntryRef {
                    family: &family.meta.name,
                    labels: labels.pairs(),
                    state,
                });
            }
        }
    }
    for (family, series) in &p.detectors {
        for (labels, state) in series {
            entries.push(EntryRef {
                family,
                labels: labels.pairs(),
                state,
            });
        }
    }
    let mut body = postcard::to_stdvec(windows)?;
    body = postcard::to_extend(
        &DetectHeader {
            build: *build,
            config: p.config,
            saved_ms,
            series: entries.len() as u64,
        },
        body,
    )?;
    for e in &entries {
        body = postcard::to_extend(e, body)?;
    }
    let mut out = postcard::to_stdvec(&Header {
        magic: MAGIC,
        format: FORMAT,
        body: Sha256::digest(&body).into(),
    })?;
    out.extend_from_slice(&body);
    Ok((out, entries.len() as u64))
}

/// What a state file held.
#[derive(Debug)]
struct Decoded {
    windows: Vec<WindowState>,
    /// Restored detector state, or why it is not used.
    detectors: Result<Vec<(String, Labels, Box<SeriesDetector>)>, Skipped>,
}

/// Why saved detector state is not used (logged at info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skipped {
    /// Written by another file format: nothing in it is used.
    Format(u32),
    /// Detectors of another build shape.
    Build,
    /// Another `[detect]` or `[[pipeline]]` configuration.
    Config,
}

fn decode(bytes: &[u8], build: &Digest32, config: &Digest32) -> Result<Decoded, String> {
    let (header, body) =
        postcard::take_from_bytes::<Header>(bytes).map_err(|e| format!("no header ({e})"))?;
    if header.magic != MAGIC {
        return Err("no vitals state header".into());
    }
    if header.format != FORMAT {
        return Ok(Decoded {
            windows: Vec::new(),
            detectors: Err(Skipped::Format(header.format)),
        });
    }
    if <Digest32>::from(Sha256::digest(body)) != header.body {
        return Err("checksum mismatch".into());
    }
    let (windows, rest) = postcard::take_from_bytes::<Vec<WindowState>>(body)
        .map_err(|e| format!("idempotency windows: {e}"))?;
    let (dh, mut rest) = postcard::take_from_bytes::<DetectHeader>(rest)
        .map_err(|e| format!("detector header: {e}"))?;
    let detectors = if dh.build != *build {
        Err(Skipped::Build)
    } else if dh.config != *config {
        Err(Skipped::Config)
    } else {
        let mut out = Vec::new();
        for i in 0..dh.series {
            let (e, r) =
                postcard::take_from_bytes::<Entry>(rest).map_err(|e| format!("series {i}: {e}"))?;
            rest = r;
            let labels = Labels::from_pairs(&e.labels);
            let state = e.state.with_labels(&e.family, &labels);
            out.push((e.family, labels, Box::new(state)));
        }
        if !rest.is_empty() {
            return Err(format!("{} bytes after the last series", rest.len()));
        }
        Ok(out)
    };
    Ok(Decoded { windows, detectors })
}

/// The self-metrics of persistence.
struct Metrics {
    saved_time: Gauge,
    saved_series: IntGauge,
    saved_bytes: IntGauge,
    save_errors: IntCounter,
    restored: IntGauge,
}

impl Metrics {
    fn register(t: &Telemetry) -> Metrics {
        fn reg<M: prometheus::core::Collector + Clone + 'static>(t: &Telemetry, m: M) -> M {
            t.registry()
                .register(Box::new(m.clone()))
                .expect("metric names are unique");
            m
        }
        Metrics {
            saved_time: reg(
                t,
                Gauge::new(
                    "vitals_detector_state_saved_timestamp_seconds",
                    "Unix time of the last successful save of the detector state.",
                )
                .expect("valid metric"),
            ),
            saved_series: reg(
                t,
                IntGauge::new(
                    "vitals_detector_state_series",
                    "Series whose detector state the last save wrote.",
                )
                .expect("valid metric"),
            ),
            saved_bytes: reg(
                t,
                IntGauge::new(
                    "vitals_detector_state_bytes",
                    "Size of the detector state file the last save wrote.",
                )
                .expect("valid metric"),
            ),
            save_errors: reg(
                t,
                IntCounter::new(
                    "vitals_detector_state_save_errors_total",
                    "Saves of the detector state that failed.",
                )
                .expect("valid metric"),
            ),
            restored: reg(
                t,
                IntGauge::new(
                    "vitals_detector_state_restored_series",
                    "Series whose detector state was restored at start.",
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// Saves the state of one `vitals run` and restored it at its start.
pub struct Saver {
    dir: PathBuf,
    build: Digest32,
    store: Arc<RwLock<Store>>,
    metrics: Metrics,
    started: Instant,
    /// Restored state not claimed within [`RESTORE_GRACE`] was dropped.
    grace_over: std::sync::atomic::AtomicBool,
}

impl Saver {
    /// Restore the saved state into `store` and return the saver, or `None`
    /// when `[history]` is off (nothing is kept). `config` is the
    /// [`config_fingerprint`] of the configuration the run starts with.
    pub fn start(
        history: &HistoryConfig,
        config: Digest32,
        store: &Arc<RwLock<Store>>,
        telemetry: &Telemetry,
    ) -> Option<Arc<Saver>> {
        if !history.enabled {
            return None;
        }
        let saver = Saver {
            dir: history.path.clone(),
            build: build_fingerprint(),
            store: store.clone(),
            metrics: Metrics::register(telemetry),
            started: Instant::now(),
            grace_over: false.into(),
        };
        store.write().persisted.set_config(config);
        saver.restore(&config);
        Some(Arc::new(saver))
    }

    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn restore(&self, config: &Digest32) {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "No saved detector state; detectors start fresh.");
                return;
            }
            Err(source) => {
                let error = StateError::Read { path, source };
                tracing::warn!(%error, "Saved detector state unreadable; detectors start fresh.");
                return;
            }
        };
        let decoded = match decode(&bytes, &self.build, config) {
            Ok(d) => d,
            Err(reason) => {
                let error = StateError::Damaged { path, reason };
                tracing::warn!(%error, "Saved detector state ignored; detectors start fresh.");
                return;
            }
        };
        let mut store = self.store.write();
        let p = &mut store.persisted;
        let windows = decoded.windows.len();
        for w in decoded.windows {
            p.windows.insert(w.source.clone(), w);
        }
        match decoded.detectors {
            Ok(series) => {
                let n = series.len();
                for (family, labels, state) in series {
                    if p.detectors
                        .entry(family.into_boxed_str())
                        .or_default()
                        .insert(labels, state)
                        .is_none()
                    {
                        p.unclaimed += 1;
                    }
                }
                self.metrics.restored.set(n as i64);
                tracing::info!(path = %path.display(), series = n, windows, "Detector state restored.");
            }
            Err(Skipped::Format(format)) => {
                tracing::info!(path = %path.display(), format, "Saved state has another file format; detectors and idempotency windows start fresh.");
            }
            Err(Skipped::Build) => {
                tracing::info!(path = %path.display(), windows, "Saved detector state is from another version of vitals; detectors start fresh.");
            }
            Err(Skipped::Config) => {
                tracing::info!(path = %path.display(), windows, "[detect] or [[pipeline]] changed since the detector state was saved; detectors start fresh.");
            }
        }
    }

    /// Write the state now. Returns the number of series saved.
    pub fn save(&self) -> Result<u64, StateError> {
        if !self.grace_over.load(std::sync::atomic::Ordering::Relaxed)
            && self.started.elapsed() >= RESTORE_GRACE
        {
            let mut store = self.store.write();
            store.persisted.forget_detectors();
            store.persisted.windows.clear();
            self.grace_over
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // The windows first, without the store lock (a window's own lock is
        // never taken inside it).
        let live: Vec<Weak<dyn SavedWindow>> = {
            let mut store = self.store.write();
            store.persisted.live.retain(|w| w.strong_count() > 0);
            store.persisted.live.clone()
        };
        let mut windows: Vec<WindowState> = live
            .iter()
            .filter_map(|w| w.upgrade()?.save_window())
            .collect();
        let now = crate::model::now_ms();
        let (bytes, series) = {
            let store = self.store.read();
            // Windows restored but whose source has not started yet.
            windows.extend(
                store
                    .persisted
                    .windows
                    .values()
                    .filter(|w| !windows.iter().any(|l| l.source == w.source))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            encode(&store, &windows, &self.build, now).map_err(StateError::Encode)?
        };
        write_atomic(&self.dir, &bytes)?;
        self.metrics.saved_time.set(now as f64 / 1000.0);
        self.metrics.saved_series.set(series as i64);
        self.metrics.saved_bytes.set(bytes.len() as i64);
        Ok(series)
    }

    /// [`Saver::save`], logging and counting a failure.
    pub fn save_logged(&self) {
        match self.save() {
            Ok(series) => {
                tracing::debug!(path = %self.path().display(), series, "Detector state saved.")
            }
            Err(error) => {
                self.metrics.save_errors.inc();
                tracing::warn!(%error, "Saving the detector state failed; retrying at the next save.");
            }
        }
    }

    /// Save every [`SAVE_INTERVAL`] until `shutdown` (the final save is the
    /// caller's, once the ingest task has applied what was queued).
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        self.run_every(SAVE_INTERVAL, shutdown).await
    }

    async fn run_every(
        self: Arc<Self>,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let saver = self.clone();
                    let _ = tokio::task::spawn_blocking(move || saver.save_logged()).await;
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Write `bytes` as `dir/FILE_NAME`: a temporary file, fsync, rename.
fn write_atomic(dir: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use std::io::Write;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        StateError::Write { path, source }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::ensemble::Output;
    use crate::detect::testdata::{noise, step};
    use crate::detect::threshold::ThresholdSpec;

    fn all_members(likelihood: LikelihoodKind) -> DetectConfig {
        DetectConfig {
            detectors: DetectorKind::ALL.to_vec(),
            likelihood,
            ..DetectConfig::default()
        }
    }

    fn statics() -> [ThresholdSpec; 1] {
        [ThresholdSpec {
            above: Some(20.0),
            below: None,
            hysteresis: 2.0,
            for_ms: 600_000,
        }]
    }

    /// A series with learning, a step and spikes, five minutes apart (so the
    /// hour-of-week member sees several slots).
    fn input() -> Vec<f64> {
        let mut v = step(3000, 2200, 8.0, 21);
        for (i, x) in noise(3000, 22).iter().enumerate() {
            v[i] += 0.3 * x;
        }
        v[1700] = 40.0;
        v[2600] = f64::NAN;
        v
    }

    fn run(e: &mut Ensemble, values: &[f64], from: usize) -> Vec<Output> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| e.step((from + i) as i64 * 300_000, *v))
            .collect()
    }

    /// Equal, or the first difference (not thousands of outputs).
    fn assert_same<T: PartialEq + std::fmt::Debug>(got: &[T], expected: &[T], what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}");
        if let Some(i) = (0..got.len()).find(|i| got[*i] != expected[*i]) {
            panic!(
                "{what}: sample {i} differs: {:?} != {:?}",
                got[i], expected[i]
            );
        }
    }

    #[test]
    fn saved_state_of_a_series_is_a_few_kibibytes() {
        // The default ensemble after learning, and every member at once:
        // the file grows by this much per series.
        for (cfg, bound) in [
            (DetectConfig::default(), 4096),
            (all_members(LikelihoodKind::Numenta), 12 * 1024),
        ] {
            let mut e = Ensemble::new(&cfg, &[]);
            run(&mut e, &input(), 0);
            let n = postcard::to_stdvec(&e).unwrap().len();
            eprintln!("{:?}: {n} bytes", cfg.detectors);
            assert!(n <= bound, "{n} > {bound}");
        }
    }

    #[test]
    fn nothing_is_kept_with_history_off() {
        let mut cfg = test_config();
        cfg.history.enabled = false;
        let store = Arc::new(RwLock::new(Store::new()));
        assert!(
            Saver::start(
                &cfg.history,
                config_fingerprint(&cfg.detect, &cfg.pipeline),
                &store,
                &Telemetry::new(),
            )
            .is_none()
        );
    }

    #[tokio::test]
    async fn saves_periodically_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (saver, _store) = start_saver(dir.path(), &test_config());
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(
            saver
                .clone()
                .run_every(Duration::from_millis(20), stop.clone()),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while saver.metrics.saved_time.get() == 0.0 {
            assert!(Instant::now() < deadline, "no periodic save");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(saver.path().is_file());
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn an_ensemble_saved_and_restored_scores_exactly_as_an_uninterrupted_one() {
        for likelihood in [LikelihoodKind::Ewm, LikelihoodKind::Numenta] {
            let cfg = all_members(likelihood);
            let values = input();
            for cut in [1usize, 160, 1701, 2300] {
                let mut whole = Ensemble::new(&cfg, &statics());
                let expected = run(&mut whole, &values, 0);

                let mut first = Ensemble::new(&cfg, &statics());
                let mut got = run(&mut first, &values[..cut], 0);
                let bytes = postcard::to_stdvec(&first).unwrap();
                drop(first);
                let mut restored: Ensemble = postcard::from_bytes(&bytes).unwrap();
                got.extend(run(&mut restored, &values[cut..], cut));
                assert_same(&got, &expected, &format!("{likelihood:?}, cut at {cut}"));
                assert_eq!(restored.last(), whole.last());
            }
        }
    }

    fn sample(
        family: &Arc<crate::model::FamilyMeta>,
        host: &str,
        v: f64,
        i: usize,
    ) -> crate::model::Sample {
        crate::model::Sample {
            family: family.clone(),
            labels: Labels::from_pairs(&[("host", host)]),
            value: v,
            timestamp_ms: 1_700_000_000_000 + i as i64 * 60_000,
        }
    }

    /// Feed `values` to a gauge and a counter (its running sum) through
    /// the pipeline's detect step and the store; returns the scores.
    fn feed(
        detect: &crate::detect::live::Detect,
        store: &mut Store,
        values: &[f64],
        from: usize,
    ) -> Vec<(Option<f64>, Option<f64>)> {
        let gauge = crate::model::FamilyMeta::new("load", crate::model::MetricKind::Gauge, "l");
        let counter =
            crate::model::FamilyMeta::new("bytes_total", crate::model::MetricKind::Counter, "b");
        let source: Arc<str> = Arc::from("test");
        let mut out = Vec::new();
        for (j, v) in values.iter().enumerate() {
            let i = from + j;
            let g = store.begin_batch();
            let s = sample(&gauge, "a", *v, i);
            let series = store.upsert(&source, &s, g).unwrap();
            let a = detect.observe("test", &s, &mut series.detect);
            let total = 1000.0 * (i as f64) + v.abs();
            let s = sample(&counter, "a", total, i);
            let series = store.upsert(&source, &s, g).unwrap();
            let b = detect.observe("test", &s, &mut series.detect);
            out.push((a, b));
        }
        out
    }

    fn test_config() -> crate::config::Config {
        let mut cfg = crate::config::Config::default();
        cfg.detect.detectors = DetectorKind::ALL.to_vec();
        cfg
    }

    fn start_saver(dir: &Path, cfg: &crate::config::Config) -> (Arc<Saver>, Arc<RwLock<Store>>) {
        let mut cfg = cfg.clone();
        cfg.history.path = dir.to_path_buf();
        let store = Arc::new(RwLock::new(Store::new()));
        let saver = Saver::start(
            &cfg.history,
            config_fingerprint(&cfg.detect, &cfg.pipeline),
            &store,
            &Telemetry::new(),
        )
        .unwrap();
        (saver, store)
    }

    #[test]
    fn series_state_survives_a_save_and_restart_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config();
        let detect = || {
            crate::detect::live::Detect::new(
                cfg.detect.clone(),
                vec![],
                crate::events::EventBus::new(16),
            )
        };
        let values = input();
        let cut = 1800;

        let mut whole = Store::new();
        let expected = feed(&detect(), &mut whole, &values, 0);

        let (saver, store) = start_saver(dir.path(), &cfg);
        let mut got = feed(&detect(), &mut store.write(), &values[..cut], 0);
        assert_eq!(saver.save().unwrap(), 2);
        drop((saver, store));

        let (saver, store) = start_saver(dir.path(), &cfg);
        assert_eq!(saver.metrics.restored.get(), 2);
        got.extend(feed(&detect(), &mut store.write(), &values[cut..], cut));
        assert_same(&got, &expected, "gauge and counter");
        // The anomaly families carry the rebuilt labels.
        let mut out = String::new();
        crate::exposition::store_text(&store.read(), &mut out);
        assert!(
            out.contains(r#"vitals_anomaly_score{host="a",metric="load"}"#),
            "{out}"
        );
    }

    #[test]
    fn changed_detect_config_or_damage_starts_fresh_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config();
        let detect = crate::detect::live::Detect::new(
            cfg.detect.clone(),
            vec![],
            crate::events::EventBus::new(16),
        );
        let (saver, store) = start_saver(dir.path(), &cfg);
        feed(&detect, &mut store.write(), &input()[..500], 0);
        saver.save().unwrap();
        let good = std::fs::read(saver.path()).unwrap();

        let mut other = cfg.clone();
        other.detect.sensitivity = 0.6;
        let (s, _) = start_saver(dir.path(), &other);
        assert_eq!(s.metrics.restored.get(), 0, "another [detect]");

        // `detector_scores` only changes what is exported.
        let mut scores = cfg.clone();
        scores.detect.detector_scores = true;
        let (s, _) = start_saver(dir.path(), &scores);
        assert_eq!(s.metrics.restored.get(), 2);

        let path = dir.path().join(FILE_NAME);
        for damage in [
            good[..good.len() / 2].to_vec(),
            Vec::new(),
            b"not a state file at all".to_vec(),
            {
                let mut b = good.clone();
                let n = b.len();
                b[n - 7] ^= 0x40;
                b
            },
        ] {
            std::fs::write(&path, &damage).unwrap();
            let (s, store) = start_saver(dir.path(), &cfg);
            assert_eq!(s.metrics.restored.get(), 0);
            assert_eq!(store.read().persisted.unclaimed, 0);
            // The next save replaces the damaged file.
            s.save().unwrap();
        }
        // Another file format: ignored whole.
        let mut b = good.clone();
        b[8] = 9; // the format (a one-byte varint) after the magic
        std::fs::write(&path, &b).unwrap();
        let (s, _) = start_saver(dir.path(), &cfg);
        assert_eq!(s.metrics.restored.get(), 0);
    }

    #[test]
    fn unclaimed_state_is_saved_again_and_forgotten_on_reset() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config();
        let detect = crate::detect::live::Detect::new(
            cfg.detect.clone(),
            vec![],
            crate::events::EventBus::new(16),
        );
        let (saver, store) = start_saver(dir.path(), &cfg);
        feed(&detect, &mut store.write(), &input()[..300], 0);
        saver.save().unwrap();
        // Restarted, nothing came back yet: the state is kept for later.
        let (saver, store) = start_saver(dir.path(), &cfg);
        assert_eq!(saver.save().unwrap(), 2);
        store.write().reset_detectors();
        assert_eq!(saver.save().unwrap(), 0);
    }

    #[test]
    fn save_into_an_unwritable_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let (saver, _) = start_saver(&file, &test_config());
        let err = saver.save().unwrap_err().to_string();
        assert!(err.contains("plain-file"), "{err}");
        saver.save_logged();
        assert_eq!(saver.metrics.save_errors.get(), 1);
    }

    #[test]
    fn windows_round_trip_and_do_not_depend_on_detect() {
        struct W(WindowState);
        impl SavedWindow for W {
            fn save_window(&self) -> Option<WindowState> {
                Some(self.0.clone())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = test_config();
        let w = WindowState {
            source: "hook".into(),
            key: "id".into(),
            entries: vec![(1_700_000_000_000, [7; 32]), (1_700_000_001_000, [9; 32])],
        };
        let live: Arc<dyn SavedWindow> = Arc::new(W(w.clone()));
        let (saver, store) = start_saver(dir.path(), &cfg);
        store.write().persisted.watch_window(Arc::downgrade(&live));
        saver.save().unwrap();
        let mut other = cfg.clone();
        other.detect.sensitivity = 0.9;
        let (_, store) = start_saver(dir.path(), &other);
        let mut store = store.write();
        assert_eq!(store.persisted.take_window("hook", "other_field"), None);
        let (_, store2) = start_saver(dir.path(), &other);
        assert_eq!(store2.write().persisted.take_window("hook", "id"), Some(w));
        assert_eq!(
            store.persisted.take_window("hook", "id"),
            None,
            "taken once"
        );
    }
}
