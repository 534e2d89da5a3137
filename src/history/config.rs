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

impl HistoryConfig {
    /// Checks beyond the types: `(key, reason)`, the key under `history.`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((format!("history.{key}"), reason.to_string()));
        if self.path.as_os_str().is_empty() {
            return bad("path", "must not be empty");
        }
        if self.flush_interval < Duration::from_millis(100) {
            return bad("flush_interval", "must be at least 100ms");
        }
        if self.raw_retention < Duration::from_secs(60) {
            return bad("raw_retention", "must be at least 1m");
        }
        if self.minute_retention < self.raw_retention {
            return bad("minute_retention", "must be at least raw_retention");
        }
        if self.hour_retention < self.minute_retention {
            return bad("hour_retention", "must be at least minute_retention");
        }
        if self.max_bytes == 0 {
            return bad("max_bytes", "must be more than 0");
        }
        if let Some(url) = &self.prometheus_url {
            let ok = reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if ok.is_none() {
                return bad(
                    "prometheus_url",
                    "must be an http:// or https:// URL with a host",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, ConfigFormat, load_str};

    fn invalid(text: &str) -> (String, String) {
        match load_str(text, ConfigFormat::Toml, "h.toml") {
            Err(ConfigError::Invalid { key, reason, .. }) => (key, reason),
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn bad_history_settings_name_their_key() {
        let (key, _) = invalid("[history]\nraw_retention = \"30d\"\nminute_retention = \"7d\"\n");
        assert_eq!(key, "history.minute_retention");
        let (key, _) = invalid("[history]\nhour_retention = \"1d\"\n");
        assert_eq!(key, "history.hour_retention");
        let (key, _) = invalid("[history]\nmax_bytes = 0\n");
        assert_eq!(key, "history.max_bytes");
        let (key, reason) = invalid("[history]\nprometheus_url = \"ftp://x/\"\n");
        assert_eq!(key, "history.prometheus_url");
        assert!(reason.contains("http"), "{reason}");
        let (key, _) = invalid("[history]\nflush_interval = \"1ms\"\n");
        assert_eq!(key, "history.flush_interval");
        let (key, _) = invalid("[history]\nmax_byte = 5\n");
        assert!(key.contains("max_byte"), "{key}");
        let cfg = load_str(
            "[history]\nprometheus_url = \"http://127.0.0.1:9090\"\nmax_bytes = 1000\n",
            ConfigFormat::Toml,
            "h.toml",
        )
        .unwrap();
        assert_eq!(cfg.history.max_bytes, 1000);
    }
}
