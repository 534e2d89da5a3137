//! The `vitals` binary: parse the command line, set up logging, dispatch.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vitals", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILD_VITALS_COMMIT"), ")"))]
#[command(
    about = "Real-time system, sensor and business metrics with anomaly detection, for Prometheus."
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, vitals runs the exporter (`vitals run`).
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the exporter (the default).
    Run(RunArgs),
    /// Validate configuration files and exit (0 when all are valid, 2 otherwise).
    Check {
        /// Configuration file(s) to check.
        #[arg(long = "config", short = 'c', required = true, num_args = 1..)]
        config: Vec<PathBuf>,
    },
    /// Replay CSV files (timestamp,value) through the pipeline and anomaly
    /// detectors; with labels, print precision/recall and the NAB score.
    Backtest(BacktestArgs),
    /// Run the alert relay: Alertmanager/Grafana webhooks to e-mail and SMS.
    Relay(RelayArgs),
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
    /// Address to listen on, overriding `relay.listen_address` (default port 9798).
    #[arg(long = "web.listen-address")]
    listen_address: Option<SocketAddr>,
    /// Web configuration file (TLS, basic auth, response headers), the
    /// format node_exporter and Prometheus take; re-read when it changes.
    #[arg(long = "web.config.file")]
    web_config_file: Option<PathBuf>,
    /// Log level or filter (error, warn, info, debug, trace, or a RUST_LOG filter).
    #[arg(long = "log.level", default_value = "info")]
    log_level: String,
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    /// Configuration file (TOML, or YAML with a .yml/.yaml extension).
    /// Without one, built-in defaults are used.
    #[arg(long = "config", short = 'c')]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `web.listen_address`.
    #[arg(long = "web.listen-address")]
    listen_address: Option<SocketAddr>,
    /// Web configuration file (TLS, basic auth, response headers), the
    /// format node_exporter and Prometheus take; re-read when it changes.
    #[arg(long = "web.config.file")]
    web_config_file: Option<PathBuf>,
    /// At most this many /metrics requests at once (overrides `web.max_requests`).
    #[arg(long = "web.max-requests")]
    max_requests: Option<usize>,
    /// Log level or filter (error, warn, info, debug, trace, or a RUST_LOG filter).
    #[arg(long = "log.level", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Run(args)) => run(args),
        Some(Command::Backtest(args)) => backtest(args),
        Some(Command::Relay(args)) => relay(args),
        None => run(cli.run),
    }
}

fn init_logging(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for path in paths {
        // A relay configuration has a top-level `[relay]` table.
        let is_relay = std::fs::read_to_string(path)
            .map(|t| vitals::relay::config::is_relay_config(&t))
            .unwrap_or(false);
        let checked = if is_relay {
            vitals::relay::check(path).map_err(|e| e.to_string())
        } else {
            vitals::config::load(Some(path))
                .map_err(|e| e.to_string())
                .and_then(|cfg| match &cfg.web.config_file {
                    Some(web) => vitals::expose::webconfig::WebConfig::load(web)
                        .map(|_| ())
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
fn apply_overrides(cfg: &mut vitals::config::Config, args: &RunArgs) {
    if let Some(address) = args.listen_address {
        cfg.web.listen_address = address;
    }
    if let Some(path) = &args.web_config_file {
        cfg.web.config_file = Some(path.clone());
    }
    if let Some(n) = args.max_requests.filter(|n| *n > 0) {
        cfg.web.max_requests = n;
    }
}

/// Load the configuration: file (or defaults), environment, command line,
/// and the web configuration file it names; one message on error.
fn load(args: &RunArgs) -> Result<vitals::config::Config, String> {
    let mut cfg = vitals::config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    apply_overrides(&mut cfg, args);
    if let Some(path) = &cfg.web.config_file {
        vitals::expose::webconfig::WebConfig::load(path).map_err(|e| e.to_string())?;
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
    init_logging(&args.log_level);
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
        Some(path) => match vitals::expose::webconfig::WebConfigWatcher::new(path) {
            Ok(w) => Some(std::sync::Arc::new(w)),
            Err(e) => {
                eprintln!("vitals: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    init_logging(&args.log_level);
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
