//! The source supervisor: starts every configured source with its own
//! cancellation token and, on reload (SIGHUP or `POST /-/reload`), applies a
//! new configuration by stopping removed or changed sources and starting new
//! or changed ones. Unchanged sources keep running untouched, so their series
//! (and any per-series state) survive the reload.
//!
//! A stopped source's series are removed by a [`BatchMode::Remove`] message
//! queued on the ingest channel after its task ended, so batches it queued
//! before stopping are applied first and cannot bring its series back.
//!
//! The `[[pipeline]]` filters and `[detect]` are rebuilt by handing the
//! ingest task a new [`Pipeline`] when they changed.
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
use crate::model::{Batch, BatchMode};
use crate::pipeline::{Pipeline, Reconfigure};
use crate::sources::{self, Ready, SecretInput, SourceContext};

/// Routes contributed by push sources, swapped as a whole on reload.
#[derive(Clone, Default)]
pub struct PushRoutes(Arc<RwLock<Router>>);

impl PushRoutes {
    pub(crate) fn set(&self, router: Router) {
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

/// A digest of what a source is built from: its configuration with every
/// secret by value, and the current content of every secret it reads from
/// an environment variable or a file. A reload restarts a source only when
/// this differs, so a changed token, password or DSN (literal, or rotated
/// in its file) takes effect. Kept as a SHA-256 digest, so the supervisor
/// holds no second copy of any secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of_source(source: &SourceConfig) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        crate::sources::secret::compare_by_value(|| h.update(format!("{source:?}")));
        for (key, input) in source.secret_inputs() {
            h.update(key.as_bytes());
            match input {
                SecretInput::Env(var) => match std::env::var_os(var) {
                    Some(v) => {
                        h.update(b"=");
                        h.update(v.as_encoded_bytes());
                    }
                    None => h.update(b"!"),
                },
                SecretInput::File(path) => match std::fs::read(path) {
                    Ok(v) => {
                        h.update(b"=");
                        h.update(&v);
                    }
                    Err(e) => h.update(format!("!{:?}", e.kind())),
                },
            }
            h.update(b"\0");
        }
        Fingerprint(h.finalize().into())
    }
}

/// One running source.
struct Running {
    /// What the source was built from: a reload restarts the source only
    /// when this differs.
    fingerprint: Fingerprint,
    token: CancellationToken,
    handle: Option<JoinHandle<()>>,
    router: Option<Router>,
}

/// One reload request; the reply carries the summary or the error.
pub type ReloadRequest = Option<tokio::sync::oneshot::Sender<Result<String, String>>>;

/// What a reload did, for the log and the `/-/reload` answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub kept: Vec<String>,
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    /// Sections rebuilt in the running pipeline (`pipeline`, `detect`).
    pub rebuilt: Vec<&'static str>,
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
        if !self.rebuilt.is_empty() {
            write!(f, ", rebuilt [{}]", self.rebuilt.join(", "))?;
        }
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

/// How long a stopped source may take to finish before it is aborted and
/// its series are removed anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The name under which the system source is supervised.
const SYSTEM: &str = <crate::sources::system::SystemSource as crate::sources::Source>::KIND;

