//! `[history] prometheus_url`: a [`SeriesReader`] over a Prometheus that
//! scrapes this vitals (its `/api/v1/query_range` and `/api/v1/series`),
//! and [`Composite`], which reads ranges older than the local reader's
//! oldest point from it.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use serde::Deserialize;

use super::reader::{MatchOp, Matcher, RangeSeries, ReadError, SeriesReader, StoredEvent};

/// How long one request to the remote Prometheus may take.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Labels Prometheus attaches to what it scrapes; vitals' own series do
/// not have them, so they are dropped to line remote series up with local.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Reads from a remote Prometheus. Calls block: use it from a blocking
/// thread (`tokio::task::spawn_blocking`) of a Tokio runtime.
pub struct PromReader {
    base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    /// `vitals_query_remote_errors_total{reason}`.
    errors: IntCounterVec,
}

#[derive(Deserialize)]
struct Answer<T> {
    status: String,
    // Missing is `None` (serde's rule for `Option` fields).
    data: Option<T>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Matrix {
    result: Vec<MatrixSeries>,
}

#[derive(Deserialize)]
struct MatrixSeries {
    metric: std::collections::BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

impl PromReader {
    /// A reader of the Prometheus at `url` (`http://host:9090`, with or
    /// without a path prefix), counting failures in `errors`.
    pub fn new(
        url: &str,
        runtime: tokio::runtime::Handle,
        errors: IntCounterVec,
    ) -> Result<Self, ReadError> {
        let client = reqwest::Client::builder()
            .timeout(REMOTE_TIMEOUT)
            .build()
            .map_err(|e| ReadError::Remote {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        Ok(PromReader {
            base: url.trim_end_matches('/').to_string(),
            client,
            runtime,
            errors,
        })
    }

    fn fail(&self, reason: &'static str, message: String) -> ReadError {
        self.errors.with_label_values(&[reason]).inc();
        ReadError::Remote {
            url: self.base.clone(),
            message,
        }
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        form: &[(&str, String)],
    ) -> Result<T, ReadError> {
        let url = format!("{}{path}", self.base);
        let req = self.client.post(&url).form(form);
        let result = self.runtime.block_on(async {
            let resp = req.send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = result.map_err(|e| {
            let reason = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "request"
            };
            self.fail(reason, e.to_string())
        })?;
        let answer: Answer<T> = serde_json::from_slice(&body)
            .map_err(|e| self.fail("decode", format!("HTTP {status}, undecodable answer: {e}")))?;
        match (answer.status.as_str(), answer.data) {
            ("success", Some(data)) => Ok(data),
            _ => Err(self.fail(
                "status",
                format!(
                    "HTTP {status}: {}",
                    answer.error.unwrap_or_else(|| "no data".into())
                ),
            )),
        }
    }
}

/// A selector in PromQL text.
pub fn selector_text(matchers: &[Matcher]) -> String {
    let mut s = String::from("{");
    for (i, m) in matchers.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&m.name);
        s.push_str(match m.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        });
        // A JSON string is a valid PromQL double-quoted string.
        s.push_str(&serde_json::to_string(&m.value).unwrap_or_default());
    }
    s.push('}');
    s
}

fn seconds(ms: i64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

fn local_labels(metric: std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    metric
        .into_iter()
        .filter(|(k, _)| !TARGET_LABELS.contains(&k.as_str()))
        .collect()
}

impl SeriesReader for PromReader {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<RangeSeries>, ReadError> {
        // Within Prometheus' 11,000 points per series.
        let step = step_ms.max(1000).max((end_ms - start_ms) / 10_000 + 1);
        let m: Matrix = self.post(
            "/api/v1/query_range",
            &[
                ("query", selector_text(matchers)),
                ("start", seconds(start_ms)),
                ("end", seconds(end_ms)),
                ("step", seconds(step)),
            ],
        )?;
        let mut out: Vec<RangeSeries> = Vec::with_capacity(m.result.len());
        for s in m.result {
            let points = s
                .values
                .into_iter()
                .filter_map(|(t, v)| Some(((t * 1000.0).round() as i64, parse_value(&v)?)))
                .collect();
            out.push(RangeSeries {
                labels: local_labels(s.metric),
                points,
            });
        }
        Ok(out)
    }

    fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Vec<(String, String)>>, ReadError> {
        let list: Vec<std::collections::BTreeMap<String, String>> = self.post(
            "/api/v1/series",
            &[
                ("match[]", selector_text(matchers)),
                ("start", seconds(start_ms)),
                ("end", seconds(end_ms)),
            ],
        )?;
        Ok(list.into_iter().map(local_labels).collect())
    }

    fn events(&self, _: i64, _: i64, _: usize) -> Result<Vec<StoredEvent>, ReadError> {
        Ok(Vec::new())
    }

    fn oldest_ms(&self) -> Option<i64> {
        None
    }
}

/// A sample value as Prometheus writes it.
fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

/// Local history first; what is older than its oldest point comes from
/// the remote reader, for the series vitals exports (the names the local
/// reader knows for the selector).
pub struct Composite {
    pub local: Arc<dyn SeriesReader>,
    pub remote: Arc<dyn SeriesReader>,
}

impl Composite {
    /// The selector restricted to the metric names local history has for
    /// it; `None` when it has none (the remote is then not asked).
    fn exported(&self, matchers: &[Matcher]) -> Result<Option<Vec<Matcher>>, ReadError> {
        let mut names: Vec<String> = self
            .local
            .series(
                matchers,
                super::params::MIN_TIME_MS,
                super::params::MAX_TIME_MS,
            )?
            .into_iter()
            .filter_map(|l| l.into_iter().find(|(k, _)| k == "__name__").map(|(_, v)| v))
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Ok(None);
        }
        let alternatives: Vec<String> = names.iter().map(|n| regex::escape(n)).collect();
        let value = alternatives.join("|");
        let mut out = matchers.to_vec();
        out.push(Matcher {
            name: "__name__".into(),
            op: MatchOp::Regex,
            regex: regex::Regex::new(&format!("^(?:{value})$")).ok(),
            value,
        });
        Ok(Some(out))
    }

    /// Where the local reader begins, if the range starts before it.
    fn split(&self, start_ms: i64) -> Option<i64> {
        match self.local.oldest_ms() {
            Some(oldest) if start_ms < oldest => Some(oldest),
            // Nothing local: everything is older than local history.
            None => Some(i64::MAX),
            _ => None,
        }
    }
}

/// Merge `older` (remote) into `newer` (local) by label set: a series'
/// remote points before its first local point come first.
fn merge(newer: Vec<RangeSeries>, older: Vec<RangeSeries>) -> Vec<RangeSeries> {
    let mut by: std::collections::BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>> =
        std::collections::BTreeMap::new();
    for s in older {
        by.entry(s.labels).or_default().extend(s.points);
    }
    for s in newer {
        let e = by.entry(s.labels).or_default();
        if let Some(&(first, _)) = s.points.first() {
            e.retain(|&(t, _)| t < first);
        }
        e.extend(s.points);
    }
    by.into_iter()
        .map(|(labels, mut points)| {
            points.sort_by_key(|p| p.0);
            points.dedup_by_key(|p| p.0);
            RangeSeries { labels, points }
        })
        .collect()
}

impl SeriesReader for Composite {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<RangeSeries>, ReadError> {
        let local = self.local.select(matchers, start_ms, end_ms, step_ms)?;
        let Some(oldest) = self.split(start_ms) else {
            return Ok(local);
        };
        let Some(exported) = self.exported(matchers)? else {
            return Ok(local);
        };
        let remote = match self.remote.select(
            &exported,
            start_ms,
            end_ms.min(oldest.saturating_sub(1)),
            step_ms,
        ) {
            Ok(r) => r,
            Err(error) => {
                // The local part still answers; the failure is counted.
                tracing::warn!(%error, "Reading older history from Prometheus failed; answering from local history only.");
                return Ok(local);
            }
        };
        Ok(merge(local, remote))
    }

    fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Vec<(String, String)>>, ReadError> {
        let mut local = self.local.series(matchers, start_ms, end_ms)?;
        if self.split(start_ms).is_some()
            && let Some(exported) = self.exported(matchers)?
        {
            match self.remote.series(&exported, start_ms, end_ms) {
                Ok(remote) => local.extend(remote),
                Err(error) => {
                    tracing::warn!(%error, "Reading older series from Prometheus failed; answering from local history only.")
                }
            }
        }
        local.sort();
        local.dedup();
        Ok(local)
    }

    fn events(
        &self,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, ReadError> {
        self.local.events(start_ms, end_ms, limit)
    }

    fn oldest_ms(&self) -> Option<i64> {
        self.local.oldest_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_written_as_promql() {
        let m = [
            Matcher {
                name: "__name__".into(),
                op: MatchOp::Equal,
                value: "up".into(),
                regex: None,
            },
            Matcher {
                name: "path".into(),
                op: MatchOp::Regex,
                value: "C:\\\\x\"".into(),
                regex: None,
            },
        ];
        assert_eq!(selector_text(&m), r#"{__name__="up",path=~"C:\\\\x\""}"#);
        let parsed = super::super::eval::parse_selector(&selector_text(&m)).unwrap();
        assert_eq!(parsed[1].value, m[1].value);
    }

    #[test]
    fn older_remote_points_come_before_local_ones() {
        let l = |v: &str| vec![("__name__".to_string(), v.to_string())];
        let local = vec![RangeSeries {
            labels: l("a"),
            points: vec![(100, 1.0), (200, 2.0)],
        }];
        let remote = vec![
            RangeSeries {
                labels: l("a"),
                points: vec![(50, 0.5), (100, 9.0), (150, 9.0)],
            },
            RangeSeries {
                labels: l("b"),
                points: vec![(60, 6.0)],
            },
        ];
        let got = merge(local, remote);
        assert_eq!(got[0].points, vec![(50, 0.5), (100, 1.0), (200, 2.0)]);
        assert_eq!(got[1].labels, l("b"));
    }
}
