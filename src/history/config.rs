//! `[history]`: where and how long vitals keeps what it sees.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[history]`: the embedded history store, on by default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Keep history at all (`false`: only the in-memory window of the store).
    pub enabled: bool,
    /// Directory of the store, relative to the working directory unless
    /// absolute (`--storage.path` overrides it).
    pub path: PathBuf,
    /// How long raw samples (collection resolution) are kept.
    #[serde(with = "humantime_serde")]
    pub raw_retention: Duration,
    /// How long 1-minute rollups are kept.
    #[serde(with = "humantime_serde")]
    pub minute_retention: Duration,
    /// How long 1-hour rollups are kept.
    #[serde(with = "humantime_serde")]
    pub hour_retention: Duration,
    /// Most bytes on disk; beyond it the oldest data goes first.
    pub max_bytes: u64,
    /// How often buffered samples are written; a crash loses at most this.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// A Prometheus that scrapes this vitals: ranges older than the local
    /// retention are read from it (`/api/v1/query_range`).
    pub prometheus_url: Option<String>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            enabled: true,
            path: PathBuf::from("data"),
            raw_retention: Duration::from_secs(7 * 86_400),
            minute_retention: Duration::from_secs(90 * 86_400),
            hour_retention: Duration::from_secs(2 * 365 * 86_400),
            max_bytes: 1 << 30,
            flush_interval: Duration::from_secs(10),
            prometheus_url: None,
        }
    }
}
