//! Cost of rendering `/metrics` for an MQTT-like store: 10,000 devices × 3
//! gauges, every series scored by the default anomaly ensemble (so each
//! also exports its `vitals_anomaly_*` series).
//! Run with `cargo bench --bench render`; the MQTT target is ≤ 20 ms median.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use vitals::config::Config;
use vitals::events::EventBus;
use vitals::model::{Batch, BatchMode, Labels, MetricKind, Sample};
use vitals::pipeline::Pipeline;
use vitals::store::{Store, family};
use vitals::telemetry::Telemetry;

const DEVICES: usize = 10_000;

fn store() -> Store {
    let mut pipeline = Pipeline::from_config(&Config::default(), EventBus::new(64));
    let telemetry = Telemetry::new();
    let mut store = Store::new();
    let families = [
        family("sensor_temperature_celsius", MetricKind::Gauge, "T."),
        family("sensor_humidity_percent", MetricKind::Gauge, "H."),
        family("sensor_battery_volts", MetricKind::Gauge, "B."),
    ];
    let labels: Vec<Labels> = (0..DEVICES)
        .map(|d| Labels::from_pairs(&[("sensor", &format!("s{d}"))]))
        .collect();
    // Enough samples per series for the detectors to score.
    for step in 0..200i64 {
        let mut samples = Vec::with_capacity(DEVICES * 3);
        for (d, l) in labels.iter().enumerate() {
            for (k, f) in families.iter().enumerate() {
                samples.push(Sample {
                    family: f.clone(),
                    labels: l.clone(),
                    value: 20.0 + k as f64 + ((step + d as i64) % 7) as f64 * 0.1,
                    timestamp_ms: 1_700_000_000_000 + step * 1000,
                });
            }
        }
        let batch = Batch {
            source: Arc::from("bench"),
            mode: BatchMode::Update,
            samples,
        };
        pipeline.apply(batch, &mut store, &telemetry);
    }
    store
}

fn render(c: &mut Criterion) {
    let store = store();
    let mut probe = String::new();
    vitals::exposition::store_text(&store, &mut probe);
    eprintln!(
        "render: {} series, {} lines, {} bytes",
        store.len(),
        probe.lines().filter(|l| !l.starts_with('#')).count(),
        probe.len()
    );
    if std::env::var_os("RENDER_SAMPLE").is_some() {
        for l in probe.lines().filter(|l| l.contains("s17\"")) {
            eprintln!("{l}");
        }
    }
    let mut g = c.benchmark_group("render");
    g.sample_size(20);
    g.bench_function("10k_devices_3_metrics_with_detectors", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(64 * 1024);
            vitals::exposition::store_text(&store, &mut out);
            black_box(out.len())
        })
    });
    let mut reused = String::with_capacity(probe.len() + probe.len() / 8);
    g.bench_function("same_with_a_reused_buffer", |b| {
        b.iter(|| {
            reused.clear();
            vitals::exposition::store_text(&store, &mut reused);
            black_box(reused.len())
        })
    });
    g.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
