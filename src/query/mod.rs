//! The Prometheus-shaped query API (`/api/v1/query_range`, `/api/v1/query`,
//! `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/<name>/values`) and
//! the read interface it serves from.

pub mod reader;

pub use reader::{MatchOp, Matcher, RangeSeries, ReadError, SeriesReader, StoredEvent};
