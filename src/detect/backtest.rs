//! `vitals backtest`: replay CSV files (`timestamp,value`) through the same
//! pipeline stages and ensemble as the live exporter, as fast as the CPU
//! allows, and score the result against labelled anomaly windows (NAB).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::nab::{self, PROFILES, Totals, Window};
use super::{Ensemble, threshold::ThresholdSpec};
use crate::config::Config;
use crate::model::{FamilyMeta, Labels, MetricKind, Sample};
use crate::pipeline::{Stage, Verdict, filters::Filters, validate::Validate};

/// Why a backtest could not run.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(
        "{path}: not valid labels JSON (an object of file name to a list of [start, end] windows): {reason}"
    )]
    Labels { path: String, reason: String },
    #[error("no CSV files found under the given paths")]
    NoFiles,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BacktestError + '_ {
    move |error| BacktestError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// What to replay and where to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// CSV files or folders of them (walked recursively).
    pub paths: Vec<PathBuf>,
    /// NAB-style labels: `{"category/file.csv": [["start", "end"], ...]}`.
    pub labels: Option<PathBuf>,
    /// Write NAB's results layout here.
    pub nab_results: Option<PathBuf>,
    /// Write per-row `timestamp,value,anomaly_score,flag` files here.
    pub output: Option<PathBuf>,
    pub config: Config,
}

/// A row that was skipped or needs attention.
#[derive(Debug, Clone, PartialEq)]
pub struct RowIssue {
    /// 1-based line number in the file.
    pub line: usize,
    pub reason: String,
}

/// One replayed row.
#[derive(Debug, Clone)]
pub struct Row {
    pub timestamp: String,
    pub ts_ms: i64,
    pub value: f64,
    pub score: f64,
    /// An anomaly event starts here.
    pub flag: bool,
}

/// The replay of one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    /// Key in the labels file (`category/file.csv`).
    pub key: String,
    pub rows: Vec<Row>,
    pub issues: Vec<RowIssue>,
    /// Labelled windows as rows, when the labels file has the file.
    pub windows: Option<Vec<Window>>,
}

/// NAB results for one profile.
#[derive(Debug, Clone, Copy)]
pub struct ProfileResult {
    pub profile: nab::Profile,
    /// With the ensemble's own threshold (its events).
    pub fixed: Totals,
    /// With the threshold NAB's optimiser would pick on the same scores.
    pub optimised: (f64, f64),
}

/// Everything a backtest produced.
#[derive(Debug, Clone)]
pub struct Report {
    pub files: Vec<FileReport>,
    pub nab: Option<Vec<ProfileResult>>,
    pub elapsed: Duration,
    pub threshold: f64,
}

/// Parse `YYYY-MM-DD[ T]HH:MM[:SS[.frac]]` with an offset (`Z`, `+01:00`)
/// or without one (UTC), with `jiff` (dates that do not exist, such as
/// 2020-02-31, are refused), or a number of seconds (or milliseconds, when
/// above 1e11) since the Unix epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim().trim_matches('"');
    if let Ok(n) = s.parse::<f64>() {
        if !n.is_finite() {
            return None;
        }
        return Some(if n.abs() > 1e11 {
            n as i64
        } else {
            (n * 1000.0) as i64
        });
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Some(t.as_millisecond());
    }
    let civil = s.parse::<jiff::civil::DateTime>().ok()?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp().as_millisecond())
}

/// One parsed CSV row: line number, timestamp as written, timestamp (ms), value.
pub type ParsedRow = (usize, String, i64, f64);

