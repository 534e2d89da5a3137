//! The `logs` source against real files being appended, rotated (by rename
//! and by copytruncate), deleted and recreated, across a restart.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Vitals, assert_samples, promtool_check_metrics, sample_value, wait_for};

const WAIT: Duration = Duration::from_secs(20);

fn append(path: &Path, lines: &[&str]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log for append");
    for l in lines {
        writeln!(f, "{l}").expect("append line");
    }
}

fn req(method: &str, status: u16, dur: f64) -> String {
    format!("ts=2026-01-01T00:00:00Z method={method} status={status} dur={dur}")
}

/// A regex logs source on `glob` with a counter, a gauge and a histogram.
fn regex_config(glob: &Path, extra: &str) -> String {
    format!(
        r#"
[system]
enabled = false

[[sources]]
type = "logs"
name = "app"
paths = ["{glob}"]
poll_interval = "50ms"
start_at = "beginning"
match = 'method=(?P<method>[A-Z]+) status=(?P<status>\d+) dur=(?P<dur>[0-9.]+)'
{extra}

[[sources.metrics]]
name = "app_requests_total"
type = "counter"
help = "Requests by method and status."
labels = {{ method = "method", status = "status" }}

[[sources.metrics]]
name = "app_last_duration_seconds"
type = "gauge"
value = "dur"

[[sources.metrics]]
name = "app_request_duration_seconds"
type = "histogram"
value = "dur"
buckets = [0.1, 1.0]
"#,
        glob = glob.display()
    )
}

fn total(v: &Vitals) -> f64 {
    let m = v.metrics();
    m.lines()
        .filter(|l| l.starts_with("app_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn wait_total(v: &Vitals, want: f64, what: &str) {
    wait_for(WAIT, what, || (total(v) == want).then_some(()));
}

#[test]
fn counts_matched_lines_by_label_and_skips_lines_that_do_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &[&req("GET", 200, 0.05)]);
    let v = Vitals::start(&regex_config(&log, ""));
    wait_total(&v, 1.0, "the existing line (start_at = beginning)");
    append(
        &log,
        &[
            &req("GET", 200, 0.5),
            "garbage line that does not match",
            &req("POST", 500, 2.0),
            "",
        ],
    );
    wait_total(&v, 3.0, "three matched lines");
    let m = v.metrics();
    assert_samples(
        &m,
        &[
            (
                "app_requests_total",
                &["method=\"GET\"", "status=\"200\""],
                Some(2.0),
            ),
            (
                "app_requests_total",
                &["method=\"POST\"", "status=\"500\""],
                Some(1.0),
            ),
            ("app_last_duration_seconds", &[], Some(2.0)),
            (
                "app_request_duration_seconds_bucket",
                &["le=\"0.1\""],
                Some(1.0),
            ),
            (
                "app_request_duration_seconds_bucket",
                &["le=\"1\""],
                Some(2.0),
            ),
            (
                "app_request_duration_seconds_bucket",
                &["le=\"+Inf\""],
                Some(3.0),
            ),
            ("app_request_duration_seconds_sum", &[], Some(2.55)),
            ("app_request_duration_seconds_count", &[], Some(3.0)),
        ],
    );
    assert!(m.contains("# TYPE app_request_duration_seconds histogram"));
    assert_eq!(
        sample_value(&m, "vitals_log_lines_total", &["outcome=\"unmatched\""]),
        Some(2.0),
        "the garbage line and the empty line"
    );
    let (ok, findings) = promtool_check_metrics(&m);
    assert!(ok, "promtool check metrics: {findings}");
}

#[test]
fn follows_rename_rotation_including_lines_written_just_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &[&req("GET", 200, 0.1)]);
    let v = Vitals::start(&regex_config(&dir.path().join("app.log*"), ""));
    wait_total(&v, 1.0, "the first line");
    // Lines appended right before the rename, then the rename (the rotated
    // name still matches the glob: it must not be read twice), then a new
    // file at the old path.
    append(&log, &[&req("GET", 200, 0.1), &req("GET", 200, 0.1)]);
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&log, &[&req("PUT", 201, 0.1)]);
    wait_total(&v, 4.0, "lines of the old and the new file");
    // A second rotation to a name outside the glob.
    append(&log, &[&req("PUT", 201, 0.1)]);
    std::fs::rename(&log, dir.path().join("old.log")).unwrap();
    append(&log, &[&req("PUT", 201, 0.1)]);
    wait_total(&v, 6.0, "lines after the second rotation");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(total(&v), 6.0, "no line counted twice");
}

