//! vitals: a real-time process, sensor and business monitoring exporter.
//!
//! Data flows one way:
//!
//! ```text
//! sources ──Batch──▶ pipeline (validate → filter → detect) ──▶ store ──▶ /metrics
//! ```
//!
//! Module map:
//! - [`config`]: the configuration file, environment overrides, validation.
//! - [`key_error`]: a rejected configuration key with its path, a leaf.
//! - [`events`]: the in-process stream of anomaly and rule events.
//! - [`payload`]: payload helpers of the sources: [`mapping`] (JSON/CSV/plain/string →
//!   samples, shared by MQTT, HTTP, webhooks), records, aggregation, CSV and timestamps.
//! - [`model`]: samples, label sets, batches — what flows between the parts.
//! - [`sources`]: one module per source; each owns its loop.
//! - [`pipeline`]: synchronous per-sample stages and the ingest task.
//! - [`detect`]: streaming anomaly detectors, NAB scoring, `vitals backtest`.
//! - [`stats`]: streaming statistics (EWM, sliding median window, normal tail), a leaf.
//! - [`store`]: per-series state, budgets, expiry; rendered at scrape time.
//! - [`supervisor`]: starts sources and applies a reloaded configuration.
//! - [`telemetry`]: vitals' own metrics and rate-limited error logging.
//! - [`exposition`]: the one writer of `/metrics` (text 0.0.4, OpenMetrics 1.0), each family
//!   once, from the typed state of the store, the detectors and telemetry.
//! - [`web`]: serving with the web config file (TLS, basic auth, headers),
//!   connection cap and slow-client timeouts.
//! - [`dashboard`]: the live page at `/` and its WebSocket stream.
//! - [`select`]: metric selectors (family regex + label matchers) and [`select::Pattern`], a leaf.
//! - [`server`]: the HTTP router (`/metrics`, `/healthz`, `/readyz`, `/`).
//! - [`run`]: wiring and the single shutdown path of `vitals run`.
//! - [`history`]: the on-disk history store (raw and rolled-up tiers).
//! - [`query`]: the Prometheus-shaped query API over history.
//! - [`remote_write`]: Prometheus remote write from a durable on-disk queue.
//! - [`relay`]: `vitals relay`, Alertmanager/Grafana webhooks to e-mail and SMS.

#![forbid(unsafe_code)]

pub mod config;
pub mod dashboard;
pub mod detect;
pub mod events;
pub mod exposition;
pub mod history;
pub mod key_error;
pub mod model;
pub mod payload;
pub mod pipeline;
pub mod query;
pub mod relay;
pub mod remote_write;
pub mod run;
pub mod select;
pub mod server;
pub mod sources;
pub mod stats;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod web;

/// The mapping keeps its old path.
pub use payload::mapping;