/// Parsed rows of a CSV text: the header picks the `timestamp` and `value`
/// columns (the first two when they are not named).
pub fn parse_csv(text: &str) -> (Vec<ParsedRow>, Vec<RowIssue>) {
    let mut rows = Vec::new();
    let mut issues = Vec::new();
    let mut cols = (0usize, 1usize);
    let mut header_done = false;
    // The csv crate: quoted fields (`"4,5"` is one field), blank lines and
    // `#` comment lines skipped, rows of any length.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    // Line numbers of the file (the csv crate does not count skipped
    // comment lines): newlines before a record's first byte, counted on.
    let (mut counted_to, mut newlines) = (0usize, 0usize);
    let mut line_at = |byte: usize| {
        // A record's position is where reading it began: before the
        // comment and blank lines the reader skipped.
        let mut byte = byte.min(text.len());
        while let Some(rest) = text.get(byte..).filter(|r| !r.is_empty()) {
            let end = rest.find('\n').map_or(rest.len(), |i| i + 1);
            let l = rest[..end].trim();
            if !(l.is_empty() || rest.starts_with('#')) {
                break;
            }
            byte += end;
        }
        if byte > counted_to {
            newlines += memchr::memchr_iter(b'\n', &text.as_bytes()[counted_to..byte]).count();
            counted_to = byte;
        }
        newlines + 1
    };
    loop {
        let at = reader.position().byte() as usize;
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) if reader.position().byte() as usize == at => break,
            Err(error) => {
                let byte = error.position().map_or(at, |p| p.byte() as usize);
                issues.push(RowIssue {
                    line: line_at(byte),
                    reason: format!("unreadable CSV: {error}"),
                });
                continue;
            }
        }
        let line = line_at(record.position().map_or(at, |p| p.byte() as usize));
        let fields: Vec<&str> = record.iter().collect();
        if fields.iter().all(|f| f.is_empty()) {
            continue;
        }
        if !header_done {
            header_done = true;
            let find = |n: &[&str]| {
                fields
                    .iter()
                    .position(|f| n.contains(&f.to_ascii_lowercase().as_str()))
            };
            let t = find(&["timestamp", "time", "ts", "date"]);
            let v = find(&["value", "val", "y"]);
            if t.is_some() || v.is_some() || parse_timestamp(fields[0]).is_none() {
                cols = (t.unwrap_or(0), v.unwrap_or(1));
                continue;
            }
        }
        let (Some(ts), Some(val)) = (fields.get(cols.0), fields.get(cols.1)) else {
            issues.push(RowIssue {
                line,
                reason: format!("expected at least {} columns", cols.0.max(cols.1) + 1),
            });
            continue;
        };
        let Some(ts_ms) = parse_timestamp(ts) else {
            issues.push(RowIssue {
                line,
                reason: format!("unparseable timestamp {ts:?}"),
            });
            continue;
        };
        let Ok(value) = val.parse::<f64>() else {
            issues.push(RowIssue {
                line,
                reason: format!("unparseable value {val:?}"),
            });
            continue;
        };
        rows.push((line, ts.to_string(), ts_ms, value));
    }
    (rows, issues)
}

/// Replay parsed rows through the pipeline stages and a fresh ensemble.
pub fn replay(
    name: &str,
    parsed: Vec<ParsedRow>,
    cfg: &Config,
    issues: &mut Vec<RowIssue>,
) -> Vec<Row> {
    let family = FamilyMeta::new(name, MetricKind::Gauge, "backtest series");
    let labels = Labels::empty();
    let mut stages: Vec<Box<dyn Stage>> = vec![
        Box::new(Validate),
        Box::new(Filters::new(cfg.pipeline.clone())),
    ];
    let detect_on =
        cfg.detect.enabled && Filters::new(cfg.pipeline.clone()).detect_enabled(name, &labels);
    let statics: Vec<ThresholdSpec> = cfg
        .detect
        .thresholds
        .iter()
        .filter(|t| t.matches(name, &labels))
        .map(|t| t.spec())
        .collect();
    let mut ensemble = Ensemble::new(&cfg.detect, &statics);
    let mut out = Vec::with_capacity(parsed.len());
    let mut last_ts: Option<i64> = None;
    let mut typical: Option<i64> = None;
    let mut sample = Sample {
        family,
        labels,
        value: 0.0,
        timestamp_ms: 0,
    };
    for (line, ts_text, ts, value) in parsed {
        if let Some(prev) = last_ts {
            let dt = ts - prev;
            if dt < 0 {
                issues.push(RowIssue {
                    line,
                    reason: "timestamp earlier than the previous row; row skipped".into(),
                });
                continue;
            }
            if dt == 0 {
                // Kept (clock changes repeat timestamps), but worth a look.
                issues.push(RowIssue {
                    line,
                    reason: "duplicate timestamp".into(),
                });
            }
            match typical {
                Some(t) if t > 0 && dt > 50 * t => issues.push(RowIssue {
                    line,
                    reason: format!("gap of {}s before this row", dt / 1000),
                }),
                _ => {}
            }
            if dt > 0 {
                typical = Some(typical.map_or(dt, |t| t.min(dt)));
            }
        }
        last_ts = Some(ts);
        sample.value = value;
        sample.timestamp_ms = ts;
        let mut dropped = None;
        for s in stages.iter_mut() {
            if let Verdict::Drop(reason) = s.process(&mut sample) {
                dropped = Some(reason);
                break;
            }
        }
        let (score, flag) = match dropped {
            Some(reason) => {
                issues.push(RowIssue {
                    line,
                    reason: format!("value {value} dropped by the pipeline ({reason})"),
                });
                (0.0, false)
            }
            None if detect_on => {
                let o = ensemble.step(ts, sample.value);
                (o.score, o.event)
            }
            None => (0.0, false),
        };
        out.push(Row {
            timestamp: ts_text,
            ts_ms: ts,
            value,
            score,
            flag,
        });
    }
    out
}

