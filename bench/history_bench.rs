//! Helper of `bench/history.sh` (`cargo run --release --example history_bench`).
//!
//! - `count DIR`: one line of `key=value`: the series, raw samples, closed
//!   and still-dirty raw windows, the bytes per tier vitals accounts and the
//!   file's size, of the history store in DIR (vitals must be stopped).
//! - `synth CAPTURE OUT OPENMETRICS HOURS LONG_SERIES LONG_HOURS [SHIFT_H]`:
//!   read every series of the store CAPTURE (the real-time phase's capture
//!   of this host and the demo sensors) and lay out HOURS of each (LONG_HOURS
//!   of the series named LONG_SERIES) ending at the start of the current
//!   hour, by tiling the captured series: its own sample intervals and
//!   values, copies alternating forwards and backwards in time so the seams
//!   are continuous; counters tile their increments, so they keep rising.
//!   HOURS = 0 copies the capture once, unchanged apart from a shift of
//!   SHIFT_H whole hours into the past (so every raw window is closed).
//!   The points go into a new store at OUT through vitals' own ingest path
//!   (`history::start` and its tap, the flusher, compaction and rollups),
//!   and the same points, in the same order per series, into OPENMETRICS
//!   for `promtool tsdb create-blocks-from openmetrics`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vitals::history::disk::{self, Reader, SeriesInfo};
use vitals::history::{self, HistoryConfig};
use vitals::model::{FamilyMeta, MetricKind, Sample};
use vitals::telemetry::Telemetry;

const HOUR: i64 = 3_600_000;

fn die(msg: String) -> ! {
    eprintln!("history_bench: {msg}");
    std::process::exit(2)
}

/// Every series of a stopped store with its raw points.
fn load(dir: &Path) -> (Vec<SeriesInfo>, Vec<Vec<(i64, f64)>>, usize, [u64; 4]) {
    let (db, loaded) = disk::open(dir).unwrap_or_else(|e| die(e.to_string()));
    let path = dir.join(disk::FILE);
    let r = Reader::new(&db, &path).unwrap_or_else(|e| die(e.to_string()));
    let pts = (0..loaded.series.len() as u32)
        .map(|s| r.raw(s, i64::MIN / 2, i64::MAX / 2).unwrap_or_else(|e| die(e.to_string())))
        .collect();
    (loaded.series, pts, loaded.dirty.len(), loaded.bytes)
}

fn count(dir: &Path) {
    let (series, pts, dirty, bytes) = load(dir);
    let samples: usize = pts.iter().map(Vec::len).sum();
    let file = std::fs::metadata(dir.join(disk::FILE)).map(|m| m.len()).unwrap_or(0);
    let windows: std::collections::BTreeSet<(usize, i64)> = pts
        .iter()
        .enumerate()
        .flat_map(|(s, p)| p.iter().map(move |p| (s, p.0.div_euclid(HOUR))))
        .collect();
    println!(
        "series={} samples={} windows={} dirty={} raw_bytes={} minute_bytes={} hour_bytes={} event_bytes={} file_bytes={}",
        series.iter().zip(&pts).filter(|(_, p)| !p.is_empty()).count(),
        samples,
        windows.len(),
        dirty,
        bytes[0],
        bytes[1],
        bytes[2],
        bytes[3],
        file
    );
}

/// Tiles one captured series over `[start, end]`.
struct Tiler<'a> {
    /// Captured intervals (ms) and values (gauges) or increments (counters).
    dts: &'a [i64],
    vals: Vec<f64>,
    counter: bool,
    /// Position in the capture and direction of the current copy.
    i: usize,
    forward: bool,
    ts: i64,
    value: f64,
    end: i64,
}

impl<'a> Tiler<'a> {
    fn new(pts: &'a [(i64, f64)], dts: &'a [i64], counter: bool, start: i64, end: i64) -> Tiler<'a> {
        let vals = if counter {
            let mut inc = vec![0.0];
            inc.extend(pts.windows(2).map(|w| {
                if w[1].1 >= w[0].1 { w[1].1 - w[0].1 } else { w[1].1 }
            }));
            inc
        } else {
            pts.iter().map(|p| p.1).collect()
        };
        // Keep the capture's phase within the second.
        let ts = start + pts[0].0.rem_euclid(1000);
        Tiler { dts, vals, counter, i: 0, forward: true, ts, value: pts[0].1, end }
    }

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.ts > self.end {
            return None;
        }
        let out = if self.counter {
            self.value += self.vals[self.i];
            (self.ts, self.value)
        } else {
            (self.ts, self.vals[self.i])
        };
        // Step to the next captured point, turning at either end.
        let n = self.vals.len();
        let dt;
        if n == 1 {
            dt = 1000;
        } else if self.forward {
            if self.i + 1 == n {
                self.forward = false;
                self.i -= 1;
                dt = self.dts[self.i];
            } else {
                dt = self.dts[self.i];
                self.i += 1;
            }
        } else if self.i == 0 {
            self.forward = true;
            dt = self.dts[0];
            self.i = 1;
        } else {
            self.i -= 1;
            dt = self.dts[self.i];
        }
        self.ts += dt.max(1);
        Some(out)
    }
}

