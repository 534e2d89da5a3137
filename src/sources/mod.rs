//! Sources: each owns its loop, turns what it reads into samples and sends
//! them in batches on the bounded ingest channel. A failing source reports
//! itself through self-metrics and never fails a scrape.
//!
//! Every kind has one shape: its configuration type implements [`Source`]
//! (name, kind, validate-and-build once, start), and [`SourceConfig`], the
//! closed enum of the kinds, is generated from one list at the bottom of
//! this file. Adding a source is its own file plus one line in that list.
//! Health (`vitals_source_up`, errors, duration) goes through the
//! [`Health`] handle the supervisor gives each source, which times and
//! records every collection in one place.

pub mod process;
pub mod secret;
pub mod system;

// Records and their aggregation moved to `payload`; kept at their old paths.
pub use crate::payload::{aggregate, record};

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::EventBus;
use crate::key_error::KeyError;
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

/// The one shape of every source kind, implemented by its configuration
/// type (the payload of its [`SourceConfig`] variant).
pub trait Source: std::fmt::Debug + Clone + Send + Sync + 'static {
    /// The `type` of the kind: its `[[sources]]` type and the `type` label
    /// of `vitals_source_up`. Written here and nowhere else.
    const KIND: &'static str;
    /// What [`Source::build`] compiles the configuration into (mappings,
    /// queries, patterns), kept from load to start so the task does not
    /// compile it again.
    type Built: Send + Sync + 'static;

    /// The unique instance name (the `source` label of self-metrics).
    fn name(&self) -> &str;

    /// Check the keys and compile, once, at load (and by `vitals check`).
    /// The error's key is relative to the source.
    fn build(&self) -> Result<Self::Built, KeyError>;

    /// The task (and, for a push source, the routes) of the built source.
    /// Health is recorded through `health`, never by hand.
    fn start(&self, built: &Self::Built, ctx: SourceContext, health: Health) -> Started;

    /// Secrets read at start from the environment or a file, by key, so a
    /// reload restarts the source when one was rotated.
    fn secret_inputs(&self) -> Vec<(&'static str, SecretInput<'_>)> {
        Vec::new()
    }
}

/// Where a source reads a secret from at start-up.
pub enum SecretInput<'a> {
    Env(&'a str),
    File(&'a std::path::Path),
}

/// The secrets of one `key` read from `env` or `file`, when set.
pub fn secret_input<'a>(
    out: &mut Vec<(&'static str, SecretInput<'a>)>,
    key: &'static str,
    env: Option<&'a str>,
    file: Option<&'a std::path::Path>,
) {
    if let Some(var) = env {
        out.push((key, SecretInput::Env(var)));
    }
    if let Some(path) = file {
        out.push((key, SecretInput::File(path)));
    }
}

/// What starting a source gives the supervisor.
pub struct Started {
    pub task: Task,
    /// Routes of a push source, merged into the server's push routes.
    pub routes: Option<axum::Router>,
}

/// The body of a source's task.
pub enum Task {
    Async(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Blocking I/O (file tailing) on a blocking thread.
    Blocking(Box<dyn FnOnce() + Send>),
}

impl Started {
    pub fn task(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Started {
            task: Task::Async(Box::pin(task)),
            routes: None,
        }
    }
}

/// One error of a source: a bounded reason (the `reason` label) and the
/// message logged with it (never a label).
#[derive(Debug)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(reason: &'static str, error: impl Display) -> Self {
        Failure {
            reason,
            message: error.to_string(),
        }
    }
}

/// How one collection of a source ended, for [`Health::collect`].
#[derive(Debug)]
pub enum Outcome {
    /// It succeeded: up, last success now, its duration.
    Ok,
    /// It failed as a whole: down, with each failure counted.
    Down(Vec<Failure>),
    /// One part of it failed (one of several queries): counted, and up is
    /// left as it is.
    Partial(Failure),
    /// It did not finish (shutdown, or the pipeline is gone): nothing is
    /// recorded.
    Stopped,
}

/// The health record of one source, made by the supervisor with the
/// source's name and kind: `vitals_source_up{source,type}`, last success,
/// collection duration and `vitals_source_errors_total`, and the typed
/// table the dashboard reads ([`crate::telemetry::HealthTable`]).
#[derive(Clone)]
pub struct Health {
    source: Arc<str>,
    kind: &'static str,
    telemetry: Arc<Telemetry>,
}

impl Health {
    pub fn new(telemetry: &Arc<Telemetry>, source: &str, kind: &'static str) -> Self {
        Health {
            source: source.into(),
            kind,
            telemetry: telemetry.clone(),
        }
    }

