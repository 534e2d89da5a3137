//! Sources: each owns its loop, turns what it reads into samples and sends
//! them in batches on the bounded ingest channel. A failing source reports
//! itself through self-metrics and never fails a scrape.

pub mod aggregate;
pub mod logs;
pub mod mqtt;
pub mod process;
pub mod record;
pub mod system;
pub mod webhook;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SourceConfig;
use crate::events::EventBus;
use crate::model::Batch;
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

/// Start one task per configured source on `tracker`. Push sources
/// (webhooks) return the routes to mount on the exporter's HTTP server.
pub fn spawn_all(
    sources: &[SourceConfig],
    ctx: &SourceContext,
    tracker: &TaskTracker,
) -> Vec<axum::Router> {
    let mut routes = Vec::new();
    for source in sources {
        match source {
            SourceConfig::Logs(cfg) => {
                let tailer = logs::start(cfg.clone(), ctx);
                let ctx = ctx.clone();
                tracker.spawn_blocking(move || logs::run(tailer, ctx));
            }
            SourceConfig::Webhook(cfg) => {
                let (router, source) = webhook::router(cfg.clone(), ctx.clone());
                tracker.spawn(webhook::announce(source));
                routes.push(router);
            }
            SourceConfig::Mqtt(c) => {
                tracker.spawn(mqtt::run(c.clone(), ctx.clone()));
            }
        }
    }
    routes
}