pub struct Supervisor {
    /// Template context; each source gets a copy with a child token.
    ctx: SourceContext,
    tracker: TaskTracker,
    running: BTreeMap<String, Running>,
    routes: PushRoutes,
    config: Config,
    /// Hands a rebuilt pipeline to the ingest task; `None`: no rebuilds.
    pipeline: Option<tokio::sync::mpsc::Sender<Reconfigure>>,
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
            pipeline: None,
        };
        s.set_label_limits(&config);
        for (source, ready) in config.ready_sources() {
            s.spawn(&source, &*ready);
        }
        s.publish_routes();
        s
    }

    /// Let reloads rebuild the pipeline of the ingest task fed by `control`
    /// (see [`crate::pipeline::run_ingest_with_control`]).
    pub fn with_pipeline_control(
        mut self,
        control: tokio::sync::mpsc::Sender<Reconfigure>,
    ) -> Self {
        self.pipeline = Some(control);
        self
    }

    /// Hand the store the size bounds of new series (before sources start,
    /// which read their own from it).
    fn set_label_limits(&self, config: &Config) {
        self.ctx.store.write().set_label_limits(
            config.store.label_limits(),
            config.store.source_label_limits(),
        );
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Start one built source with its own cancellation token and health
    /// record (see [`sources::spawn`]).
    fn spawn(&mut self, source: &SourceConfig, ready: &dyn Ready) {
        let token = self.ctx.shutdown.child_token();
        let mut ctx = self.ctx.clone();
        ctx.shutdown = token.clone();
        let (handle, router) = sources::spawn(ready, &ctx, &self.tracker);
        self.running.insert(
            source.name().to_string(),
            Running {
                fingerprint: Fingerprint::of_source(source),
                token,
                handle: Some(handle),
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

    /// Stop a source, wait for its task (bounded) and queue the removal of
    /// its series behind everything it sent.
    async fn stop(&mut self, name: &str) {
        if let Some(mut r) = self.running.remove(name) {
            r.token.cancel();
            if r.router.take().is_some() {
                // No new request reaches a removed webhook from here on.
                self.publish_routes();
            }
            if let Some(mut handle) = r.handle.take()
                && tokio::time::timeout(STOP_TIMEOUT, &mut handle)
                    .await
                    .is_err()
            {
                tracing::warn!(source = %name, timeout = ?STOP_TIMEOUT, "Source did not stop in time; aborting it.");
                handle.abort();
                // An async task ends at its next await point; a blocking one
                // (logs) cannot be aborted, so it is not waited for again.
                let _ = tokio::time::timeout(Duration::from_secs(1), handle).await;
            }
            // Its health series go with it (a replacement writes its own);
            // the sample counters go when ingest applies the removal below.
            self.ctx.telemetry.forget_source_health(name);
            // The channel is FIFO and the task has ended: every batch it
            // queued is ahead of this one. Fails only when ingest has ended.
            let _ = self
                .ctx
                .tx
                .send(Batch {
                    source: name.into(),
                    mode: BatchMode::Remove,
                    samples: Vec::new(),
                })
                .await;
        }
    }

    /// Hand the ingest task a pipeline built from `new` when `[[pipeline]]`
    /// or `[detect]` changed; detector state is reset when what it is built
    /// from changed. False when they changed but could not be applied.
    async fn rebuild_pipeline(&mut self, new: &Config, summary: &mut ReloadSummary) -> bool {
        let old = &self.config;
        let pipeline_changed = format!("{:?}", old.pipeline) != format!("{:?}", new.pipeline);
        let detect_changed = format!("{:?}", old.detect) != format!("{:?}", new.detect);
        if !pipeline_changed && !detect_changed {
            return true;
        }
        let Some(control) = &self.pipeline else {
            summary.needs_restart.push(if pipeline_changed {
                "pipeline"
            } else {
                "detect"
            });
            return false;
        };
        let (done, applied) = tokio::sync::oneshot::channel();
        // What the per-series detector state is built from
        // (`detector_scores` only changes what is rendered).
        let state_config = crate::detect::state::config_fingerprint(&new.detect, &new.pipeline);
        let request = Reconfigure {
            pipeline: Pipeline::from_config(new, self.ctx.events.clone()),
            reset_detectors: state_config
                != crate::detect::state::config_fingerprint(&old.detect, &old.pipeline),
            state_config,
            detector_scores: new.detect.detector_scores,
            done,
        };
        // Both fail only when the ingest task has ended (shutdown).
        if control.send(request).await.is_ok() && applied.await.is_ok() {
            if pipeline_changed {
                summary.rebuilt.push("pipeline");
            }
            if detect_changed {
                summary.rebuilt.push("detect");
            }
            true
        } else {
            false
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
        if old.web.limits() != new.web.limits() {
            summary
                .needs_restart
                .push("web connection limits and timeouts");
        }
        if old.store.ingest_queue != new.store.ingest_queue {
            summary.needs_restart.push("store.ingest_queue");
        }
        // Remote write queues and senders are set up once, at start.
        if format!("{:?}", old.remote_write) != format!("{:?}", new.remote_write) {
            summary.needs_restart.push("remote_write");
        }
        // The history store is opened once, at start.
        if old.history != new.history {
            summary.needs_restart.push("history");
        }

        // New bounds apply to the series created from here on (and to the
        // sources started below).
        self.set_label_limits(&new);

        // Every source, by name: the system source first, then the
        // `[[sources]]` in name order (the order of the summary).
        let mut wanted: Vec<(SourceConfig, Arc<dyn Ready>)> = new.ready_sources();
        wanted.sort_by(|(a, _), (b, _)| {
            (a.name() != SYSTEM, a.name()).cmp(&(b.name() != SYSTEM, b.name()))
        });
        let mut removed: Vec<String> = self
            .running
            .keys()
            .filter(|k| !wanted.iter().any(|(s, _)| s.name() == k.as_str()))
            .cloned()
            .collect();
        removed.sort_by_key(|name| name != SYSTEM);
        for name in removed {
            self.stop(&name).await;
            summary.stopped.push(name);
        }
        for (source, ready) in wanted {
            let name = source.name().to_string();
            match self.running.get(&name) {
                Some(r) if r.fingerprint == Fingerprint::of_source(&source) => {
                    summary.kept.push(name)
                }
                Some(_) => {
                    self.stop(&name).await;
                    self.spawn(&source, &*ready);
                    summary.restarted.push(name);
                }
                None => {
                    self.spawn(&source, &*ready);
                    summary.started.push(name);
                }
            }
        }
        self.publish_routes();
        let rebuilt = self.rebuild_pipeline(&new, &mut summary).await;
        // Settings that need a restart stay as they are in the running config.
        let mut applied = new;
        if !rebuilt {
            applied.pipeline = self.config.pipeline.clone();
            applied.detect = self.config.detect.clone();
        }
        applied.web = self.config.web.clone();
        applied.store.ingest_queue = self.config.store.ingest_queue;
        applied.history = self.config.history.clone();
        self.config = applied;
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigFormat, load_str};
    use crate::events::EventBus;
    use crate::store::Store;
    use crate::telemetry::Telemetry;

    fn config(sources: &str) -> Config {
        let text = format!("[system]\nenabled = false\n{sources}");
        load_str(&text, ConfigFormat::Toml, "test.toml").expect("valid test config")
    }

    fn one_source(toml: &str) -> SourceConfig {
        let mut c = config(toml);
        assert_eq!(c.sources.len(), 1, "{toml}");
        c.sources.remove(0)
    }

    fn http(auth: &str) -> String {
        format!(
            "[[sources]]\ntype = \"http\"\nname = \"api\"\nurl = \"http://127.0.0.1:9/x\"\n{auth}\n\
             [[sources.mappings]]\n[[sources.mappings.metrics]]\nname = \"x\"\npath = \"x\"\n"
        )
    }

    fn sql(dsn: &str) -> String {
        format!(
            "[[sources]]\ntype = \"sql\"\nname = \"db\"\n{dsn}\n\
             [[sources.queries]]\nname = \"q\"\nsql = \"SELECT 1 AS v\"\n\
             [[sources.queries.metrics]]\nname = \"v\"\ncolumn = \"v\"\n"
        )
    }

    fn mqtt(password: &str) -> String {
        format!(
            "[[sources]]\ntype = \"mqtt\"\nname = \"plant\"\nusername = \"u\"\n{password}\n\
             [[sources.subscriptions]]\nname = \"s\"\ntopic = \"t/+device\"\n\
             [sources.subscriptions.mapping]\n[[sources.subscriptions.mapping.metrics]]\nname = \"t\"\npath = \"t\"\n"
        )
    }

    fn webhook(file: &std::path::Path) -> String {
        format!(
            "[[sources]]\ntype = \"webhook\"\nname = \"hook\"\n\
             [sources.auth]\nscheme = \"hmac\"\nsecret_file = \"{}\"\n\
             [[sources.metrics]]\nname = \"e_total\"\ntype = \"counter\"\n",
            file.display()
        )
    }

    /// Reload used to compare `Debug` renderings, where every secret prints
    /// redacted: a changed token, password or DSN kept the old one running.
    #[test]
    fn a_changed_literal_secret_changes_the_fingerprint_for_every_source_kind() {
        let cases = [
            (
                http("bearer_token = \"old-pw\""),
                http("bearer_token = \"new-pw\""),
            ),
            (
                http("[sources.basic_auth]\nusername = \"u\"\npassword = \"old-pw\""),
                http("[sources.basic_auth]\nusername = \"u\"\npassword = \"new-pw\""),
            ),
            (
                sql("dsn = \"postgres://u:old-pw@127.0.0.1/db\""),
                sql("dsn = \"postgres://u:new-pw@127.0.0.1/db\""),
            ),
            (mqtt("password = \"old-pw\""), mqtt("password = \"new-pw\"")),
        ];
        for (old, new) in cases {
            let fp = |toml: &str| Fingerprint::of_source(&one_source(toml));
            assert_eq!(fp(&old), fp(&old), "the same configuration is unchanged");
            assert_ne!(fp(&old), fp(&new), "{old}");
            assert!(
                !format!("{:?}", one_source(&new)).contains("new-pw"),
                "Debug still redacts"
            );
        }
    }

    /// A secret read from a file (or the environment) is read again on
    /// reload: new content means a restart, with the same configuration.
    #[test]
    fn a_rotated_secret_file_changes_the_fingerprint_for_every_source_kind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        let path = file.display().to_string();
        let sources = [
            http(&format!("bearer_token_file = \"{path}\"")),
            http(&format!(
                "[sources.basic_auth]\nusername = \"u\"\npassword_file = \"{path}\""
            )),
            sql(&format!("dsn_file = \"{path}\"")),
            mqtt(&format!("password_file = \"{path}\"")),
            webhook(&file),
        ];
        for toml in sources {
            std::fs::write(&file, "old\n").unwrap();
            let source = one_source(&toml);
            let before = Fingerprint::of_source(&source);
            assert_eq!(before, Fingerprint::of_source(&source), "stable: {toml}");
            std::fs::write(&file, "new\n").unwrap();
            assert_ne!(before, Fingerprint::of_source(&source), "{toml}");
        }
    }

    /// The race a reload used to lose: the removed source's batches are
    /// still queued when it stops (here: nothing drains the queue until the
    /// reload is done). Its series must stay gone once the queue is applied.
    #[tokio::test]
    async fn a_changed_history_section_is_reported_as_needing_a_restart() {
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let ctx = SourceContext {
            tx,
            telemetry: Arc::new(Telemetry::new()),
            events: EventBus::default(),
            shutdown: CancellationToken::new(),
            store: Arc::new(RwLock::new(Store::new())),
        };
        let mut supervisor =
            Supervisor::start(config(""), ctx, TaskTracker::new(), PushRoutes::default());
        let summary = supervisor.apply(config("")).await;
        assert!(!summary.needs_restart.contains(&"history"), "{summary}");
        let summary = supervisor
            .apply(config("[history]\nflush_interval = \"2s\"\n"))
            .await;
        assert!(summary.needs_restart.contains(&"history"), "{summary}");
        // The running configuration keeps the history it started with.
        let summary = supervisor.apply(config("")).await;
        assert!(!summary.needs_restart.contains(&"history"), "{summary}");
    }

    // Paused clock: the demo source's interval elapses as soon as every
    // task waits.
    #[tokio::test(start_paused = true)]
    async fn removed_source_leaves_no_series_even_with_its_batches_still_queued() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let store = Arc::new(RwLock::new(Store::new()));
        let telemetry = Arc::new(Telemetry::new());
        let shutdown = CancellationToken::new();
        let ctx = SourceContext {
            tx: tx.clone(),
            telemetry: telemetry.clone(),
            events: EventBus::default(),
            shutdown: shutdown.clone(),
            store: store.clone(),
        };
        let demo = "[[sources]]\ntype = \"demo\"\nname = \"gone\"\ninterval = \"100ms\"\n";
        let mut supervisor =
            Supervisor::start(config(demo), ctx, TaskTracker::new(), PushRoutes::default());
        // Wait until the source has queued at least one batch.
        tokio::time::timeout(Duration::from_secs(30), async {
            while tx.capacity() == tx.max_capacity() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the demo source queued a batch");

        let summary = supervisor.apply(config("")).await;
        assert_eq!(summary.stopped, vec!["gone".to_string()]);

        let mut pipeline = Pipeline::standard();
        let mut applied = 0;
        while let Ok(batch) = rx.try_recv() {
            applied += 1;
            pipeline.apply(batch, &mut store.write(), &telemetry);
        }
        assert!(
            applied >= 2,
            "at least one batch and the removal were queued"
        );
        assert_eq!(store.read().source_len("gone"), 0);
        assert_eq!(store.read().len(), 0, "no series of the removed source");
        shutdown.cancel();
    }
}
