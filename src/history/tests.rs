//! The store driven directly: flushes, rollups, retention, the size
//! bound, a damaged file, reads of buffered samples.

use super::*;
use crate::query::reader::MatchOp;

const H: i64 = 3_600_000;

fn limits(raw: i64, max_bytes: u64) -> disk::Limits {
    disk::Limits {
        retention: [raw, 90 * 86_400_000, 730 * 86_400_000, 90 * 86_400_000],
        max_bytes,
        grace_ms: 1000,
    }
}

struct T {
    reader: HistoryReader,
    tap: Tap,
    writer: Option<disk::Writer>,
}

impl T {
    fn open(dir: &Path) -> T {
        let reader = HistoryReader::open(dir).unwrap();
        let bytes = [0; 4];
        let tap = Tap::new(reader.shared.clone(), mpsc::channel(1).0);
        T {
            reader,
            tap,
            writer: Some(disk::Writer::new(bytes)),
        }
    }

    fn push(&self, name: &str, kind: MetricKind, dev: &str, points: &[(i64, f64)]) {
        let family = FamilyMeta::new(name, kind, "h");
        let samples: Vec<Sample> = points
            .iter()
            .map(|&(ts, v)| Sample {
                family: family.clone(),
                labels: Labels::from_pairs(&[("device", dev)]),
                value: v,
                timestamp_ms: ts,
            })
            .collect();
        self.tap.send(&samples);
    }

    fn flush(&mut self, l: disk::Limits) {
        let mut failing = false;
        let w = flush_once(
            &self.reader.shared,
            self.writer.take().unwrap(),
            l,
            &mut failing,
        );
        assert!(!failing, "the flush failed");
        self.writer = Some(w);
    }

    fn select(&self, name: &str, start: i64, end: i64, step: i64) -> Vec<RangeSeries> {
        let m = Matcher {
            name: "__name__".into(),
            op: MatchOp::Equal,
            value: name.into(),
            regex: None,
        };
        self.reader.select(&[m], start, end, step).unwrap()
    }

    fn bytes(&self) -> u64 {
        self.writer.as_ref().unwrap().bytes.iter().sum()
    }
}

/// A closed past: three whole hours ending an hour before now.
fn past_start() -> i64 {
    disk::floor(crate::model::now_ms(), H) - 4 * H
}

fn gauge_points(start: i64) -> Vec<(i64, f64)> {
    (0..3 * 3600)
        .map(|i| {
            (
                start + i * 1000 + (i % 7),
                ((i as f64) * 0.01).sin() * 10.0 + 20.0,
            )
        })
        .collect()
}

fn counter_points(start: i64) -> Vec<(i64, f64)> {
    let mut v = 0.0;
    (0..3 * 3600)
        .map(|i| {
            // A reset every 2000 samples.
            v = if i % 2000 == 1999 {
                1.0
            } else {
                v + (i % 5) as f64
            };
            (start + i * 1000, v)
        })
        .collect()
}

#[test]
fn buffered_samples_are_read_before_any_flush() {
    let dir = tempfile::tempdir().unwrap();
    let t = T::open(dir.path());
    let now = crate::model::now_ms();
    t.push(
        "g",
        MetricKind::Gauge,
        "a",
        &[(now - 2000, 1.0), (now - 1000, 2.0)],
    );
    let got = t.select("g", now - 10_000, now, 1000);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].points, vec![(now - 2000, 1.0), (now - 1000, 2.0)]);
    assert!(got[0].labels.contains(&("device".into(), "a".into())));
    assert!(got[0].labels.contains(&("__name__".into(), "g".into())));
}

#[test]
fn score_samples_carry_the_anomaly_labels_of_their_series() {
    let dir = tempfile::tempdir().unwrap();
    let t = T::open(dir.path());
    let a = Labels::from_pairs(&[("device", "a"), ("metric", "own")]);
    let b = Labels::from_pairs(&[("device", "b")]);
    for _ in 0..2 {
        for (family, labels) in [("f", &a), ("f", &b), ("g", &a)] {
            let s = t.tap.score_sample(family, labels, 5, 0.25);
            assert_eq!(
                s.labels,
                crate::detect::live::anomaly_labels(family, labels),
                "{family}{labels:?}"
            );
            assert_eq!(&*s.family.name, "vitals_anomaly_score");
            assert_eq!((s.timestamp_ms, s.value), (5, 0.25));
        }
    }
}

