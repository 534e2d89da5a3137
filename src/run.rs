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
use crate::dashboard::Dashboard;
use crate::events::EventBus;
use crate::pipeline::{self, Pipeline};
use crate::server::{self, AppState};
use crate::sources;
use crate::store::Store;
use crate::supervisor::{PushRoutes, Supervisor};
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
    WebConfig(crate::web::webconfig::WebConfigError),
    #[error("{0}")]
    RemoteWrite(crate::remote_write::RemoteWriteError),
    #[error("{0}")]
    History(crate::history::HistoryError),
}

/// Reads the configuration again on reload (the file, environment and
/// command-line overrides), validated.
pub type ConfigLoader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// One reload request (it lives next to the reload summary).
pub use crate::supervisor::ReloadRequest;

/// Run until a shutdown signal arrives.
pub async fn run(cfg: Config, reload: ConfigLoader) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    run_until(cfg, reload, shutdown).await
}

/// Apply reload requests until shutdown.
async fn reload_loop(
    mut supervisor: Supervisor,
    mut requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
    loader: ConfigLoader,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) {
    loop {
        let reply = tokio::select! {
            r = requests.recv() => match r { Some(r) => r, None => break },
            _ = shutdown.cancelled() => break,
        };
        let result = match loader() {
            Ok(new) => {
                let summary = supervisor.apply(new).await;
                telemetry.reload_succeeded();
                tracing::info!(%summary, "Configuration reloaded.");
                Ok(summary.to_string())
            }
            Err(error) => {
                telemetry.reload_failed();
                tracing::error!(%error, "Configuration reload rejected; the running configuration stays.");
                Err(error)
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
    // Dropping the supervisor drops its copy of the ingest sender.
    drop(supervisor);
}

/// Turn SIGHUP into reload requests.
async fn reload_on_sighup(
    requests: tokio::sync::mpsc::Sender<ReloadRequest>,
    shutdown: CancellationToken,
) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGHUP; reload with POST /-/reload.");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received; reloading the configuration.");
                    if requests.send(None).await.is_err() { return }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (requests, shutdown);
    }
}

