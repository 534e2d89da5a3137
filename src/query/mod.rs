//! The Prometheus-shaped query API (`/api/v1/query_range`, `/api/v1/query`,
//! `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/<name>/values`, and
//! the extension `/api/v1/vitals/events`) and the read interface it serves
//! from. See `docs/query_api.md`.

pub mod api;
pub mod eval;
pub mod memory;
pub mod params;
pub mod reader;
pub mod remote;

use std::sync::Arc;

use parking_lot::RwLock;

pub use api::{ApiState, router};
pub use reader::{MatchOp, Matcher, RangeSeries, ReadError, SeriesReader, StoredEvent};

/// Recent events the in-memory reader keeps for `/api/v1/vitals/events`.
const RECENT_EVENTS: usize = 1000;

/// The query API's state for `vitals run`: served from `history` (the
/// on-disk history's reader, when `[history]` is on) or else from the
/// in-memory store (with the events heard since start, recorded by a task
/// spawned on `tracker` until `shutdown`); with `prometheus_url` (`[history]
/// prometheus_url`), older ranges come from that Prometheus.
pub fn state_for_run(
    prometheus_url: Option<&str>,
    history: Option<Arc<dyn SeriesReader>>,
    store: Arc<RwLock<crate::store::Store>>,
    events: &crate::events::EventBus,
    telemetry: &crate::telemetry::Telemetry,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: tokio_util::sync::CancellationToken,
) -> ApiState {
    let limits = eval::Limits::default();
    let local: Arc<dyn SeriesReader> = match history {
        Some(h) => h,
        None => {
            let log = memory::EventLog::new(RECENT_EVENTS);
            tracker.spawn(log.record(events, shutdown));
            Arc::new(memory::StoreReader::new(
                store,
                Some(log),
                limits.max_series,
            ))
        }
    };
    let state = ApiState::new(local.clone(), telemetry.registry());
    let Some(url) = prometheus_url else {
        return state;
    };
    let errors = state.remote_errors();
    match remote::PromReader::new(url, tokio::runtime::Handle::current(), errors) {
        Ok(remote) => state.with_reader(Arc::new(remote::Composite {
            local,
            remote: Arc::new(remote),
        })),
        Err(error) => {
            tracing::warn!(%error, url, "Cannot use [history] prometheus_url; serving local history only.");
            state
        }
    }
}