    pub fn source(&self) -> &Arc<str> {
        &self.source
    }

    /// Time one collection and record how it ended (node_exporter's
    /// collector wrapper); the collection's value is handed back.
    pub async fn collect<T>(&self, collection: impl Future<Output = (T, Outcome)>) -> T {
        let started = Instant::now();
        let (value, outcome) = collection.await;
        self.record(outcome, started.elapsed());
        value
    }

    /// [`Health::collect`] for a blocking collection.
    pub fn collect_blocking<T>(&self, collection: impl FnOnce() -> (T, Outcome)) -> T {
        let started = Instant::now();
        let (value, outcome) = collection();
        self.record(outcome, started.elapsed());
        value
    }

    fn record(&self, outcome: Outcome, took: Duration) {
        match outcome {
            Outcome::Ok => self.telemetry.source_ok(&self.source, self.kind, took),
            Outcome::Down(failures) => {
                self.telemetry.source_down(&self.source, self.kind);
                for f in failures {
                    self.error(f.reason, &f.message);
                }
            }
            Outcome::Partial(f) => self.error(f.reason, &f.message),
            Outcome::Stopped => {}
        }
    }

    /// Record a successful collection the source timed itself (a loop
    /// whose collection is not one future, such as the demo generator).
    pub fn collected(&self, took: Duration) {
        self.record(Outcome::Ok, took);
    }

    /// A connection (or a push endpoint) became ready: up, with no
    /// collection duration of its own.
    pub fn up(&self) {
        self.record(Outcome::Ok, Duration::ZERO);
    }

    /// The source is down (disconnected, or it cannot start), with the
    /// failure that took it down, if any.
    pub fn down(&self, failure: Option<Failure>) {
        self.record(Outcome::Down(failure.into_iter().collect()), Duration::ZERO);
    }

    /// An error outside a collection (a malformed line, a refused request):
    /// counted and logged, rate-limited; up is left as it is.
    pub fn error(&self, reason: &'static str, error: &dyn Display) {
        self.telemetry.source_error(&self.source, reason, error);
    }

    /// Count `n` errors whose log line the caller writes itself (with its
    /// own fields, rate-limited through [`Telemetry::should_log`]).
    pub fn count(&self, reason: &'static str, n: u64) {
        self.telemetry.count_source_errors(&self.source, reason, n);
    }
}

/// A source checked and built at load, ready to start.
pub trait Ready: Send + Sync {
    fn name(&self) -> &str;
    fn kind(&self) -> &'static str;
    fn start(&self, ctx: SourceContext, health: Health) -> Started;
}

/// A configuration with what it was built into.
struct Prepared<S: Source> {
    config: S,
    built: S::Built,
}

impl<S: Source> Ready for Prepared<S> {
    fn name(&self) -> &str {
        self.config.name()
    }
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn start(&self, ctx: SourceContext, health: Health) -> Started {
        self.config.start(&self.built, ctx, health)
    }
}

/// The object-safe face of [`Source`], through which [`SourceConfig`]
/// dispatches.
trait AnySource {
    fn name(&self) -> &str;
    fn kind(&self) -> &'static str;
    fn prepare(&self) -> Result<Arc<dyn Ready>, KeyError>;
    fn secret_inputs(&self) -> Vec<(&'static str, SecretInput<'_>)>;
}

impl<S: Source> AnySource for S {
    fn name(&self) -> &str {
        Source::name(self)
    }
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn prepare(&self) -> Result<Arc<dyn Ready>, KeyError> {
        let built = self.build()?;
        Ok(Arc::new(Prepared {
            config: self.clone(),
            built,
        }))
    }
    fn secret_inputs(&self) -> Vec<(&'static str, SecretInput<'_>)> {
        Source::secret_inputs(self)
    }
}

impl SourceConfig {
    /// The unique instance name (the `source` label of self-metrics).
    pub fn name(&self) -> &str {
        self.inner().name()
    }

    /// The `type` of the source.
    pub fn kind(&self) -> &'static str {
        self.inner().kind()
    }

    /// Check and build the source (see [`Source::build`]); the error's key
    /// is relative to the source.
    pub fn prepare(&self) -> Result<Arc<dyn Ready>, KeyError> {
        self.inner().prepare()
    }

    /// Checks between the keys of one source (what [`SourceConfig::prepare`]
    /// checks, without keeping the result).
    pub fn validate(&self) -> Result<(), KeyError> {
        self.prepare().map(|_| ())
    }

    /// Every secret the source reads from the environment or a file, by key.
    pub fn secret_inputs(&self) -> Vec<(&'static str, SecretInput<'_>)> {
        self.inner().secret_inputs()
    }
}