#[test]
fn rollups_equal_a_recomputation_from_raw() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = T::open(dir.path());
    let start = past_start();
    let g = gauge_points(start);
    let c = counter_points(start);
    // In several flushes, so windows get several chunks to compact.
    for part in 0..3 {
        let r = (part * 3600) as usize..((part + 1) * 3600) as usize;
        t.push("g", MetricKind::Gauge, "a", &g[r.clone()]);
        t.push("c_total", MetricKind::Counter, "a", &c[r]);
        t.flush(limits(7 * 86_400_000, 1 << 30));
    }
    // Every closed window was compacted: nothing is dirty.
    assert!(t.reader.shared.inner.lock().dirty.is_empty());
    let end = start + 3 * H;
    // Raw comes back exactly.
    let raw = t.select("g", start, end, 1000);
    assert_eq!(raw[0].points, g);
    for (name, pts, counter) in [("g", &g, false), ("c_total", &c, true)] {
        for step in [60_000i64, H] {
            // Recompute by hand: group by interval.
            let mut want: Vec<(i64, f64)> = Vec::new();
            let mut i = 0;
            while i < pts.len() {
                let b = pts[i].0.div_euclid(step) * step;
                let mut j = i;
                let (mut sum, mut n, mut last) = (0.0, 0, 0.0);
                while j < pts.len() && pts[j].0.div_euclid(step) * step == b {
                    sum += pts[j].1;
                    n += 1;
                    last = pts[j].1;
                    j += 1;
                }
                want.push((b + step, if counter { last } else { sum / n as f64 }));
                i = j;
            }
            want.retain(|p| p.0 >= start && p.0 <= end);
            // From the stored rollup rows (the disk tables directly) ...
            let db = t.reader.db().unwrap();
            let path = dir.path().join(disk::FILE);
            let r = disk::Reader::new(&db, &path).unwrap();
            let id = t
                .reader
                .hits(&[], 0, 0)
                .0
                .iter()
                .position(|h| h.labels.iter().any(|l| l.1 == name))
                .unwrap() as u32;
            let rows = r.rows(step, id, start - step, end).unwrap();
            let stored: Vec<(i64, f64)> = rows
                .iter()
                .map(|row| row.point(step, counter))
                .filter(|p| p.0 >= start && p.0 <= end)
                .collect();
            assert_eq!(stored.len(), want.len(), "{name} step {step}");
            for (a, b) in stored.iter().zip(&want) {
                assert_eq!(a.0, b.0);
                assert!(
                    (a.1 - b.1).abs() <= 1e-9 * b.1.abs().max(1.0),
                    "{name} {step}: {a:?} vs {b:?}"
                );
            }
            // ... and through the reader.
            let read = t.select(name, start, end, step);
            assert_eq!(read[0].points.len(), want.len(), "{name} {step} via reader");
        }
        // Counters as increase: the hour rows' sums add up to the
        // increase over the whole range, resets counted from 0.
        if counter {
            let mut inc = 0.0;
            for w in pts.windows(2) {
                inc += if w[1].1 >= w[0].1 {
                    w[1].1 - w[0].1
                } else {
                    w[1].1
                };
            }
            let db = t.reader.db().unwrap();
            let path = dir.path().join(disk::FILE);
            let r = disk::Reader::new(&db, &path).unwrap();
            let rows = r.rows(H, 1, start, end).unwrap();
            let sum: f64 = rows.iter().map(|r| r.sum).sum();
            assert_eq!(sum, inc);
        }
    }
}

#[test]
fn retention_drops_old_raw_but_keeps_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = T::open(dir.path());
    let start = past_start();
    let g = gauge_points(start);
    t.push("g", MetricKind::Gauge, "a", &g);
    t.flush(limits(7 * 86_400_000, 1 << 30));
    let end = start + 3 * H;
    assert_eq!(t.select("g", start, end, 1000)[0].points.len(), g.len());
    // Raw kept back to start + 2 h only (retention works in whole
    // windows): the two oldest windows go, their minutes stay.
    let keep = crate::model::now_ms() - (start + 2 * H);
    t.flush(limits(keep, 1 << 30));
    let raw = t.db_raw(start, end);
    assert!(!raw.is_empty());
    assert!(raw[0].0 >= start + 2 * H, "oldest raw {}", raw[0].0 - start);
    let m = t.select("g", start, end, 60_000);
    assert_eq!(m[0].points.first().unwrap().0, start + 60_000);
    // A raw query stitches the minutes in front of what raw still has.
    let stitched = t.select("g", start, end, 1000);
    assert!(
        stitched[0].points[0].0 < start + H,
        "{}",
        stitched[0].points[0].0 - start
    );
    let oldest = t.reader.shared.oldest[disk::T_RAW].load(Ordering::Relaxed);
    assert!(oldest >= start + 2 * H);
}

