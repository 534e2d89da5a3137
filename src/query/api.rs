//! The HTTP side: routes, parameters, Prometheus' JSON envelope and the
//! request counters.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{IntCounterVec, Opts};

use super::eval::{EvalError, Limits, Output, Query};
use super::params::{self, Form, MAX_TIME_MS, MIN_TIME_MS};
use super::reader::{ReadError, SeriesReader};

/// Most events one `/api/v1/vitals/events` answer holds.
pub const MAX_EVENTS: usize = 10_000;

/// What the query routes share.
#[derive(Clone)]
pub struct ApiState {
    /// Where answers come from: the on-disk history's reader when
    /// `[history]` is on, else the in-memory store's; wrapped in
    /// [`super::remote::Composite`] with `prometheus_url`.
    pub reader: Arc<dyn SeriesReader>,
    pub limits: Limits,
    metrics: Arc<ApiMetrics>,
}

struct ApiMetrics {
    requests: IntCounterVec,
    remote_errors: IntCounterVec,
}

impl ApiState {
    /// Serve from `reader`, counting into `registry`
    /// (`vitals_query_requests_total{endpoint,code}`,
    /// `vitals_query_remote_errors_total{reason}`).
    pub fn new(reader: Arc<dyn SeriesReader>, registry: &prometheus::Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "vitals_query_requests_total",
                "Query API requests by endpoint and HTTP status code.",
            ),
            &["endpoint", "code"],
        )
        .expect("valid metric");
        let remote_errors = IntCounterVec::new(
            Opts::new(
                "vitals_query_remote_errors_total",
                "Failed reads from [history] prometheus_url, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        // A second state on the same registry (tests) shares nothing; the
        // first registration stays.
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(remote_errors.clone()));
        ApiState {
            reader,
            limits: Limits::default(),
            metrics: Arc::new(ApiMetrics {
                requests,
                remote_errors,
            }),
        }
    }

    /// The counter a [`super::remote::PromReader`] counts its failures in.
    pub fn remote_errors(&self) -> IntCounterVec {
        self.metrics.remote_errors.clone()
    }

    /// Replace the reader (keeping the counters).
    pub fn with_reader(mut self, reader: Arc<dyn SeriesReader>) -> Self {
        self.reader = reader;
        self
    }
}

/// The routes: `/api/v1/query_range`, `/api/v1/query`, `/api/v1/series`,
/// `/api/v1/labels`, `/api/v1/label/{name}/values` (GET and POST) and the
/// extension `/api/v1/vitals/events` (GET).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/vitals/events", get(events))
        .with_state(state)
}

/// An error answer: Prometheus' envelope.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_data",
            message: message.into(),
        }
    }
}

impl From<EvalError> for ApiError {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::BadData(m) => ApiError::bad(m),
            EvalError::TooMuch(m) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                kind: "execution",
                message: m,
            },
            EvalError::Read(r) => r.into(),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooMuch(m) => EvalError::TooMuch(m).into(),
            ReadError::Storage(_) => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "internal",
                message: e.to_string(),
            },
            ReadError::Remote { .. } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "unavailable",
                message: e.to_string(),
            },
        }
    }
}

impl From<params::BadParam> for ApiError {
    fn from(e: params::BadParam) -> Self {
        ApiError::bad(e.to_string())
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn finish(
    state: &ApiState,
    endpoint: &'static str,
    result: Result<(String, Vec<String>), ApiError>,
) -> Response {
    let (status, body) = match result {
        Ok((data, warnings)) => {
            let mut body = String::with_capacity(data.len() + 64);
            body.push_str("{\"status\":\"success\",\"data\":");
            body.push_str(&data);
            if !warnings.is_empty() {
                body.push_str(",\"warnings\":");
                body.push_str(&serde_json::to_string(&warnings).unwrap_or_default());
            }
            body.push('}');
            (StatusCode::OK, body)
        }
        Err(e) => (
            e.status,
            serde_json::json!({"status": "error", "errorType": e.kind, "error": e.message})
                .to_string(),
        ),
    };
    state
        .metrics
        .requests
        .with_label_values(&[endpoint, status.as_str()])
        .inc();
    json(status, body)
}

/// The request's form: URL query plus a form-encoded body.
fn form(query: Option<String>, headers: &HeaderMap, body: &Bytes) -> Form {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    Form::parse(
        query.as_deref().unwrap_or(""),
        if is_form { body } else { b"" },
    )
}

/// Run reader work off the async threads (a remote reader blocks).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            message: format!("query failed: {e}"),
        })
    })
}

fn now_ms() -> i64 {
    crate::model::now_ms()
}

fn query_text(form: &Form) -> String {
    form.get("query").unwrap_or("").to_string()
}

/// Check the optional `timeout` parameter as Prometheus does (a duration).
fn check_timeout(form: &Form) -> Result<(), ApiError> {
    if let Some(t) = form.get("timeout").filter(|t| !t.is_empty()) {
        params::parse_duration(t).map_err(|message| params::BadParam {
            name: "timeout",
            message,
        })?;
    }
    Ok(())
}

