//! Payload helpers shared by the sources: documents to samples.
//!
//! - [`mapping`]: payload (JSON/CSV/plain/string) → samples, for MQTT, HTTP and webhooks.
//! - [`record`]: one parsed line or document (JSON, CSV row, regex captures)
//!   behind the [`record::Record`] trait.
//! - [`csv`]: the one CSV splitter.
//! - [`aggregate`]: records → counters, gauges and histograms (logs, webhooks).
//! - [`rules`]: the event-rule language (`amount > 100000 and currency == "INR"`)
//!   evaluated on each record of a business source (webhooks, log lines).
//! - [`time`]: timestamps in payloads (epoch seconds/milliseconds, RFC 3339).

pub mod aggregate;
pub mod csv;
pub mod mapping;
pub mod record;
pub mod rules;
pub mod time;
