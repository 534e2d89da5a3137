//! The `sql` source: run configured queries against PostgreSQL, MySQL /
//! MariaDB or SQLite and turn result columns into labelled samples.
//!
//! One connection pool per source; every query runs on its own interval with
//! its own timeout. Each query's result is a complete snapshot of that
//! query's series (the batch source is `<source>/<query>`), so rows that
//! disappear, and a query returning zero rows, remove their series instead
//! of leaving stale values. A failing query marks only itself down
//! (`vitals_sql_query_up{source,query} 0`), its series are removed, and the
//! other queries keep running; connection failures also mark the source down.
//!
//! The DSN comes from the file, an environment variable or a file and is
//! never logged or echoed in errors.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Deserialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlRow};
use sqlx::postgres::{PgConnectOptions, PgPool, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqliteRow};
// Query text comes from the operator's configuration, never from data.
use sqlx::{AssertSqlSafe, Column, ConnectOptions, Row, TypeInfo, ValueRef};
use tokio::task::JoinSet;

use super::{
    Failure, Health, Outcome, SecretInput, SourceContext, Started, secret_input,
};
use super::secret::{Secret, resolve_secret};
use crate::key_error::KeyError;
use crate::model::{Batch, BatchMode, FamilyMeta, Labels, MetricKind, Sample, now_ms};
use crate::payload::mapping::{valid_label_name, valid_metric_name};

/// `type = "sql"`: a database and the queries run against it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// Unique source name (the `source` label of self-metrics).
    pub name: String,
    /// Connection string (`postgres://`, `mysql://`, `mariadb://`, `sqlite:`).
    /// Prefer `dsn_env` or `dsn_file` when it holds a password.
    #[serde(default)]
    pub dsn: Option<Secret>,
    /// Name of an environment variable holding the DSN.
    #[serde(default)]
    pub dsn_env: Option<String>,
    /// File holding the DSN (surrounding whitespace is ignored).
    #[serde(default)]
    pub dsn_file: Option<PathBuf>,
    /// Most connections the pool opens.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long opening (or waiting for) a connection may take.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Default interval of queries that set none.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Default timeout of queries that set none.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    pub queries: Vec<QueryConfig>,
}

/// One query: its label columns and the metrics taken from its value columns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Unique within the source (the `query` label of self-metrics).
    pub name: String,
    pub sql: String,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Columns whose values become labels of the same name.
    #[serde(default)]
    pub labels: Vec<String>,
    pub metrics: Vec<SqlMetricConfig>,
}

/// One metric read from one value column of every row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlMetricConfig {
    /// Metric name; counters end in `_total`.
    pub name: String,
    /// Result column holding the value (numbers, booleans or numeric text).
    pub column: String,
    #[serde(default = "default_kind")]
    pub kind: MetricKind,
    #[serde(default)]
    pub help: Option<String>,
}

fn default_max_connections() -> u32 {
    2
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_kind() -> MetricKind {
    MetricKind::Gauge
}

/// The database behind a DSN, from its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Postgres,
    MySql,
    Sqlite,
}

impl Driver {
    pub fn from_dsn(dsn: &str) -> Result<Driver, String> {
        let scheme = dsn.split(':').next().unwrap_or("").to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Ok(Driver::Postgres),
            "mysql" | "mariadb" => Ok(Driver::MySql),
            "sqlite" => Ok(Driver::Sqlite),
            _ if !dsn.contains(':') => Err(
                "the DSN has no scheme; expected postgres://, mysql://, mariadb:// or sqlite:"
                    .into(),
            ),
            other => Err(format!(
                "unsupported DSN scheme {other:?}; expected postgres://, mysql://, mariadb:// or sqlite:"
            )),
        }
    }
}