async fn query_range(
    State(state): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(q, &headers, &body);
    let s = state.clone();
    let result = async {
        let range = params::range_params(&f).map_err(|e| ApiError::bad(e.to_string()))?;
        check_timeout(&f)?;
        let query = Query::parse(&query_text(&f))?;
        blocking(move || {
            let out = query.range(
                s.reader.as_ref(),
                range.start,
                range.end,
                range.step,
                s.limits,
            )?;
            Ok((render(&out), Vec::new()))
        })
        .await
    }
    .await;
    finish(&state, "query_range", result)
}

async fn query(
    State(state): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(q, &headers, &body);
    let s = state.clone();
    let result = async {
        let time = params::time_param(&f, "time", now_ms())?;
        check_timeout(&f)?;
        let query = Query::parse(&query_text(&f))?;
        blocking(move || {
            let out = query.instant(s.reader.as_ref(), time, s.limits)?;
            Ok((render(&out), Vec::new()))
        })
        .await
    }
    .await;
    finish(&state, "query", result)
}

/// `start`/`end` of the metadata endpoints (default: all time) and their
/// `match[]` selectors.
fn metadata_params(
    f: &Form,
    required: bool,
) -> Result<(i64, i64, Vec<Vec<super::Matcher>>, Option<usize>), ApiError> {
    let start = params::time_param(f, "start", MIN_TIME_MS)?;
    let end = params::time_param(f, "end", MAX_TIME_MS)?;
    let matches = f.all("match[]");
    if required && matches.is_empty() {
        return Err(ApiError::bad("no match[] parameter provided"));
    }
    let mut selectors = Vec::with_capacity(matches.len());
    for m in matches {
        selectors.push(super::eval::parse_selector(m)?);
    }
    let limit = match f.get("limit").filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match l.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                return Err(ApiError::bad(format!(
                    "invalid parameter \"limit\": cannot parse {l:?} to a valid limit"
                )));
            }
        },
    };
    Ok((start, end, selectors, limit))
}

/// Label sets of every series matching any of `selectors` (all series
/// when none), without duplicates.
fn label_sets(
    reader: &dyn SeriesReader,
    selectors: &[Vec<super::Matcher>],
    start: i64,
    end: i64,
) -> Result<Vec<Vec<(String, String)>>, ApiError> {
    let every = [super::Matcher {
        name: "__name__".into(),
        op: super::MatchOp::Regex,
        value: ".+".into(),
        regex: regex::Regex::new("^(?:.+)$").ok(),
    }];
    let mut out = Vec::new();
    if selectors.is_empty() {
        out = reader.series(&every, start, end)?;
    }
    for m in selectors {
        out.extend(reader.series(m, start, end)?);
    }
    for l in &mut out {
        l.sort();
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn truncate<T>(v: &mut Vec<T>, limit: Option<usize>, warnings: &mut Vec<String>) {
    if let Some(n) = limit
        && v.len() > n
    {
        v.truncate(n);
        warnings.push("results truncated due to limit".into());
    }
}

async fn series(
    State(state): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(q, &headers, &body);
    let s = state.clone();
    let result = async {
        let (start, end, selectors, limit) = metadata_params(&f, true)?;
        blocking(move || {
            let mut sets = label_sets(s.reader.as_ref(), &selectors, start, end)?;
            let mut warnings = Vec::new();
            truncate(&mut sets, limit, &mut warnings);
            let mut out = String::from("[");
            for (i, l) in sets.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_labels(l, &mut out);
            }
            out.push(']');
            Ok((out, warnings))
        })
        .await
    }
    .await;
    finish(&state, "series", result)
}

async fn labels(
    State(state): State<ApiState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(q, &headers, &body);
    let s = state.clone();
    let result = async {
        let (start, end, selectors, limit) = metadata_params(&f, false)?;
        blocking(move || {
            let sets = label_sets(s.reader.as_ref(), &selectors, start, end)?;
            let mut names: Vec<String> = sets.into_iter().flatten().map(|(k, _)| k).collect();
            names.sort();
            names.dedup();
            let mut warnings = Vec::new();
            truncate(&mut names, limit, &mut warnings);
            Ok((serde_json::to_string(&names).unwrap_or_default(), warnings))
        })
        .await
    }
    .await;
    finish(&state, "labels", result)
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

async fn label_values(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let f = Form::parse(q.as_deref().unwrap_or(""), b"");
    let s = state.clone();
    let result = async {
        if !valid_label_name(&name) {
            return Err(ApiError::bad(format!("invalid label name: {name:?}")));
        }
        let (start, end, selectors, limit) = metadata_params(&f, false)?;
        blocking(move || {
            let sets = label_sets(s.reader.as_ref(), &selectors, start, end)?;
            let mut values: Vec<String> = sets
                .into_iter()
                .filter_map(|l| l.into_iter().find(|(k, _)| *k == name).map(|(_, v)| v))
                .collect();
            values.sort();
            values.dedup();
            let mut warnings = Vec::new();
            truncate(&mut values, limit, &mut warnings);
            Ok((serde_json::to_string(&values).unwrap_or_default(), warnings))
        })
        .await
    }
    .await;
    finish(&state, "label_values", result)
}

/// `GET /api/v1/vitals/events?start=&end=&limit=` (a vitals extension):
/// stored anomaly and rule events, oldest first. Defaults: the last hour,
/// 1,000 events; at most 10,000.
async fn events(State(state): State<ApiState>, RawQuery(q): RawQuery) -> Response {
    let f = Form::parse(q.as_deref().unwrap_or(""), b"");
    let s = state.clone();
    let result = async {
        let end = params::time_param(&f, "end", now_ms())?;
        let start = params::time_param(&f, "start", end - 3_600_000)?;
        if end < start {
            return Err(ApiError::bad(
                "invalid parameter \"end\": end timestamp must not be before start time",
            ));
        }
        let limit = match f.get("limit").filter(|l| !l.is_empty()) {
            None => 1000,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_EVENTS).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad(format!(
                        "invalid parameter \"limit\": {l:?} is not a whole number from 1 to {MAX_EVENTS}"
                    )));
                }
            },
        };
        blocking(move || {
            let events = s.reader.events(start, end, limit)?;
            Ok((serde_json::to_string(&events).unwrap_or_default(), Vec::new()))
        })
        .await
    }
    .await;
    finish(&state, "events", result)
}

