//! Request parameters as Prometheus' HTTP API reads them: form values from
//! the URL query and (for `POST`) an `application/x-www-form-urlencoded`
//! body, times as RFC 3339 or Unix seconds, durations as `15s`/`1m30s` or
//! float seconds.

/// Form values of one request as Go's `ParseForm` holds them: the body's
/// values first, then the URL's. A repeated key (`match[]`) keeps every
/// value.
#[derive(Debug, Default, Clone)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Parse the URL's query string and a form body (either may be empty).
    pub fn parse(query: &str, body: &[u8]) -> Form {
        let pairs = form_urlencoded::parse(body)
            .chain(form_urlencoded::parse(query.as_bytes()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Form { pairs }
    }

    /// The first value of `key`, as Go's `FormValue` (a body value wins
    /// over the URL's).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key` (e.g. `match[]`).
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Earliest and latest times Prometheus accepts for `start`/`end` when
/// they are left out (its `MinTime`/`MaxTime`, in ms), clamped to what an
/// `i64` of milliseconds and RFC 3339 can express.
pub const MIN_TIME_MS: i64 = -62_135_596_800_000; // 0001-01-01T00:00:00Z
pub const MAX_TIME_MS: i64 = 253_402_300_799_000; // 9999-12-31T23:59:59Z

/// A parameter that does not parse: Prometheus' wording.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid parameter {name:?}: {message}")]
pub struct BadParam {
    pub name: &'static str,
    pub message: String,
}

/// Parse a time as Prometheus does (`parseTime`): Unix seconds as a float
/// (rounded to the millisecond) or RFC 3339; returns milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        let ms = (f * 1000.0).round();
        if ms >= MIN_TIME_MS as f64 && ms <= MAX_TIME_MS as f64 {
            return Ok(ms as i64);
        }
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    Err(format!("cannot parse {s:?} to a valid timestamp"))
}

/// Parse a duration as Prometheus does (`parseDuration`): float seconds or
/// a Prometheus duration (`1h30m`, `15s`, `500ms`, `1d`, `1w`, `1y`);
/// returns milliseconds (may be zero or negative for float input).
pub fn parse_duration(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = f * 1000.0;
        if !ms.is_finite() || ms.abs() > 9.2e15 {
            return Err(format!(
                "cannot parse {s:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(ms.round() as i64);
    }
    if is_prometheus_duration(s)
        && let Ok(d) = promql_parser::util::parse_duration(s)
        && let Ok(ms) = i64::try_from(d.as_millis())
    {
        return Ok(ms);
    }
    Err(format!("cannot parse {s:?} to a valid duration"))
}

/// Units in Prometheus' order, each at most once (`1h30m`, not `30m1h`).
fn is_prometheus_duration(s: &str) -> bool {
    const UNITS: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    let mut rest = s;
    let mut next = 0;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = if rest.starts_with("ms") {
            "ms"
        } else {
            match rest.get(..1) {
                Some(u) => u,
                None => return false,
            }
        };
        let Some(pos) = UNITS.iter().position(|u| *u == unit) else {
            return false;
        };
        if pos < next {
            return false;
        }
        next = pos + 1;
        rest = &rest[unit.len()..];
    }
    true
}

/// A time parameter; `default` when absent or empty.
pub fn time_param(form: &Form, name: &'static str, default: i64) -> Result<i64, BadParam> {
    match form.get(name) {
        None | Some("") => Ok(default),
        Some(s) => parse_time(s).map_err(|e| BadParam {
            name,
            // Prometheus' parseTimeParam wraps the error so.
            message: format!("Invalid time value for '{name}': {e}"),
        }),
    }
}

/// A required time parameter (`start`/`end` of `query_range`).
pub fn required_time(form: &Form, name: &'static str) -> Result<i64, BadParam> {
    parse_time(form.get(name).unwrap_or("")).map_err(|message| BadParam { name, message })
}

/// The most points one series may have in a range query (Prometheus'
/// limit).
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// A validated range: `start..=end` every `step` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl Range {
    /// Number of evaluation steps.
    pub fn steps(&self) -> i64 {
        (self.end - self.start) / self.step + 1
    }

    /// The evaluation times.
    pub fn times(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.steps()).map(move |i| self.start + i * self.step)
    }
}

