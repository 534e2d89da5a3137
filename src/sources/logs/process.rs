//! Processing: complete lines parsed (regex captures, JSON, CSV) and applied
//! to the metric states and event rules of the source. No files here.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{LogFormat, LogsConfig};
use crate::events::Event;
use crate::model::{FamilyMeta, Labels, MetricKind, Sample};
use crate::payload::aggregate::{MetricState, Skip};
use crate::payload::record::{CapturesRecord, CsvRecord, JsonRecord, split_csv};
use crate::payload::rules::RuleSet;

/// A regex and the metrics that use it.
struct RegexGroup {
    regex: regex::Regex,
    locations: regex::CaptureLocations,
    names: FxHashMap<Box<str>, usize>,
    metrics: Vec<usize>,
}

/// Line counts by outcome (`vitals_log_lines_total`).
#[derive(Default)]
pub(super) struct LineCounts {
    matched: u64,
    unmatched: u64,
    malformed: u64,
    pub(super) too_long: u64,
    pub(super) dirty: bool,
}

/// Parses lines and applies them to the metric states and rules.
pub(super) struct Processor {
    source: Arc<str>,
    format: LogFormat,
    groups: Vec<RegexGroup>,
    /// Index of the source-level regex in `groups` (rules see its captures).
    rule_group: Option<usize>,
    metrics: Vec<MetricState>,
    rules: RuleSet,
    pub(super) columns: Option<Vec<Box<str>>>,
    pub(super) counts: LineCounts,
    pub(super) events: Vec<Event>,
    pub(super) telemetry: Arc<crate::telemetry::Telemetry>,
    lines_family: Arc<FamilyMeta>,
    files_family: Arc<FamilyMeta>,
    files_reported: Option<usize>,
}

impl Processor {
    pub(super) fn new(cfg: &LogsConfig, telemetry: Arc<crate::telemetry::Telemetry>) -> Self {
        let mut groups: Vec<RegexGroup> = Vec::new();
        fn group_of(groups: &mut Vec<RegexGroup>, re: &regex::Regex) -> usize {
            if let Some(i) = groups.iter().position(|g| g.regex.as_str() == re.as_str()) {
                return i;
            }
            let names = re
                .capture_names()
                .enumerate()
                .filter_map(|(i, n)| n.map(|n| (Box::from(n), i)))
                .collect();
            groups.push(RegexGroup {
                regex: re.clone(),
                locations: re.capture_locations(),
                names,
                metrics: Vec::new(),
            });
            groups.len() - 1
        }
        let mut rule_group = None;
        if cfg.format == LogFormat::Regex {
            if let Some(re) = &cfg.pattern {
                rule_group = Some(group_of(&mut groups, &re.0));
            }
            for (i, m) in cfg.metrics.iter().enumerate() {
                if let Some(re) = m.pattern.as_ref().or(cfg.pattern.as_ref()) {
                    let g = group_of(&mut groups, &re.0);
                    groups[g].metrics.push(i);
                }
            }
        }
        Processor {
            source: cfg.name.as_str().into(),
            format: cfg.format,
            groups,
            rule_group,
            metrics: crate::payload::aggregate::states(&cfg.metrics),
            rules: RuleSet::new(&cfg.name, &cfg.rules),
            columns: (!cfg.csv_columns.is_empty()).then(|| {
                cfg.csv_columns
                    .iter()
                    .map(|c| Box::from(c.as_str()))
                    .collect()
            }),
            counts: LineCounts::default(),
            events: Vec::new(),
            telemetry,
            lines_family: FamilyMeta::new(
                "vitals_log_lines_total",
                MetricKind::Counter,
                "Lines read by a logs source, by outcome (matched, unmatched, malformed, too_long).",
            ),
            files_reported: None,
            files_family: FamilyMeta::new(
                "vitals_log_files",
                MetricKind::Gauge,
                "Files a logs source is following.",
            ),
        }
    }

    fn skip(&self, metric: usize, skip: Skip) {
        if skip != Skip::Filtered {
            self.telemetry.sample_dropped(
                &self.source,
                skip.reason(),
                &self.metrics[metric].cfg.name.0.as_str(),
            );
        }
    }

