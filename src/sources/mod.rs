//! Sources: each owns its loop, turns what it reads into samples and sends
//! them in batches on the bounded ingest channel. A failing source reports
//! itself through self-metrics and never fails a scrape.

pub mod demo;
pub mod http;
pub mod logs;
pub mod mqtt;
pub mod process;
pub mod secret;
pub mod sql;
pub mod system;
pub mod webhook;

// Records and their aggregation moved to `payload`; kept at their old paths.
pub use crate::payload::{aggregate, record};

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SourceConfig;
use crate::events::EventBus;
use crate::model::{Batch, BatchMode};
use crate::store::Store;
use crate::telemetry::Telemetry;

/// What every source task gets.
#[derive(Clone)]
pub struct SourceContext {
    /// The bounded ingest channel into the pipeline.
    pub tx: mpsc::Sender<Batch>,
    pub telemetry: Arc<Telemetry>,
    pub events: EventBus,
    pub shutdown: CancellationToken,
    /// The store, for per-source limits (`set_ttl`, `set_budget`) at start-up.
    pub store: Arc<parking_lot::RwLock<Store>>,
}

/// Start the task of one source on `tracker`; returns its handle (to wait
/// for it when it is stopped) and the routes of a push source.
pub fn spawn_one(
    source: &SourceConfig,
    ctx: &SourceContext,
    tracker: &TaskTracker,
) -> (Option<tokio::task::JoinHandle<()>>, Option<axum::Router>) {
    match source {
        SourceConfig::Logs(cfg) => {
            let tailer = logs::start(cfg.clone(), ctx);
            let ctx = ctx.clone();
            (
                Some(tracker.spawn_blocking(move || logs::run(tailer, ctx))),
                None,
            )
        }
        SourceConfig::Webhook(cfg) => {
            let (router, source) = webhook::router(cfg.clone(), ctx.clone());
            (Some(tracker.spawn(webhook::announce(source))), Some(router))
        }
        SourceConfig::Mqtt(c) => (Some(tracker.spawn(mqtt::run(c.clone(), ctx.clone()))), None),
        SourceConfig::Sql(c) => (Some(tracker.spawn(sql::run(c.clone(), ctx.clone()))), None),
        SourceConfig::Http(c) => (Some(tracker.spawn(http::run(c.clone(), ctx.clone()))), None),
        SourceConfig::Demo(c) => (Some(tracker.spawn(demo::run(c.clone(), ctx.clone()))), None),
    }
}

/// When a source stops (shutdown or reload), queue an empty snapshot behind
/// its last batch so its series go in order, even if that batch is still
/// waiting in the ingest queue. Best effort: a full queue skips it.
pub fn forget_series(ctx: &SourceContext, key: Arc<str>) {
    let _ = ctx.tx.try_send(Batch {
        source: key,
        mode: BatchMode::Snapshot,
        samples: Vec::new(),
    });
}
