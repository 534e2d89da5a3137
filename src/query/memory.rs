//! A [`SeriesReader`] over the in-memory [`Store`]: each series' recent
//! points (the live dashboard's ring, `[dashboard] history`, 15 minutes by
//! default) and its latest value, plus the recent events heard on the
//! event bus. What the query API serves when `[history]` is off.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::reader::{Matcher, RangeSeries, ReadError, SeriesReader, StoredEvent};
use crate::store::{Store, history_slot};

/// Recent events, newest last, at most `capacity`.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Mutex<VecDeque<StoredEvent>>>,
    capacity: usize,
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        EventLog {
            inner: Arc::new(Mutex::new(VecDeque::new())),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&self, e: &crate::events::Event) {
        let mut q = self.inner.lock();
        if q.len() >= self.capacity {
            q.pop_front();
        }
        q.push_back(stored(e));
    }

    /// Record what `bus` publishes until `shutdown` (a lagging recorder
    /// skips what it missed).
    pub fn record(
        &self,
        bus: &crate::events::EventBus,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = bus.subscribe();
        let log = self.clone();
        async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = rx.recv() => match r {
                        Ok(e) => log.push(&e),
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        }
    }

    fn between(&self, start: i64, end: i64, limit: usize) -> Vec<StoredEvent> {
        self.inner
            .lock()
            .iter()
            .filter(|e| e.timestamp_ms >= start && e.timestamp_ms <= end)
            .take(limit)
            .cloned()
            .collect()
    }
}

/// The history form of a bus event.
pub fn stored(e: &crate::events::Event) -> StoredEvent {
    StoredEvent {
        timestamp_ms: e.timestamp_ms,
        kind: e.kind.to_string(),
        severity: match e.severity {
            crate::events::Severity::Info => "info",
            crate::events::Severity::Warning => "warning",
            crate::events::Severity::Critical => "critical",
        }
        .to_string(),
        source: e.source.clone(),
        metric: e.metric.clone(),
        labels: e.labels.clone(),
        value: e.value,
        score: e.score,
        reason: e.reason.clone(),
    }
}

/// Reads the store's per-series rings; points are the ring's (values kept
/// as `f32`, stamped at their slot's start), except the latest, which is
/// the series' exact `f64` value.
pub struct StoreReader {
    store: Arc<RwLock<Store>>,
    events: Option<EventLog>,
    max_series: usize,
}

impl StoreReader {
    /// `max_series`: a selector matching more answers [`ReadError::TooMuch`].
    pub fn new(store: Arc<RwLock<Store>>, events: Option<EventLog>, max_series: usize) -> Self {
        StoreReader {
            store,
            events,
            max_series,
        }
    }

    /// Visit every matching series' labels and points in the range.
    fn each(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        mut f: impl FnMut(Vec<(String, String)>, Vec<(i64, f64)>) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        let store = self.store.read();
        let shape = store.history_shape();
        let (name_ms, label_ms): (Vec<&Matcher>, Vec<&Matcher>) =
            matchers.iter().partition(|m| m.name == "__name__");
        for family in store.families() {
            let name = family.meta.name.as_ref();
            if !name_ms.iter().all(|m| m.matches(name)) {
                continue;
            }
            for (labels, series) in &family.series {
                let pairs = labels.pairs();
                let ok = label_ms.iter().all(|m| {
                    let v = pairs
                        .iter()
                        .find(|(k, _)| *k == m.name)
                        .map_or("", |(_, v)| v.as_str());
                    m.matches(v)
                });
                if !ok {
                    continue;
                }
                let mut points: Vec<(i64, f64)> = series
                    .history
                    .points()
                    .map(|p| (p.unix_ms(), p.value as f64))
                    .filter(|&(t, _)| t >= start_ms && t <= end_ms)
                    .collect();
                // The latest value, exact: it replaces its slot's point or
                // is added after the ring (no ring with history off).
                let latest = if shape.capacity == 0 {
                    Some(series.timestamp_ms)
                } else {
                    history_slot(series.timestamp_ms, shape.resolution_s)
                        .map(|s| (crate::store::HISTORY_EPOCH_S + s as i64) * 1000)
                };
                if let Some(t) = latest
                    && t >= start_ms
                    && t <= end_ms
                {
                    match points.last_mut() {
                        Some(last) if last.0 == t => last.1 = series.value,
                        Some(last) if last.0 > t => {}
                        _ => points.push((t, series.value)),
                    }
                }
                if points.is_empty() {
                    continue;
                }
                let mut all = Vec::with_capacity(pairs.len() + 1);
                all.push(("__name__".to_string(), name.to_string()));
                all.extend(pairs);
                all.sort();
                f(all, points)?;
            }
        }
        Ok(())
    }

