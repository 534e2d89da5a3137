//! The `vitals` binary: parse the command line, set up logging, dispatch.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "vitals", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILD_VITALS_COMMIT"), ")"))]
#[command(
    about = "Real-time system, sensor and business metrics with anomaly detection, for Prometheus."
)]
#[command(args_conflicts_with_subcommands = true)]
#[command(after_help = ENV_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, vitals runs the exporter (`vitals run`).
    #[command(flatten)]
    run: RunArgs,
}

/// What `--help` says about the environment.
const ENV_HELP: &str = "Environment:\n  Every configuration key can be set as VITALS_<SECTION>__<KEY>, which\n  overrides the file (and is overridden by the flags), e.g.\n    VITALS_WEB__LISTEN_ADDRESS=0.0.0.0:9797  VITALS_WEB__TELEMETRY_PATH=/metrics\n    VITALS_WEB__ENABLE_LIFECYCLE=true        VITALS_WEB__CONFIG_FILE=web.yml\n    VITALS_SYSTEM__INTERVAL=5s               VITALS_DASHBOARD__ENABLED=false\n  RUST_LOG, when set to a valid filter, overrides --log.level.";

#[derive(Subcommand)]
enum Command {
    /// Run the exporter (the default).
    Run(RunArgs),
    /// Validate configuration files and exit (0 when all are valid, 2 otherwise).
    Check {
        /// Configuration file(s) to check.
        #[arg(long = "config", short = 'c', required = true, num_args = 1..)]
        config: Vec<PathBuf>,
        /// Relay configurations: do not read the `env:`/`file:` secrets and
        /// CA files they name (for a machine that lacks them) and list each
        /// one not read. Without it they are read as `vitals relay` reads
        /// them, with the same errors.
        #[arg(long = "skip-secrets")]
        skip_secrets: bool,
    },
    /// Replay CSV files (timestamp,value) through the pipeline and anomaly
    /// detectors; with labels, print precision/recall and the NAB score.
    Backtest(BacktestArgs),
    /// Run the alert relay: Alertmanager/Grafana webhooks to e-mail and SMS.
    Relay(RelayArgs),
    /// Print a shell completion script, e.g.
    /// `vitals completions bash > /etc/bash_completion.d/vitals`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page vitals(1), or with --dir write it and one page per
    /// subcommand (vitals-run(1), ...) into DIR.
    Man {
        #[arg(long = "dir", value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Exit 0 when a running exporter answers 200 on /-/healthy, 1 otherwise
    /// (a container health check that needs no shell or curl).
    Healthcheck(HealthcheckArgs),
}

#[derive(Args, Clone)]
struct HealthcheckArgs {
    /// Address the exporter listens on (HOST:PORT or :PORT); a wildcard
    /// address is checked on loopback.
    #[arg(long = "web.listen-address", value_parser = parse_listen_address, default_value = ":9797")]
    listen_address: SocketAddr,
    /// Full URL to check instead (http or https), e.g. https://127.0.0.1:9797/-/healthy.
    #[arg(long = "url")]
    url: Option<String>,
    /// Give up after this long.
    #[arg(long = "timeout", value_parser = humantime::parse_duration, default_value = "5s")]
    timeout: Duration,
}

/// `--log.level` and `--log.format`, shared by the long-running commands.
#[derive(Args, Clone)]
struct LogArgs {
    /// Log level (error, warn, info, debug, trace, off) or a filter such as
    /// `info,vitals::sources=debug`; anything else is refused.
    #[arg(long = "log.level", default_value = "info", value_parser = parse_log_level)]
    log_level: String,
    /// Log line format: text (for people; colours on a terminal only),
    /// logfmt or json.
    #[arg(long = "log.format", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Logfmt,
    Json,
}

/// Accept a level name, or a filter whose every directive names a level
/// (`target=level`); a bare word that is no level (`bogus`) would be taken
/// by tracing as a target and silence every other log line.
fn parse_log_level(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |d: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d.trim()));
    let refuse = || {
        format!(
            "{s:?} is not a log level: use error, warn, info, debug, trace or off, or a filter such as `info,vitals::sources=debug`"
        )
    };
    if s.trim().is_empty() {
        return Err(refuse());
    }
    for directive in s.split(',') {
        let ok = match directive.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(directive),
        };
        if !ok {
            return Err(refuse());
        }
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("{}: {e}", refuse()))?;
    Ok(s.to_string())
}