impl SqlConfig {
    /// Checks beyond the types; the error's key is relative to the source.
    pub fn validate(&self) -> Result<(), KeyError> {
        let bad = |k: &str, r: &str| Err(KeyError::at(k.to_string(), r.to_string()));
        if self.name.is_empty() {
            return bad("name", "must not be empty");
        }
        let given = [
            self.dsn.is_some(),
            self.dsn_env.is_some(),
            self.dsn_file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return bad("dsn", "set exactly one of `dsn`, `dsn_env` and `dsn_file`");
        }
        if let Some(dsn) = &self.dsn
            && let Err(e) = Driver::from_dsn(dsn.expose())
        {
            return bad("dsn", &e);
        }
        if self.dsn_env.as_deref().is_some_and(str::is_empty) {
            return bad("dsn_env", "must not be empty");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be more than 0s");
        }
        if self.queries.is_empty() {
            return bad("queries", "must list at least one query");
        }
        let mut query_names = HashSet::new();
        let mut kinds: std::collections::HashMap<&str, MetricKind> = Default::default();
        for (qi, q) in self.queries.iter().enumerate() {
            let key = format!("queries[{qi}]");
            if q.name.is_empty() || q.name.contains('/') {
                return bad(&format!("{key}.name"), "must be non-empty without `/`");
            }
            if !query_names.insert(q.name.as_str()) {
                return bad(
                    &format!("{key}.name"),
                    &format!("query {:?} is defined twice", q.name),
                );
            }
            if q.sql.trim().is_empty() {
                return bad(&format!("{key}.sql"), "must not be empty");
            }
            let interval = q.interval.unwrap_or(self.interval);
            if interval < Duration::from_millis(100) {
                return bad(&format!("{key}.interval"), "must be at least 100ms");
            }
            if q.timeout.unwrap_or(self.timeout).is_zero() {
                return bad(&format!("{key}.timeout"), "must be more than 0s");
            }
            let mut seen = HashSet::new();
            for (li, l) in q.labels.iter().enumerate() {
                if !valid_label_name(l) {
                    return bad(
                        &format!("{key}.labels[{li}]"),
                        &format!("{l:?} is not a valid label name (alias the column in the SQL)"),
                    );
                }
                if !seen.insert(l.as_str()) {
                    return bad(&format!("{key}.labels[{li}]"), "is listed twice");
                }
            }
            if q.metrics.is_empty() {
                return bad(&format!("{key}.metrics"), "must list at least one metric");
            }
            for (mi, m) in q.metrics.iter().enumerate() {
                let mkey = format!("{key}.metrics[{mi}]");
                if !valid_metric_name(&m.name) {
                    return bad(
                        &format!("{mkey}.name"),
                        &format!("{:?} is not a valid metric name", m.name),
                    );
                }
                if let Some(reason) = crate::payload::mapping::reserved_metric_name(&m.name) {
                    return bad(&format!("{mkey}.name"), &reason);
                }
                if m.kind == MetricKind::Counter && !m.name.ends_with("_total") {
                    return bad(
                        &format!("{mkey}.name"),
                        &format!("counter {:?} must end with `_total`", m.name),
                    );
                }
                if m.column.is_empty() {
                    return bad(&format!("{mkey}.column"), "must not be empty");
                }
                if let Some(k) = kinds.insert(&m.name, m.kind)
                    && k != m.kind
                {
                    return bad(
                        &format!("{mkey}.kind"),
                        &format!("{:?} is used with two types in this source", m.name),
                    );
                }
            }
        }
        Ok(())
    }
}

/// Per-query self-metrics of one source (constant label `source`),
/// registered when the source starts and unregistered when it stops, so a
/// source restarted by a reload registers cleanly and a removed one leaves
/// no stale `up` behind.
pub struct SqlMetrics {
    registry: Registry,
    up: IntGaugeVec,
    duration: GaugeVec,
    last_success: GaugeVec,
    rows: IntGaugeVec,
    errors: IntCounterVec,
}

