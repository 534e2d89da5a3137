//! The exporter as a user runs it: the real binary, real system metrics,
//! checked by the real promtool.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Vitals, get, promtool_check_metrics, sample_value, vitals_bin, wait_for};

const GROUPS: &str = r#"
[system]
interval = "200ms"

[[process_groups]]
name = "init"
pids = [1]

[[process_groups]]
name = "vitals"
comm = ["vitals"]

[[process_groups]]
name = "never-started"
comm = ["no-such-proc-x"]
"#;

#[test]
fn serves_system_and_process_metrics_that_pass_promtool() {
    let v = Vitals::start(GROUPS);
    let metrics = wait_for(Duration::from_secs(15), "system metrics", || {
        let m = v.metrics();
        m.contains("vitals_process_group_up{").then_some(m)
    });
    for family in [
        "vitals_cpu_usage_ratio",
        "vitals_cpus",
        "vitals_load1",
        "vitals_memory_total_bytes",
        "vitals_memory_available_bytes",
        "vitals_swap_total_bytes",
        "vitals_filesystem_size_bytes",
        "vitals_filesystem_usage_ratio",
        "vitals_network_receive_bytes_total",
        "vitals_boot_time_seconds",
        "vitals_uptime_seconds",
        "vitals_source_up",
        "vitals_build_info",
        "vitals_scrape_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(&format!("\n{family}")),
            "missing {family} in:\n{metrics}"
        );
    }
    let total = sample_value(&metrics, "vitals_memory_total_bytes", &[]).unwrap();
    assert!(total > 0.0);
    let cpu = sample_value(&metrics, "vitals_cpu_usage_ratio", &[]).unwrap();
    assert!((0.0..=1.0).contains(&cpu), "cpu ratio {cpu}");
    assert_eq!(
        sample_value(&metrics, "vitals_source_up", &["source=\"system\""]),
        Some(1.0)
    );

    let (ok, findings) = promtool_check_metrics(&metrics);
    assert!(ok, "promtool check metrics findings:\n{findings}");
}