    /// Process one complete line (without its newline).
    pub(super) fn line(&mut self, bytes: &[u8], header: &mut Option<Vec<Box<str>>>, ts: i64) {
        let text = String::from_utf8_lossy(bytes);
        let line = text.strip_suffix('\r').unwrap_or(&text);
        self.counts.dirty = true;
        let mut counted = false;
        match self.format {
            LogFormat::Regex => {
                for g in 0..self.groups.len() {
                    let group = &mut self.groups[g];
                    if group
                        .regex
                        .captures_read(&mut group.locations, line)
                        .is_none()
                    {
                        continue;
                    }
                    let group = &self.groups[g];
                    let record = CapturesRecord {
                        line,
                        locations: &group.locations,
                        names: &group.names,
                    };
                    for &m in &group.metrics {
                        match self.metrics[m].observe(&record) {
                            Ok(()) => counted = true,
                            Err(skip) => self.skip(m, skip),
                        }
                    }
                    if self.rule_group == Some(g) && !self.rules.is_empty() {
                        let before = self.events.len();
                        self.rules.eval(&record, ts, &mut self.events);
                        counted |= self.events.len() > before;
                    }
                }
            }
            LogFormat::Json => {
                if line.trim().is_empty() {
                    self.counts.unmatched += 1;
                    return;
                }
                let value: serde_json::Value = match serde_json::from_str(line) {
                    Ok(v) => v,
                    Err(error) => {
                        self.counts.malformed += 1;
                        self.telemetry
                            .source_error(&self.source, "malformed_json", &error);
                        return;
                    }
                };
                let record = JsonRecord(&value);
                counted = self.apply_all(&record, ts);
            }
            LogFormat::Csv => {
                if line.trim().is_empty() {
                    self.counts.unmatched += 1;
                    return;
                }
                let fields = match split_csv(line) {
                    Ok(f) => f,
                    Err(error) => {
                        self.counts.malformed += 1;
                        self.telemetry
                            .source_error(&self.source, "malformed_csv", &error);
                        return;
                    }
                };
                let columns = match (&self.columns, header.as_ref()) {
                    (Some(c), _) => c.clone(),
                    (None, Some(h)) => h.clone(),
                    (None, None) => {
                        *header = Some(fields.iter().map(|f| Box::from(f.trim())).collect());
                        return;
                    }
                };
                if fields.len() != columns.len() {
                    self.counts.malformed += 1;
                    self.telemetry.source_error(
                        &self.source,
                        "malformed_csv",
                        &format_args!(
                            "a row has {} fields, the header {}",
                            fields.len(),
                            columns.len()
                        ),
                    );
                    return;
                }
                let record = CsvRecord {
                    columns: &columns,
                    fields: &fields,
                };
                counted = self.apply_all(&record, ts);
            }
        }
        if counted {
            self.counts.matched += 1;
        } else {
            self.counts.unmatched += 1;
        }
    }

    fn apply_all(&mut self, record: &dyn crate::payload::record::Record, ts: i64) -> bool {
        let mut counted = false;
        for m in 0..self.metrics.len() {
            match self.metrics[m].observe(record) {
                Ok(()) => counted = true,
                Err(skip) => self.skip(m, skip),
            }
        }
        let before = self.events.len();
        self.rules.eval(record, ts, &mut self.events);
        counted || self.events.len() > before
    }

    pub(super) fn flush(&mut self, ts: i64, files: usize, out: &mut Vec<Sample>) {
        for m in &mut self.metrics {
            m.flush(ts, out);
        }
        self.rules.flush(ts, out);
        if self.counts.dirty {
            self.counts.dirty = false;
            for (outcome, n) in [
                ("matched", self.counts.matched),
                ("unmatched", self.counts.unmatched),
                ("malformed", self.counts.malformed),
                ("too_long", self.counts.too_long),
            ] {
                out.push(Sample {
                    family: self.lines_family.clone(),
                    labels: Labels::from_pairs(&[("source", &*self.source), ("outcome", outcome)]),
                    value: n as f64,
                    timestamp_ms: ts,
                });
            }
        }
        // Only when it changed, so an idle source sends nothing.
        if self.files_reported != Some(files) {
            self.files_reported = Some(files);
            out.push(Sample {
                family: self.files_family.clone(),
                labels: Labels::from_pairs(&[("source", &*self.source)]),
                value: files as f64,
                timestamp_ms: ts,
            });
        }
    }
}

/// Parse the complete lines of `bytes` as the tailer does with what it
/// reads from one file (over-long lines counted, not parsed) and return the
/// samples and events of the batch. Pure (no files, no state): the fuzz
/// targets and the corpus replay test use it.
pub fn process_lines(
    cfg: &LogsConfig,
    telemetry: Arc<crate::telemetry::Telemetry>,
    bytes: &[u8],
    ts: i64,
) -> (Vec<Sample>, Vec<Event>) {
    let mut proc = Processor::new(cfg, telemetry);
    let mut header = None;
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..nl];
        if line.len() > cfg.max_line_bytes {
            proc.counts.too_long += 1;
            proc.counts.dirty = true;
        } else {
            proc.line(line, &mut header, ts);
        }
        start = nl + 1;
    }
    let mut out = Vec::new();
    proc.flush(ts, 1, &mut out);
    (out, std::mem::take(&mut proc.events))
}