/// Every `.csv` file under `paths`, with the key it has in a labels file
/// (its path relative to the folder given, `/`-separated).
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, BacktestError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                    let path = entry.map_err(io(&dir))?.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path
                        .extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
                    {
                        let rel = path.strip_prefix(p).unwrap_or(&path);
                        let key = rel
                            .components()
                            .map(|c| c.as_os_str().to_string_lossy())
                            .collect::<Vec<_>>()
                            .join("/");
                        out.push((path, key));
                    }
                }
            }
        } else {
            let key = p
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            out.push((p.clone(), key));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Labels file: file key → windows as (start, end) ms.
pub fn load_labels(path: &Path) -> Result<HashMap<String, Vec<(i64, i64)>>, BacktestError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let bad = |reason: String| BacktestError::Labels {
        path: path.display().to_string(),
        reason,
    };
    let raw: HashMap<String, Vec<Vec<String>>> =
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut out = HashMap::new();
    for (k, windows) in raw {
        let mut ws = Vec::new();
        for w in windows {
            let (Some(a), Some(b)) = (
                w.first().and_then(|s| parse_timestamp(s)),
                w.get(1).and_then(|s| parse_timestamp(s)),
            ) else {
                return Err(bad(format!("window {w:?} of {k:?} is not two timestamps")));
            };
            ws.push((a, b));
        }
        out.insert(k, ws);
    }
    Ok(out)
}

/// Find the labels of a file: by its key, the last two path parts, or its name.
fn lookup<'a>(
    labels: &'a HashMap<String, Vec<(i64, i64)>>,
    key: &str,
) -> Option<&'a Vec<(i64, i64)>> {
    if let Some(w) = labels.get(key) {
        return Some(w);
    }
    let parts: Vec<&str> = key.rsplit('/').take(2).collect();
    if parts.len() == 2
        && let Some(w) = labels.get(&format!("{}/{}", parts[1], parts[0]))
    {
        return Some(w);
    }
    labels
        .iter()
        .find(|(k, _)| k.rsplit('/').next() == parts.first().copied())
        .map(|(_, w)| w)
}

fn run_file(
    path: &Path,
    key: &str,
    cfg: &Config,
    labels: Option<&HashMap<String, Vec<(i64, i64)>>>,
) -> FileReport {
    let mut issues = Vec::new();
    let rows = match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let (parsed, mut parse_issues) = parse_csv(&text);
            issues.append(&mut parse_issues);
            let name = path
                .file_stem()
                .map_or_else(|| "series".into(), |s| s.to_string_lossy().into_owned());
            let rows = replay(&name, parsed, cfg, &mut issues);
            issues.sort_by_key(|i| i.line);
            rows
        }
        Err(e) => {
            issues.push(RowIssue {
                line: 0,
                reason: format!("cannot read the file: {e}"),
            });
            Vec::new()
        }
    };
    let windows = labels.and_then(|l| lookup(l, key)).map(|w| {
        let ts: Vec<i64> = rows.iter().map(|r| r.ts_ms).collect();
        nab::windows_to_rows(&ts, w)
    });
    FileReport {
        path: path.to_path_buf(),
        key: key.to_string(),
        rows,
        issues,
        windows,
    }
}