/// `curl` on `/metrics` with `Accept` (and gzip when `gzip`); returns the
/// response headers (lower-cased) and the decoded body.
fn curl_metrics(addr: std::net::SocketAddr, accept: &str, gzip: bool) -> (String, String) {
    let curl = common::require("curl");
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let mut cmd = Command::new(curl);
    cmd.args(["-sS", "--fail", "-H"])
        .arg(format!("Accept: {accept}"))
        .arg("-D")
        .arg(&headers);
    if gzip {
        cmd.arg("--compressed");
    }
    let out = cmd.arg(format!("http://{addr}/metrics")).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(headers)
            .unwrap()
            .to_ascii_lowercase(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// What Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[test]
fn openmetrics_and_gzip_are_negotiated_and_text_stays_promtool_clean() {
    let v = Vitals::start(GROUPS);
    wait_for(Duration::from_secs(15), "system metrics", || {
        v.metrics()
            .contains("vitals_process_group_up{")
            .then_some(())
    });
    // Prometheus' request: OpenMetrics, gzipped.
    let (headers, om) = curl_metrics(v.addr, PROMETHEUS_ACCEPT, true);
    assert!(headers.contains("content-encoding: gzip"), "{headers}");
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    assert!(
        om.ends_with("# EOF\n"),
        "{}",
        &om[om.len().saturating_sub(200)..]
    );
    for line in [
        "# TYPE vitals_cpu_seconds counter\n# UNIT vitals_cpu_seconds seconds\n",
        "# TYPE vitals_network_receive_bytes counter\n",
        "# TYPE process_cpu_seconds counter\n",
        "\nprocess_cpu_seconds_created ",
        "# TYPE vitals_scrape_duration_seconds histogram\n# UNIT vitals_scrape_duration_seconds seconds\n",
    ] {
        assert!(om.contains(line), "missing {line:?} in OpenMetrics:\n{om}");
    }
    assert!(!om.contains("# TYPE vitals_cpu_seconds_total"), "{om}");
    assert_eq!(om.matches("# EOF").count(), 1);
    // Every family once.
    let mut helps = std::collections::HashSet::new();
    for l in om.lines().filter(|l| l.starts_with("# HELP ")) {
        let name = l.split(' ').nth(2).unwrap();
        assert!(helps.insert(name.to_string()), "{name} written twice");
    }
    assert!(
        sample_value(&om, "vitals_cpu_seconds_total", &["mode=\"idle\""]).unwrap() > 0.0,
        "{om}"
    );

    // No Accept header, no gzip: the text format, uncompressed.
    let (headers, text) = curl_metrics(v.addr, "*/*", false);
    assert!(!headers.contains("content-encoding"), "{headers}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    assert!(!text.contains("# EOF") && !text.contains("_created"));
    assert!(text.contains("# TYPE vitals_cpu_seconds_total counter\n"));
    assert!(sample_value(&text, "vitals_network_receive_bytes_total", &["device=\""]).is_some());
    let (ok, findings) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics findings:\n{findings}");
}

#[test]
fn compression_and_openmetrics_can_be_switched_off() {
    let v = Vitals::start(
        "[system]\nenabled = false\n[web]\ncompression = false\nopenmetrics = false\n",
    );
    let (headers, text) = curl_metrics(v.addr, PROMETHEUS_ACCEPT, true);
    assert!(!headers.contains("content-encoding"), "{headers}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    assert!(text.contains("# TYPE vitals_build_info gauge"));
}

#[test]
fn process_groups_report_up_and_down_including_never_started() {
    let v = Vitals::start(GROUPS);
    let metrics = wait_for(Duration::from_secs(15), "process groups", || {
        let m = v.metrics();
        m.contains("group=\"never-started\"").then_some(m)
    });
    assert_eq!(
        sample_value(&metrics, "vitals_process_group_up", &["group=\"vitals\""]),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&metrics, "vitals_process_group_up", &["group=\"init\""]),
        Some(1.0)
    );
    assert_eq!(
        sample_value(
            &metrics,
            "vitals_process_group_up",
            &["group=\"never-started\""]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample_value(
            &metrics,
            "vitals_process_group_processes",
            &["group=\"never-started\""]
        ),
        Some(0.0)
    );
    assert!(
        sample_value(
            &metrics,
            "vitals_process_group_resident_memory_bytes",
            &["group=\"vitals\""]
        )
        .unwrap()
            > 0.0
    );
}

#[test]
fn a_process_that_exits_takes_its_group_down_and_is_counted() {
    let mut child = Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("spawn sleep");
    let cfg = format!(
        "[system]\ninterval = \"200ms\"\n[[process_groups]]\nname = \"sleeper\"\npids = [{}]\n",
        child.id()
    );
    let v = Vitals::start(&cfg);
    wait_for(Duration::from_secs(15), "sleeper up", || {
        (sample_value(
            &v.metrics(),
            "vitals_process_group_up",
            &["group=\"sleeper\""],
        ) == Some(1.0))
        .then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let m = wait_for(Duration::from_secs(15), "sleeper down", || {
        let m = v.metrics();
        (sample_value(&m, "vitals_process_group_up", &["group=\"sleeper\""]) == Some(0.0))
            .then_some(m)
    });
    assert_eq!(
        sample_value(
            &m,
            "vitals_process_group_exits_total",
            &["group=\"sleeper\""]
        ),
        Some(1.0)
    );
}

#[test]
fn health_ready_and_landing_endpoints_answer() {
    let v = Vitals::start("");
    assert_eq!(get(v.addr, "/healthz").unwrap().0, 200);
    assert_eq!(get(v.addr, "/readyz").unwrap().0, 200);
    let (status, body) = get(v.addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("metrics"));
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut v = Vitals::start("");
    let status = v
        .terminate(Duration::from_secs(15))
        .expect("vitals exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

fn check(config: &str, ext: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("bad.{ext}"));
    std::fs::write(&path, config).unwrap();
    let out = Command::new(vitals_bin())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code().unwrap_or(-1),
        stderr.replace(&path.display().to_string(), "FILE"),
    )
}

#[test]
fn check_names_file_key_and_reason() {
    let cases = [
        (
            "[system]\nintervall = \"1s\"\n",
            "key `system.intervall`: unknown field `intervall`",
        ),
        (
            "[system]\ninterval = \"1 parsec\"\n",
            "key `system.interval`: invalid value: string \"1 parsec\", expected a duration",
        ),
        (
            "[system]\nenabled = \"maybe\"\n",
            "key `system.enabled`: invalid type: string \"maybe\", expected a boolean",
        ),
        (
            "[system.network]\ninterfaces_exclude = \"([\"\n",
            "key `system.network.interfaces_exclude`: invalid regex \"([\"",
        ),
        (
            "[[process_groups]]\nname = \"a\"\n",
            "key `process_groups[0]`: needs at least one matcher",
        ),
        (
            "[system]\ninterval = \"1ms\"\n",
            "key `system.interval`: must be at least 100ms",
        ),
        (
            "[[sources]]\ntype = \"nonsense\"\nname = \"x\"\n",
            "key `sources[0].type`: unknown variant `nonsense`",
        ),
        (
            "[[sources]]\ntype = \"mqtt\"\nname = \"m\"\nhots = \"x\"\n",
            "key `sources[0].hots`: unknown field `hots`",
        ),
        ("system = [\n", "FILE: TOML parse error"),
        // A configured metric may not take a self-metric's name (it made
        // /metrics invalid: two HELP lines for one family).
        (
            "[[sources]]\ntype = \"webhook\"\nname = \"w\"\n\n[[sources.metrics]]\n\
             name = \"process_cpu_seconds_total\"\ntype = \"counter\"\n",
            "key `sources[0].metrics[0].name`: \"process_cpu_seconds_total\" starts with `process_`, which is reserved",
        ),
        (
            "[[sources]]\ntype = \"http\"\nname = \"h\"\nurl = \"http://127.0.0.1:1/\"\n\n\
             [[sources.mappings]]\n[[sources.mappings.metrics]]\nname = \"vitals_store_series\"\npath = \"a\"\n",
            "metrics[0].name`: \"vitals_store_series\" starts with `vitals_`",
        ),
    ];
    for (config, expected) in cases {
        let (code, stderr) = check(config, "toml");
        assert_eq!(code, 2, "exit code for {config:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "for {config:?} expected {expected:?} in {stderr:?}"
        );
        assert!(
            stderr.starts_with("vitals: FILE"),
            "names the file: {stderr:?}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn check_accepts_yaml_and_rejects_missing_files() {
    let (code, stderr) = check("system:\n  interval: 2s\n", "yaml");
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = check("system:\n  intrval: 2s\n", "yml");
    assert_eq!(code, 2);
    assert!(stderr.contains("key `system.intrval`"), "{stderr}");
    let out = Command::new(vitals_bin())
        .args(["check", "--config", "/nonexistent/vitals.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/vitals.toml: cannot read the file")
    );
}

#[test]
fn run_with_a_broken_config_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.toml");
    std::fs::write(&path, "[web]\nlisten_addres = \"x\"\n").unwrap();
    let out = Command::new(vitals_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("key `web.listen_addres`: unknown field"),
        "{stderr}"
    );
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.toml");
    std::fs::write(&path, "[system]\ninterval = \"1s\"\n").unwrap();
    let out = Command::new(vitals_bin())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env("VITALS_SYSTEM__INTERVAL", "1ms")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "the env value (1ms) must be the one validated"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("system.interval"));
}

#[test]
fn port_in_use_is_a_clear_error_naming_the_address() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let out = Command::new(vitals_bin())
        .args(["run", "--web.listen-address", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn every_example_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "toml" | "yml" | "yaml") {
            continue;
        }
        // The relay examples name `env:` secrets this machine has not set.
        let out = Command::new(vitals_bin())
            .arg("check")
            .arg("--skip-secrets")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} fails vitals check: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 1,
        "no example configs found in {}",
        dir.display()
    );
}

#[test]
fn version_and_help() {
    let out = Command::new(vitals_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with(&format!("vitals {}", env!("CARGO_PKG_VERSION")))
    );
    let out = Command::new(vitals_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "run",
        "check",
        "healthcheck",
        "--web.listen-address",
        "--config",
        "--web.telemetry-path",
        "--web.enable-lifecycle",
        "--no-collector.cpu",
        "--log.format",
        "VITALS_WEB__LISTEN_ADDRESS",
        "VITALS_<SECTION>__<KEY>",
    ] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

/// Run the binary with `args` until it exits (a refusal at start-up).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(vitals_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_invalid_log_level_is_refused_with_exit_2() {
    for args in [
        &["run", "--log.level", "bogus"][..],
        &["--log.level", "bogus"],
        &["run", "--log.level", "info,bogus"],
        &["run", "--log.level", ""],
        &[
            "relay",
            "--config",
            "/nonexistent.toml",
            "--log.level",
            "verbose",
        ],
    ] {
        let (code, stderr) = refused(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("is not a log level"), "{args:?}: {stderr}");
        assert!(stderr.contains("--log.level"), "{args:?}: {stderr}");
    }
}

/// Start `vitals run` with its stderr captured to a file; returns the
/// process, its address and the log path.
fn start_logging(args: &[&str]) -> (Vitals, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let child = Command::new(vitals_bin())
        .args(["run", "--web.listen-address", &addr.to_string()])
        .arg("--storage.path")
        .arg(dir.path().join("data"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let v = Vitals { child, addr, dir };
    wait_for(Duration::from_secs(20), "vitals to become ready", || {
        get(addr, "/readyz").filter(|(s, _)| *s == 200).map(|_| ())
    });
    (v, log)
}

#[test]
fn log_level_filters_and_formats_are_honoured() {
    // A filter with levels is accepted and logs at info.
    let (v, log) = start_logging(&["--log.level", "info,vitals::sources=debug"]);
    let text = wait_for(Duration::from_secs(10), "a log line", || {
        let t = std::fs::read_to_string(&log).unwrap();
        t.contains("Listening").then_some(t)
    });
    // Not a terminal: no colour codes in the file.
    assert!(
        !text.contains('\u{1b}'),
        "ANSI codes in a log file: {text:?}"
    );
    drop(v);

    let (v, log) = start_logging(&["--log.format", "json"]);
    let text = wait_for(Duration::from_secs(10), "a JSON log line", || {
        let t = std::fs::read_to_string(&log).unwrap();
        t.contains("Listening").then_some(t)
    });
    for line in text.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(value.get("level").is_some(), "{line}");
    }
    drop(v);

    let (v, log) = start_logging(&["--log.format", "logfmt"]);
    let text = wait_for(Duration::from_secs(10), "a logfmt line", || {
        let t = std::fs::read_to_string(&log).unwrap();
        t.contains("Listening").then_some(t)
    });
    let line = text.lines().find(|l| l.contains("Listening")).unwrap();
    assert!(line.contains("level=info"), "{line}");
    assert!(line.contains("address=127.0.0.1:"), "{line}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    drop(v);

    let (code, stderr) = refused(&["run", "--log.format", "xml"]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn telemetry_path_health_endpoints_and_exporter_metrics() {
    // The plain landing page (the dashboard owns / otherwise).
    let v = Vitals::start_with(
        "[system]\nenabled = false\n[dashboard]\nenabled = false\n",
        &["--web.telemetry-path", "/node/metrics"],
    );
    let (status, body) = get(v.addr, "/node/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("vitals_build_info"), "{body}");
    assert!(body.contains("process_resident_memory_bytes"), "{body}");
    assert_eq!(get(v.addr, "/metrics").unwrap().0, 404);
    for path in ["/-/healthy", "/-/ready", "/healthz", "/readyz"] {
        assert_eq!(get(v.addr, path).unwrap().0, 200, "{path}");
    }
    let (_, landing) = get(v.addr, "/").unwrap();
    assert!(landing.contains("node/metrics"), "{landing}");
    drop(v);

    let v = Vitals::start_with("", &["--web.disable-exporter-metrics"]);
    let body = wait_for(Duration::from_secs(15), "system metrics", || {
        let m = v.metrics();
        m.contains("vitals_source_up{").then_some(m)
    });
    assert!(
        !body.contains("\nprocess_") && !body.contains("# TYPE process_"),
        "{body}"
    );
    assert!(body.contains("vitals_process_group_up"), "{body}");
    assert!(!body.contains("vitals_scrape_duration_seconds"), "{body}");
    assert!(body.contains("vitals_build_info"), "{body}");

    let (code, stderr) = refused(&["run", "--web.telemetry-path", "/-/healthy"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("web.telemetry_path"), "{stderr}");
}

#[test]
fn collectors_are_switched_by_flags() {
    let v = Vitals::start_with(
        "[system]\ninterval = \"200ms\"\n",
        &[
            "--no-collector.meminfo",
            "--no-collector.cpu",
            "--collector.cpu",
            "--no-collector.netdev",
        ],
    );
    let m = wait_for(Duration::from_secs(15), "system metrics", || {
        let m = v.metrics();
        m.contains("\nvitals_load1 ").then_some(m)
    });
    assert!(!m.contains("\nvitals_memory_total_bytes"), "{m}");
    assert!(!m.contains("\nvitals_network_"), "{m}");
    // The last of --no-collector.cpu --collector.cpu wins.
    assert!(m.contains("\nvitals_cpus "), "{m}");
    drop(v);

    let v = Vitals::start_with(
        "[system]\ninterval = \"200ms\"\n",
        &["--collector.disable-defaults", "--collector.meminfo"],
    );
    let m = wait_for(Duration::from_secs(15), "memory metrics", || {
        let m = v.metrics();
        m.contains("\nvitals_memory_total_bytes").then_some(m)
    });
    for gone in [
        "vitals_cpus",
        "vitals_load1",
        "vitals_filesystem_",
        "vitals_process_group_",
    ] {
        assert!(!m.contains(&format!("\n{gone}")), "{gone} in {m}");
    }
}

#[test]
fn listen_address_is_repeatable_and_takes_a_bare_port() {
    let second = common::free_port();
    let v = Vitals::start_with(
        "[system]\nenabled = false\n",
        &["--web.listen-address", &format!(":{second}")],
    );
    let other: std::net::SocketAddr = format!("127.0.0.1:{second}").parse().unwrap();
    assert_eq!(get(other, "/-/healthy").unwrap().0, 200);
    assert_eq!(get(v.addr, "/-/healthy").unwrap().0, 200);
    let (code, stderr) = refused(&["run", "--web.listen-address", ":99999"]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn reload_over_http_needs_the_lifecycle_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vitals.toml");
    std::fs::write(&config, "[system]\nenabled = false\n").unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let child = Command::new(vitals_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--web.listen-address", &addr.to_string()])
        .arg("--storage.path")
        .arg(dir.path().join("data"))
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let v = Vitals { child, addr, dir };
    wait_for(Duration::from_secs(20), "vitals to become ready", || {
        get(addr, "/readyz").filter(|(s, _)| *s == 200).map(|_| ())
    });
    let (status, body) = common::http(v.addr, "POST", "/-/reload", &[], b"").unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--web.enable-lifecycle"), "{body}");
    drop(v);

    // The harness starts vitals with the flag.
    let v = Vitals::start("[system]\nenabled = false\n");
    for method in ["POST", "PUT"] {
        let (status, body) = common::http(v.addr, method, "/-/reload", &[], b"").unwrap();
        assert_eq!(status, 200, "{method}: {body}");
    }
}

#[test]
fn healthcheck_subcommand_reports_the_exporter_state() {
    let v = Vitals::start("[system]\nenabled = false\n");
    let status = Command::new(vitals_bin())
        .args(["healthcheck", "--web.listen-address", &v.addr.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let url = format!("http://{}/-/healthy", v.addr);
    let status = Command::new(vitals_bin())
        .args(["healthcheck", "--url", &url])
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    drop(v);
    // Nothing listens there any more.
    let out = Command::new(vitals_bin())
        .args(["healthcheck", "--url", &url, "--timeout", "2s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&url));
}

#[test]
fn path_flags_procfs_and_sysfs_other_than_the_default_are_refused() {
    let (code, stderr) = refused(&["run", "--path.procfs", "/host/proc"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--path.procfs /host/proc: only /proc"),
        "{stderr}"
    );
    let (code, stderr) = refused(&["run", "--path.sysfs", "/host/sys"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("only /sys"), "{stderr}");
}

/// A bind mount for one test, unmounted (lazily) when dropped.
struct BindMount(std::path::PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn rootfs_reports_the_host_mounts_under_it_without_the_prefix() {
    let host = tempfile::tempdir().unwrap();
    let at = host.path().join("host");
    std::fs::create_dir_all(&at).unwrap();
    let out = Command::new("mount")
        .args(["--bind", "/"])
        .arg(&at)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "SKIPPED rootfs test: cannot bind-mount / ({}); it needs root or CAP_SYS_ADMIN",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    let _mount = BindMount(at.clone());
    let config =
        "[system]\ninterval = \"200ms\"\n[system.filesystems]\nmount_points_exclude = \"\"\n";
    let at_s = at.to_str().unwrap();
    let v = Vitals::start_with(config, &["--path.rootfs", at_s]);
    let m = wait_for(Duration::from_secs(15), "filesystem metrics", || {
        let m = v.metrics();
        m.contains("vitals_filesystem_size_bytes{").then_some(m)
    });
    let mounts: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("vitals_filesystem_size_bytes{"))
        .filter_map(|l| l.split("mountpoint=\"").nth(1)?.split('"').next())
        .collect();
    assert!(mounts.contains(&"/"), "{mounts:?}");
    assert!(
        mounts.iter().all(|p| !p.contains(at_s)),
        "the prefix is removed: {mounts:?}"
    );
}

/// Inodes are exported per filesystem, as node_exporter's
/// node_filesystem_files / node_filesystem_files_free, and agree with
/// statvfs(3) as `stat -f` reports it.
#[test]
fn exports_filesystem_inodes() {
    let v = Vitals::start("");
    let metrics = wait_for(Duration::from_secs(15), "filesystem inodes", || {
        let m = v.metrics();
        m.contains("\nvitals_filesystem_files_free{").then_some(m)
    });
    // A mount point vitals reports with a non-zero inode count.
    let (mount, files) = metrics
        .lines()
        .filter(|l| l.starts_with("vitals_filesystem_files{"))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let mount = series.split("mountpoint=\"").nth(1)?.split('"').next()?;
            let files: f64 = value.parse().ok()?;
            (files > 0.0).then(|| (mount.to_string(), files))
        })
        .unwrap_or_else(|| panic!("no filesystem with inodes in:\n{metrics}"));
    let out = Command::new("stat")
        .args(["-f", "--format=%c %d"])
        .arg(&mount)
        .output()
        .expect("stat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse::<f64>().unwrap());
    let (want_files, want_free) = (it.next().unwrap(), it.next().unwrap());
    assert_eq!(files, want_files, "inodes of {mount}");
    let free = sample_value(
        &metrics,
        "vitals_filesystem_files_free",
        &[&format!("mountpoint=\"{mount}\"")],
    )
    .unwrap();
    // Free inodes move while the machine works; same order of magnitude.
    assert!(
        free <= files && (free - want_free).abs() <= want_files * 0.05,
        "free inodes of {mount}: {free}, stat -f says {want_free}"
    );
}