#[test]
fn follows_copytruncate_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(
        &log,
        &[
            &req("GET", 200, 0.1),
            &req("GET", 200, 0.1),
            &req("GET", 200, 0.1),
        ],
    );
    let v = Vitals::start(&regex_config(&log, ""));
    wait_total(&v, 3.0, "three lines");
    std::fs::copy(&log, dir.path().join("app.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    // Wait until the truncation was seen before writing again, so the new
    // content is never as long as the old (which would hide a truncation
    // from any tailer).
    std::thread::sleep(Duration::from_millis(500));
    append(&log, &[&req("PUT", 201, 0.1)]);
    wait_total(&v, 4.0, "the line written after the truncation");
    append(&log, &[&req("PUT", 201, 0.1)]);
    wait_total(&v, 5.0, "one more line");
}

#[test]
fn restart_resumes_from_saved_offsets_without_double_count_or_gap() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let state = dir.path().join("state").join("offsets.json");
    append(&log, &[&req("GET", 200, 0.1), &req("GET", 200, 0.1)]);
    let extra = format!("state_file = \"{}\"", state.display());
    let config =
        regex_config(&log, &extra).replace("start_at = \"beginning\"", "start_at = \"end\"");
    let mut v = Vitals::start(&config);
    // start_at = end: the two existing lines are not counted.
    append(
        &log,
        &[
            &req("GET", 200, 0.1),
            &req("GET", 200, 0.1),
            &req("GET", 200, 0.1),
        ],
    );
    wait_total(&v, 3.0, "lines appended after start");
    assert!(v.terminate(WAIT).is_some_and(|s| s.success()), "clean exit");
    assert!(state.exists(), "state file written");
    // Written while vitals is down: must be counted once after the restart.
    append(&log, &[&req("POST", 200, 0.1), &req("POST", 200, 0.1)]);
    let v = Vitals::start(&config);
    wait_total(&v, 2.0, "only the lines written while stopped");
    append(&log, &[&req("POST", 200, 0.1)]);
    wait_total(&v, 3.0, "and new ones");
    let m = v.metrics();
    assert_eq!(
        sample_value(&m, "app_requests_total", &["method=\"GET\""]),
        None,
        "lines before the restart are not read again"
    );
}

#[test]
fn deleted_file_is_counted_and_a_recreated_file_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &[&req("GET", 200, 0.1)]);
    let v = Vitals::start(&regex_config(&log, ""));
    wait_total(&v, 1.0, "the first line");
    std::fs::remove_file(&log).unwrap();
    wait_for(WAIT, "file_deleted to be counted", || {
        sample_value(
            &v.metrics(),
            "vitals_source_errors_total",
            &["source=\"app\"", "reason=\"file_deleted\""],
        )
        .filter(|n| *n >= 1.0)
    });
    append(&log, &[&req("PUT", 201, 0.1), &req("PUT", 201, 0.1)]);
    wait_total(&v, 3.0, "both lines of the recreated file");
}

#[test]
fn unreadable_path_is_counted_and_other_files_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    // A directory matching the glob cannot be read as a log.
    std::fs::create_dir(dir.path().join("bad.log")).unwrap();
    let good = dir.path().join("good.log");
    append(&good, &[&req("GET", 200, 0.1)]);
    let v = Vitals::start(&regex_config(&dir.path().join("*.log"), ""));
    wait_total(&v, 1.0, "the readable file");
    let m = v.metrics();
    assert_eq!(
        sample_value(&m, "vitals_source_errors_total", &["reason=\"unreadable\""]),
        Some(1.0),
        "counted once, not on every poll"
    );
    append(&good, &[&req("GET", 200, 0.1)]);
    wait_total(&v, 2.0, "more lines");
}

#[test]
fn json_lines_with_field_paths_and_malformed_lines_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.jsonl");
    let config = format!(
        r#"
[system]
enabled = false

[[sources]]
type = "logs"
name = "jsonapp"
paths = ["{}"]
format = "json"
poll_interval = "50ms"
start_at = "beginning"

[[sources.metrics]]
name = "jobs_total"
type = "counter"
labels = {{ level = "level", job = "job.name" }}

[[sources.metrics]]
name = "job_duration_seconds"
type = "histogram"
when = 'msg == "done"'
value = "job.ms"
scale = 0.001
buckets = [0.5, 5]

[[sources.rules]]
name = "slow_job"
when = 'job.ms > 4000'
severity = "warning"
"#,
        log.display()
    );
    append(
        &log,
        &[
            r#"{"level":"info","msg":"done","job":{"name":"sync","ms":250}}"#,
            r#"{"level":"info","msg":"done","job":{"name":"sync","ms":4500}}"#,
            r#"{"level":"warn","msg":"started","job":{"name":"report"}}"#,
            r#"{"level":"info","msg":"do"#,
        ],
    );
    let v = Vitals::start(&config);
    wait_for(WAIT, "json lines", || {
        sample_value(&v.metrics(), "job_duration_seconds_count", &[]).filter(|n| *n == 2.0)
    });
    let m = v.metrics();
    assert_samples(
        &m,
        &[
            ("jobs_total", &["job=\"sync\"", "level=\"info\""], Some(2.0)),
            ("job_duration_seconds_bucket", &["le=\"0.5\""], Some(1.0)),
            ("job_duration_seconds_sum", &[], Some(4.75)),
            (
                "vitals_rule_hits_total",
                &["rule=\"slow_job\"", "source=\"jsonapp\""],
                Some(1.0),
            ),
            (
                "vitals_source_errors_total",
                &["reason=\"malformed_json\""],
                Some(1.0),
            ),
            (
                "vitals_log_lines_total",
                &["outcome=\"malformed\""],
                Some(1.0),
            ),
        ],
    );
    let (ok, findings) = promtool_check_metrics(&m);
    assert!(ok, "promtool check metrics: {findings}");
}