/// Run the backtest.
pub fn run(opts: &Options) -> Result<Report, BacktestError> {
    let started = Instant::now();
    let labels = opts.labels.as_deref().map(load_labels).transpose()?;
    let files = collect_files(&opts.paths)?;
    if files.is_empty() {
        return Err(BacktestError::NoFiles);
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let files = Arc::new(files);
    let mut reports: Vec<(usize, FileReport)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((path, key)) = files.get(i) else {
                            break;
                        };
                        done.push((i, run_file(path, key, &opts.config, labels.as_ref())));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    reports.sort_by_key(|(i, _)| *i);
    let files: Vec<FileReport> = reports.into_iter().map(|(_, r)| r).collect();
    let nab = labels.as_ref().map(|_| score(&files));
    let report = Report {
        files,
        nab,
        elapsed: started.elapsed(),
        threshold: opts.config.detect.threshold(),
    };
    if let Some(dir) = &opts.nab_results {
        write_nab_results(dir, &report)?;
    }
    if let Some(dir) = &opts.output {
        write_rows(dir, &report)?;
    }
    Ok(report)
}

/// NAB scores of the labelled files, per profile.
pub fn score(files: &[FileReport]) -> Vec<ProfileResult> {
    let labelled: Vec<(&FileReport, &Vec<Window>)> = files
        .iter()
        .filter_map(|f| f.windows.as_ref().map(|w| (f, w)))
        .collect();
    let scores: Vec<Vec<f64>> = labelled
        .iter()
        .map(|(f, _)| f.rows.iter().map(|r| r.score).collect())
        .collect();
    PROFILES
        .iter()
        .map(|p| {
            let mut fixed = Totals::default();
            for (f, w) in &labelled {
                let det: Vec<bool> = f.rows.iter().map(|r| r.flag).collect();
                fixed.add(&nab::score_file(&det, w, p));
            }
            let sweep: Vec<nab::SweepFile<'_>> = labelled
                .iter()
                .zip(&scores)
                .map(|((_, w), s)| nab::SweepFile {
                    scores: s,
                    windows: w,
                })
                .collect();
            ProfileResult {
                profile: *p,
                fixed,
                optimised: nab::best_threshold(&sweep, p),
            }
        })
        .collect()
}

fn category_and_name(f: &FileReport) -> (String, String) {
    let mut parts = f.key.rsplit('/');
    let name = parts.next().unwrap_or("series.csv").to_string();
    let cat = parts.next().map_or_else(
        || {
            f.path
                .parent()
                .and_then(|p| p.file_name())
                .map_or_else(|| "data".to_string(), |n| n.to_string_lossy().into_owned())
        },
        str::to_string,
    );
    (cat, name)
}

/// `<dir>/vitals/<category>/vitals_<file>.csv` with `timestamp,value,anomaly_score,label`.
pub fn write_nab_results(dir: &Path, report: &Report) -> Result<(), BacktestError> {
    for f in &report.files {
        let (cat, name) = category_and_name(f);
        let folder = dir.join("vitals").join(&cat);
        std::fs::create_dir_all(&folder).map_err(io(&folder))?;
        let path = folder.join(format!("vitals_{name}"));
        let mut text = String::with_capacity(f.rows.len() * 48);
        text.push_str("timestamp,value,anomaly_score,label\n");
        let windows = f.windows.as_deref().unwrap_or(&[]);
        for (i, r) in f.rows.iter().enumerate() {
            let label = windows.iter().any(|w| w.start <= i && i <= w.end) as u8;
            let _ = writeln!(text, "{},{},{},{label}", r.timestamp, r.value, r.score);
        }
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(())
}

/// `<dir>/<category>/<file>.csv` with `timestamp,value,anomaly_score,flag`.
pub fn write_rows(dir: &Path, report: &Report) -> Result<(), BacktestError> {
    for f in &report.files {
        let (cat, name) = category_and_name(f);
        let folder = dir.join(&cat);
        std::fs::create_dir_all(&folder).map_err(io(&folder))?;
        let path = folder.join(&name);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io(&path))?);
        let mut w = || -> std::io::Result<()> {
            writeln!(file, "timestamp,value,anomaly_score,flag")?;
            for r in &f.rows {
                writeln!(
                    file,
                    "{},{},{},{}",
                    r.timestamp, r.value, r.score, r.flag as u8
                )?;
            }
            file.flush()
        };
        w().map_err(io(&path))?;
    }
    Ok(())
}

impl Report {
    pub fn rows(&self) -> usize {
        self.files.iter().map(|f| f.rows.len()).sum()
    }