/// Run until `shutdown` is cancelled.
pub async fn run_until(
    cfg: Config,
    reload: ConfigLoader,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let mut listeners = Vec::new();
    for &address in std::iter::once(&cfg.web.listen_address).chain(&cfg.web.extra_listen_addresses)
    {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| RunError::Bind { address, source })?;
        listeners.push(listener);
    }
    let local = listeners[0].local_addr().unwrap_or(cfg.web.listen_address);

    let telemetry = Arc::new(Telemetry::new());
    let conns = crate::web::Connections::new(cfg.web.limits(), telemetry.registry());
    let store = Arc::new(RwLock::new(Store::new()));
    if cfg.dashboard.enabled {
        store
            .write()
            .set_history(cfg.dashboard.history_points(), cfg.dashboard.resolution);
    }
    let ready = Arc::new(AtomicBool::new(false));
    let tracker = TaskTracker::new();
    let (tx, rx) = tokio::sync::mpsc::channel(cfg.store.ingest_queue);
    let events = EventBus::default();
    store
        .write()
        .set_detector_scores(cfg.detect.detector_scores);
    // Detector state and idempotency windows of the previous run, before
    // the first sample; saved periodically and once more after shutdown.
    let saver = crate::detect::state::Saver::start(
        &cfg.history,
        crate::detect::state::config_fingerprint(&cfg.detect, &cfg.pipeline),
        &store,
        &telemetry,
    );
    if let Some(saver) = &saver {
        tracker.spawn(saver.clone().run(shutdown.clone()));
    }

    // The ingest task runs until every sender is gone (sources stopped, the
    // HTTP server with its push routes drained), so a batch a webhook
    // acknowledged with 2xx during shutdown is still applied; `ingest_stop`
    // only ends it if something still holds a sender at the timeout.
    let ingest_stop = CancellationToken::new();
    // Reloads hand the ingest task a rebuilt pipeline on this channel.
    let (pipeline_tx, pipeline_rx) = tokio::sync::mpsc::channel(1);
    // Remote write queues what the ingest task stores; its writers run
    // until the ingest task ends, so what it applies at shutdown is queued.
    let tap = crate::remote_write::start(&cfg.remote_write, &telemetry, &tracker, shutdown.clone())
        .map_err(RunError::RemoteWrite)?;
    // History buffers what the ingest task stores and writes it every
    // flush interval; its flusher writes the rest once the ingest task ends.
    let history = crate::history::start(
        &cfg.history,
        &telemetry,
        &events,
        &tracker,
        shutdown.clone(),
    )
    .map_err(RunError::History)?;
    let taps = pipeline::Taps {
        remote_write: tap,
        history: history.as_ref().map(|h| h.tap.clone()),
    };
    // What the query API reads (the tap above is the only writer).
    let history_reader = history.map(|h| h.reader as Arc<dyn crate::query::SeriesReader>);
    tracker.spawn(pipeline::run_ingest_with_control(
        rx,
        pipeline_rx,
        Pipeline::from_config(&cfg, events.clone()),
        store.clone(),
        telemetry.clone(),
        taps,
        ingest_stop.clone(),
    ));
    let ctx = sources::SourceContext {
        tx: tx.clone(),
        telemetry: telemetry.clone(),
        events: events.clone(),
        shutdown: shutdown.clone(),
        store: store.clone(),
    };
    drop(tx);
    let push_routes = PushRoutes::default();
    let supervisor = Supervisor::start(cfg.clone(), ctx, tracker.clone(), push_routes.clone())
        .with_pipeline_control(pipeline_tx);
    telemetry.reload_succeeded();

    // Reload requests (SIGHUP and POST /-/reload) are applied one at a time
    // by one task that owns the supervisor.
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    tracker.spawn(reload_loop(
        supervisor,
        reload_rx,
        reload,
        telemetry.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(reload_on_sighup(reload_tx.clone(), shutdown.clone()));
    ready.store(true, Ordering::Release);

    let page = cfg.dashboard.enabled.then(|| {
        let dashboard = Dashboard::new(cfg.dashboard.clone(), store.clone(), telemetry.clone());
        tracker.spawn(dashboard.clone().run_hub(events.clone(), shutdown.clone()));
        dashboard.router(shutdown.clone())
    });
    // The query API (src/query/): the on-disk history's reader when
    // `[history]` is on, else (`None`) the store's.
    let query = crate::query::state_for_run(
        cfg.history.prometheus_url.as_deref(),
        history_reader,
        store.clone(),
        &events,
        &telemetry,
        &tracker,
        shutdown.clone(),
    );
    let state = AppState {
        store,
        telemetry,
        ready,
        events,
        reload: Some(reload_tx),
        options: server::ServerOptions::from_config(&cfg.web),
    };
    // Routes served beside the built-in ones, each with its own state.
    let extra: Vec<axum::Router> = vec![crate::query::router(query)];
    let app = server::router(state, cfg.web.max_requests, page, extra, push_routes);
    let drain = cfg.web.shutdown_timeout;
    let web = match &cfg.web.config_file {
        Some(path) => Some(Arc::new(
            crate::web::webconfig::WebConfigWatcher::new(path).map_err(RunError::WebConfig)?,
        )),
        None => None,
    };
    let scheme = match &web {
        Some(w) if w.current().tls.is_some() => "https",
        _ => "http",
    };
    // A wildcard address is not something to type into a browser.
    let host = match local.ip() {
        ip if ip.is_unspecified() => "localhost".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let url = format!("{scheme}://{host}:{}/", local.port());
    let metrics_path = cfg.web.telemetry_path.trim_start_matches('/');
    if cfg.dashboard.enabled {
        tracing::info!(address = %local, "Listening; live dashboard at {url}, metrics at {url}{metrics_path}.");
    } else {
        tracing::info!(address = %local, "Listening; metrics at {url}{metrics_path}.");
    }
    for extra in &listeners[1..] {
        if let Ok(address) = extra.local_addr() {
            tracing::info!(%address, "Listening.");
        }
    }
    // Every listener serves the same router; the first error stops all.
    let serve = futures_util::future::try_join_all(listeners.into_iter().map(|listener| {
        crate::web::serve(
            listener,
            app.clone(),
            web.clone(),
            conns.clone(),
            shutdown.clone(),
        )
    }));
    let result = tokio::select! {
        r = serve => r.map(|_| ()).map_err(RunError::Serve),
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
    if let Some(saver) = saver {
        let _ = tokio::task::spawn_blocking(move || saver.save_logged()).await;
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