/// `HOST:PORT`, `[V6]:PORT` or `:PORT` (all IPv4 interfaces, as Go's
/// `:PORT` on a host without IPv6); a host name is resolved once.
fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: the port must be a number from 0 to 65535"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT or :PORT: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// The system collectors `--collector.<name>` / `--no-collector.<name>`
/// switch (node_exporter's names where vitals has the same collector).
const COLLECTORS: [(&str, &str, &str, &str); 8] = [
    (
        "cpu",
        "collector.cpu",
        "no-collector.cpu",
        "CPU usage and count",
    ),
    (
        "loadavg",
        "collector.loadavg",
        "no-collector.loadavg",
        "load averages",
    ),
    (
        "meminfo",
        "collector.meminfo",
        "no-collector.meminfo",
        "memory and swap",
    ),
    (
        "filesystem",
        "collector.filesystem",
        "no-collector.filesystem",
        "filesystem space and disk I/O",
    ),
    (
        "netdev",
        "collector.netdev",
        "no-collector.netdev",
        "network interface counters",
    ),
    (
        "uptime",
        "collector.uptime",
        "no-collector.uptime",
        "boot time and uptime",
    ),
    (
        "hwmon",
        "collector.hwmon",
        "no-collector.hwmon",
        "temperature sensors",
    ),
    (
        "processgroups",
        "collector.processgroups",
        "no-collector.processgroups",
        "the configured process groups",
    ),
];

/// `--collector.<name>`, `--no-collector.<name>` and
/// `--collector.disable-defaults`, as node_exporter spells them.
#[derive(Clone, Default)]
struct CollectorArgs {
    /// Collector name → on (true) or off (false), as given last.
    chosen: Vec<(&'static str, bool)>,
    disable_defaults: bool,
}

impl clap::FromArgMatches for CollectorArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut args = CollectorArgs::default();
        args.update_from_arg_matches(m)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        for (name, on, off, _) in COLLECTORS {
            if m.get_flag(on) {
                self.chosen.push((name, true));
            } else if m.get_flag(off) {
                self.chosen.push((name, false));
            }
        }
        self.disable_defaults |= m.get_flag("collector.disable-defaults");
        Ok(())
    }
}

impl clap::Args for CollectorArgs {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        use clap::{Arg, ArgAction};
        for (_, on, off, what) in COLLECTORS {
            cmd = cmd
                .arg(
                    Arg::new(on)
                        .long(on)
                        .action(ArgAction::SetTrue)
                        .overrides_with(off)
                        .help(format!("Enable the collector of {what} (default: enabled)")),
                )
                .arg(
                    Arg::new(off)
                        .long(off)
                        .action(ArgAction::SetTrue)
                        .overrides_with(on)
                        .help(format!("Disable the collector of {what}")),
                );
        }
        cmd.arg(
            Arg::new("collector.disable-defaults")
                .long("collector.disable-defaults")
                .action(ArgAction::SetTrue)
                .help("Disable every collector not enabled with --collector.<name>"),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// `vitals completions` and `vitals man`, generated from the clap definition.
fn generate_docs(command: &Command) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "vitals", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir: None } => clap_mangen::Man::new(cli).render(&mut std::io::stdout()),
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cli, dir)
        }
        _ => Ok(()),
    }
}

