//! vitals' own metrics (self-telemetry) and the one place where a source
//! error is both counted and logged, rate-limited.
//!
//! The registry is created at start-up and shared read-only; every metric
//! type carries its own synchronisation, so nothing here takes a global lock
//! on the hot path.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Version and commit baked in at build time.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("BUILD_VITALS_COMMIT");

/// Self-metrics shared by every component of `vitals run`.
pub struct Telemetry {
    registry: Registry,
    /// 1 while a source's last collection succeeded.
    pub source_up: IntGaugeVec,
    pub source_last_success: GaugeVec,
    /// Errors by source and bounded reason (never raw error text).
    pub source_errors: IntCounterVec,
    /// Wall time of a source's last collection.
    pub source_duration: GaugeVec,
    pub samples_ingested: IntCounterVec,
    /// Samples the pipeline or store refused, by bounded reason.
    pub samples_dropped: IntCounterVec,
    pub store_series: IntGauge,
    /// Bytes of the metric names and label sets of the stored series (what
    /// the `[store]` label limits bound).
    pub store_label_bytes: IntGauge,
    pub scrape_duration: Histogram,
    /// 1 when the last configuration (re)load succeeded (Prometheus' convention).
    pub reload_ok: IntGauge,
    pub reload_time: Gauge,
    /// Unix time (s) the registry was made: the start of every count in
    /// it (the OpenMetrics `_created` of its counters and histograms).
    started: f64,
    limiter: Mutex<HashMap<(String, &'static str), LogWindow>>,
    /// Per-source health, written with the `vitals_source_*` families above.
    health: HealthTable,
}

/// The health of one source, as its last collections left it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceHealth {
    /// The source's `type`; empty until the first up/down record.
    pub kind: &'static str,
    /// Whether the last collection succeeded; `None` before the first.
    pub up: Option<bool>,
    /// Unix time (s) of the last successful collection.
    pub last_success: Option<f64>,
    /// Wall time of the last successful collection.
    pub duration: Option<Duration>,
    /// Errors counted, over every reason.
    pub errors: u64,
}

/// Per-source health keyed by source name (or a `<source>/<part>` key):
/// the typed twin of `vitals_source_up`, last success, duration and errors,
/// written in the same calls, for readers such as the dashboard.
#[derive(Default)]
pub struct HealthTable(Mutex<std::collections::BTreeMap<String, SourceHealth>>);