    fn too_many(&self) -> ReadError {
        ReadError::TooMuch(format!(
            "the selector matches more than {} series",
            self.max_series
        ))
    }
}

impl SeriesReader for StoreReader {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        _step_ms: i64,
    ) -> Result<Vec<RangeSeries>, ReadError> {
        let mut out = Vec::new();
        self.each(matchers, start_ms, end_ms, |labels, points| {
            if out.len() >= self.max_series {
                return Err(self.too_many());
            }
            out.push(RangeSeries { labels, points });
            Ok(())
        })?;
        Ok(out)
    }

    fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Vec<(String, String)>>, ReadError> {
        let mut out = Vec::new();
        self.each(matchers, start_ms, end_ms, |labels, _| {
            if out.len() >= self.max_series {
                return Err(self.too_many());
            }
            out.push(labels);
            Ok(())
        })?;
        Ok(out)
    }

    fn events(
        &self,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, ReadError> {
        Ok(self
            .events
            .as_ref()
            .map(|log| log.between(start_ms, end_ms, limit))
            .unwrap_or_default())
    }

    fn oldest_ms(&self) -> Option<i64> {
        let store = self.store.read();
        store
            .families()
            .flat_map(|f| f.series.values())
            .filter_map(|s| {
                s.history
                    .points()
                    .next()
                    .map(|p| p.unix_ms())
                    .or(Some(s.timestamp_ms))
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Labels, MetricKind};
    use crate::query::MatchOp;

    fn store_with(points: &[(i64, f64)]) -> Arc<RwLock<Store>> {
        let mut store = Store::new();
        store.set_history(100, std::time::Duration::from_secs(1));
        let fam = crate::store::family("t_gauge", MetricKind::Gauge, "test");
        for &(t, v) in points {
            for host in ["a", "b"] {
                let sample = crate::model::Sample {
                    family: fam.clone(),
                    labels: Labels::from_pairs(&[("host", host)]),
                    value: v,
                    timestamp_ms: t,
                };
                let g = store.begin_batch();
                let _ = store.upsert(&Arc::from("test"), &sample, g);
            }
        }
        Arc::new(RwLock::new(store))
    }

    fn eq(name: &str, value: &str) -> Matcher {
        Matcher {
            name: name.into(),
            op: MatchOp::Equal,
            value: value.into(),
            regex: None,
        }
    }

    #[test]
    fn selects_ring_points_in_range_with_the_exact_latest_value() {
        let t0 = 1_700_000_000_000;
        let store = store_with(&[(t0, 1.0), (t0 + 1000, 2.0), (t0 + 2000, 0.1)]);
        let r = StoreReader::new(store, None, 10);
        let got = r
            .select(
                &[eq("__name__", "t_gauge"), eq("host", "a")],
                t0 + 500,
                t0 + 5000,
                1000,
            )
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].labels,
            vec![
                ("__name__".to_string(), "t_gauge".to_string()),
                ("host".to_string(), "a".to_string())
            ]
        );
        // 0.1 is not exact as f32: the latest point is the f64 value.
        assert_eq!(got[0].points, vec![(t0 + 1000, 2.0), (t0 + 2000, 0.1)]);
        assert_eq!(r.oldest_ms(), Some(t0));
        // A missing label matches as "".
        assert!(
            r.select(
                &[eq("__name__", "t_gauge"), eq("zone", "x")],
                0,
                i64::MAX,
                1
            )
            .unwrap()
            .is_empty()
        );
        assert_eq!(
            r.series(&[eq("__name__", "t_gauge")], 0, i64::MAX)
                .unwrap()
                .len(),
            2
        );
        let small = StoreReader::new(store_with(&[(t0, 1.0)]), None, 1);
        assert!(matches!(
            small.select(&[eq("__name__", "t_gauge")], 0, i64::MAX, 1),
            Err(ReadError::TooMuch(_))
        ));
    }
}
