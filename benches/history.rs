//! Ingest cost of the history store per sample: what the ingest task pays
//! to hand a stored sample to history (`history::Tap::send`: one lock per
//! batch, a series lookup and a buffer append per sample). The disk writes
//! run on the flusher, off the ingest path. Target: ≤ 0.3 µs per sample.
//!
//! `cargo bench --bench history`

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vitals::model::{FamilyMeta, Labels, MetricKind, Sample};

fn ingest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = vitals::history::HistoryConfig {
        path: dir.path().to_path_buf(),
        flush_interval: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let telemetry = vitals::telemetry::Telemetry::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let history = {
        let _g = rt.enter();
        vitals::history::start(
            &cfg,
            &telemetry,
            &vitals::events::EventBus::default(),
            &tracker,
            shutdown.clone(),
        )
        .unwrap()
        .unwrap()
    };
    // 1,000 series of one family, sent in batches of 100 (a tick of a source).
    let family: Arc<FamilyMeta> = FamilyMeta::new("bench_value", MetricKind::Gauge, "h");
    let labels: Vec<Labels> = (0..1000)
        .map(|i| Labels::from_pairs(&[("device", format!("d{i}").as_str()), ("site", "s")]))
        .collect();
    let mut ts = 1_700_000_000_000i64;
    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(100));
    let mut offset = 0usize;
    g.bench_function("tap_send_100_samples", |b| {
        b.iter_batched(
            || {
                ts += 1000;
                offset = (offset + 100) % 1000;
                (0..100)
                    .map(|i| Sample {
                        family: family.clone(),
                        labels: labels[offset + i].clone(),
                        value: (ts % 97) as f64 + i as f64,
                        timestamp_ms: ts,
                    })
                    .collect::<Vec<_>>()
            },
            |batch| history.tap.send(&batch),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
    shutdown.cancel();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
