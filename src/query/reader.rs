//! What the query API reads from: the on-disk history
//! (`crate::history`), the in-memory store, or a remote Prometheus.

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    /// Fully anchored regular expression, as in PromQL.
    Regex,
    NotRegex,
}

/// One label matcher of a series selector; the metric name is the label
/// `__name__`. A missing label matches as the empty string, as in PromQL.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// Compiled for `Regex`/`NotRegex` (`^(?:value)$`); `None` otherwise.
    pub regex: Option<regex::Regex>,
}

impl Matcher {
    /// Does `value` (the label's value, `""` when absent) match?
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }
}

/// One series with its points in a time range.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    /// All labels including `__name__`, sorted by name.
    pub labels: Vec<(String, String)>,
    /// `(milliseconds since the epoch, value)`, ascending by time. From a
    /// rollup tier, one point per rollup interval (the mean for gauges,
    /// the last value for counters), stamped at the interval's end.
    pub points: Vec<(i64, f64)>,
}

/// An anomaly or rule event kept in history (drawn as a marker).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredEvent {
    pub timestamp_ms: i64,
    /// `anomaly` or `rule`.
    pub kind: String,
    pub severity: String,
    pub source: String,
    pub metric: String,
    /// Rendered label set (`{a="x"}`), as in `crate::events::Event`.
    pub labels: String,
    pub value: f64,
    pub score: f64,
    pub reason: String,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The range or selector is more than this reader can answer (e.g. too
    /// many series or points); the message says the limit.
    #[error("{0}")]
    TooMuch(String),
    /// The storage could not be read.
    #[error("reading history: {0}")]
    Storage(String),
    /// A remote reader (Prometheus) failed.
    #[error("reading from {url}: {message}")]
    Remote { url: String, message: String },
}

/// A time-series reader. `step_ms` is the caller's resolution: a reader
/// with several tiers picks the coarsest one that still has at least one
/// point per step (raw for small steps), and the query layer aligns points
/// to steps.
pub trait SeriesReader: Send + Sync {
    /// Series matching every matcher (at least one matcher is non-empty),
    /// with their points in `[start_ms, end_ms]`.
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<RangeSeries>, ReadError>;

    /// Label sets (with `__name__`) of series with a point in the range.
    fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Vec<(String, String)>>, ReadError>;

    /// Events in `[start_ms, end_ms]`, oldest first, at most `limit`.
    fn events(
        &self,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, ReadError>;

    /// Oldest timestamp this reader holds, if any (for deciding when to
    /// read from a remote Prometheus instead).
    fn oldest_ms(&self) -> Option<i64>;
}