impl SqlMetrics {
    pub fn register(source: &str, registry: &Registry) -> Arc<SqlMetrics> {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("source", source);
        let query = &["query"];
        let m = SqlMetrics {
            registry: registry.clone(),
            up: IntGaugeVec::new(
                opts(
                    "vitals_sql_query_up",
                    "Whether the last run of a SQL query succeeded (1) or not (0).",
                ),
                query,
            )
            .expect("valid metric"),
            duration: GaugeVec::new(
                opts(
                    "vitals_sql_query_duration_seconds",
                    "Wall time the last run of a SQL query took.",
                ),
                query,
            )
            .expect("valid metric"),
            last_success: GaugeVec::new(
                opts(
                    "vitals_sql_query_last_success_timestamp_seconds",
                    "Unix time of the last successful run of a SQL query.",
                ),
                query,
            )
            .expect("valid metric"),
            rows: IntGaugeVec::new(
                opts(
                    "vitals_sql_query_rows",
                    "Rows returned by the last successful run of a SQL query.",
                ),
                query,
            )
            .expect("valid metric"),
            errors: IntCounterVec::new(
                opts(
                    "vitals_sql_query_errors_total",
                    "Failed runs of a SQL query, by reason.",
                ),
                &["query", "reason"],
            )
            .expect("valid metric"),
        };
        for c in m.collectors() {
            if let Err(error) = m.registry.register(c) {
                tracing::warn!(source, %error, "SQL self-metric not registered.");
            }
        }
        Arc::new(m)
    }

    fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 5] {
        [
            Box::new(self.up.clone()),
            Box::new(self.duration.clone()),
            Box::new(self.last_success.clone()),
            Box::new(self.rows.clone()),
            Box::new(self.errors.clone()),
        ]
    }

    fn unregister(&self) {
        for c in self.collectors() {
            // Not registered (a failed registration) is fine here.
            let _ = self.registry.unregister(c);
        }
    }
}

/// Why one run of a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("The DSN is unusable: {0}.")]
    Dsn(String),
    #[error("The query did not finish within {0:?}.")]
    Timeout(Duration),
    #[error("The database cannot be reached: {0}")]
    Connect(sqlx::Error),
    #[error("The query failed: {0}")]
    Query(sqlx::Error),
    #[error("The result has no column {0:?}.")]
    MissingColumn(String),
    #[error("Column {column:?} could not be read: {reason}.")]
    Decode { column: String, reason: String },
}

impl QueryError {
    /// Bounded reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            QueryError::Dsn(_) => "dsn",
            QueryError::Timeout(_) => "timeout",
            QueryError::Connect(_) => "connect",
            QueryError::Query(_) => "query",
            QueryError::MissingColumn(_) => "missing_column",
            QueryError::Decode { .. } => "decode",
        }
    }

    /// Whether the database as a whole is unreachable (marks the source down).
    fn is_connection(&self) -> bool {
        matches!(self, QueryError::Connect(_) | QueryError::Dsn(_))
    }

    fn from_sqlx(e: sqlx::Error, timeout: Duration) -> QueryError {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_) => QueryError::Connect(e),
            sqlx::Error::Configuration(_) => {
                QueryError::Dsn("the driver rejected its options".into())
            }
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                // PostgreSQL: 57014 statement timeout / cancel; class 08
                // connection exceptions; 57P0x server shutting down.
                if code == "57014" {
                    QueryError::Timeout(timeout)
                } else if code.starts_with("08") || code.starts_with("57P") {
                    QueryError::Connect(e)
                } else {
                    QueryError::Query(e)
                }
            }
            _ => QueryError::Query(e),
        }
    }
}

/// One cell of a result row, as far as metrics care.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Num(f64),
    Text(String),
}

/// A pool of the driver named by the DSN.
#[derive(Clone)]
enum Db {
    Pg(PgPool),
    My(MySqlPool),
    Lite(SqlitePool),
}