#[derive(Args, Clone)]
struct BacktestArgs {
    /// NAB-style labels: JSON object of file key to [[start, end], ...] windows.
    #[arg(long = "labels")]
    labels: Option<PathBuf>,
    /// Write results in NAB's layout (<DIR>/vitals/<category>/vitals_<file>.csv).
    #[arg(long = "nab-results", value_name = "DIR")]
    nab_results: Option<PathBuf>,
    /// Write per-row timestamp,value,anomaly_score,flag files under DIR.
    #[arg(long = "output", value_name = "DIR")]
    output: Option<PathBuf>,
    /// Configuration file whose [detect] and [[pipeline]] sections are used.
    #[arg(long = "config", short = 'c')]
    config: Option<PathBuf>,
    /// Rows reported per file at most (bad or skipped rows).
    #[arg(long = "max-issues", default_value_t = 20)]
    max_issues: usize,
    /// Folds of the labelled files (JSON `{"folds": {"a": [keys], "b": [...]}}`):
    /// print the out-of-fold NAB score, the threshold and suppression chosen
    /// on the other folds for each fold (needs --labels).
    #[arg(long = "folds", value_name = "FILE")]
    folds: Option<PathBuf>,
    /// Run only these ensemble members (repeatable or comma-separated:
    /// context, seasonal, cad_ose, artime, median_mad, cusum), overriding
    /// `[detect] detectors`.
    #[arg(long = "detector", value_name = "NAME", value_delimiter = ',')]
    detectors: Vec<String>,
    /// Likelihood layer of each member (ewm or numenta), overriding
    /// `[detect] likelihood`.
    #[arg(long = "likelihood", value_name = "KIND")]
    likelihood: Option<String>,
    /// CSV files or folders of them (walked recursively).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

#[derive(Args, Clone)]
struct RelayArgs {
    /// Relay configuration file (TOML with a top-level `[relay]` table).
    #[arg(long = "config", short = 'c')]
    config: PathBuf,
    /// Address to listen on (HOST:PORT or :PORT), overriding
    /// `relay.listen_address` (default port 9798).
    #[arg(long = "web.listen-address", value_parser = parse_listen_address)]
    listen_address: Option<SocketAddr>,
    /// Web configuration file (TLS, basic auth, response headers), the
    /// format node_exporter and Prometheus take; re-read when it changes.
    #[arg(long = "web.config.file")]
    web_config_file: Option<PathBuf>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Configuration file (TOML, or YAML with a .yml/.yaml extension).
    /// Without one, built-in defaults are used.
    #[arg(long = "config", short = 'c')]
    config: Option<PathBuf>,
    /// Address to listen on (HOST:PORT or :PORT), overriding
    /// `web.listen_address`; repeat it to listen on several.
    #[arg(long = "web.listen-address", value_parser = parse_listen_address)]
    listen_address: Vec<SocketAddr>,
    /// Web configuration file (TLS, basic auth, response headers), the
    /// format node_exporter and Prometheus take; re-read when it changes.
    #[arg(long = "web.config.file")]
    web_config_file: Option<PathBuf>,
    /// At most this many /metrics requests at once (overrides `web.max_requests`).
    #[arg(long = "web.max-requests")]
    max_requests: Option<usize>,
    /// Path of the metrics endpoint (default /metrics; `web.telemetry_path`).
    #[arg(long = "web.telemetry-path")]
    telemetry_path: Option<String>,
    /// Leave the exporter's own process_* metrics and its scrape-duration
    /// histogram out of the metrics endpoint (`web.disable_exporter_metrics`).
    #[arg(long = "web.disable-exporter-metrics")]
    disable_exporter_metrics: bool,
    /// Allow reloading over HTTP (POST or PUT /-/reload), as Prometheus'
    /// flag of that name; without it those answer 403. SIGHUP always
    /// reloads (`web.enable_lifecycle`).
    #[arg(long = "web.enable-lifecycle")]
    enable_lifecycle: bool,
    /// Directory of the on-disk history, overriding `history.path`
    /// (default `data/` under the working directory), as Prometheus' flag.
    #[arg(long = "storage.path", value_name = "DIR")]
    storage_path: Option<PathBuf>,
    #[command(flatten)]
    collectors: CollectorArgs,
    /// Host root filesystem mounted in a container (e.g. /host): only
    /// mount points under it are reported, with the prefix removed.
    #[arg(long = "path.rootfs")]
    rootfs: Option<PathBuf>,
    /// procfs mount point. Only /proc is supported: sysinfo reads /proc
    /// directly (run the container in the host's PID namespace instead).
    #[arg(long = "path.procfs", default_value = "/proc")]
    procfs: PathBuf,
    /// sysfs mount point. Only /sys is supported: sysinfo reads /sys
    /// directly (mount the host's /sys at /sys instead).
    #[arg(long = "path.sysfs", default_value = "/sys")]
    sysfs: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check {
            config,
            skip_secrets,
        }) => check(&config, skip_secrets),
        Some(Command::Run(args)) => run(args),
        Some(Command::Backtest(args)) => backtest(args),
        Some(Command::Relay(args)) => relay(args),
        Some(Command::Healthcheck(args)) => healthcheck(args),
        Some(c @ (Command::Completions { .. } | Command::Man { .. })) => match generate_docs(&c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vitals: {e}");
                ExitCode::FAILURE
            }
        },
        None => run(cli.run),
    }
}

