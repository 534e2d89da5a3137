//! Cost of the history store per sample, in two parts that run on
//! different threads:
//!
//! - **ingest** (target ≤ 0.3 µs per sample): what the ingest task pays
//!   for history. `ingest/tap_as_the_ingest_task_calls_it` is that path
//!   alone: per stored sample one score sample (the pipeline makes it for
//!   the tap) and one `Tap::send` of both per batch. `ingest/apply_*` is
//!   the whole ingest step (stages, store, default detectors) with and
//!   without the history tap; their difference is the same cost, measured
//!   the long way round (noisier: it is a difference of two larger times).
//! - **flush**: what the flusher thread pays, off the ingest path, to write
//!   one `flush_interval` (10 s) of 1,000 series at 1 Hz plus their scores,
//!   one transaction each, to a store that already holds some hours;
//!   synthetic time advances 10 s per flush, so closed hours are compacted
//!   and rolled up inside the measured flushes as in a running vitals.
//!
//! `cargo bench --bench history` (`-- ingest` or `-- flush` for one part).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use vitals::config::Config;
use vitals::events::EventBus;
use vitals::history::{HistoryConfig, ManualStore};
use vitals::model::{Batch, BatchMode, FamilyMeta, Labels, MetricKind, Sample};
use vitals::pipeline::{Pipeline, Taps};
use vitals::store::Store;
use vitals::telemetry::Telemetry;

const SERIES: usize = 1000;
/// Samples per batch (one tick of a source).
const BATCH: usize = 100;

fn labels() -> Vec<Labels> {
    (0..SERIES)
        .map(|i| Labels::from_pairs(&[("device", format!("d{i}").as_str()), ("site", "s")]))
        .collect()
}

fn batch(family: &Arc<FamilyMeta>, labels: &[Labels], offset: usize, ts: i64) -> Vec<Sample> {
    (0..BATCH)
        .map(|i| Sample {
            family: family.clone(),
            labels: labels[(offset + i) % SERIES].clone(),
            value: 20.0 + ((ts / 1000 + i as i64) % 17) as f64 * 0.1,
            timestamp_ms: ts,
        })
        .collect()
}

fn store_cfg(dir: &std::path::Path) -> HistoryConfig {
    HistoryConfig {
        path: dir.to_path_buf(),
        ..Default::default()
    }
}

fn ingest(c: &mut Criterion) {
    let family = FamilyMeta::new("bench_value", MetricKind::Gauge, "h");
    let labels = labels();
    let dir = tempfile::tempdir().unwrap();
    let history = RefCell::new(ManualStore::open(&store_cfg(dir.path())).unwrap());
    // Flushed (untimed) every 10 s of 1,000 series at 1 Hz, so the buffer
    // holds what it holds in a running vitals.
    let mut batches = 0usize;
    let mut keep_flushed = || {
        batches += 1;
        if batches % (10 * SERIES / BATCH) == 0 {
            assert!(history.borrow_mut().flush(), "flush failed");
        }
    };
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(BATCH as u64));

    // The tap path alone, as `Pipeline::apply_to` calls it.
    let mut ts = 1_700_000_000_000i64;
    let mut offset = 0;
    g.bench_function("tap_as_the_ingest_task_calls_it", |b| {
        b.iter_batched(
            || {
                keep_flushed();
                ts += 1000;
                offset += BATCH;
                batch(&family, &labels, offset, ts)
            },
            |mut samples| {
                let h = history.borrow();
                let mut scores: Vec<Sample> = samples
                    .iter()
                    .map(|s| {
                        h.tap
                            .score_sample(&s.family.name, &s.labels, s.timestamp_ms, 0.5)
                    })
                    .collect();
                samples.append(&mut scores);
                h.tap.send(&samples);
                samples
            },
            BatchSize::SmallInput,
        )
    });

    // The whole ingest step, with and without the history tap.
    for (name, with) in [
        ("apply_without_history", false),
        ("apply_with_history", true),
    ] {
        let telemetry = Telemetry::new();
        let mut pipeline = Pipeline::from_config(&Config::default(), EventBus::new(64));
        let mut store = Store::new();
        let taps = Taps {
            remote_write: None,
            history: with.then(|| history.borrow().tap.clone()),
        };
        let mut ts = 1_700_000_000_000i64;
        let mut offset = 0;
        let mut make = || {
            keep_flushed();
            ts += 1000;
            offset += BATCH;
            Batch {
                source: Arc::from("bench"),
                mode: BatchMode::Update,
                samples: batch(&family, &labels, offset, ts),
            }
        };
        // Detectors warmed up, so every sample is scored.
        for _ in 0..(60 * SERIES / BATCH) {
            pipeline.apply_to(make(), &mut store, &telemetry, &taps);
        }
        g.bench_function(name, |b| {
            b.iter_batched(
                &mut make,
                |batch| pipeline.apply_to(batch, &mut store, &telemetry, &taps),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn flush(c: &mut Criterion) {
    let family = FamilyMeta::new("bench_value", MetricKind::Gauge, "h");
    let score = FamilyMeta::new("vitals_anomaly_score", MetricKind::Gauge, "s");
    let labels = labels();
    let dir = tempfile::tempdir().unwrap();
    let history = RefCell::new(ManualStore::open(&store_cfg(dir.path())).unwrap());
    // Synthetic time, starting 2 days back so windows close (and are
    // compacted) as it advances; 10 s of 1 Hz samples per flush.
    let now = vitals::model::now_ms();
    let mut ts = (now - 2 * 86_400_000) / 3_600_000 * 3_600_000;
    let mut fill = || {
        let mut samples = Vec::with_capacity(SERIES * 20);
        for _ in 0..10 {
            ts += 1000;
            for (i, l) in labels.iter().enumerate() {
                let v = 20.0 + ((ts / 1000 + i as i64) % 17) as f64 * 0.1;
                samples.push(Sample {
                    family: family.clone(),
                    labels: l.clone(),
                    value: v,
                    timestamp_ms: ts,
                });
                samples.push(Sample {
                    family: score.clone(),
                    labels: l.clone(),
                    value: (v - 20.0) / 2.0,
                    timestamp_ms: ts,
                });
            }
        }
        history.borrow().tap.send(&samples);
    };
    // Two hours already held (and compacted) before measuring.
    for _ in 0..720 {
        fill();
        assert!(history.borrow_mut().flush(), "flush failed");
    }
    let mut g = c.benchmark_group("flush");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(40));
    g.throughput(Throughput::Elements((SERIES * 20) as u64));
    g.bench_function("10s_of_1000_series_and_scores", |b| {
        b.iter_batched(
            &mut fill,
            |()| assert!(history.borrow_mut().flush(), "flush failed"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, ingest, flush);
criterion_main!(benches);
