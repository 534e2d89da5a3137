//! The remote-write queue's cost per sample, the parts that run for every
//! sample: appending a tick of known series (series lookup, columns, pco,
//! the redb commit with its fsync), and reading a queued block back and
//! building its request (pco decode, protobuf, snappy). The HTTP post and
//! the receiver are not measured here (bench/remote_write.sh does, against
//! VictoriaMetrics). Budget: ≤ 1 µs of vitals CPU per sample in all.
//!
//! `cargo bench --bench remote_write`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vitals::model::Labels;
use vitals::remote_write::encoder::{Point, RequestEncoder};
use vitals::remote_write::queue::Queue;

/// Series like the demo source's: 4 families per device, 3 labels.
fn series(n: usize) -> Vec<(&'static str, Labels)> {
    const FAMILIES: [&str; 4] = [
        "demo_temperature_celsius",
        "demo_pressure_pascals",
        "demo_vibration_meters",
        "demo_current_amperes",
    ];
    (0..n)
        .map(|i| {
            let labels = Labels::from_pairs(&[
                ("line", format!("L{}", i / 4 / 1000)),
                ("device", format!("dev-{:04}", i / 4 % 1000)),
                ("site", "plant-3".to_string()),
            ]);
            (FAMILIES[i % 4], labels)
        })
        .collect()
}

fn points<'a>(series: &'a [(&'static str, Labels)], t: i64) -> Vec<Point<'a>> {
    series
        .iter()
        .enumerate()
        .map(|(i, (family, labels))| Point {
            family,
            labels,
            value: 20.0 + (i as f64 * 0.37 + t as f64).sin(),
            timestamp_ms: t,
        })
        .collect()
}

fn queue(c: &mut Criterion) {
    const N: usize = 10_000;
    let ss = series(N);
    let ext = [("writer".to_string(), "vitals".to_string())];
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), "bench", 4, 1 << 34, &ext).unwrap();
    let mut t = 1_700_000_000_000i64;
    q.append(&points(&ss, t), N).unwrap();

    let mut g = c.benchmark_group("remote_write");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    g.bench_function("append 10,000 known series (one commit)", |b| {
        b.iter(|| {
            t += 1000;
            q.append(&points(&ss, t), N).unwrap()
        })
    });
    let mut enc = RequestEncoder::default();
    drain(&mut q, &mut enc);
    // The same, then every queued block read back, its request built and
    // the block removed (the difference is the send side's share).
    g.bench_function("append, read back and encode 10,000 samples", |b| {
        b.iter(|| {
            t += 1000;
            q.append(&points(&ss, t), N).unwrap();
            drain(&mut q, &mut enc)
        })
    });
    g.finish();
}

/// Read back, encode and remove every queued block; the request bytes.
fn drain(q: &mut Queue, enc: &mut RequestEncoder) -> usize {
    let mut done = Vec::new();
    let mut bytes = 0;
    for lane in 0..q.lanes() as u32 {
        let mut after = None;
        while let Some(block) = q.next(lane, after).unwrap() {
            after = Some(block.seq);
            bytes += block.body_with(enc).unwrap().len();
            done.push((lane, block.seq));
        }
    }
    q.remove(&done).unwrap();
    bytes
}

criterion_group!(benches, queue);
criterion_main!(benches);
