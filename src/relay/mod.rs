//! `vitals relay`: Alertmanager (v4) and Grafana (v1) webhooks in, e-mail
//! and SMS out, without losing an accepted notification.
//!
//! ```text
//! POST /webhook[/receiver] ─▶ auth ─▶ parse ─▶ route (matchers) ─▶ outbox (fsync) ─▶ 200
//!                                                                    │
//!                                  per-channel worker ◀──────────────┘
//!                                  (backoff, Retry-After, flood control) ─▶ SMTP / SMS gateway
//! ```
//!
//! With `--web.config.file` the listener takes the exporter's web
//! configuration ([`crate::web`]): TLS, basic auth, response headers.
//!
//! Module map:
//! - [`config`]: the `[relay]` file format.
//! - [`runtime`]: validated config with compiled matchers, templates, notifiers.
//! - [`payload`]: Alertmanager/Grafana payloads → [`payload::Notification`].
//! - [`routing`]: label matchers.
//! - [`outbox`]: the durable redb queue with group commit and dedup keys.
//! - [`deliver`]: per-channel workers.
//! - [`notify`]: e-mail (lettre) and SMS (Twilio, Vonage, generic HTTP).
//! - [`templates`]: e-mail templates and length-aware SMS text.
//! - [`server`]: the HTTP routes.
//! - [`metrics`]: the relay's self-metrics.

pub mod config;
pub mod deliver;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod payload;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod templates;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use self::deliver::Dispatcher;
use self::metrics::RelayMetrics;
use self::outbox::Outbox;
use self::runtime::Runtime;
use self::server::RelayState;
use crate::config::ConfigError;
use crate::web::webconfig::WebConfigWatcher;

/// Validate a relay configuration file for `vitals check`: everything
/// `vitals relay` reads at start, secrets and CA files included, with the
/// same errors. With `skip_secrets`, `env:`/`file:` secrets and CA files are
/// not read; the ones skipped are returned (`key (env:NAME)`).
pub fn check(path: &Path, skip_secrets: bool) -> Result<Vec<String>, ConfigError> {
    ensure_crypto();
    // lettre's connection pool needs a Tokio context even to be built.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConfigError::Read {
            file: path.display().to_string(),
            reason: format!("cannot start the async runtime: {e}"),
        })?;
    let _guard = rt.enter();
    Runtime::load(path, skip_secrets).map(|rt| rt.not_read)
}

/// Install the one TLS crypto provider (ring) that SMTP and the SMS
/// gateways' HTTPS clients use; a second call does nothing.
pub fn ensure_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Load and fully build the configuration (secrets read). Call it inside
/// a Tokio runtime context.
pub fn load(path: &Path) -> Result<Runtime, ConfigError> {
    ensure_crypto();
    Runtime::load(path, false)
}

/// Run the relay until SIGINT/SIGTERM.
pub async fn run(
    config_path: PathBuf,
    runtime: Runtime,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    run_with_web(config_path, runtime, listen, None).await
}

/// Run the relay until SIGINT/SIGTERM, its listener secured by a web
/// configuration file (TLS, basic auth, headers; re-read when it changes)
/// when one is given, as the exporter's is.
pub async fn run_with_web(
    config_path: PathBuf,
    runtime: Runtime,
    listen: Option<SocketAddr>,
    web: Option<Arc<WebConfigWatcher>>,
) -> anyhow::Result<()> {
    let listen = listen.unwrap_or(runtime.cfg.listen_address);
    let data_dir = runtime.cfg.data_dir.clone();
    let shutdown_timeout = runtime.cfg.shutdown_timeout;
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data_dir {}: {e}", data_dir.display()))?;
    let (outbox, pending) = Outbox::open(&data_dir.join("outbox.redb"))?;
    let metrics = Arc::new(RelayMetrics::new());
    touch_metrics(&metrics, &runtime);
    let conns = crate::web::Connections::new(runtime.cfg.web.clone(), metrics.registry());
    let shared = Arc::new(RwLock::new(Arc::new(runtime)));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let dispatcher = Dispatcher::new(
        shared.clone(),
        outbox.clone(),
        metrics.clone(),
        shutdown.clone(),
        tracker.clone(),
    );
    if !pending.is_empty() {
        info!(
            pending = pending.len(),
            "Resuming undelivered notifications from the outbox."
        );
    }
    metrics.outbox_depth.set(pending.len() as i64);
    dispatcher.enqueue(pending);

    let state = RelayState {
        runtime: shared,
        outbox,
        dispatcher,
        metrics,
        config_path,
        basic_ok: Arc::new(Mutex::new(HashSet::new())),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let scheme = if web.is_some() {
        "https or http per the web config"
    } else {
        "http"
    };
    info!(address = %listen, scheme, "Relay listening.");

    tracker.spawn(signals(state.clone(), shutdown.clone()));
    let app = server::app(state);
    let serve = crate::web::serve(listener, app, web, conns, shutdown.clone());
    let server = tokio::spawn(async move {
        if let Err(error) = serve.await {
            error!(%error, "The relay's listener failed; stopping.");
        }
    });
    shutdown.cancelled().await;
    tracker.close();
    let drained = tokio::time::timeout(shutdown_timeout, async {
        let _ = server.await;
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        warn!("Shutdown timed out; undelivered notifications stay in the outbox.");
    }
    info!("Relay stopped.");
    Ok(())
}

fn touch_metrics(metrics: &RelayMetrics, runtime: &Runtime) {
    let receivers: Vec<&str> = runtime.receivers.keys().map(String::as_str).collect();
    let channels: Vec<&str> = runtime.channels.keys().map(String::as_str).collect();
    metrics.touch(&receivers, &channels);
}

/// SIGINT/SIGTERM end the relay; SIGHUP reloads the configuration.
async fn signals(state: RelayState, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("Cannot install signal handlers; stopping.");
        shutdown.cancel();
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => {
                if let Err(e) = reload(&state).await {
                    warn!(error = %e, "Reload on SIGHUP rejected; keeping the running configuration.");
                }
            }
        }
    }
    info!("Shutting down.");
    shutdown.cancel();
}

/// Re-read and build the configuration; swap it in only if it is valid.
pub async fn reload(state: &RelayState) -> Result<(), String> {
    let path = state.config_path.clone();
    let built = tokio::task::spawn_blocking(move || load(&path))
        .await
        .map_err(|e| format!("reload task failed: {e}"))?;
    match built {
        Ok(rt) => {
            let old = state.runtime.read().clone();
            if rt.cfg.listen_address != old.cfg.listen_address
                || rt.cfg.data_dir != old.cfg.data_dir
            {
                warn!("listen_address and data_dir changes take effect only after a restart.");
            }
            touch_metrics(&state.metrics, &rt);
            *state.runtime.write() = Arc::new(rt);
            state.metrics.reloads.with_label_values(&["success"]).inc();
            state.metrics.config_ok.set(1);
            info!("Configuration reloaded.");
            Ok(())
        }
        Err(e) => {
            state.metrics.reloads.with_label_values(&["failure"]).inc();
            state.metrics.config_ok.set(0);
            warn!(error = %e, "Configuration reload rejected; keeping the running one.");
            Err(e.to_string())
        }
    }
}