impl Db {
    /// Build a lazily connecting pool: start-up never waits for the
    /// database, and an unreachable one shows up as failing queries.
    fn new(dsn: &str, cfg: &SqlConfig) -> Result<Db, QueryError> {
        let driver = Driver::from_dsn(dsn).map_err(QueryError::Dsn)?;
        // Option errors can quote the DSN, so they are replaced by a fixed text.
        let unparsable = |_| QueryError::Dsn(format!("it is not a valid {driver:?} DSN"));
        let longest = cfg
            .queries
            .iter()
            .map(|q| q.timeout.unwrap_or(cfg.timeout))
            .max()
            .unwrap_or(cfg.timeout);
        Ok(match driver {
            Driver::Postgres => {
                let opts = PgConnectOptions::from_str(dsn)
                    .map_err(unparsable)?
                    .application_name("vitals")
                    // Every run also sets its own timeout (see `fetch`); this
                    // caps anything else the connection might run.
                    .options([("statement_timeout", (longest.as_millis() + 500).to_string())])
                    .disable_statement_logging();
                Db::Pg(pool_options::<sqlx::Postgres>(cfg).connect_lazy_with(opts))
            }
            Driver::MySql => {
                let dsn = match dsn.get(..8) {
                    Some(p) if p.eq_ignore_ascii_case("mariadb:") => format!("mysql:{}", &dsn[8..]),
                    _ => dsn.to_string(),
                };
                let opts = MySqlConnectOptions::from_str(&dsn)
                    .map_err(unparsable)?
                    .disable_statement_logging();
                Db::My(pool_options::<sqlx::MySql>(cfg).connect_lazy_with(opts))
            }
            Driver::Sqlite => {
                let opts = SqliteConnectOptions::from_str(dsn)
                    .map_err(unparsable)?
                    .busy_timeout(longest)
                    .disable_statement_logging();
                Db::Lite(pool_options::<sqlx::Sqlite>(cfg).connect_lazy_with(opts))
            }
        })
    }

    /// Run `sql` and return the `columns` of every row, in that order.
    async fn fetch(
        &self,
        sql: &Arc<str>,
        columns: &[&str],
        timeout: Duration,
    ) -> Result<Vec<Vec<Cell>>, QueryError> {
        let t = timeout;
        match self {
            Db::Pg(p) => {
                // The server cancels the statement at the query's timeout,
                // so a timed-out query frees its connection at once instead
                // of starving the other queries of the pool.
                let mut conn = p.acquire().await.map_err(|e| QueryError::from_sqlx(e, t))?;
                sqlx::query(AssertSqlSafe(format!(
                    "SET statement_timeout = {}",
                    timeout.as_millis().max(1)
                )))
                .execute(&mut *conn)
                .await
                .map_err(|e| QueryError::from_sqlx(e, t))?;
                let rows: Vec<PgRow> = sqlx::query(AssertSqlSafe(sql.clone()))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(|e| QueryError::from_sqlx(e, t))?;
                cells(&rows, columns, pg_cell)
            }
            Db::My(p) => {
                let rows: Vec<MySqlRow> = sqlx::query(AssertSqlSafe(sql.clone()))
                    .fetch_all(p)
                    .await
                    .map_err(|e| QueryError::from_sqlx(e, t))?;
                cells(&rows, columns, mysql_cell)
            }
            Db::Lite(p) => {
                let rows: Vec<SqliteRow> = sqlx::query(AssertSqlSafe(sql.clone()))
                    .fetch_all(p)
                    .await
                    .map_err(|e| QueryError::from_sqlx(e, t))?;
                cells(&rows, columns, sqlite_cell)
            }
        }
    }

    async fn close(&self) {
        match self {
            Db::Pg(p) => p.close().await,
            Db::My(p) => p.close().await,
            Db::Lite(p) => p.close().await,
        }
    }
}

fn pool_options<DB: sqlx::Database>(cfg: &SqlConfig) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(cfg.max_connections)
        .min_connections(0)
        .acquire_timeout(cfg.connect_timeout)
        .idle_timeout(Duration::from_secs(300))
}