#[test]
fn csv_readings_become_gauges_with_the_header_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let csv: PathBuf = dir.path().join("readings-1.csv");
    append(
        &csv,
        &[
            "time,sensor,unit,value",
            "2026-01-01T00:00:00Z,boiler-1,celsius,81.5",
            "2026-01-01T00:00:01Z,\"line, 2\",bar,3.25",
            "2026-01-01T00:00:02Z,boiler-1,celsius",
        ],
    );
    let config = format!(
        r#"
[system]
enabled = false

[[sources]]
type = "logs"
name = "sensors"
paths = ["{}"]
format = "csv"
poll_interval = "50ms"
start_at = "beginning"

[[sources.metrics]]
name = "plant_sensor_reading"
type = "gauge"
value = "value"
labels = {{ sensor = "sensor", unit = "unit" }}
"#,
        dir.path().join("readings-*.csv").display()
    );
    let v = Vitals::start(&config);
    wait_for(WAIT, "csv readings", || {
        sample_value(
            &v.metrics(),
            "plant_sensor_reading",
            &["sensor=\"line, 2\""],
        )
    });
    append(&csv, &["2026-01-01T00:00:03Z,boiler-1,celsius,82"]);
    wait_for(WAIT, "the newer reading", || {
        sample_value(
            &v.metrics(),
            "plant_sensor_reading",
            &["sensor=\"boiler-1\""],
        )
        .filter(|x| *x == 82.0)
    });
    let m = v.metrics();
    assert_eq!(
        sample_value(
            &m,
            "vitals_source_errors_total",
            &["reason=\"malformed_csv\""]
        ),
        Some(1.0),
        "the short row"
    );
}

/// The saved offsets reach the disk before the rename makes them the state
/// file: traced with strace, the temporary file is fsynced before it is
/// renamed (a crash right after the rename cannot leave an empty state).
#[test]
fn saved_offsets_are_fsynced_before_the_rename() {
    let strace = common::require("strace");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let state = dir.path().join("offsets.json");
    append(&log, &[&req("GET", 200, 0.1)]);
    let config = regex_config(&log, &format!("state_file = \"{}\"", state.display()));
    let cfg = dir.path().join("vitals.toml");
    std::fs::write(&cfg, config).unwrap();
    let trace = dir.path().join("trace");
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut child = std::process::Command::new(strace)
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
        ])
        .arg("-o")
        .arg(&trace)
        .arg(common::vitals_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--web.listen-address", &addr])
        .arg("--storage.path")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn strace");
    let renamed = |t: &str| {
        t.lines()
            .any(|l| l.contains("rename") && l.contains("offsets.tmp"))
    };
    let text = wait_for(WAIT, "the state file to be written", || {
        let t = std::fs::read_to_string(&trace).ok()?;
        (state.exists() && renamed(&t)).then_some(t)
    });
    // Stop vitals (the traced process; strace exits with it).
    let pid = text.split_whitespace().next().unwrap().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = child.wait();
    let lines: Vec<&str> = text.lines().collect();
    let rename_at = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains("offsets.tmp"))
        .unwrap();
    let fd = lines[..rename_at]
        .iter()
        .rev()
        .find(|l| l.contains("openat(") && l.contains("offsets.tmp"))
        .and_then(|l| l.rsplit("= ").next())
        .map(|fd| fd.trim().to_string())
        .expect("the temporary state file is opened before the rename");
    assert!(
        lines[..rename_at].iter().any(|l| {
            l.contains(&format!("fsync({fd})")) || l.contains(&format!("fdatasync({fd})"))
        }),
        "no fsync of fd {fd} before the rename:\n{}",
        lines[..=rename_at].join("\n")
    );
}
