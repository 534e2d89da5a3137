//! `vitals run`: wire sources, pipeline, store and HTTP server together and
//! run them until SIGINT/SIGTERM.
//!
//! One shutdown path: the signal cancels one token, every task selects on
//! it, the server drains in-flight requests within the configured timeout
//! and the ingest task applies what is still queued before exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::events::EventBus;
use crate::pipeline::{self, Pipeline};
use crate::server::{self, AppState};
use crate::sources;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Why `vitals run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    WebConfig(crate::expose::webconfig::WebConfigError),
}

/// Run until a shutdown signal arrives.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    run_until(cfg, shutdown).await
}

/// Run until `shutdown` is cancelled.
pub async fn run_until(cfg: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let address = cfg.web.listen_address;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| RunError::Bind { address, source })?;
    let local = listener.local_addr().unwrap_or(address);

    let telemetry = Arc::new(Telemetry::new());
    let store = Arc::new(RwLock::new(Store::new()));
    let ready = Arc::new(AtomicBool::new(false));
    let tracker = TaskTracker::new();
    let (tx, rx) = tokio::sync::mpsc::channel(cfg.store.ingest_queue);

    // The ingest task runs until every sender is gone (sources stopped, the
    // HTTP server with its push routes drained), so a batch a webhook
    // acknowledged with 2xx during shutdown is still applied; `ingest_stop`
    // only ends it if something still holds a sender at the timeout.
    let ingest_stop = CancellationToken::new();
    tracker.spawn(pipeline::run_ingest(
        rx,
        Pipeline::standard(),
        store.clone(),
        telemetry.clone(),
        ingest_stop.clone(),
    ));
    if cfg.system.enabled {
        tracker.spawn(sources::system::run(
            cfg.system.clone(),
            cfg.process_groups.clone(),
            tx.clone(),
            telemetry.clone(),
            shutdown.clone(),
        ));
    }
    let events = EventBus::default();
    let ctx = sources::SourceContext {
        tx: tx.clone(),
        telemetry: telemetry.clone(),
        events: events.clone(),
        shutdown: shutdown.clone(),
        store: store.clone(),
    };
    let routes = sources::spawn_all(&cfg.sources, &ctx, &tracker);
    drop(ctx);
    drop(tx);
    ready.store(true, Ordering::Release);

    let state = AppState {
        store,
        telemetry,
        ready,
        events,
    };
    let app = server::app_with(state, cfg.web.max_requests, routes);
    let scheme = if cfg.web.config_file.is_some() {
        "https or http per the web config"
    } else {
        "http"
    };
    tracing::info!(address = %local, scheme, "Listening; metrics at /metrics.");
    let drain = cfg.web.shutdown_timeout;
    let web = match &cfg.web.config_file {
        Some(path) => Some(Arc::new(
            crate::expose::webconfig::WebConfigWatcher::new(path).map_err(RunError::WebConfig)?,
        )),
        None => None,
    };
    let serve = crate::expose::serve(listener, app, web, shutdown.clone());
    let result = tokio::select! {
        r = serve => r.map_err(RunError::Serve),
        // In-flight requests get `drain` to finish after the signal.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(timeout = ?drain, "Requests still in flight at the shutdown timeout; closing them.");
            Ok(())
        }
    };
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        ingest_stop.cancel();
        tracing::warn!(timeout = ?drain, "Tasks still running at the shutdown timeout.");
    }
    tracing::info!("Stopped.");
    result
}

/// Cancel `token` on the first SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; shutting down."),
        _ = term => tracing::info!("SIGTERM received; shutting down."),
    }
    token.cancel();
}