/// A time in seconds as Prometheus writes it (a number, up to 3 decimals).
fn write_time(ms: i64, out: &mut String) {
    if ms < 0 {
        out.push('-');
    }
    let (secs, frac) = (ms.unsigned_abs() / 1000, ms.unsigned_abs() % 1000);
    out.push_str(itoa::Buffer::new().format(secs));
    if frac != 0 {
        let f = format!(".{frac:03}");
        out.push_str(f.trim_end_matches('0'));
    }
}

/// A value as Prometheus writes it: Go's `FormatFloat(v, 'f', -1, 64)`.
fn write_value(v: f64, out: &mut String) {
    out.push('"');
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        use std::fmt::Write;
        let _ = write!(out, "{v}");
    }
    out.push('"');
}

fn write_labels(labels: &[(String, String)], out: &mut String) {
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).unwrap_or_default());
        out.push(':');
        out.push_str(&serde_json::to_string(v).unwrap_or_default());
    }
    out.push('}');
}

fn write_point(t: i64, v: f64, out: &mut String) {
    out.push('[');
    write_time(t, out);
    out.push(',');
    write_value(v, out);
    out.push(']');
}

/// `data` of a query answer.
pub fn render(out: &Output) -> String {
    let mut s = String::new();
    match out {
        Output::Matrix(series) => {
            s.push_str("{\"resultType\":\"matrix\",\"result\":[");
            for (i, r) in series.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str("{\"metric\":");
                write_labels(&r.labels, &mut s);
                s.push_str(",\"values\":[");
                for (j, &(t, v)) in r.points.iter().enumerate() {
                    if j > 0 {
                        s.push(',');
                    }
                    write_point(t, v, &mut s);
                }
                s.push_str("]}");
            }
            s.push_str("]}");
        }
        Output::Vector(samples) => {
            s.push_str("{\"resultType\":\"vector\",\"result\":[");
            for (i, (labels, t, v)) in samples.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str("{\"metric\":");
                write_labels(labels, &mut s);
                s.push_str(",\"value\":");
                write_point(*t, *v, &mut s);
                s.push('}');
            }
            s.push_str("]}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::RangeSeries;

    #[test]
    fn answers_are_written_as_prometheus_writes_them() {
        let l = vec![("__name__".to_string(), "up".to_string())];
        let m = Output::Matrix(vec![RangeSeries {
            labels: l.clone(),
            points: vec![
                (1_700_000_000_000, 1.0),
                (1_700_000_000_500, 0.25),
                (-1500, f64::INFINITY),
            ],
        }]);
        assert_eq!(
            render(&m),
            r#"{"resultType":"matrix","result":[{"metric":{"__name__":"up"},"values":[[1700000000,"1"],[1700000000.5,"0.25"],[-1.5,"+Inf"]]}]}"#
        );
        let v = Output::Vector(vec![(l, 1_700_000_000_123, 1e21)]);
        assert_eq!(
            render(&v),
            r#"{"resultType":"vector","result":[{"metric":{"__name__":"up"},"value":[1700000000.123,"1000000000000000000000"]}]}"#
        );
        let empty = Output::Matrix(vec![]);
        let parsed: serde_json::Value = serde_json::from_str(&render(&empty)).unwrap();
        assert_eq!(parsed["result"], serde_json::json!([]));
    }
}
