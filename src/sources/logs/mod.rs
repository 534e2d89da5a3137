//! The `logs` source: tail files matched by globs and turn their lines into
//! counters, gauges and histograms.
//!
//! Lines are parsed as regex captures, JSON objects or CSV rows (see
//! [`LogFormat`]); the [`aggregate`](super::aggregate) module turns the parsed
//! record into series and [`rules`](crate::payload::rules) flag events.
//!
//! Files are followed by identity (device and inode), not by name, and
//! polled at a short interval:
//! - **rename rotation**: the old file is kept open and read to its end,
//!   the new file at the path is read from its start;
//! - **copytruncate**: a file shorter than what was read is read again from
//!   its start;
//! - **deleted** files are read to their end through the open handle, then
//!   dropped; a file created again at the same path is a new file.
//!
//! With a `state_file`, the offset of every file (with its device and
//! inode) is saved after each batch has been handed to the pipeline and on
//! shutdown, so a restart resumes where the last run stopped.
//!
//! The parts: this module holds the `[[sources]] type = "logs"` section;
//! `tail` follows the files (globs, rotation, offsets, the state file, the
//! loop) and `process` turns complete lines into samples and events.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::key_error::KeyError;
use crate::payload::aggregate::{LineRegex, MetricConfig};
use crate::payload::rules::RuleConfig;
use tail::Glob;

mod process;
mod tail;

pub use process::process_lines;
pub use tail::{StateError, Tailer, run, start};

/// How lines are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Regexes with named captures (`match`); captures are the fields.
    #[default]
    Regex,
    /// One JSON object per line; fields are dotted paths.
    Json,
    /// Comma-separated values; fields are column names.
    Csv,
}

/// Where a file seen for the first time (with no saved offset) is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Only lines appended after start-up count (like `tail -f`).
    #[default]
    End,
    /// Existing content counts too.
    Beginning,
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}

fn default_max_line_bytes() -> usize {
    64 * 1024
}

/// `[[sources]]` with `type = "logs"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    pub name: String,
    /// Files to tail; `*`, `?` and `[...]` may appear in the file name
    /// (not in directory names).
    pub paths: Vec<String>,
    #[serde(default)]
    pub format: LogFormat,
    /// Applies to files present at start-up that have no saved offset;
    /// files that appear later are always read from their start.
    #[serde(default)]
    pub start_at: StartAt,
    /// How often files are checked for new lines, rotation and new files.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Where offsets are kept between runs; none means no persistence.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// `format = "regex"`: the default regex of metrics without their own
    /// `match`, and the one whose captures event rules see.
    #[serde(default, rename = "match")]
    pub pattern: Option<LineRegex>,
    /// `format = "csv"`: column names; empty means each file's first line
    /// is its header.
    #[serde(default)]
    pub csv_columns: Vec<String>,
    /// Longer lines are skipped and counted (`line_too_long`).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    #[serde(default)]
    pub metrics: Vec<MetricConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl super::Source for LogsConfig {
    const KIND: &'static str = "logs";
    type Built = ();

    fn name(&self) -> &str {
        &self.name
    }

    fn build(&self) -> Result<(), KeyError> {
        Ok(self.validate()?)
    }

    /// Finds and opens the files present now (so `start_at = "end"` is the
    /// end as of start-up), then follows them on a blocking thread.
    fn start(
        &self,
        _: &(),
        ctx: super::SourceContext,
        health: super::Health,
    ) -> super::Started {
        let tailer = start(self.clone(), &ctx);
        super::Started {
            task: super::Task::Blocking(Box::new(move || run(tailer, ctx, health))),
            routes: None,
        }
    }
}

impl LogsConfig {
    /// Checks between keys; the key is relative to the source.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.paths.is_empty() {
            return Err(KeyError::at("paths".into(), "needs at least one path".into()));
        }
        for (i, p) in self.paths.iter().enumerate() {
            Glob::new(p).map_err(|r| (format!("paths[{i}]"), r))?;
        }
        if self.poll_interval < Duration::from_millis(10) {
            return Err(KeyError::at("poll_interval".into(), "must be at least 10ms".into()));
        }
        if self.max_line_bytes < 16 {
            return Err(KeyError::at("max_line_bytes".into(), "must be at least 16".into()));
        }
        if self.metrics.is_empty() && self.rules.is_empty() {
            return Err(KeyError::at("metrics".into(), "needs at least one metric or rule".into()));
        }
        crate::payload::aggregate::validate_all(&self.metrics, &self.rules)?;
        for (i, m) in self.metrics.iter().enumerate() {
            if self.format != LogFormat::Regex && m.pattern.is_some() {
                return Err(KeyError::at(
                    format!("metrics[{i}].match"),
                    "only `format = \"regex\"` uses `match`".into(),
                ));
            }
            if self.format == LogFormat::Regex {
                let Some(re) = m.pattern.as_ref().or(self.pattern.as_ref()) else {
                    return Err(KeyError::at(
                        format!("metrics[{i}].match"),
                        "`format = \"regex\"` needs `match` here or on the source".into(),
                    ));
                };
                if m.pattern.is_none() {
                    let mut m = m.clone();
                    m.pattern = Some(re.clone());
                    m.validate()
                        .map_err(|(k, r)| (format!("metrics[{i}].{k}"), r))?;
                }
            }
        }
        if self.format == LogFormat::Regex && !self.rules.is_empty() && self.pattern.is_none() {
            return Err(KeyError::at(
                "match".into(),
                "event rules on regex logs need the source-level `match`".into(),
            ));
        }
        if self.format != LogFormat::Regex && self.pattern.is_some() {
            return Err(KeyError::at(
                "match".into(),
                "only `format = \"regex\"` uses `match`".into(),
            ));
        }
        if self.format != LogFormat::Csv && !self.csv_columns.is_empty() {
            return Err(KeyError::at(
                "csv_columns".into(),
                "only `format = \"csv\"` uses `csv_columns`".into(),
            ));
        }
        Ok(())
    }
}
