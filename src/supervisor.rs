//! The source supervisor: starts every configured source with its own
//! cancellation token and, on reload (SIGHUP or `POST /-/reload`), applies a
//! new configuration by stopping removed or changed sources and starting new
//! or changed ones. Unchanged sources keep running untouched, so their series
//! (and any per-series state) survive the reload.
//!
//! Push sources (webhooks) contribute routes; they live in [`PushRoutes`],
//! which the HTTP server consults for every path it does not know itself, so
//! a reload can add or remove them without rebuilding the server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::{Config, SourceConfig};
use crate::sources::{self, SourceContext};

/// Routes contributed by push sources, swapped as a whole on reload.
#[derive(Clone, Default)]
pub struct PushRoutes(Arc<RwLock<Router>>);

impl PushRoutes {
    fn set(&self, router: Router) {
        *self.0.write() = router;
    }
}

/// Fallback handler of the HTTP server: dispatch to the current push routes
/// (which answer 404 for paths none of them owns).
pub async fn dispatch(State(routes): State<PushRoutes>, req: Request) -> Response {
    let router = routes.0.read().clone();
    match router.oneshot(req).await {
        Ok(resp) => resp.into_response(),
        Err(never) => match never {},
    }
}

/// One running source.
struct Running {
    /// `Debug` rendering of the source's configuration: a reload restarts the
    /// source only when this differs.
    fingerprint: String,
    token: CancellationToken,
    handle: Option<JoinHandle<()>>,
    router: Option<Router>,
}

/// What a reload did, for the log and the `/-/reload` answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub kept: Vec<String>,
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    /// Settings that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kept [{}], started [{}], restarted [{}], stopped [{}]",
            self.kept.join(", "),
            self.started.join(", "),
            self.restarted.join(", "),
            self.stopped.join(", ")
        )?;
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; changed but applied only after a restart: {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// How long a stopped source may take to finish before its series are
/// removed anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The name under which the system source is supervised.
const SYSTEM: &str = "system";

pub struct Supervisor {
    /// Template context; each source gets a copy with a child token.
    ctx: SourceContext,
    tracker: TaskTracker,
    running: BTreeMap<String, Running>,
    routes: PushRoutes,
    config: Config,
}

impl Supervisor {
    /// Start the system source and every configured source.
    pub fn start(
        config: Config,
        ctx: SourceContext,
        tracker: TaskTracker,
        routes: PushRoutes,
    ) -> Self {
        let mut s = Supervisor {
            ctx,
            tracker,
            running: BTreeMap::new(),
            routes,
            config: config.clone(),
        };
        if config.system.enabled {
            s.spawn_system(&config);
        }
        for source in &config.sources {
            s.spawn_source(source);
        }
        s.publish_routes();
        s
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn system_fingerprint(config: &Config) -> String {
        format!("{:?}{:?}", config.system, config.process_groups)
    }

    fn spawn_system(&mut self, config: &Config) {
        let token = self.ctx.shutdown.child_token();
        let handle = self.tracker.spawn(sources::system::run(
            config.system.clone(),
            config.process_groups.clone(),
            self.ctx.tx.clone(),
            self.ctx.telemetry.clone(),
            token.clone(),
        ));
        self.running.insert(
            SYSTEM.to_string(),
            Running {
                fingerprint: Self::system_fingerprint(config),
                token,
                handle: Some(handle),
                router: None,
            },
        );
    }

    fn spawn_source(&mut self, source: &SourceConfig) {
        let token = self.ctx.shutdown.child_token();
        let mut ctx = self.ctx.clone();
        ctx.shutdown = token.clone();
        let (handle, router) = sources::spawn_one(source, &ctx, &self.tracker);
        self.running.insert(
            source.name().to_string(),
            Running {
                fingerprint: format!("{source:?}"),
                token,
                handle,
                router,
            },
        );
    }

    fn publish_routes(&self) {
        let mut router = Router::new();
        for r in self.running.values().filter_map(|r| r.router.clone()) {
            router = router.merge(r);
        }
        self.routes.set(router);
    }

    /// Stop a source, wait for its task (bounded) and remove its series.
    async fn stop(&mut self, name: &str) {
        if let Some(mut r) = self.running.remove(name) {
            r.token.cancel();
            r.router = None;
            if let Some(handle) = r.handle.take() {
                let _ = tokio::time::timeout(STOP_TIMEOUT, handle).await;
            }
            self.ctx.store.write().remove_source(name);
        }
    }

    /// Apply a new, already validated configuration.
    pub async fn apply(&mut self, new: Config) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        let old = &self.config;
        if old.web.listen_address != new.web.listen_address {
            summary.needs_restart.push("web.listen_address");
        }
        if old.web.max_requests != new.web.max_requests {
            summary.needs_restart.push("web.max_requests");
        }
        if old.web.config_file != new.web.config_file {
            summary.needs_restart.push("web.config_file");
        }
        if old.store.ingest_queue != new.store.ingest_queue {
            summary.needs_restart.push("store.ingest_queue");
        }

        // The system source.
        let system_now = self.running.get(SYSTEM).map(|r| r.fingerprint.clone());
        match (system_now, new.system.enabled) {
            (Some(fp), true) if fp == Self::system_fingerprint(&new) => {
                summary.kept.push(SYSTEM.into())
            }
            (Some(_), true) => {
                self.stop(SYSTEM).await;
                self.spawn_system(&new);
                summary.restarted.push(SYSTEM.into());
            }
            (Some(_), false) => {
                self.stop(SYSTEM).await;
                summary.stopped.push(SYSTEM.into());
            }
            (None, true) => {
                self.spawn_system(&new);
                summary.started.push(SYSTEM.into());
            }
            (None, false) => {}
        }

        // Configured sources, by name.
        let wanted: BTreeMap<&str, &SourceConfig> =
            new.sources.iter().map(|s| (s.name(), s)).collect();
        let current: Vec<String> = self
            .running
            .keys()
            .filter(|k| *k != SYSTEM)
            .cloned()
            .collect();
        for name in current {
            if !wanted.contains_key(name.as_str()) {
                self.stop(&name).await;
                summary.stopped.push(name);
            }
        }
        for (name, source) in wanted {
            match self.running.get(name) {
                Some(r) if r.fingerprint == format!("{source:?}") => {
                    summary.kept.push(name.to_string())
                }
                Some(_) => {
                    self.stop(name).await;
                    self.spawn_source(source);
                    summary.restarted.push(name.to_string());
                }
                None => {
                    self.spawn_source(source);
                    summary.started.push(name.to_string());
                }
            }
        }
        self.publish_routes();
        // Settings that need a restart stay as they are in the running config.
        let mut applied = new;
        applied.web = self.config.web.clone();
        applied.store = self.config.store.clone();
        self.config = applied;
        summary
    }
}