#[test]
fn retention_scans_the_series_only_when_something_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = T::open(dir.path());
    let start = past_start();
    let g = gauge_points(start);
    let keep_all = limits(7 * 86_400_000, 1 << 30);
    t.push("g", MetricKind::Gauge, "a", &g[2 * 3600..]);
    t.flush(keep_all);
    let scans = |t: &T| t.writer.as_ref().unwrap().retention_scans;
    // The first flush learns what each tier holds (raw, minute, hour).
    assert_eq!(scans(&t), 3);
    let now = crate::model::now_ms();
    for i in 0..5 {
        t.push("g", MetricKind::Gauge, "a", &[(now + i, 1.0)]);
        t.flush(keep_all);
    }
    assert_eq!(scans(&t), 3, "nothing was due, nothing was scanned");
    // A late sample, older than the raw retention: written, compacted and
    // trimmed by the same flush, its rollups kept.
    t.push("g", MetricKind::Gauge, "a", &g[..3600]);
    let keep = crate::model::now_ms() - (start + H);
    t.flush(limits(keep, 1 << 30));
    assert_eq!(scans(&t), 4, "raw was due");
    let raw = t.db_raw(start, start + 3 * H);
    assert!(raw[0].0 >= start + 2 * H, "oldest raw {}", raw[0].0 - start);
    let m = t.select("g", start, start + 3 * H, 60_000);
    assert_eq!(m[0].points[0].0, start + 60_000);
    let oldest = t.reader.shared.oldest[disk::T_MINUTE].load(Ordering::Relaxed);
    assert_eq!(oldest, start);
}

#[test]
fn the_newest_minute_of_a_range_comes_from_raw() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = T::open(dir.path());
    let now = crate::model::now_ms();
    let minute = disk::floor(now, 60_000);
    // Two samples in the current minute (at its very start and later),
    // two in the minute before.
    let late = (now - 1).max(minute + 1);
    let g = [
        (minute - 30_000, 1.0),
        (minute - 10_000, 3.0),
        (minute, 10.0),
        (late, 20.0),
    ];
    t.push("g", MetricKind::Gauge, "a", &g);
    t.push("c_total", MetricKind::Counter, "a", &g);
    for flushed in [false, true] {
        let got = t.select("g", minute - 120_000, now, 60_000);
        assert_eq!(
            got[0].points,
            vec![(minute, 2.0), (late, 15.0)],
            "flushed: {flushed}"
        );
        let got = t.select("c_total", minute - 120_000, now, 60_000);
        assert_eq!(got[0].points, vec![(minute, 3.0), (late, 20.0)]);
        // A range ending inside the current minute sees its samples up
        // to that end only.
        let got = t.select("g", minute - 120_000, late - 1, 60_000);
        assert_eq!(got[0].points, vec![(minute, 2.0), (minute + 1, 10.0)]);
        // A range ending on the minute's start: the minute before is whole.
        let got = t.select("g", minute - 120_000, minute, 60_000);
        assert_eq!(got[0].points, vec![(minute, 2.0)]);
        t.flush(limits(7 * 86_400_000, 1 << 30));
    }
    // A compacted past hour, a range ending in its middle: the last
    // minute from raw there too; at step 1 h the hour so far.
    let start = past_start();
    let pts = gauge_points(start);
    t.push("p", MetricKind::Gauge, "a", &pts);
    t.flush(limits(7 * 86_400_000, 1 << 30));
    let end = start + 90_500;
    let got = t.select("p", start, end, 60_000);
    let tail: Vec<_> = pts
        .iter()
        .filter(|p| p.0 >= start + 60_000 && p.0 <= end)
        .collect();
    let mean = tail.iter().map(|p| p.1).sum::<f64>() / tail.len() as f64;
    let last = got[0].points.last().unwrap();
    assert_eq!(last.0, tail.last().unwrap().0);
    assert!((last.1 - mean).abs() < 1e-9, "{last:?} vs {mean}");
    let end = start + H + 1_000;
    let got = t.select("p", start, end, H);
    assert_eq!(got[0].points.len(), 2, "{:?}", got[0].points);
    assert_eq!(got[0].points[0].0, start + H);
    let newest = pts.iter().filter(|p| p.0 <= end).next_back().unwrap();
    assert_eq!(got[0].points[1], *newest, "one sample in the hour so far");
}