impl HealthTable {
    /// Every source with a record, by name.
    pub fn snapshot(&self) -> Vec<(String, SourceHealth)> {
        self.0
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The record of one source.
    pub fn get(&self, source: &str) -> Option<SourceHealth> {
        self.0.lock().get(source).cloned()
    }

    fn update(&self, source: &str, f: impl FnOnce(&mut SourceHealth)) {
        let mut rows = self.0.lock();
        match rows.get_mut(source) {
            Some(row) => f(row),
            None => f(rows.entry(source.to_string()).or_default()),
        }
    }

    fn forget(&self, source: &str) {
        self.0.lock().retain(|s, _| !owned_by(s, source));
    }
}

struct LogWindow {
    last: Instant,
    suppressed: u64,
}

/// At most one log line per (source, reason) in this window.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Telemetry {
    pub fn new() -> Self {
        let registry = Registry::new();
        let source_up = IntGaugeVec::new(
            Opts::new(
                "vitals_source_up",
                "Whether the last collection of a source succeeded (1) or not (0).",
            ),
            &["source", "type"],
        )
        .expect("valid metric");
        let source_last_success = GaugeVec::new(
            Opts::new(
                "vitals_source_last_success_timestamp_seconds",
                "Unix time of the last successful collection of a source.",
            ),
            &["source"],
        )
        .expect("valid metric");
        let source_errors = IntCounterVec::new(
            Opts::new(
                "vitals_source_errors_total",
                "Errors of a source, by reason.",
            ),
            &["source", "reason"],
        )
        .expect("valid metric");
        let source_duration = GaugeVec::new(
            Opts::new(
                "vitals_source_collection_duration_seconds",
                "Wall time the last collection of a source took.",
            ),
            &["source"],
        )
        .expect("valid metric");
        let samples_ingested = IntCounterVec::new(
            Opts::new(
                "vitals_samples_ingested_total",
                "Samples stored, by source.",
            ),
            &["source"],
        )
        .expect("valid metric");
        let samples_dropped = IntCounterVec::new(
            Opts::new(
                "vitals_samples_dropped_total",
                "Samples refused by the pipeline or the store, by reason.",
            ),
            &["source", "reason"],
        )
        .expect("valid metric");
        let store_series =
            IntGauge::new("vitals_store_series", "Series currently held in the store.")
                .expect("valid metric");
        let store_label_bytes = IntGauge::new(
            "vitals_store_label_bytes",
            "Bytes of the metric names and label sets of the series held in the store.",
        )
        .expect("valid metric");
        let scrape_duration = Histogram::with_opts(
            HistogramOpts::new(
                "vitals_scrape_duration_seconds",
                "Time taken to render /metrics.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid metric");
        let reload_ok = IntGauge::new(
            "vitals_config_last_reload_successful",
            "Whether the last configuration reload attempt succeeded (1) or not (0).",
        )
        .expect("valid metric");
        let reload_time = Gauge::new(
            "vitals_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration (re)load.",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "vitals_build_info",
                "Version and commit vitals was built from; always 1.",
            ),
            &["version", "commit"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[VERSION, COMMIT]).set(1);
        let start_time = Gauge::new("vitals_start_time_seconds", "Unix time vitals started.")
            .expect("valid metric");
        let started = crate::model::now_ms() as f64 / 1000.0;
        start_time.set(started);

        for c in [
            Box::new(source_up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(source_last_success.clone()),
            Box::new(source_errors.clone()),
            Box::new(source_duration.clone()),
            Box::new(samples_ingested.clone()),
            Box::new(samples_dropped.clone()),
            Box::new(store_series.clone()),
            Box::new(store_label_bytes.clone()),
            Box::new(scrape_duration.clone()),
            Box::new(reload_ok.clone()),
            Box::new(reload_time.clone()),
            Box::new(build_info),
            Box::new(start_time),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(c).expect("metric names are unique");
        }

        Telemetry {
            registry,
            source_up,
            source_last_success,
            source_errors,
            source_duration,
            samples_ingested,
            samples_dropped,
            store_series,
            store_label_bytes,
            scrape_duration,
            reload_ok,
            reload_time,
            started,
            limiter: Mutex::new(HashMap::new()),
            health: HealthTable::default(),
        }
    }

    /// The per-source health table.
    pub fn health(&self) -> &HealthTable {
        &self.health
    }

    /// The registry, so other components (relay, sources) can add their own
    /// metric families at start-up.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The current value of every self-metric (what
    /// [`crate::exposition`] writes).
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }

    /// Unix time (s) the registry was made: when every count in it started.
    pub fn started(&self) -> f64 {
        self.started
    }

    /// Publish the size of the store after a change: the series it holds
    /// and the bytes of their names and label sets.
    pub fn store_size(&self, series: usize, label_bytes: usize) {
        self.store_series.set(series as i64);
        self.store_label_bytes.set(label_bytes as i64);
    }

    /// Record a successful configuration load or reload.
    pub fn reload_succeeded(&self) {
        self.reload_ok.set(1);
        self.reload_time.set(crate::model::now_ms() as f64 / 1000.0);
    }

    /// Record a rejected configuration reload.
    pub fn reload_failed(&self) {
        self.reload_ok.set(0);
    }

    /// Record a successful collection of `source`.
    pub fn source_ok(&self, source: &str, kind: &'static str, took: Duration) {
        let now = crate::model::now_ms() as f64 / 1000.0;
        self.source_up.with_label_values(&[source, kind]).set(1);
        self.source_last_success
            .with_label_values(&[source])
            .set(now);
        self.source_duration
            .with_label_values(&[source])
            .set(took.as_secs_f64());
        self.health.update(source, |h| {
            h.kind = kind;
            h.up = Some(true);
            h.last_success = Some(now);
            h.duration = Some(took);
        });
    }

    /// Count an error of `source` by its bounded `reason` and log it, at most
    /// once per reason every ten seconds (with the number suppressed since).
    pub fn source_error(&self, source: &str, reason: &'static str, error: &dyn Display) {
        self.count_source_errors(source, reason, 1);
        if let Some(suppressed) = self.should_log(source, reason) {
            tracing::warn!(source, reason, %error, suppressed, "Source error.");
        }
    }

    /// Count `n` errors of `source` without a log line (the caller logs).
    pub fn count_source_errors(&self, source: &str, reason: &'static str, n: u64) {
        self.source_errors
            .with_label_values(&[source, reason])
            .inc_by(n);
        self.health.update(source, |h| h.errors += n);
    }

    /// Mark a source down (its collection failed as a whole).
    pub fn source_down(&self, source: &str, kind: &'static str) {
        self.source_up.with_label_values(&[source, kind]).set(0);
        self.health.update(source, |h| {
            h.kind = kind;
            h.up = Some(false);
        });
    }

    /// Count a dropped sample by reason, logging rate-limited.
    pub fn sample_dropped(&self, source: &str, reason: &'static str, detail: &dyn Display) {
        self.samples_dropped
            .with_label_values(&[source, reason])
            .inc();
        if let Some(suppressed) = self.should_log(source, reason) {
            tracing::warn!(source, reason, detail = %detail, suppressed, "Sample dropped.");
        }
    }

    /// Remove the health series the task of `source` writes (`up`, last
    /// success, duration, errors) and its rate-limit windows: the source was
    /// stopped by a reload and its task has ended. Call before a replacement
    /// starts, so the new instance's series are not taken with them.
    pub fn forget_source_health(&self, source: &str) {
        let owned = |s: &str| owned_by(s, source);
        forget(&self.source_up, owned);
        forget(&self.source_last_success, owned);
        forget(&self.source_duration, owned);
        forget(&self.source_errors, owned);
        self.health.forget(source);
        self.limiter.lock().retain(|(s, _), _| !owned_by(s, source));
    }

    /// Remove the ingest counters of `source` (samples ingested and
    /// dropped), including those of its `<source>/<part>` sub-keys. The
    /// ingest task calls it when it applies the source's removal, which is
    /// queued behind the source's last batch, so no late batch brings them
    /// back.
    pub fn forget_source_samples(&self, source: &str) {
        let owned = |s: &str| owned_by(s, source);
        forget(&self.samples_ingested, owned);
        forget(&self.samples_dropped, owned);
    }

    /// `Some(suppressed count)` when a log line for this key is due now.
    pub fn should_log(&self, source: &str, reason: &'static str) -> Option<u64> {
        let mut limiter = self.limiter.lock();
        let now = Instant::now();
        match limiter.get_mut(&(source.to_string(), reason)) {
            Some(w) if now.duration_since(w.last) < LOG_EVERY => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                let s = w.suppressed;
                w.last = now;
                w.suppressed = 0;
                Some(s)
            }
            None => {
                // Bounded: sources and reasons are both from fixed sets.
                limiter.insert(
                    (source.to_string(), reason),
                    LogWindow {
                        last: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// Whether the `source` label value `label` belongs to `source` (itself or
/// one of its `<source>/<part>` sub-keys).
fn owned_by(label: &str, source: &str) -> bool {
    label
        .strip_prefix(source)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Remove every series of `vec` whose `source` label satisfies `owned`.
fn forget<T: MetricVecBuilder>(vec: &MetricVec<T>, owned: impl Fn(&str) -> bool) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("source").is_some_and(|s| owned(s)) {
                // Fails only when the series is already gone.
                let _ = vec.remove(&labels);
            }
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_every_time_but_logged_once_per_window() {
        let t = Telemetry::new();
        assert_eq!(t.should_log("s", "timeout"), Some(0));
        assert_eq!(t.should_log("s", "timeout"), None);
        assert_eq!(t.should_log("s", "other"), Some(0));
        t.source_error("s", "timeout", &"boom");
        t.source_error("s", "timeout", &"boom");
        assert_eq!(
            t.source_errors.with_label_values(&["s", "timeout"]).get(),
            2
        );
    }

    #[test]
    fn forgetting_a_source_removes_its_series_and_sub_keys_only() {
        let t = Telemetry::new();
        for s in ["db", "db/q1", "dbx", "other"] {
            t.source_ok(s, "sql", Duration::from_millis(5));
            t.source_error(s, "timeout", &"boom");
            t.samples_ingested.with_label_values(&[s]).inc();
            t.samples_dropped.with_label_values(&[s, "nan"]).inc();
        }
        t.forget_source_health("db");
        t.forget_source_samples("db");
        let text = crate::exposition::own_text(&t);
        for gone in ["source=\"db\"", "source=\"db/q1\""] {
            assert!(!text.contains(gone), "{gone} left in:\n{text}");
        }
        for name in [
            "vitals_source_up",
            "vitals_source_last_success_timestamp_seconds",
            "vitals_source_collection_duration_seconds",
            "vitals_source_errors_total",
            "vitals_samples_ingested_total",
            "vitals_samples_dropped_total",
        ] {
            for kept in ["dbx", "other"] {
                assert!(
                    text.lines()
                        .any(|l| l.starts_with(name) && l.contains(&format!("source=\"{kept}\""))),
                    "{name} of {kept} kept"
                );
            }
        }
        // The log window of the forgotten source starts afresh.
        assert_eq!(t.should_log("db", "timeout"), Some(0));
    }
}
