//! On-disk history: raw samples, 1-minute and 1-hour rollups, anomaly
//! scores and events, kept across restarts (see `docs/history.md`).

pub mod config;

pub use config::HistoryConfig;
