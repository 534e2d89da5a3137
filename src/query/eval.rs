//! The supported PromQL subset, parsed with `promql-parser` and evaluated
//! over a [`SeriesReader`]: series selectors (`=`, `!=`, `=~`, `!~`,
//! `offset`), range selectors in instant queries, `rate`, `increase`,
//! `{avg,min,max,sum,count,last}_over_time`, and `sum`/`avg`/`min`/`max`/
//! `count` with `by`/`without` over those.

use promql_parser::parser::{self, Expr, Offset, token};

use super::reader::{MatchOp, Matcher, RangeSeries, ReadError, SeriesReader};

/// Prometheus' default lookback: an instant selector at `t` takes the
/// latest point in `(t - 5m, t]`.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// What the query layer refuses, one line for the error message.
pub const SUPPORTED: &str = "vitals answers series selectors (=, !=, =~, !~ matchers, offset), \
     range selectors in instant queries, rate, increase, avg/min/max/sum/count/last_over_time, \
     and sum/avg/min/max/count [by|without (...)] of those";

/// Bounds on the work of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most series one selector may return.
    pub max_series: usize,
    /// Most points read from the reader plus points answered, per request.
    pub max_samples: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_series: 10_000,
            max_samples: 5_000_000,
        }
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Unparsable or outside the supported subset (400 `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// Over a limit (422 `execution`).
    #[error("{0}")]
    TooMuch(String),
    #[error(transparent)]
    Read(ReadError),
}

impl From<ReadError> for EvalError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooMuch(m) => EvalError::TooMuch(m),
            other => EvalError::Read(other),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Rate,
    Increase,
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agg {
    Sum,
    Avg,
    Min,
    Max,
    Count,
}

#[derive(Debug, Clone)]
struct Selector {
    matchers: Vec<Matcher>,
    offset_ms: i64,
}

/// A parsed, supported query.
#[derive(Debug, Clone)]
enum Plan {
    /// `x{...}`: an instant vector.
    Instant(Selector),
    /// `x{...}[5m]`: a range vector (instant queries only).
    Range(Selector, i64),
    /// `fn(x{...}[5m])`.
    Window(Func, Selector, i64),
    /// `agg by|without (...) (inner)`.
    Aggregate {
        op: Agg,
        /// `true`: `without`; the labels listed.
        without: bool,
        labels: Vec<String>,
        inner: Box<Plan>,
    },
}

/// A parsed query.
#[derive(Debug, Clone)]
pub struct Query {
    plan: Plan,
}

/// One labelled series of the answer.
pub type Labels = Vec<(String, String)>;

/// The answer of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// `resultType: matrix`.
    Matrix(Vec<RangeSeries>),
    /// `resultType: vector`: labels, time (ms), value.
    Vector(Vec<(Labels, i64, f64)>),
}

fn unsupported(what: &str) -> EvalError {
    EvalError::BadData(format!("unsupported query: {what}; {SUPPORTED}"))
}

fn selector(vs: &parser::VectorSelector) -> Result<Selector, EvalError> {
    if vs.at.is_some() {
        return Err(unsupported("the @ modifier"));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(unsupported("`or` inside label matchers"));
    }
    let offset_ms = match &vs.offset {
        None => 0,
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
    };
    let mut matchers = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    for m in &vs.matchers.matchers {
        matchers.push(convert(m));
    }
    if let Some(name) = &vs.name
        && !matchers
            .iter()
            .any(|m| m.name == "__name__" && m.op == MatchOp::Equal && &m.value == name)
    {
        matchers.push(Matcher {
            name: "__name__".into(),
            op: MatchOp::Equal,
            value: name.clone(),
            regex: None,
        });
    }
    if matchers.iter().all(|m| m.matches("")) {
        return Err(EvalError::BadData(
            "vector selector must contain at least one non-empty matcher".into(),
        ));
    }
    Ok(Selector {
        matchers,
        offset_ms,
    })
}

/// A `promql-parser` matcher as the reader's.
pub fn convert(m: &promql_parser::label::Matcher) -> Matcher {
    use promql_parser::label::MatchOp as P;
    let (op, regex) = match &m.op {
        P::Equal => (MatchOp::Equal, None),
        P::NotEqual => (MatchOp::NotEqual, None),
        P::Re(r) => (MatchOp::Regex, Some(r.clone())),
        P::NotRe(r) => (MatchOp::NotRegex, Some(r.clone())),
    };
    Matcher {
        name: m.name.clone(),
        op,
        value: m.value.clone(),
        regex,
    }
}

/// Parse a `match[]` value: a series selector only.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, EvalError> {
    match parser::parse(s).map_err(|e| EvalError::BadData(format!("1:1: parse error: {e}")))? {
        Expr::VectorSelector(vs) => Ok(selector(&vs)?.matchers),
        _ => Err(EvalError::BadData(format!(
            "invalid parameter \"match[]\": {s:?} is not a series selector"
        ))),
    }
}

fn plan(expr: &Expr) -> Result<Plan, EvalError> {
    match expr {
        Expr::Paren(p) => plan(&p.expr),
        Expr::VectorSelector(vs) => Ok(Plan::Instant(selector(vs)?)),
        Expr::MatrixSelector(ms) => Ok(Plan::Range(selector(&ms.vs)?, ms.range.as_millis() as i64)),
        Expr::Call(call) => {
            let func = match call.func.name {
                "rate" => Func::Rate,
                "increase" => Func::Increase,
                "avg_over_time" => Func::Avg,
                "min_over_time" => Func::Min,
                "max_over_time" => Func::Max,
                "sum_over_time" => Func::Sum,
                "count_over_time" => Func::Count,
                "last_over_time" => Func::Last,
                other => return Err(unsupported(&format!("function {other}()"))),
            };
            match call.args.args.first().map(|a| a.as_ref()) {
                Some(Expr::MatrixSelector(ms)) if call.args.args.len() == 1 => Ok(Plan::Window(
                    func,
                    selector(&ms.vs)?,
                    ms.range.as_millis() as i64,
                )),
                _ => Err(unsupported(&format!(
                    "{}() of anything but a range selector",
                    call.func.name
                ))),
            }
        }
        Expr::Aggregate(a) => {
            let op = match a.op.id() {
                token::T_SUM => Agg::Sum,
                token::T_AVG => Agg::Avg,
                token::T_MIN => Agg::Min,
                token::T_MAX => Agg::Max,
                token::T_COUNT => Agg::Count,
                _ => return Err(unsupported(&format!("aggregation {}", a.op))),
            };
            if a.param.is_some() {
                return Err(unsupported("aggregation parameters"));
            }
            let (without, labels) = match &a.modifier {
                None => (false, Vec::new()),
                Some(parser::LabelModifier::Include(l)) => (false, l.labels.clone()),
                Some(parser::LabelModifier::Exclude(l)) => (true, l.labels.clone()),
            };
            let inner = plan(&a.expr)?;
            if matches!(inner, Plan::Range(..)) {
                return Err(EvalError::BadData(
                    "expected type instant vector in aggregation expression, got range vector"
                        .into(),
                ));
            }
            Ok(Plan::Aggregate {
                op,
                without,
                labels,
                inner: Box::new(inner),
            })
        }
        Expr::Binary(_) => Err(unsupported("binary expressions")),
        Expr::Unary(_) => Err(unsupported("unary expressions")),
        Expr::Subquery(_) => Err(unsupported("subqueries")),
        Expr::NumberLiteral(_) => Err(unsupported("number literals")),
        Expr::StringLiteral(_) => Err(unsupported("string literals")),
        Expr::Extension(_) => Err(unsupported("extensions")),
    }
}

impl Query {
    /// Parse and check a query; errors are Prometheus-style `bad_data`.
    pub fn parse(s: &str) -> Result<Query, EvalError> {
        if s.trim().is_empty() {
            return Err(EvalError::BadData(
                "invalid parameter \"query\": unknown position: parse error: no expression found in input"
                    .into(),
            ));
        }
        let expr = parser::parse(s).map_err(|e| EvalError::BadData(format!("parse error: {e}")))?;
        Ok(Query { plan: plan(&expr)? })
    }

    /// Is it a bare range selector (matrix answer to an instant query; not
    /// allowed in range queries)?
    pub fn is_range_vector(&self) -> bool {
        matches!(self.plan, Plan::Range(..))
    }

    /// Evaluate at `start..=end` every `step` (ms): a matrix.
    pub fn range(
        &self,
        reader: &dyn SeriesReader,
        start: i64,
        end: i64,
        step: i64,
        limits: Limits,
    ) -> Result<Output, EvalError> {
        if self.is_range_vector() {
            return Err(EvalError::BadData(
                "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector"
                    .into(),
            ));
        }
        let times: Vec<i64> = (0..=(end - start) / step)
            .map(|i| start + i * step)
            .collect();
        let mut budget = Budget::new(limits);
        let series = eval(&self.plan, reader, &times, step, &mut budget)?;
        Ok(Output::Matrix(series))
    }

    /// Evaluate at `time` (ms): a vector, or a matrix for a range selector.
    pub fn instant(
        &self,
        reader: &dyn SeriesReader,
        time: i64,
        limits: Limits,
    ) -> Result<Output, EvalError> {
        let mut budget = Budget::new(limits);
        if let Plan::Range(sel, range) = &self.plan {
            let t = time - sel.offset_ms;
            let mut out = fetch(reader, sel, t - range, t, *range, &mut budget)?;
            for s in &mut out {
                s.points.retain(|&(pt, _)| pt > t - range && pt <= t);
                // Points keep their own timestamps, shifted by the offset.
                for p in &mut s.points {
                    p.0 += sel.offset_ms;
                }
            }
            out.retain(|s| !s.points.is_empty());
            return Ok(Output::Matrix(out));
        }
        let series = eval(&self.plan, reader, &[time], LOOKBACK_MS, &mut budget)?;
        Ok(Output::Vector(
            series
                .into_iter()
                .filter_map(|s| s.points.first().map(|&(t, v)| (s.labels, t, v)))
                .collect(),
        ))
    }
}

/// Counted work of one request.
struct Budget {
    limits: Limits,
    samples: usize,
}

impl Budget {
    fn new(limits: Limits) -> Self {
        Budget { limits, samples: 0 }
    }

    fn add(&mut self, n: usize) -> Result<(), EvalError> {
        self.samples += n;
        if self.samples > self.limits.max_samples {
            return Err(EvalError::TooMuch(format!(
                "query processing would load too many samples into memory in query execution (more than {})",
                self.limits.max_samples
            )));
        }
        Ok(())
    }
}

fn fetch(
    reader: &dyn SeriesReader,
    sel: &Selector,
    from: i64,
    to: i64,
    step: i64,
    budget: &mut Budget,
) -> Result<Vec<RangeSeries>, EvalError> {
    let out = reader.select(&sel.matchers, from, to, step)?;
    if out.len() > budget.limits.max_series {
        return Err(EvalError::TooMuch(format!(
            "the selector matches {} series, more than the limit of {}",
            out.len(),
            budget.limits.max_series
        )));
    }
    budget.add(out.iter().map(|s| s.points.len()).sum())?;
    Ok(out)
}

fn without_name(labels: &[(String, String)]) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| k != "__name__")
        .cloned()
        .collect()
}

fn eval(
    plan: &Plan,
    reader: &dyn SeriesReader,
    times: &[i64],
    step: i64,
    budget: &mut Budget,
) -> Result<Vec<RangeSeries>, EvalError> {
    let (first, last) = (times[0], times[times.len() - 1]);
    let out = match plan {
        Plan::Instant(sel) => {
            let raw = fetch(
                reader,
                sel,
                first - sel.offset_ms - LOOKBACK_MS,
                last - sel.offset_ms,
                step,
                budget,
            )?;
            raw.into_iter()
                .map(|s| RangeSeries {
                    points: align(&s.points, times, sel.offset_ms),
                    labels: s.labels,
                })
                .collect()
        }
        Plan::Range(..) => {
            return Err(EvalError::BadData(
                "expected an instant vector, got a range vector".into(),
            ));
        }
        Plan::Window(func, sel, range) => {
            let raw = fetch(
                reader,
                sel,
                first - sel.offset_ms - range,
                last - sel.offset_ms,
                step.min(*range),
                budget,
            )?;
            raw.into_iter()
                .map(|s| RangeSeries {
                    points: windows(*func, &s.points, times, sel.offset_ms, *range),
                    labels: if *func == Func::Last {
                        s.labels
                    } else {
                        without_name(&s.labels)
                    },
                })
                .collect()
        }
        Plan::Aggregate {
            op,
            without,
            labels,
            inner,
        } => {
            let inner = eval(inner, reader, times, step, budget)?;
            aggregate(*op, *without, labels, inner, times)
        }
    };
    let mut out: Vec<RangeSeries> = out.into_iter().filter(|s| !s.points.is_empty()).collect();
    budget.add(out.iter().map(|s| s.points.len()).sum())?;
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

/// For each evaluation time `t`, the latest point in
/// `(t - offset - 5m, t - offset]`, stamped `t` (Prometheus' lookback).
/// `points` and `times` ascend.
pub fn align(points: &[(i64, f64)], times: &[i64], offset_ms: i64) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let mut i = 0; // first point after the current time
    for &t in times {
        let at = t - offset_ms;
        while i < points.len() && points[i].0 <= at {
            i += 1;
        }
        if i > 0 {
            let (pt, v) = points[i - 1];
            if pt > at - LOOKBACK_MS {
                out.push((t, v));
            }
        }
    }
    out
}

/// `func` over the points in `(t - offset - range, t - offset]` for each
/// time `t`.
fn windows(
    func: Func,
    points: &[(i64, f64)],
    times: &[i64],
    offset_ms: i64,
    range: i64,
) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let (mut lo, mut hi) = (0, 0);
    for &t in times {
        let at = t - offset_ms;
        while hi < points.len() && points[hi].0 <= at {
            hi += 1;
        }
        while lo < hi && points[lo].0 <= at - range {
            lo += 1;
        }
        let w = &points[lo..hi];
        if w.is_empty() {
            continue;
        }
        let vals = w.iter().map(|p| p.1);
        let v = match func {
            Func::Sum => vals.sum(),
            Func::Avg => vals.sum::<f64>() / w.len() as f64,
            Func::Min => vals.fold(f64::NAN, |a, b| if a.is_nan() || b < a { b } else { a }),
            Func::Max => vals.fold(f64::NAN, |a, b| if a.is_nan() || b > a { b } else { a }),
            Func::Count => w.len() as f64,
            Func::Last => w[w.len() - 1].1,
            Func::Rate | Func::Increase => {
                match extrapolated_rate(w, at - range, at, func == Func::Rate) {
                    Some(v) => v,
                    None => continue,
                }
            }
        };
        out.push((t, v));
    }
    out
}

/// Prometheus' `rate`/`increase` of a counter over the window
/// `(range_start, range_end]`: the increase between the first and last
/// points (counter resets added back), extrapolated towards the window's
/// edges when the points reach close enough to them.
fn extrapolated_rate(
    w: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    rate: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (first, last) = (w[0], w[w.len() - 1]);
    let mut delta = last.1 - first.1;
    for pair in w.windows(2) {
        if pair[1].1 < pair[0].1 {
            delta += pair[0].1;
        }
    }
    let secs = |ms: i64| ms as f64 / 1000.0;
    let sampled = secs(last.0 - first.0);
    let avg_gap = sampled / (w.len() - 1) as f64;
    let mut to_start = secs(first.0 - range_start);
    let to_end = secs(range_end - last.0);
    if delta > 0.0 && first.1 >= 0.0 {
        // A counter does not go below zero: extrapolate no further back
        // than where it would have been zero.
        to_start = to_start.min(sampled * (first.1 / delta));
    }
    let threshold = avg_gap * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_gap / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_gap / 2.0
    };
    let mut v = delta * (interval / sampled);
    if rate {
        v /= secs(range_end - range_start);
    }
    Some(v)
}

fn aggregate(
    op: Agg,
    without: bool,
    by: &[String],
    inner: Vec<RangeSeries>,
    times: &[i64],
) -> Vec<RangeSeries> {
    use std::collections::BTreeMap;
    // Group key → per-time accumulators (sum, count, min, max).
    let mut groups: BTreeMap<Labels, BTreeMap<i64, (f64, f64, f64, f64)>> = BTreeMap::new();
    for s in inner {
        let key: Labels = s
            .labels
            .into_iter()
            .filter(|(k, _)| {
                if without {
                    k != "__name__" && !by.contains(k)
                } else {
                    by.contains(k)
                }
            })
            .collect();
        let g = groups.entry(key).or_default();
        for (t, v) in s.points {
            let e = g.entry(t).or_insert((0.0, 0.0, v, v));
            e.0 += v;
            e.1 += 1.0;
            if v < e.2 || e.2.is_nan() {
                e.2 = v;
            }
            if v > e.3 || e.3.is_nan() {
                e.3 = v;
            }
        }
    }
    let _ = times;
    groups
        .into_iter()
        .map(|(labels, g)| RangeSeries {
            labels,
            points: g
                .into_iter()
                .map(|(t, (sum, n, min, max))| {
                    let v = match op {
                        Agg::Sum => sum,
                        Agg::Avg => sum / n,
                        Agg::Min => min,
                        Agg::Max => max,
                        Agg::Count => n,
                    };
                    (t, v)
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000;

    #[test]
    fn alignment_takes_the_latest_point_within_the_lookback() {
        let pts = [(10_000, 1.0), (70_000, 2.0), (75_000, 3.0)];
        // Before the first point: nothing; at a point: that point; between:
        // the latest before.
        let times = [0, 10_000, 60_000, 74_999, 75_000, 90_000];
        assert_eq!(
            align(&pts, &times, 0),
            vec![
                (10_000, 1.0),
                (60_000, 1.0),
                (74_999, 2.0),
                (75_000, 3.0),
                (90_000, 3.0)
            ]
        );
    }

    #[test]
    fn alignment_forgets_a_point_older_than_five_minutes() {
        let pts = [(0, 1.0)];
        let times = [4 * M, 5 * M - 1, 5 * M, 6 * M];
        // (t - 5m, t]: at exactly 5 minutes the point is out (left-open).
        assert_eq!(align(&pts, &times, 0), vec![(4 * M, 1.0), (5 * M - 1, 1.0)]);
    }

    #[test]
    fn alignment_honours_the_offset() {
        let pts = [(0, 1.0), (M, 2.0)];
        assert_eq!(align(&pts, &[M, 2 * M], M), vec![(M, 1.0), (2 * M, 2.0)]);
    }

    #[test]
    fn rate_matches_prometheus_extrapolation() {
        // A counter rising 1/s, sampled every 10 s from t=10s to t=60s,
        // window (0, 60s]: increase 50 over 50 s, extrapolated to the start
        // by 10 s (less than 1.1 × the 10 s gap) → 60; rate 1/s.
        let w: Vec<(i64, f64)> = (1..=6)
            .map(|i| (i * 10_000, 100.0 + i as f64 * 10.0))
            .collect();
        let inc = extrapolated_rate(&w, 0, 60_000, false).unwrap();
        assert!((inc - 60.0).abs() < 1e-9, "{inc}");
        let r = extrapolated_rate(&w, 0, 60_000, true).unwrap();
        assert!((r - 1.0).abs() < 1e-9, "{r}");
        // A reset (110 → 5) adds the value before it back.
        let reset = [(0, 100.0), (10_000, 110.0), (20_000, 5.0)];
        let inc = extrapolated_rate(&reset, -1, 20_000, false).unwrap();
        assert!((inc - 15.0).abs() < 0.01, "{inc}");
        assert!(extrapolated_rate(&w[..1], 0, 60_000, true).is_none());
    }

    #[test]
    fn parses_the_supported_subset_and_names_it_otherwise() {
        for ok in [
            "up",
            r#"up{job="a",instance!="b",x=~"c.*",y!~"d"}"#,
            r#"{__name__=~"vitals_.+"}"#,
            "up offset 5m",
            "up[5m]",
            "rate(x_total[1m])",
            "max_over_time(x[10m])",
            "sum by (job) (rate(x[1m]))",
            "avg without (instance) (x)",
        ] {
            Query::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("up + 1", "binary expressions"),
            (
                "histogram_quantile(0.9, x)",
                "function histogram_quantile()",
            ),
            ("topk(3, x)", "aggregation"),
            ("up @ 100", "@ modifier"),
            ("1", "number literals"),
        ] {
            let e = Query::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(SUPPORTED), "{bad}: {e}");
        }
        assert!(Query::parse("up{").is_err());
        assert!(
            Query::parse(r#"{job=~".*"}"#)
                .unwrap_err()
                .to_string()
                .contains("non-empty")
        );
    }
}