#[test]
fn max_bytes_cuts_the_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = T::open(dir.path());
    let start = past_start();
    for dev in ["a", "b", "c"] {
        t.push("g", MetricKind::Gauge, dev, &gauge_points(start));
    }
    t.flush(limits(7 * 86_400_000, 1 << 30));
    let full = t.bytes();
    let cap = full / 2;
    t.flush(limits(7 * 86_400_000, cap));
    assert!(t.bytes() <= cap, "{} > {cap}", t.bytes());
    // What is left is the newest raw data.
    let raw = t.db_raw(start, start + 3 * H);
    assert!(raw.first().unwrap().0 >= start + H);
    assert!(raw.last().unwrap().0 >= start + 3 * H - 2000);
}

#[test]
fn a_damaged_file_is_moved_aside_and_a_busy_one_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(disk::FILE), vec![0x5au8; 20_000]).unwrap();
    let t = T::open(dir.path());
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("history.redb.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(dir.path().join(&aside[0])).unwrap(),
        vec![0x5au8; 20_000],
        "the damaged file is kept as it was"
    );
    // A second opener of the same store gets an error naming the file.
    let err = HistoryReader::open(dir.path()).err().expect("busy store");
    let text = err.to_string();
    assert!(
        text.contains(&dir.path().join(disk::FILE).display().to_string()),
        "{text}"
    );
    assert!(text.contains("in use"), "{text}");
    drop(t);
    // A directory that cannot be created names itself.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = HistoryReader::open(&file.join("sub"))
        .err()
        .expect("not a dir");
    assert!(err.to_string().contains("plain-file"), "{err}");
}

#[test]
fn a_truncated_store_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut t = T::open(dir.path());
        t.push("g", MetricKind::Gauge, "a", &gauge_points(past_start()));
        t.flush(limits(7 * 86_400_000, 1 << 30));
    }
    let path = dir.path().join(disk::FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    let t = T::open(dir.path());
    // Either redb repaired it or it was moved aside; it opens, reads and
    // takes writes, without a panic.
    let now = crate::model::now_ms();
    t.push("g", MetricKind::Gauge, "a", &[(now, 1.0)]);
    assert!(!t.select("g", now - 1, now, 1000).is_empty());
}

impl T {
    fn db_raw(&self, start: i64, end: i64) -> Vec<(i64, f64)> {
        let db = self.reader.db().unwrap();
        let path = self.reader.shared.dir.join(disk::FILE);
        let r = disk::Reader::new(&db, &path).unwrap();
        let n = self.reader.shared.inner.lock().series.len() as u32;
        let mut all = Vec::new();
        for s in 0..n {
            all.extend(r.raw(s, start, end).unwrap());
        }
        all.sort_by_key(|p| p.0);
        all
    }
}

#[tokio::test]
async fn events_from_the_bus_are_kept_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = T::open(dir.path());
    let bus = crate::events::EventBus::new(16);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(record_events(
        t.reader.shared.clone(),
        bus.subscribe(),
        shutdown.clone(),
    ));
    let now = crate::model::now_ms();
    for (i, kind) in ["anomaly", "rule"].into_iter().enumerate() {
        bus.publish(crate::events::Event {
            kind,
            severity: crate::events::Severity::Warning,
            timestamp_ms: now - 1000 + i as i64,
            source: "s".into(),
            metric: "m".into(),
            labels: "{a=\"x\"}".into(),
            value: 1.5,
            expected: None,
            lower: None,
            upper: None,
            score: 0.9,
            reason: "r".into(),
        });
    }
    wait(|| t.reader.shared.inner.lock().current.events.len() == 2).await;
    // Read from the buffer, then from the file.
    assert_eq!(t.reader.events(now - 5000, now, 10).unwrap().len(), 2);
    t.flush(limits(7 * 86_400_000, 1 << 30));
    assert!(t.reader.shared.inner.lock().pending.is_empty());
    let got = t.reader.events(now - 5000, now, 10).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].kind.as_str(), got[1].kind.as_str()),
        ("anomaly", "rule")
    );
    assert_eq!(got[1].severity, "warning");
    assert_eq!(got[0].labels, "{a=\"x\"}");
    assert_eq!(t.reader.events(now - 5000, now, 1).unwrap().len(), 1);
    shutdown.cancel();
    task.await.unwrap();
}

async fn wait(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met");
}
