//! Timestamps in payloads: epoch numbers (seconds, or milliseconds above
//! [`MS_THRESHOLD`]) and RFC 3339 text, shared by the mappings and the
//! backtest CSV reader.

/// Seconds below this are seconds; above, milliseconds (year 5138 in seconds).
pub const MS_THRESHOLD: f64 = 1e11;

/// Epoch seconds (or milliseconds) to milliseconds; negative, non-finite or
/// beyond year ~33658 is `None`.
pub fn number_timestamp(n: f64) -> Option<i64> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let ms = if n >= MS_THRESHOLD { n } else { n * 1000.0 };
    if ms > 1e15 {
        return None;
    }
    Some(ms as i64)
}

/// An epoch number or an RFC 3339 date-time, as text, to milliseconds.
pub fn text_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return number_timestamp(n);
    }
    parse_rfc3339(s)
}

/// Parse an RFC 3339 date-time (`2026-01-02T03:04:05.678+01:00`, `Z`, or a
/// space instead of `T`) to milliseconds since the Unix epoch, with `jiff`
/// (which refuses dates that do not exist, such as 2020-02-31).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}
