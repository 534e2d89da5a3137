//! Detector state and webhook idempotency windows across a restart of the
//! real binary: SIGTERM, start again on the same `[history] path`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Vitals, http, sample_value, wait_for};

fn config(dir: &Path, sensitivity: f64) -> String {
    format!(
        r#"
[system]
enabled = false

[history]
path = "{dir}"

[detect]
detectors = ["median_mad", "context"]
sensitivity = {sensitivity}

[[sources]]
type = "webhook"
name = "hook"
idempotency_key = "id"

[[sources.metrics]]
name = "hook_level"
type = "gauge"
value = "value"
"#,
        dir = dir.display()
    )
}

/// POST one event; returns the `(accepted, duplicates)` of the answer.
fn post(v: &Vitals, id: &str, value: f64) -> (u64, u64) {
    let body = format!(r#"{{"id":"{id}","value":{value}}}"#);
    let (status, body) = http(v.addr, "POST", "/ingest/hook", &[], body.as_bytes()).unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        json["accepted"].as_u64().unwrap(),
        json["duplicates"].as_u64().unwrap(),
    )
}

const LEVEL: &[&str] = &["metric=\"hook_level\""];

/// The median/MAD member's expected value of `hook_level`, once it has one
/// (after 8 samples of the series).
fn expected(v: &Vitals) -> Option<f64> {
    sample_value(&v.metrics(), "vitals_anomaly_expected", LEVEL)
}

fn stop(mut v: Vitals) {
    let status = v
        .terminate(Duration::from_secs(30))
        .expect("vitals stops on SIGTERM");
    assert!(status.success(), "{status}");
}

/// Run 1 learns `hook_level` at 10 (40 events) and is stopped with
/// SIGTERM; run 2 gets one event at 20.
fn learn_then_restart(dir: &Path, second_sensitivity: f64) -> Vitals {
    let v = Vitals::start(&config(dir, 0.5));
    for i in 0..40 {
        assert_eq!(post(&v, &format!("e-{i}"), 10.0), (1, 0));
    }
    wait_for(Duration::from_secs(10), "a learned expected value", || {
        (expected(&v) == Some(10.0)).then_some(())
    });
    stop(v);
    assert!(dir.join("detectors.state").is_file());
    let v = Vitals::start(&config(dir, second_sensitivity));
    assert_eq!(post(&v, "after", 20.0), (1, 0));
    wait_for(
        Duration::from_secs(10),
        "the sample after the restart",
        || sample_value(&v.metrics(), "hook_level", &[]).filter(|x| *x == 20.0),
    );
    v
}

#[test]
fn detectors_continue_after_a_restart_and_duplicates_stay_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = learn_then_restart(dir.path(), 0.5);
    let m = v.metrics();
    // Restored: the median of the last 32 values (31 of them 10) is 10.
    // Fresh detectors would have no expected value after one sample.
    assert_eq!(
        sample_value(&m, "vitals_anomaly_expected", LEVEL),
        Some(10.0),
        "{m}"
    );
    assert!(
        sample_value(&m, "vitals_detector_state_restored_series", &[]) >= Some(2.0),
        "{m}"
    );
    // An event accepted before the restart is still a duplicate after it.
    assert_eq!(post(&v, "e-3", 10.0), (0, 1));
    assert_eq!(post(&v, "e-40", 10.0), (1, 0));
    stop(v);
}

#[test]
fn a_changed_detect_section_starts_the_detectors_fresh_but_keeps_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let v = learn_then_restart(dir.path(), 0.6);
    let m = v.metrics();
    assert_eq!(
        sample_value(&m, "vitals_anomaly_expected", LEVEL),
        None,
        "{m}"
    );
    assert!(
        sample_value(&m, "vitals_anomaly_score", LEVEL).is_some(),
        "the new sample was scored: {m}"
    );
    assert_eq!(
        sample_value(&m, "vitals_detector_state_restored_series", &[]),
        Some(0.0)
    );
    assert_eq!(post(&v, "e-3", 10.0), (0, 1));
    stop(v);
}

#[test]
fn a_damaged_state_file_is_a_warning_and_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("detectors.state"), b"vitalsDS garbage").unwrap();
    let v = Vitals::start(&config(dir.path(), 0.5));
    assert_eq!(post(&v, "x", 1.0), (1, 0));
    stop(v);
    // The clean shutdown replaced it with a good one.
    let v = Vitals::start(&config(dir.path(), 0.5));
    assert_eq!(post(&v, "x", 1.0), (0, 1));
    stop(v);
}