/// Why a range query's parameters were refused (Prometheus' messages).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RangeError {
    #[error(transparent)]
    Param(#[from] BadParam),
    #[error("invalid parameter \"end\": end timestamp must not be before start time")]
    EndBeforeStart,
    #[error(
        "zero or negative query resolution step widths are not accepted. Try a positive integer"
    )]
    Step,
    #[error(
        "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
    )]
    Resolution,
}

/// `start`, `end`, `step` of `query_range`, checked as Prometheus does.
pub fn range_params(form: &Form) -> Result<Range, RangeError> {
    let start = required_time(form, "start")?;
    let end = required_time(form, "end")?;
    if end < start {
        return Err(RangeError::EndBeforeStart);
    }
    let step = parse_duration(form.get("step").unwrap_or("")).map_err(|message| BadParam {
        name: "step",
        message,
    })?;
    if step <= 0 {
        return Err(RangeError::Step);
    }
    if (end - start) / step > MAX_POINTS_PER_SERIES {
        return Err(RangeError::Resolution);
    }
    Ok(Range { start, end, step })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(q: &str) -> Form {
        Form::parse(q, b"")
    }

    #[test]
    fn times_parse_as_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("1700000000.1234"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("-1.5"), Ok(-1500));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            parse_time("yesterday"),
            Err("cannot parse \"yesterday\" to a valid timestamp".into())
        );
        assert!(parse_time("").is_err());
        assert!(parse_time("NaN").is_err());
        assert!(parse_time("1e300").is_err());
    }

    #[test]
    fn durations_parse_as_prometheus_durations_or_float_seconds() {
        assert_eq!(parse_duration("15s"), Ok(15_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("1d"), Ok(86_400_000));
        assert_eq!(parse_duration("2.5"), Ok(2_500));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("-3"), Ok(-3_000));
        assert!(parse_duration("30m1h").is_err(), "units out of order");
        assert!(parse_duration("1.5m").is_err());
        assert!(parse_duration("5 s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e300").is_err());
    }

    #[test]
    fn repeated_keys_and_post_bodies_are_read_like_prometheus() {
        let f = Form::parse(
            "match[]=up&match[]=%7Bjob%3D%22a%22%7D&start=1",
            b"match[]=x&end=2",
        );
        assert_eq!(f.all("match[]"), vec!["x", "up", "{job=\"a\"}"]);
        assert_eq!(f.get("start"), Some("1"));
        assert_eq!(f.get("end"), Some("2"));
        assert_eq!(f.get("step"), None);
        let plus = Form::parse("", b"query=a+%2B+b");
        assert_eq!(plus.get("query"), Some("a + b"));
    }

    #[test]
    fn range_parameters_are_checked_in_prometheus_order() {
        assert_eq!(
            range_params(&form("start=10&end=70&step=15s")),
            Ok(Range {
                start: 10_000,
                end: 70_000,
                step: 15_000
            })
        );
        let e = |q: &str| range_params(&form(q)).unwrap_err().to_string();
        assert_eq!(
            e("end=1&step=1"),
            "invalid parameter \"start\": cannot parse \"\" to a valid timestamp"
        );
        assert_eq!(
            e("start=2&end=1&step=1"),
            "end timestamp must not be before start time"
        );
        assert_eq!(
            e("start=1&end=2&step=x"),
            "invalid parameter \"step\": cannot parse \"x\" to a valid duration"
        );
        assert!(
            e("start=1&end=2&step=0").starts_with("invalid parameter \"step\": zero or negative")
        );
        assert!(e("start=0&end=11001&step=1").starts_with("exceeded maximum resolution"));
        // Exactly 11,000 intervals (11,001 points) is what Prometheus allows.
        assert!(range_params(&form("start=0&end=11000&step=1")).is_ok());
    }

    #[test]
    fn range_times_are_start_then_every_step_up_to_end() {
        let r = Range {
            start: 0,
            end: 25,
            step: 10,
        };
        assert_eq!(r.times().collect::<Vec<_>>(), vec![0, 10, 20]);
        assert_eq!(r.steps(), 3);
    }
}