/// Separates the key path inside a source from the message in errors
/// raised while deserializing a source; `config::load` joins it to the
/// outer key.
pub(crate) const SUBKEY: char = '\u{1f}';

/// Deserialized by hand rather than as a serde internally tagged enum,
/// which buffers the table and loses the key path of errors inside it.
impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut value = serde_json::Value::deserialize(d)?;
        let table = value
            .as_object_mut()
            .ok_or_else(|| D::Error::custom("a source must be a table with `type` and `name`"))?;
        let kind = match table.remove("type") {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom(format!("type{SUBKEY}must be a string"))),
            None => {
                return Err(D::Error::custom(format!(
                    "type{SUBKEY}missing: every source needs a `type`"
                )));
            }
        };
        let parsed = SourceConfig::parse(&kind, value).unwrap_or_else(|| {
            let expected: Vec<String> = SourceConfig::KINDS
                .iter()
                .map(|k| format!("`{k}`"))
                .collect();
            Err(format!(
                "type{SUBKEY}unknown variant `{kind}`, expected one of {}",
                expected.join(", ")
            ))
        });
        parsed.map_err(D::Error::custom)
    }
}

/// Deserialize the table of one source as `T`, keeping the inner key path.
fn variant<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}{SUBKEY}{}", e.into_inner())
    })
}