/// Pick `columns` (by name) out of every row.
fn cells<R: Row>(
    rows: &[R],
    columns: &[&str],
    cell: fn(&R, usize) -> Result<Cell, String>,
) -> Result<Vec<Vec<Cell>>, QueryError> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let mut index = Vec::with_capacity(columns.len());
    for name in columns {
        let i = first
            .columns()
            .iter()
            .position(|c| c.name() == *name)
            .ok_or_else(|| QueryError::MissingColumn(name.to_string()))?;
        index.push(i);
    }
    rows.iter()
        .map(|row| {
            index
                .iter()
                .zip(columns)
                .map(|(&i, name)| {
                    cell(row, i).map_err(|reason| QueryError::Decode {
                        column: name.to_string(),
                        reason,
                    })
                })
                .collect()
        })
        .collect()
}

/// Try numeric types in turn; `NULL` decodes as `None` whatever the type.
macro_rules! try_numbers {
    ($row:expr, $i:expr; $($t:ty),*) => {
        $(
            if let Ok(v) = $row.try_get::<Option<$t>, _>($i) {
                return Ok(v.map_or(Cell::Null, |v| Cell::Num(v as f64)));
            }
        )*
    };
}

fn text_or_bool<'r, R: Row>(row: &'r R, i: usize) -> Option<Cell>
where
    usize: sqlx::ColumnIndex<R>,
    bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
        return Some(v.map_or(Cell::Null, |b| Cell::Num(f64::from(u8::from(b)))));
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return Some(v.map_or(Cell::Null, Cell::Text));
    }
    None
}

fn pg_cell(row: &PgRow, i: usize) -> Result<Cell, String> {
    try_numbers!(row, i; f64, f32, i64, i32, i16);
    if let Some(c) = text_or_bool(row, i) {
        return Ok(c);
    }
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    let ty = raw.type_info().name().to_string();
    if ty == "NUMERIC" {
        let bytes = raw.as_bytes().map_err(|e| e.to_string())?;
        return pg_numeric(bytes)
            .map(Cell::Num)
            .ok_or_else(|| "malformed NUMERIC value".to_string());
    }
    Err(format!(
        "type {ty} is not supported; cast it to a number or text"
    ))
}

fn mysql_cell(row: &MySqlRow, i: usize) -> Result<Cell, String> {
    try_numbers!(row, i; f64, f32, i64, i32, i16, i8, u64, u32, u16, u8);
    if let Some(c) = text_or_bool(row, i) {
        return Ok(c);
    }
    // DECIMAL travels as text in both MySQL protocols.
    let ty = row.columns()[i].type_info().name().to_string();
    if ty == "DECIMAL" {
        let s: Option<&str> = row.try_get_unchecked(i).map_err(|e| e.to_string())?;
        return match s {
            None => Ok(Cell::Null),
            Some(s) => s
                .trim()
                .parse()
                .map(Cell::Num)
                .map_err(|_| "malformed DECIMAL value".to_string()),
        };
    }
    Err(format!(
        "type {ty} is not supported; cast it to a number or text"
    ))
}

fn sqlite_cell(row: &SqliteRow, i: usize) -> Result<Cell, String> {
    try_numbers!(row, i; f64, i64);
    if let Some(c) = text_or_bool(row, i) {
        return Ok(c);
    }
    let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    Err(format!(
        "type {} is not supported; cast it to a number or text",
        raw.type_info().name()
    ))
}

