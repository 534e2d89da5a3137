//! `vitals backtest`: replay CSV files (`timestamp,value`) through the same
//! pipeline stages and ensemble as the live exporter, as fast as the CPU
//! allows, and score the result against labelled anomaly windows (NAB).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ensemble::Alarm;
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
    #[error(
        "{path}: not valid folds JSON (an object with \"folds\": name to a list of file keys): {reason}"
    )]
    Folds { path: String, reason: String },
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
    /// Folds of the labelled files (`{"folds": {"a": [keys], ...}}`): the
    /// settings are chosen on all folds but one and scored on that one.
    pub folds: Option<PathBuf>,
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
    /// The ensemble score before the threshold cap, for threshold sweeps.
    pub raw: f64,
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
    /// Out-of-fold scores, with `--folds`.
    pub cross: Option<Vec<CrossFold>>,
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
        return Some(if n.abs() > crate::payload::time::MS_THRESHOLD {
            n as i64
        } else {
            (n * 1000.0) as i64
        });
    }
    if let Some(ms) = crate::payload::time::parse_rfc3339(s) {
        return Some(ms);
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
    // The same gate as a live series of this (unknown) family.
    let mut gate = super::gate::Gate::new(cfg.detect.effect(name, MetricKind::Gauge));
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
                // Kept and scored in arrival order, as the live exporter
                // would see it: NAB wants one result row per input row.
                issues.push(RowIssue {
                    line,
                    reason: "timestamp earlier than the previous row; scored in arrival order"
                        .into(),
                });
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
        let (score, raw, flag) = match dropped {
            Some(reason) => {
                issues.push(RowIssue {
                    line,
                    reason: format!("value {value} dropped by the pipeline ({reason})"),
                });
                (0.0, 0.0, false)
            }
            None if detect_on => {
                let v = sample.value;
                let o = ensemble.step_gated(ts, v, |raw, t| gate.apply(v, raw, t));
                (o.score, o.raw, o.event)
            }
            None => (0.0, 0.0, false),
        };
        out.push(Row {
            timestamp: ts_text,
            ts_ms: ts,
            value,
            score,
            raw,
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
    let cross = match (&opts.folds, &labels) {
        (Some(path), Some(_)) => Some(cross_fold(&files, &load_folds(path)?)),
        (Some(path), None) => {
            return Err(BacktestError::Folds {
                path: path.display().to_string(),
                reason: "folds need --labels".into(),
            });
        }
        _ => None,
    };
    let report = Report {
        files,
        nab,
        cross,
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

/// Folds file: fold name → file keys, in name order.
pub fn load_folds(path: &Path) -> Result<Vec<(String, Vec<String>)>, BacktestError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        folds: std::collections::BTreeMap<String, Vec<String>>,
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let raw: Raw = serde_json::from_str(&text).map_err(|e| BacktestError::Folds {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if raw.folds.len() < 2 {
        return Err(BacktestError::Folds {
            path: path.display().to_string(),
            reason: "at least two folds are needed".into(),
        });
    }
    Ok(raw.folds.into_iter().collect())
}

/// The settings tuned on the training folds: the ensemble threshold and
/// the suppression period (both act on the ensemble's score stream, so a
/// candidate is replayed without re-running the detectors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Setting {
    pub threshold: f64,
    pub suppress: u32,
}

impl Setting {
    /// The `[detect] sensitivity` giving this threshold.
    pub fn sensitivity(&self) -> f64 {
        0.5 * self.threshold.ln() / super::ensemble::DEFAULT_THRESHOLD.ln()
    }
}

/// Candidate thresholds (0.02..=1 by 0.01) and suppression periods.
fn candidates() -> Vec<Setting> {
    let mut out = Vec::new();
    for suppress in [40, 80, 160] {
        for t in 2..=100 {
            out.push(Setting {
                threshold: t as f64 / 100.0,
                suppress,
            });
        }
    }
    out
}

/// The events a setting gives on one file's raw ensemble scores.
pub fn events_for(raw: &[f64], s: Setting) -> Vec<bool> {
    let mut alarm = Alarm::new(s.threshold, s.suppress);
    raw.iter().map(|r| alarm.decide(*r).1).collect()
}

fn totals(files: &[(&[f64], &[Window])], s: Setting, p: &nab::Profile) -> Totals {
    let mut t = Totals::default();
    for (raw, w) in files {
        t.add(&nab::score_file(&events_for(raw, s), w, p));
    }
    t
}

/// One held-out fold under one profile.
#[derive(Debug, Clone)]
pub struct HeldOut {
    /// The fold scored.
    pub fold: String,
    /// Chosen on the other folds only.
    pub setting: Setting,
    /// The score on the folds it was chosen on (in-sample for them).
    pub train: f64,
    /// The score on the held-out fold.
    pub test: Totals,
}

/// Out-of-fold results for one profile.
#[derive(Debug, Clone)]
pub struct CrossFold {
    pub profile: nab::Profile,
    pub folds: Vec<HeldOut>,
    /// Every held-out fold's totals together: each file scored with the
    /// setting chosen without it.
    pub combined: Totals,
    /// For comparison, in sample: the best setting chosen on all the
    /// folds' files and its score on those same files.
    pub in_sample: (Setting, f64),
}

/// For each fold and profile: choose the setting with the best score on
/// the other folds, then score the fold with it. Files of no fold are
/// left out; the labelled files only are used.
pub fn cross_fold(files: &[FileReport], folds: &[(String, Vec<String>)]) -> Vec<CrossFold> {
    let fold_of = |f: &FileReport| {
        folds.iter().position(|(_, keys)| {
            keys.iter()
                .any(|k| k == &f.key || f.key.ends_with(&format!("/{k}")))
        })
    };
    let raws: Vec<(Option<usize>, Vec<f64>, &[Window])> = files
        .iter()
        .filter_map(|f| {
            let w = f.windows.as_deref()?;
            Some((fold_of(f), f.rows.iter().map(|r| r.raw).collect(), w))
        })
        .collect();
    let grid = candidates();
    PROFILES
        .iter()
        .map(|p| {
            let mut held = Vec::new();
            let mut combined = Totals::default();
            for (i, (name, _)) in folds.iter().enumerate() {
                let pick = |want_test: bool| -> Vec<(&[f64], &[Window])> {
                    raws.iter()
                        .filter(|(f, _, _)| f.is_some_and(|f| (f == i) == want_test))
                        .map(|(_, r, w)| (r.as_slice(), *w))
                        .collect()
                };
                let (train, test) = (pick(false), pick(true));
                // Best on the training folds; ties go to the higher
                // threshold (fewer alarms).
                let mut best = (grid[0], f64::NEG_INFINITY);
                for s in &grid {
                    let n = totals(&train, *s, p).normalised();
                    if n > best.1 || (n == best.1 && s.threshold > best.0.threshold) {
                        best = (*s, n);
                    }
                }
                let t = totals(&test, best.0, p);
                combined.raw += t.raw;
                combined.null += t.null;
                combined.perfect += t.perfect;
                combined.tp += t.tp;
                combined.fp += t.fp;
                combined.fn_ += t.fn_;
                combined.in_window += t.in_window;
                held.push(HeldOut {
                    fold: name.clone(),
                    setting: best.0,
                    train: best.1,
                    test: t,
                });
            }
            let all: Vec<(&[f64], &[Window])> = raws
                .iter()
                .filter(|(f, _, _)| f.is_some())
                .map(|(_, r, w)| (r.as_slice(), *w))
                .collect();
            let mut in_sample = (grid[0], f64::NEG_INFINITY);
            for s in &grid {
                let n = totals(&all, *s, p).normalised();
                if n > in_sample.1 || (n == in_sample.1 && s.threshold > in_sample.0.threshold) {
                    in_sample = (*s, n);
                }
            }
            CrossFold {
                profile: *p,
                folds: held,
                combined,
                in_sample,
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
            let what = if self.cross.is_some() {
                "in sample: the default settings were tuned on these files"
            } else {
                "fixed settings"
            };
            let _ = writeln!(s, "NAB ({labelled} labelled files, {what}):");
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
        if let Some(cross) = &self.cross {
            let _ = writeln!(
                s,
                "NAB out of fold (threshold and suppression chosen per profile on the other folds, scored on the fold):"
            );
            let _ = writeln!(
                s,
                "  {:<20} {:>9} {:>5} {:>5} {:>5} {:>21}   per fold: score (threshold, suppress; score where chosen)",
                "profile", "score", "TP", "FP", "FN", "in sample (thr, sup)"
            );
            for c in cross {
                let mut line = format!(
                    "  {:<20} {:>9.2} {:>5} {:>5} {:>5} {:>8.2} ({:.2}, {:>3})  ",
                    c.profile.name,
                    c.combined.normalised(),
                    c.combined.tp,
                    c.combined.fp,
                    c.combined.fn_,
                    c.in_sample.1,
                    c.in_sample.0.threshold,
                    c.in_sample.0.suppress
                );
                for h in &c.folds {
                    let _ = write!(
                        line,
                        " {}: {:.2} ({:.2}, {}; {:.2})",
                        h.fold,
                        h.test.normalised(),
                        h.setting.threshold,
                        h.setting.suppress,
                        h.train
                    );
                }
                let _ = writeln!(s, "{line}");
            }
        }
        s
    }

    /// Files that could not be read or gave no row.
    pub fn empty_files(&self) -> Vec<&FileReport> {
        self.files.iter().filter(|f| f.rows.is_empty()).collect()
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
        // Every parsed row is replayed, the out-of-order one included.
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r.score.is_finite()));
    }

    #[test]
    fn a_clock_that_steps_back_keeps_one_row_per_input_row_in_order() {
        // Hourly rows; the clock steps back an hour at row 300 (as one NAB
        // file does at a daylight-saving change).
        let mut text = String::from("timestamp,value\n");
        for i in 0..600i64 {
            let t = if i >= 300 { i - 2 } else { i };
            let (d, h) = (t / 24, t % 24);
            text.push_str(&format!("2024-01-{:02} {h:02}:00:00,{}\n", 1 + d, i % 7));
        }
        let (parsed, mut issues) = parse_csv(&text);
        let rows = replay("x", parsed, &Config::default(), &mut issues);
        assert_eq!(rows.len(), 600);
        let values: Vec<f64> = rows.iter().map(|r| r.value).collect();
        let expected: Vec<f64> = (0..600).map(|i| (i % 7) as f64).collect();
        assert_eq!(values, expected, "input order");
        assert!(
            issues
                .iter()
                .any(|i| i.line == 302 && i.reason.contains("earlier"))
        );
        // The NAB results file has a row for every input row too.
        let dir = tempfile::tempdir().unwrap();
        let file = FileReport {
            path: dir.path().join("cat/x.csv"),
            key: "cat/x.csv".into(),
            windows: Some(nab::windows_to_rows(
                &rows.iter().map(|r| r.ts_ms).collect::<Vec<_>>(),
                &[(rows[290].ts_ms, rows[310].ts_ms)],
            )),
            rows,
            issues,
        };
        let report = Report {
            files: vec![file],
            nab: None,
            cross: None,
            elapsed: Duration::ZERO,
            threshold: 0.2,
        };
        write_nab_results(dir.path(), &report).unwrap();
        let out = std::fs::read_to_string(dir.path().join("vitals/cat/vitals_x.csv")).unwrap();
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(lines.len(), 600);
        assert!(
            lines[300].starts_with("2024-01-13 10:00:00,"),
            "{}",
            lines[300]
        );
        assert_eq!(lines.iter().filter(|l| l.ends_with(",1")).count(), 21);
    }

    #[test]
    fn out_of_fold_settings_come_from_the_other_fold_only() {
        // Fold a wants a low threshold (its anomaly scores 0.3), fold b has a
        // false alarm at 0.5 and its anomaly at 0.9: chosen on a, b is scored
        // with a threshold that fires on its false alarm; chosen on b, a's
        // anomaly is missed.
        let file = |key: &str, fp: Option<f64>, tp: f64| {
            let mut rows: Vec<Row> = (0..1000)
                .map(|i| Row {
                    timestamp: i.to_string(),
                    ts_ms: i,
                    value: 0.0,
                    score: 0.0,
                    raw: 0.05,
                    flag: false,
                })
                .collect();
            if let Some(f) = fp {
                rows[300].raw = f;
            }
            rows[500].raw = tp;
            FileReport {
                path: PathBuf::from(key),
                key: key.into(),
                rows,
                issues: Vec::new(),
                windows: Some(vec![Window {
                    start: 500,
                    end: 509,
                }]),
            }
        };
        let files = vec![file("c/a.csv", None, 0.3), file("c/b.csv", Some(0.5), 0.9)];
        let folds = vec![
            ("a".to_string(), vec!["c/a.csv".to_string()]),
            ("b".to_string(), vec!["c/b.csv".to_string()]),
        ];
        let cross = cross_fold(&files, &folds);
        let std = &cross[0];
        let (a, b) = (&std.folds[0], &std.folds[1]);
        // Scoring a: chosen on b, the highest threshold that still catches
        // b's anomaly and skips its false alarm (0.51..=0.9: ties go high).
        assert_eq!(a.setting.threshold, 0.9);
        assert_eq!((a.test.tp, a.test.fn_), (0, 1));
        // Scoring b: chosen on a (anything up to 0.3 catches a's anomaly).
        assert_eq!(b.setting.threshold, 0.3);
        assert_eq!((b.test.tp, b.test.fp), (1, 1));
        assert!(a.train > 99.0 && b.train > 99.0);
        assert!(std.combined.normalised() < 60.0);
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