/// Generates [`SourceConfig`] and its dispatch from the list below.
macro_rules! source_kinds {
    ($( $(#[$doc:meta])* $variant:ident => $module:ident::$config:ident, )*) => {
        $( pub mod $module; )*

        /// One configured source. The `[[sources]]` kinds are selected by
        /// their `type`; `System` is the `[system]` section (with
        /// `[[process_groups]]`), see `Config::source_list`.
        #[derive(Debug, Clone)]
        pub enum SourceConfig {
            $( $(#[$doc])* $variant($module::$config), )*
            /// The host collectors (`[system]` and `[[process_groups]]`).
            System(system::SystemSource),
        }

        impl SourceConfig {
            /// The `type`s a `[[sources]]` table may have, in this order.
            const KINDS: &'static [&'static str] = &[$( <$module::$config as Source>::KIND ),*];

            fn parse(kind: &str, value: serde_json::Value) -> Option<Result<Self, String>> {
                $(
                    if kind == <$module::$config as Source>::KIND {
                        return Some(variant(value).map(SourceConfig::$variant));
                    }
                )*
                None
            }

            fn inner(&self) -> &dyn AnySource {
                match self {
                    $( SourceConfig::$variant(c) => c, )*
                    SourceConfig::System(c) => c,
                }
            }
        }
    };
}

// The `[[sources]]` kinds: one line each (variant => module::config type).
source_kinds! {
    /// Tail log (or CSV) files.
    Logs => logs::LogsConfig,
    /// Events pushed over HTTP.
    Webhook => webhook::WebhookConfig,
    /// An MQTT broker connection with its subscriptions.
    Mqtt => mqtt::MqttConfig,
    /// Queries against PostgreSQL, MySQL/MariaDB or SQLite.
    Sql => sql::SqlConfig,
    /// A JSON API polled over HTTP(S).
    Http => http::HttpConfig,
    /// Generated plant and business series with occasional anomalies (a
    /// demo of the dashboard and the test/benchmark data generator).
    Demo => demo::DemoConfig,
}

/// Start the task of one built source on `tracker`, with its health
/// record; returns its handle (to wait for it when it is stopped) and the
/// routes of a push source. A task that panics is recorded down with reason
/// `panic`.
pub fn spawn(
    ready: &dyn Ready,
    ctx: &SourceContext,
    tracker: &TaskTracker,
) -> (tokio::task::JoinHandle<()>, Option<axum::Router>) {
    let health = Health::new(&ctx.telemetry, ready.name(), ready.kind());
    let Started { task, routes } = ready.start(ctx.clone(), health.clone());
    let handle = match task {
        Task::Async(task) => tracker.spawn(async move {
            use futures_util::FutureExt;
            if let Err(panic) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
                health.down(Some(Failure::new("panic", panic_message(&panic))));
            }
        }),
        Task::Blocking(task) => tracker.spawn_blocking(move || {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)) {
                health.down(Some(Failure::new("panic", panic_message(&panic))));
            }
        }),
    };
    (handle, routes)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => format!("The source task panicked: {s}"),
        (_, Some(s)) => format!("The source task panicked: {s}"),
        _ => "The source task panicked.".to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> (Arc<Telemetry>, Health) {
        let t = Arc::new(Telemetry::new());
        let h = Health::new(&t, "s", "sql");
        (t, h)
    }

    #[tokio::test]
    async fn each_outcome_of_a_collection_is_recorded_in_the_families_and_the_table() {
        let (t, h) = health();
        let up = || t.source_up.with_label_values(&["s", "sql"]).get();
        let errors = |reason| t.source_errors.with_label_values(&["s", reason]).get();

        assert_eq!(h.collect(async { (7, Outcome::Ok) }).await, 7);
        let row = t.health().get("s").expect("a row after the first record");
        assert_eq!((row.kind, row.up, row.errors), ("sql", Some(true), 0));
        assert!(row.last_success.is_some() && row.duration.is_some());
        assert_eq!(up(), 1);

        // One part failed: counted, still up.
        h.collect(async { ((), Outcome::Partial(Failure::new("query", "boom"))) })
            .await;
        assert_eq!((up(), errors("query")), (1, 1));
        assert_eq!(t.health().get("s").unwrap().up, Some(true));

        // The whole collection failed: down, every failure counted.
        let failures = vec![Failure::new("connect", "a"), Failure::new("timeout", "b")];
        h.collect_blocking(|| ((), Outcome::Down(failures)));
        assert_eq!((up(), errors("connect"), errors("timeout")), (0, 1, 1));
        let row = t.health().get("s").unwrap();
        assert_eq!((row.up, row.errors), (Some(false), 3));

        // Stopped before it finished: nothing changes.
        h.collect(async { ((), Outcome::Stopped) }).await;
        assert_eq!(t.health().get("s").unwrap(), row);

        // Errors counted without a log line land in the same row.
        h.count("subscribe_refused", 2);
        assert_eq!(t.health().get("s").unwrap().errors, 5);
        t.forget_source_health("s");
        assert!(t.health().snapshot().is_empty());
    }

    struct Panics;

    impl Ready for Panics {
        fn name(&self) -> &str {
            "bad"
        }
        fn kind(&self) -> &'static str {
            "demo"
        }
        fn start(&self, _: SourceContext, _: Health) -> Started {
            Started::task(async { panic!("broken source") })
        }
    }

    #[tokio::test]
    async fn a_source_task_that_panics_is_recorded_down() {
        let (tx, _rx) = mpsc::channel(1);
        let telemetry = Arc::new(Telemetry::new());
        let ctx = SourceContext {
            tx,
            telemetry: telemetry.clone(),
            events: EventBus::default(),
            shutdown: CancellationToken::new(),
            store: Arc::new(parking_lot::RwLock::new(Store::new())),
        };
        let (handle, routes) = spawn(&Panics, &ctx, &TaskTracker::new());
        assert!(routes.is_none());
        handle.await.expect("the wrapper catches the panic");
        let row = telemetry.health().get("bad").expect("recorded");
        assert_eq!((row.kind, row.up, row.errors), ("demo", Some(false), 1));
        assert_eq!(
            telemetry
                .source_errors
                .with_label_values(&["bad", "panic"])
                .get(),
            1
        );
    }

    #[test]
    fn an_unknown_type_names_every_kind_in_order() {
        let text = "[[sources]]\ntype = \"nope\"\nname = \"x\"\n";
        let err = crate::config::load_str(text, crate::config::ConfigFormat::Toml, "t.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.toml: key `sources[0].type`: unknown variant `nope`, expected one of `logs`, `webhook`, `mqtt`, `sql`, `http`, `demo`"
        );
    }

    #[test]
    fn the_system_source_is_a_variant_built_from_its_sections() {
        let mut cfg = crate::config::Config::default();
        let system = cfg.system_source();
        assert_eq!((system.name(), system.kind()), ("system", "system"));
        assert!(system.validate().is_ok());
        let names = |cfg: &crate::config::Config| -> Vec<String> {
            cfg.ready_sources()
                .iter()
                .map(|(s, r)| format!("{}:{}", s.name(), r.kind()))
                .collect()
        };
        assert_eq!(names(&cfg), ["system:system"]);
        cfg.system.enabled = false;
        assert!(names(&cfg).is_empty());
        cfg.process_groups[0].name.clear();
        assert_eq!(
            cfg.system_source().validate().unwrap_err(),
            KeyError::new("process_groups[0].name", "must not be empty")
        );
    }
}