/// Decode PostgreSQL's binary NUMERIC: digit count, weight, sign, display
/// scale, then base-10000 digits. Precision beyond f64 is lost, as it would
/// be in Prometheus anyway.
fn pg_numeric(b: &[u8]) -> Option<f64> {
    let word = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16;
    let sign = word(4)?;
    match sign {
        0xC000 => return Some(f64::NAN),
        0xD000 => return Some(f64::INFINITY),
        0xF000 => return Some(f64::NEG_INFINITY),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let mut v = 0.0f64;
    for k in 0..ndigits {
        let d = word(8 + 2 * k)?;
        if d >= 10_000 {
            return None;
        }
        v += f64::from(d) * 10_000f64.powi(i32::from(weight) - k as i32);
    }
    Some(if sign == 0x4000 { -v } else { v })
}

/// A query compiled for running: families and the column list.
pub struct Prepared {
    name: String,
    key: Arc<str>,
    sql: Arc<str>,
    interval: Duration,
    timeout: Duration,
    labels: Vec<String>,
    metrics: Vec<(Arc<FamilyMeta>, usize)>,
    /// Label columns first, then the distinct value columns.
    columns: Vec<String>,
}

impl Prepared {
    fn new(source: &str, cfg: &SqlConfig, q: &QueryConfig) -> Prepared {
        let mut columns = q.labels.clone();
        let mut metrics = Vec::with_capacity(q.metrics.len());
        for m in &q.metrics {
            let idx = match columns[q.labels.len()..]
                .iter()
                .position(|c| *c == m.column)
            {
                Some(p) => q.labels.len() + p,
                None => {
                    columns.push(m.column.clone());
                    columns.len() - 1
                }
            };
            let help = m.help.clone().unwrap_or_else(|| {
                format!(
                    "Column {:?} of SQL query {:?} ({source}).",
                    m.column, q.name
                )
            });
            metrics.push((FamilyMeta::new(&m.name, m.kind, &help), idx));
        }
        Prepared {
            name: q.name.clone(),
            key: Arc::from(format!("{source}/{}", q.name)),
            sql: Arc::from(q.sql.as_str()),
            interval: q.interval.unwrap_or(cfg.interval),
            timeout: q.timeout.unwrap_or(cfg.timeout),
            labels: q.labels.clone(),
            metrics,
            columns,
        }
    }

    /// Turn result rows into samples; values that are not numbers are
    /// returned as dropped (column name) rather than failing the query.
    fn samples(&self, rows: &[Vec<Cell>], now: i64, dropped: &mut Vec<String>) -> Vec<Sample> {
        let mut out = Vec::with_capacity(rows.len() * self.metrics.len());
        let mut pairs: Vec<(&str, String)> = Vec::with_capacity(self.labels.len());
        for row in rows {
            pairs.clear();
            for (name, cell) in self.labels.iter().zip(row) {
                let v = match cell {
                    Cell::Null => String::new(),
                    Cell::Num(n) => {
                        let mut s = String::new();
                        crate::exposition::text::write_value(*n, &mut s);
                        s
                    }
                    Cell::Text(t) => t.clone(),
                };
                pairs.push((name, v));
            }
            let labels = Labels::from_pairs(&pairs);
            for (family, idx) in &self.metrics {
                let value = match &row[*idx] {
                    Cell::Null => continue,
                    Cell::Num(n) => *n,
                    Cell::Text(t) => match t.trim().parse::<f64>() {
                        Ok(v) => v,
                        Err(_) => {
                            dropped.push(self.columns[*idx].clone());
                            continue;
                        }
                    },
                };
                out.push(Sample {
                    family: family.clone(),
                    labels: labels.clone(),
                    value,
                    timestamp_ms: now,
                });
            }
        }
        out
    }
}

impl super::Source for SqlConfig {
    const KIND: &'static str = "sql";
    /// The queries, compiled for running.
    type Built = Vec<Arc<Prepared>>;

    fn name(&self) -> &str {
        &self.name
    }

    fn build(&self) -> Result<Self::Built, KeyError> {
        self.validate()?;
        Ok(self
            .queries
            .iter()
            .map(|q| Arc::new(Prepared::new(&self.name, self, q)))
            .collect())
    }

    fn start(&self, built: &Self::Built, ctx: SourceContext, health: Health) -> Started {
        Started::task(run(self.clone(), built.clone(), ctx, health))
    }

    fn secret_inputs(&self) -> Vec<(&'static str, SecretInput<'_>)> {
        let mut out = Vec::new();
        secret_input(
            &mut out,
            "dsn",
            self.dsn_env.as_deref(),
            self.dsn_file.as_deref(),
        );
        out
    }
}

/// Run the source until shutdown.
async fn run(cfg: SqlConfig, queries: Vec<Arc<Prepared>>, ctx: SourceContext, health: Health) {
    let metrics = SqlMetrics::register(&cfg.name, ctx.telemetry.registry());
    run_queries(&cfg, queries, &ctx, &health, &metrics).await;
    metrics.unregister();
}

async fn run_queries(
    cfg: &SqlConfig,
    queries: Vec<Arc<Prepared>>,
    ctx: &SourceContext,
    health: &Health,
    metrics: &Arc<SqlMetrics>,
) {
    for q in &queries {
        metrics.up.with_label_values(&[q.name.as_str()]).set(0);
    }
    let db = match resolve_secret(
        "dsn",
        cfg.dsn.as_ref(),
        cfg.dsn_env.as_deref(),
        cfg.dsn_file.as_deref(),
    )
    .map_err(QueryError::Dsn)
    .and_then(|dsn| Db::new(dsn.as_deref().unwrap_or(""), cfg))
    {
        Ok(db) => db,
        Err(error) => {
            // Nothing can run without a DSN: report it and wait for shutdown.
            for q in &queries {
                metrics
                    .errors
                    .with_label_values(&[q.name.as_str(), error.reason()])
                    .inc();
            }
            health.down(Some(Failure::new(error.reason(), &error)));
            ctx.shutdown.cancelled().await;
            return;
        }
    };
    let mut tasks = JoinSet::new();
    for q in queries {
        let (health, db, ctx, metrics) = (health.clone(), db.clone(), ctx.clone(), metrics.clone());
        tasks.spawn(async move {
            let key = q.key.clone();
            query_loop(health, q, db, ctx.clone(), metrics).await;
            super::forget_series(&ctx, key);
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(error) = done {
            tracing::error!(source = %cfg.name, %error, "SQL query task ended abnormally.");
        }
    }
    db.close().await;
}

/// PostgreSQL cancels a query itself at its timeout; the client waits this
/// much longer so the server's cancel wins and the connection stays usable.
const CANCEL_GRACE: Duration = Duration::from_millis(250);

async fn query_loop(
    health: Health,
    q: Arc<Prepared>,
    db: Db,
    ctx: SourceContext,
    metrics: Arc<SqlMetrics>,
) {
    let source = health.source().clone();
    let columns: Vec<&str> = q.columns.iter().map(String::as_str).collect();
    let mut tick = tokio::time::interval(q.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let labels = [q.name.as_str()];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        // One run of the query; a failure other than the connection marks
        // only the query down, not the source.
        let samples = health
            .collect(async {
                let started = Instant::now();
                let result = tokio::select! {
                    r = tokio::time::timeout(q.timeout + CANCEL_GRACE, db.fetch(&q.sql, &columns, q.timeout)) => {
                        r.unwrap_or(Err(QueryError::Timeout(q.timeout)))
                    }
                    _ = ctx.shutdown.cancelled() => return (None, Outcome::Stopped),
                };
                metrics
                    .duration
                    .with_label_values(&labels)
                    .set(started.elapsed().as_secs_f64());
                match result {
                    Ok(rows) => {
                        let mut dropped = Vec::new();
                        let samples = q.samples(&rows, now_ms(), &mut dropped);
                        for column in &dropped {
                            ctx.telemetry.sample_dropped(
                                &source,
                                "not_a_number",
                                &format_args!("query {}: column {column}", q.name),
                            );
                        }
                        metrics.up.with_label_values(&labels).set(1);
                        metrics
                            .rows
                            .with_label_values(&labels)
                            .set(rows.len() as i64);
                        metrics
                            .last_success
                            .with_label_values(&labels)
                            .set(now_ms() as f64 / 1000.0);
                        (Some(samples), Outcome::Ok)
                    }
                    Err(error) => {
                        let error = match error {
                            QueryError::Timeout(_) => QueryError::Timeout(q.timeout),
                            other => other,
                        };
                        metrics.up.with_label_values(&labels).set(0);
                        metrics
                            .errors
                            .with_label_values(&[q.name.as_str(), error.reason()])
                            .inc();
                        let failure = Failure::new(
                            error.reason(),
                            format_args!("query {}: {error}", q.name),
                        );
                        // No stale values: a failed query's series go away.
                        let outcome = if error.is_connection() {
                            Outcome::Down(vec![failure])
                        } else {
                            Outcome::Partial(failure)
                        };
                        (Some(Vec::new()), outcome)
                    }
                }
            })
            .await;
        let Some(samples) = samples else { return };
        let batch = Batch {
            source: q.key.clone(),
            mode: BatchMode::Snapshot,
            samples,
        };
        tokio::select! {
            r = ctx.tx.send(batch) => if r.is_err() { return },
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> SqlConfig {
        toml::from_str(text).expect("valid toml")
    }

    const BASE: &str = r#"
        name = "shop"
        dsn = "postgres://u:hunter2@localhost/shop"
        [[queries]]
        name = "orders"
        sql = "SELECT status, count(*) AS n FROM orders GROUP BY status"
        labels = ["status"]
        [[queries.metrics]]
        name = "shop_orders"
        column = "n"
    "#;

    #[test]
    fn a_valid_config_passes_and_hides_its_dsn() {
        let c = cfg(BASE);
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn bad_scheme_and_missing_dsn_are_named() {
        let c = cfg(&BASE.replace("postgres://", "oracle://"));
        let KeyError { key, reason } = c.validate().unwrap_err();
        assert_eq!(key, "dsn");
        assert!(reason.contains("oracle"), "{reason}");
        assert!(!reason.contains("hunter2"));
        let c = cfg(&BASE.replace(r#"dsn = "postgres://u:hunter2@localhost/shop""#, ""));
        assert_eq!(c.validate().unwrap_err().key, "dsn");
    }

    #[test]
    fn counters_need_total_and_labels_must_be_valid() {
        let c = cfg(&BASE.replace("column = \"n\"", "column = \"n\"\nkind = \"counter\""));
        assert_eq!(c.validate().unwrap_err().key, "queries[0].metrics[0].name");
        let c = cfg(&BASE.replace("[\"status\"]", "[\"st-atus\"]"));
        assert_eq!(c.validate().unwrap_err().key, "queries[0].labels[0]");
    }

    #[test]
    fn numeric_binary_decodes() {
        // 12345.678 = digits [1, 2345, 6780], weight 1, dscale 3.
        let mut b = Vec::new();
        for w in [3u16, 1, 0, 3, 1, 2345, 6780] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert!((pg_numeric(&b).unwrap() - 12345.678).abs() < 1e-9);
        b[4] = 0x40;
        assert!((pg_numeric(&b).unwrap() + 12345.678).abs() < 1e-9);
        // zero: no digits
        let z = [0u8, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(pg_numeric(&z), Some(0.0));
        assert_eq!(pg_numeric(&[0, 1]), None);
    }

    #[test]
    fn rows_become_labelled_samples_and_bad_values_are_dropped() {
        let c = cfg(BASE);
        let q = Prepared::new("shop", &c, &c.queries[0]);
        let rows = vec![
            vec![Cell::Text("ok".into()), Cell::Num(3.0)],
            vec![Cell::Text("failed".into()), Cell::Text("x".into())],
            vec![Cell::Null, Cell::Null],
        ];
        let mut dropped = Vec::new();
        let s = q.samples(&rows, 1, &mut dropped);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].labels.as_str(), r#"{status="ok"}"#);
        assert_eq!(s[0].value, 3.0);
        assert_eq!(dropped, vec!["n".to_string()]);
        assert_eq!(&*q.key, "shop/orders");
    }
}
