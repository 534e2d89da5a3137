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
        let out = Command::new(vitals_bin())
            .arg("check")
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
    for word in ["run", "check", "--web.listen-address", "--config"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}