    /// The summary printed by `vitals backtest`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let events: usize = self
            .files
            .iter()
            .map(|f| f.rows.iter().filter(|r| r.flag).count())
            .sum();
        let _ = writeln!(
            s,
            "files: {}  rows: {}  anomaly events: {}  threshold: {:.3}  time: {:.2}s",
            self.files.len(),
            self.rows(),
            events,
            self.threshold,
            self.elapsed.as_secs_f64()
        );
        if let Some(nab) = &self.nab {
            let labelled = self.files.iter().filter(|f| f.windows.is_some()).count();
            let _ = writeln!(s, "NAB ({labelled} labelled files):");
            let _ = writeln!(
                s,
                "  {:<20} {:>9} {:>10} {:>7} {:>5} {:>5} {:>5} {:>9} {:>17}",
                "profile",
                "score",
                "precision",
                "recall",
                "TP",
                "FP",
                "FN",
                "raw",
                "optimised (thr)"
            );
            for p in nab {
                let _ = writeln!(
                    s,
                    "  {:<20} {:>9.2} {:>10.3} {:>7.3} {:>5} {:>5} {:>5} {:>9.2} {:>8.2} ({:.3})",
                    p.profile.name,
                    p.fixed.normalised(),
                    p.fixed.precision(),
                    p.fixed.recall(),
                    p.fixed.tp,
                    p.fixed.fp,
                    p.fixed.fn_,
                    p.fixed.raw,
                    p.optimised.1,
                    p.optimised.0
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_nab_iso_and_epoch_forms() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp("2014-04-10 16:15:00.000000"),
            Some(1_397_146_500_000)
        );
        assert_eq!(
            parse_timestamp("2014-04-10T16:15:00Z"),
            Some(1_397_146_500_000)
        );
        assert_eq!(parse_timestamp("2014-04-10 16:15"), Some(1_397_146_500_000));
        assert_eq!(parse_timestamp("1397146500"), Some(1_397_146_500_000));
        assert_eq!(parse_timestamp("1397146500000"), Some(1_397_146_500_000));
        assert_eq!(parse_timestamp("2014-13-10 16:15:00"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("NaN"), None);
        // Days that do not exist (the hand-written parser took them).
        assert_eq!(parse_timestamp("2020-02-31 00:00:00"), None);
        assert_eq!(parse_timestamp("2020-02-31T00:00:00Z"), None);
        assert_eq!(
            parse_timestamp("2014-04-10T17:15:00+01:00"),
            Some(1_397_146_500_000)
        );
    }

    #[test]
    fn quoted_csv_fields_are_whole_values() {
        // `"4,5"` is one field (it was read as 4); `"4.5"` is 4.5.
        let text = "timestamp,value\n\
                    \"2020-01-01 00:00:00\",\"4.5\"\n\
                    2020-01-01 00:01:00,\"4,5\"\n\
                    # a comment\n\
                    \n\
                    2020-01-01 00:02:00 , 6 \n";
        let (parsed, issues) = parse_csv(text);
        let values: Vec<(usize, f64)> = parsed.iter().map(|r| (r.0, r.3)).collect();
        assert_eq!(values, vec![(2, 4.5), (6, 6.0)]);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].line, 3);
        assert!(issues[0].reason.contains("\"4,5\""), "{issues:?}");
    }

    #[test]
    fn bad_rows_are_reported_with_their_line_numbers() {
        let text = "timestamp,value\n\
                    2020-01-01 00:00:00,1\n\
                    garbage\n\
                    2020-01-01 00:01:00,abc\n\
                    2020-01-01 00:02:00,NaN\n\
                    2020-01-01 00:02:00,2\n\
                    2020-01-01 00:01:30,2\n\
                    2020-01-01 09:00:00,1e308\n\
                    2020-01-01 09:01:00,-1e308\n";
        let (parsed, mut issues) = parse_csv(text);
        assert_eq!(
            issues.iter().map(|i| i.line).collect::<Vec<_>>(),
            vec![3, 4]
        );
        let rows = replay("x", parsed, &Config::default(), &mut issues);
        let lines: Vec<usize> = issues.iter().map(|i| i.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8], "{issues:?}");
        assert!(issues[2].reason.contains("nan"));
        assert!(issues[3].reason.contains("duplicate"));
        assert!(issues[4].reason.contains("earlier"));
        assert!(issues[5].reason.contains("gap"));
        // Every row but the unparseable and the out-of-order ones is replayed.
        assert_eq!(rows.len(), 5);
        assert!(rows.iter().all(|r| r.score.is_finite()));
    }

    #[test]
    fn single_point_and_constant_series_do_not_fail() {
        let mut issues = Vec::new();
        let rows = replay(
            "one",
            vec![(2, "0".into(), 0, 5.0)],
            &Config::default(),
            &mut issues,
        );
        assert_eq!(rows.len(), 1);
        let constant = (0..3000)
            .map(|i| (i + 2, i.to_string(), i as i64 * 1000, 7.0))
            .collect();
        let rows = replay("const", constant, &Config::default(), &mut issues);
        assert!(rows.iter().all(|r| !r.flag && r.score.is_finite()));
        assert!(issues.is_empty());
    }
}
