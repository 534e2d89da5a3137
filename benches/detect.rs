//! Cost of the default anomaly ensemble per sample of one series.
//! Run with `cargo bench --bench detect`; the target is ≤ 1 µs per sample.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use vitals::detect::{DetectConfig, DetectorKind, Ensemble, LikelihoodKind};

fn series(n: usize) -> Vec<f64> {
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let noise = (s >> 11) as f64 / (1u64 << 53) as f64;
            50.0 + 10.0 * ((i as f64) / 288.0 * std::f64::consts::TAU).sin() + 5.0 * noise
        })
        .collect()
}

fn ensemble(c: &mut Criterion) {
    let data = series(100_000);
    let cfg = DetectConfig::default();
    let mut g = c.benchmark_group("ensemble");
    g.throughput(Throughput::Elements(data.len() as u64));
    g.bench_function("default_per_100k_samples", |b| {
        b.iter(|| {
            let mut e = Ensemble::new(&cfg, &[]);
            let mut acc = 0.0;
            for (i, v) in data.iter().enumerate() {
                acc += e.step(i as i64 * 300_000, *v).score;
            }
            black_box(acc)
        })
    });
    let mut all = cfg.clone();
    all.detectors.push(DetectorKind::Cusum);
    g.bench_function("all_members_per_100k_samples", |b| {
        b.iter(|| {
            let mut e = Ensemble::new(&all, &[]);
            let mut acc = 0.0;
            for (i, v) in data.iter().enumerate() {
                acc += e.step(i as i64 * 300_000, *v).score;
            }
            black_box(acc)
        })
    });
    // The best out-of-fold combination on NAB (opt-in).
    let best = DetectConfig {
        detectors: vec![
            DetectorKind::Context,
            DetectorKind::Seasonal,
            DetectorKind::CadOse,
        ],
        likelihood: LikelihoodKind::Numenta,
        ..cfg.clone()
    };
    g.bench_function("context_seasonal_cad_ose_numenta_per_100k_samples", |b| {
        b.iter(|| {
            let mut e = Ensemble::new(&best, &[]);
            let mut acc = 0.0;
            for (i, v) in data.iter().enumerate() {
                acc += e.step(i as i64 * 300_000, *v).score;
            }
            black_box(acc)
        })
    });
    g.finish();
    let e = Ensemble::new(&cfg, &[]);
    eprintln!(
        "state per series: size_of::<Ensemble>() = {} B, with heap = {} B",
        std::mem::size_of::<Ensemble>(),
        e.state_bytes()
    );
    eprintln!(
        "state per series, context + seasonal + cad_ose with the numenta likelihood: {} B",
        Ensemble::new(&best, &[]).state_bytes()
    );
}

criterion_group!(benches, ensemble);
criterion_main!(benches);