fn om_value(v: f64, out: &mut String) {
    use std::fmt::Write as _;
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

fn om_series(info: &SeriesInfo) -> String {
    let mut s = info.family.to_string();
    if !info.pairs.is_empty() {
        s.push('{');
        for (i, (k, v)) in info.pairs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(k);
            s.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => s.push_str("\\\\"),
                    '"' => s.push_str("\\\""),
                    '\n' => s.push_str("\\n"),
                    c => s.push(c),
                }
            }
            s.push('"');
        }
        s.push('}');
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn synth(capture: &Path, out: &Path, om: &Path, hours: i64, long: &str, long_hours: i64, shift_h: i64) {
    let (series, pts, _, _) = load(capture);
    let now = vitals::model::now_ms();
    let end = now.div_euclid(HOUR) * HOUR - 1;
    let keep: Vec<usize> = (0..series.len()).filter(|&s| pts[s].len() >= 2).collect();
    let dts: Vec<Vec<i64>> = pts.iter().map(|p| p.windows(2).map(|w| w[1].0 - w[0].0).collect()).collect();
    // The span of each series.
    let span = |s: usize| -> (i64, i64) {
        if hours == 0 {
            (pts[s][0].0 - shift_h * HOUR, pts[s].last().expect("2 points").0 - shift_h * HOUR)
        } else {
            let h = if &*series[s].family == long { long_hours } else { hours };
            (end - h * HOUR + 1, end)
        }
    };
    let tiler = |s: usize| -> Box<dyn Iterator<Item = (i64, f64)> + '_> {
        let (a, b) = span(s);
        if hours == 0 {
            let d = shift_h * HOUR;
            Box::new(pts[s].iter().map(move |p| (p.0 - d, p.1)))
        } else {
            let mut t = Tiler::new(&pts[s], &dts[s], series[s].counter, a, b);
            Box::new(std::iter::from_fn(move || t.next()))
        }
    };
    // OpenMetrics, family by family.
    let mut by_family: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for &s in &keep {
        by_family.entry(&series[s].family).or_default().push(s);
    }
    let f = std::fs::File::create(om).unwrap_or_else(|e| die(format!("{}: {e}", om.display())));
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut om_samples = 0u64;
    let mut line = String::new();
    for (fam, ss) in &by_family {
        writeln!(w, "# TYPE {fam} gauge").expect("write");
        for &s in ss {
            let name = om_series(&series[s]);
            for (ts, v) in tiler(s) {
                line.clear();
                line.push_str(&name);
                line.push(' ');
                om_value(v, &mut line);
                use std::fmt::Write as _;
                let _ = writeln!(line, " {}.{:03}", ts.div_euclid(1000), ts.rem_euclid(1000));
                w.write_all(line.as_bytes()).expect("write");
                om_samples += 1;
            }
        }
    }
    writeln!(w, "# EOF").expect("write");
    w.flush().expect("write");
    drop(w);

    // The vitals store, through its ingest path, in time order.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let written = rt.block_on(async {
        let cfg = HistoryConfig {
            path: out.to_path_buf(),
            flush_interval: Duration::from_millis(200),
            raw_retention: Duration::from_secs(30 * 86_400),
            max_bytes: 16 << 30,
            ..HistoryConfig::default()
        };
        let telemetry = Telemetry::new();
        let events = vitals::events::EventBus::new(16);
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let h = history::start(&cfg, &telemetry, &events, &tracker, shutdown.clone())
            .unwrap_or_else(|e| die(e.to_string()))
            .expect("history is on");
        let fams: Vec<Arc<FamilyMeta>> = series
            .iter()
            .map(|i| {
                FamilyMeta::new(&i.family, if i.counter { MetricKind::Counter } else { MetricKind::Gauge }, "")
            })
            .collect();
        let mut iters: Vec<(usize, std::iter::Peekable<Box<dyn Iterator<Item = (i64, f64)> + '_>>)> =
            keep.iter().map(|&s| (s, tiler(s).peekable())).collect();
        let first = iters.iter_mut().filter_map(|(_, it)| it.peek().map(|p| p.0)).min().unwrap_or(end);
        let mut t = first.div_euclid(60_000) * 60_000;
        let mut sent = 0u64;
        let buffered = || -> f64 {
            telemetry
                .gather()
                .iter()
                .find(|f| f.name() == "vitals_history_buffered_samples")
                .map_or(0.0, |f| f.get_metric()[0].get_gauge().get_value())
        };
        // Ten minutes of every series at a time, below the buffer bound.
        while iters.iter_mut().any(|(_, it)| it.peek().is_some()) {
            let until = t + 600_000;
            let mut batch = Vec::new();
            for (s, it) in iters.iter_mut() {
                while let Some(&(ts, v)) = it.peek() {
                    if ts >= until {
                        break;
                    }
                    it.next();
                    batch.push(Sample { family: fams[*s].clone(), labels: series[*s].labels.clone(), value: v, timestamp_ms: ts });
                }
            }
            sent += batch.len() as u64;
            while buffered() > 200_000.0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            h.tap.send(&batch);
            t = until;
        }
        while buffered() > 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(h);
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        sent
    });
    // Compaction takes at most 512 windows a flush: run the store until
    // every closed window is compacted and rolled up.
    loop {
        let (_, loaded) = disk::open(out).unwrap_or_else(|e| die(e.to_string()));
        let dirty = loaded.dirty.len();
        if dirty == 0 {
            break;
        }
        rt.block_on(async {
            let cfg = HistoryConfig { path: out.to_path_buf(), flush_interval: Duration::from_millis(200), raw_retention: Duration::from_secs(30 * 86_400), max_bytes: 16 << 30, ..HistoryConfig::default() };
            let telemetry = Telemetry::new();
            let events = vitals::events::EventBus::new(16);
            let tracker = TaskTracker::new();
            let shutdown = CancellationToken::new();
            let h = history::start(&cfg, &telemetry, &events, &tracker, shutdown.clone())
                .unwrap_or_else(|e| die(e.to_string()))
                .expect("history is on");
            tokio::time::sleep(Duration::from_millis(400 * (dirty as u64 / 512 + 2))).await;
            drop(h);
            shutdown.cancel();
            tracker.close();
            tracker.wait().await;
        });
    }
    println!("samples_vitals={written} samples_openmetrics={om_samples} series={} end_ms={end}", keep.len());
}