fn init_logging(log: &LogArgs) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(&log.log_level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let registry = tracing_subscriber::registry().with(filter);
    match log.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only for a person at a terminal, never
                    // into a file or a journal.
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
        LogFormat::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .with_span_path(false)
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

fn check(paths: &[PathBuf], skip_secrets: bool) -> ExitCode {
    let mut ok = true;
    for path in paths {
        // A relay configuration has a top-level `[relay]` table.
        let is_relay = std::fs::read_to_string(path)
            .map(|t| vitals::relay::config::is_relay_config(&t))
            .unwrap_or(false);
        let checked = if is_relay {
            vitals::relay::check(path, skip_secrets)
                .map(|not_read| {
                    if !not_read.is_empty() {
                        println!(
                            "{}: not read (--skip-secrets): {}",
                            path.display(),
                            not_read.join(", ")
                        );
                    }
                })
                .map_err(|e| e.to_string())
        } else {
            vitals::config::load(Some(path))
                .map_err(|e| e.to_string())
                .and_then(|cfg| match &cfg.web.config_file {
                    Some(web) => vitals::web::webconfig::WebConfig::load(web)
                        .map(|w| {
                            for warning in &w.warnings {
                                eprintln!("vitals: warning: {}: {warning}", web.display());
                            }
                        })
                        .map_err(|e| e.to_string()),
                    None => Ok(()),
                })
        };
        match checked {
            Ok(()) => println!("{}: OK", path.display()),
            Err(e) => {
                eprintln!("vitals: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// Apply the command-line overrides to a loaded configuration.
fn apply_overrides(cfg: &mut vitals::config::Config, args: &RunArgs) -> Result<(), String> {
    if let Some((first, rest)) = args.listen_address.split_first() {
        cfg.web.listen_address = *first;
        cfg.web.extra_listen_addresses = rest.to_vec();
    }
    if let Some(path) = &args.web_config_file {
        cfg.web.config_file = Some(path.clone());
    }
    if let Some(n) = args.max_requests.filter(|n| *n > 0) {
        cfg.web.max_requests = n;
    }
    if let Some(path) = &args.telemetry_path {
        cfg.web.telemetry_path = path.clone();
    }
    if let Some(path) = &args.storage_path {
        cfg.history.path = path.clone();
    }
    cfg.web.disable_exporter_metrics |= args.disable_exporter_metrics;
    cfg.web.enable_lifecycle |= args.enable_lifecycle;
    let c = &args.collectors;
    if c.disable_defaults {
        cfg.system.collectors = vitals::config::Collectors::none();
    }
    for (name, on) in &c.chosen {
        cfg.system.collectors.set(name, *on);
    }
    if !cfg.system.collectors.hwmon {
        cfg.system.temperatures = false;
    }
    if !cfg.system.collectors.processgroups {
        cfg.process_groups.clear();
    }
    if args.procfs != std::path::Path::new("/proc") {
        return Err(format!(
            "--path.procfs {}: only /proc is supported (sysinfo reads /proc directly); run the container in the host's PID namespace (docker run --pid=host) so /proc shows the host",
            args.procfs.display()
        ));
    }
    if args.sysfs != std::path::Path::new("/sys") {
        return Err(format!(
            "--path.sysfs {}: only /sys is supported (sysinfo reads /sys directly); mount the host's /sys at /sys instead",
            args.sysfs.display()
        ));
    }
    if let Some(root) = &args.rootfs {
        cfg.system.filesystems.rootfs = Some(root.clone());
    }
    cfg.validate_web().map_err(|e| e.to_string())
}

/// Load the configuration: file (or defaults), environment, command line,
/// and the web configuration file it names; one message on error.
fn load(args: &RunArgs) -> Result<vitals::config::Config, String> {
    let mut cfg = vitals::config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    apply_overrides(&mut cfg, args)?;
    if let Some(path) = &cfg.web.config_file {
        vitals::web::webconfig::WebConfig::load(path).map_err(|e| e.to_string())?;
    }
    Ok(cfg)
}

fn backtest(args: BacktestArgs) -> ExitCode {
    let mut config = match vitals::config::load(args.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("vitals: {e}");
            return ExitCode::from(2);
        }
    };
    if !args.detectors.is_empty() {
        let mut kinds = Vec::new();
        for name in &args.detectors {
            match vitals::detect::DetectorKind::parse(name.trim()) {
                Some(k) => kinds.push(k),
                None => {
                    eprintln!("vitals: --detector {name:?}: not a detector");
                    return ExitCode::from(2);
                }
            }
        }
        config.detect.detectors = kinds;
    }
    match args.likelihood.as_deref() {
        None => {}
        Some("ewm") => config.detect.likelihood = vitals::detect::LikelihoodKind::Ewm,
        Some("numenta") => config.detect.likelihood = vitals::detect::LikelihoodKind::Numenta,
        Some(other) => {
            eprintln!("vitals: --likelihood {other:?}: expected ewm or numenta");
            return ExitCode::from(2);
        }
    }
    let opts = vitals::detect::backtest::Options {
        paths: args.paths,
        labels: args.labels,
        nab_results: args.nab_results,
        output: args.output,
        folds: args.folds,
        config,
    };
    match vitals::detect::backtest::run(&opts) {
        Ok(report) => {
            for f in &report.files {
                for issue in f.issues.iter().take(args.max_issues) {
                    eprintln!("{}:{}: {}", f.path.display(), issue.line, issue.reason);
                }
                if f.issues.len() > args.max_issues {
                    eprintln!(
                        "{}: {} more rows reported",
                        f.path.display(),
                        f.issues.len() - args.max_issues
                    );
                }
            }
            print!("{}", report.summary());
            let empty = report.empty_files();
            for f in &empty {
                eprintln!(
                    "vitals: {}: no row could be replayed (unreadable, or no data rows)",
                    f.path.display()
                );
            }
            if empty.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("vitals: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let cfg = match load(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("vitals: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&args.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vitals: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reload_args = args.clone();
    let loader: vitals::run::ConfigLoader = Box::new(move || load(&reload_args));
    match runtime.block_on(vitals::run::run(cfg, loader)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vitals: {e}");
            ExitCode::FAILURE
        }
    }
}

fn relay(args: RelayArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vitals: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = {
        let _guard = rt.enter();
        match vitals::relay::load(&args.config) {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("vitals: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let web = match &args.web_config_file {
        Some(path) => match vitals::web::webconfig::WebConfigWatcher::new(path) {
            Ok(w) => Some(std::sync::Arc::new(w)),
            Err(e) => {
                eprintln!("vitals: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    init_logging(&args.log);
    match rt.block_on(vitals::relay::run_with_web(
        args.config,
        runtime,
        args.listen_address,
        web,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vitals: {e}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(args: HealthcheckArgs) -> ExitCode {
    let url = args.url.unwrap_or_else(|| {
        let mut addr = args.listen_address;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}/-/healthy")
    });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vitals: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(args.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(response.status())
    });
    match result {
        Ok(status) if status == reqwest::StatusCode::OK => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("vitals: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vitals: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