/// Per family: raw samples and the bytes of its values and timestamps,
/// re-encoded one chunk per raw window at pco levels 4, 8 and 12.
fn families(dir: &Path) {
    use pco::ChunkConfig;
    use pco::standalone::simple_compress;
    let (series, pts, _, _) = load(dir);
    let mut by: std::collections::BTreeMap<&str, [u64; 5]> = Default::default();
    for (s, p) in pts.iter().enumerate() {
        let e = by.entry(&series[s].family).or_default();
        e[0] += p.len() as u64;
        let mut i = 0;
        while i < p.len() {
            let w = p[i].0.div_euclid(HOUR);
            let j = p[i..].partition_point(|q| q.0.div_euclid(HOUR) == w) + i;
            let ts: Vec<i64> = p[i..j].iter().map(|q| q.0).collect();
            let vs: Vec<f64> = p[i..j].iter().map(|q| q.1).collect();
            e[1] += simple_compress(&ts, &ChunkConfig::default().with_compression_level(4)).map_or(0, |b| b.len() as u64);
            for (k, lvl) in [(2, 4), (3, 8), (4, 12)] {
                e[k] += simple_compress(&vs, &ChunkConfig::default().with_compression_level(lvl)).map_or(0, |b| b.len() as u64);
            }
            i = j;
        }
    }
    let mut t = [0u64; 5];
    for (f, e) in &by {
        println!("{f} samples={} ts_B/s={:.3} vals_B/s@4={:.3} @8={:.3} @12={:.3}", e[0], e[1] as f64 / e[0] as f64, e[2] as f64 / e[0] as f64, e[3] as f64 / e[0] as f64, e[4] as f64 / e[0] as f64);
        for k in 0..5 {
            t[k] += e[k];
        }
    }
    println!("ALL samples={} ts_B/s={:.3} vals_B/s@4={:.3} @8={:.3} @12={:.3}", t[0], t[1] as f64 / t[0] as f64, t[2] as f64 / t[0] as f64, t[3] as f64 / t[0] as f64, t[4] as f64 / t[0] as f64);
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("count") if a.len() == 3 => count(Path::new(&a[2])),
        Some("families") if a.len() == 3 => families(Path::new(&a[2])),
        Some("synth") if a.len() >= 8 => {
            let n = |i: usize| a[i].parse::<i64>().unwrap_or_else(|_| die(format!("not a number: {}", a[i])));
            synth(
                Path::new(&a[2]),
                Path::new(&a[3]),
                Path::new(&a[4]),
                n(5),
                &a[6],
                n(7),
                if a.len() > 8 { n(8) } else { 0 },
            )
        }
        _ => die("usage: history_bench count DIR | synth CAPTURE OUT OPENMETRICS HOURS LONG_SERIES LONG_HOURS [SHIFT_H]".into()),
    }
}
