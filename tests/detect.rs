//! Anomaly detection end to end: the `vitals_anomaly_*` families on a real
//! `vitals run` with default settings (checked by promtool), and `vitals
//! backtest` on generated CSV files with labels.

mod common;

use std::ffi::OsStr;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Vitals, promtool_check_metrics, sample_value, vitals_bin, wait_for};

const FAMILIES: [&str; 6] = [
    "vitals_anomaly_score",
    "vitals_anomaly_flag",
    "vitals_anomaly_events_total",
    "vitals_anomaly_expected",
    "vitals_anomaly_lower",
    "vitals_anomaly_upper",
];

#[test]
fn anomaly_families_appear_for_system_series_with_defaults_and_pass_promtool() {
    let v = Vitals::start("");
    let body = wait_for(Duration::from_secs(60), "the anomaly families", || {
        let m = v.metrics();
        FAMILIES
            .iter()
            .all(|f| m.contains(&format!("# TYPE {f} ")))
            .then_some(m)
    });
    // Every anomaly series names its source family and keeps its labels.
    let score = body
        .lines()
        .find(|l| l.starts_with("vitals_anomaly_score{") && l.contains("metric=\""))
        .expect("a score line");
    let value: f64 = score.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((0.0..=1.0).contains(&value), "{score}");
    assert_eq!(
        sample_value(&body, "vitals_anomaly_flag", &["metric=\""]).map(|f| f == 0.0 || f == 1.0),
        Some(true)
    );
    assert!(body.contains("# TYPE vitals_anomaly_events_total counter"));
    assert!(
        !body.contains("vitals_anomaly_detector_score"),
        "per-detector scores are opt-in"
    );
    let (ok, findings) = promtool_check_metrics(&body);
    assert!(ok, "promtool check metrics:\n{findings}");
}

#[test]
fn per_detector_scores_are_exported_on_request_and_pass_promtool() {
    let v = Vitals::start(
        "[detect]\ndetector_scores = true\nsensitivity = 0.7\n\
         detectors = [\"median_mad\", \"context\", \"seasonal\"]\n",
    );
    let body = wait_for(Duration::from_secs(60), "per-detector scores", || {
        let m = v.metrics();
        m.contains("vitals_anomaly_detector_score{").then_some(m)
    });
    for d in ["median_mad", "context", "seasonal"] {
        assert!(body.contains(&format!("detector=\"{d}\"")), "{d}");
    }
    let (ok, findings) = promtool_check_metrics(&body);
    assert!(ok, "promtool check metrics:\n{findings}");
}

/// Noise around 50 (deterministic), with a jump to 120 from row `step`.
fn csv(rows: usize, step: usize) -> String {
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = String::from("timestamp,value\n");
    for i in 0..rows {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let noise = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let v = if i >= step { 120.0 } else { 50.0 } + 4.0 * noise;
        let (d, rem) = (i / 288, i % 288);
        out.push_str(&format!(
            "2024-01-{:02} {:02}:{:02}:00,{v:.3}\n",
            1 + d,
            rem / 12,
            (rem % 12) * 5
        ));
    }
    out
}

/// `vitals backtest args…`.
fn backtest(args: &[&OsStr]) -> Output {
    Command::new(vitals_bin())
        .arg("backtest")
        .args(args)
        .output()
        .unwrap()
}

/// [`backtest`], which must succeed; its standard output.
fn backtest_ok(args: &[&OsStr]) -> String {
    let out = backtest(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn backtest_scores_a_labelled_csv_and_writes_nab_results() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").join("synthetic");
    std::fs::create_dir_all(&data).unwrap();
    // 2000 rows of 5 minutes: day 1 00:00 to day 7 22:35; the jump at row 1500
    // is day 6 05:00.
    std::fs::write(data.join("jump.csv"), csv(2000, 1500)).unwrap();
    let labels = dir.path().join("labels.json");
    std::fs::write(
        &labels,
        r#"{"synthetic/jump.csv": [["2024-01-06 02:00:00.000000", "2024-01-06 08:00:00.000000"]]}"#,
    )
    .unwrap();
    let results = dir.path().join("results");
    let rows = dir.path().join("rows");
    let stdout = backtest_ok(&[
        OsStr::new("--labels"),
        labels.as_os_str(),
        OsStr::new("--nab-results"),
        results.as_os_str(),
        OsStr::new("--output"),
        rows.as_os_str(),
        dir.path().join("data").as_os_str(),
    ]);
    // The jump is detected inside its window and nothing else is flagged:
    // every profile scores close to the perfect detector.
    for profile in ["standard", "reward_low_FP_rate", "reward_low_FN_rate"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(profile))
            .unwrap_or_else(|| panic!("no {profile} line in:\n{stdout}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        let score: f64 = f[1].parse().unwrap();
        assert!(score > 80.0, "{line}");
        assert_eq!((f[4], f[5], f[6]), ("1", "0", "0"), "TP FP FN: {line}");
    }
    let nab = std::fs::read_to_string(results.join("vitals/synthetic/vitals_jump.csv")).unwrap();
    let mut lines = nab.lines();
    assert_eq!(lines.next(), Some("timestamp,value,anomaly_score,label"));
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), 2000);
    assert!(
        body.iter().filter(|l| l.ends_with(",1")).count() > 50,
        "window rows labelled"
    );
    let per_row = std::fs::read_to_string(rows.join("synthetic/jump.csv")).unwrap();
    assert!(per_row.starts_with("timestamp,value,anomaly_score,flag\n"));
    let flags: Vec<usize> = per_row
        .lines()
        .skip(1)
        .enumerate()
        .filter(|(_, l)| l.ends_with(",1"))
        .map(|(i, _)| i)
        .collect();
    assert!(
        flags.len() == 1 && (1500..1510).contains(&flags[0]),
        "{flags:?}"
    );
}

#[test]
fn backtest_reports_bad_rows_by_line_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(
        &path,
        "timestamp,value\n\
         2024-01-01 00:00:00,1\n\
         not a row\n\
         2024-01-01 00:10:00,NaN\n\
         2024-01-01 00:05:00,2\n\
         2024-01-01 00:15:00,1e308\n\
         2024-01-01 00:20:00,-1e308\n",
    )
    .unwrap();
    let single = dir.path().join("single.csv");
    std::fs::write(&single, "timestamp,value\n2024-01-01 00:00:00,3\n").unwrap();
    let out = backtest(&[path.as_os_str(), single.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("bad.csv:3: "), "{stderr}");
    assert!(
        stderr.contains("bad.csv:4: ") && stderr.contains("nan"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.csv:5: ") && stderr.contains("earlier"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("files: 2"));
}

#[test]
fn backtest_fails_on_an_unreadable_path_or_a_file_without_rows() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.csv");
    std::fs::write(&good, csv(300, 1000)).unwrap();
    let header_only = dir.path().join("empty.csv");
    std::fs::write(&header_only, "timestamp,value\n").unwrap();
    let missing = dir.path().join("no-such-file.csv");
    for (bad, what) in [(&missing, "missing"), (&header_only, "header only")] {
        let out = backtest(&[good.as_os_str(), bad.as_os_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: exit 0\n{stderr}");
        assert!(
            stderr.contains(&bad.display().to_string()) && stderr.contains("no row"),
            "{what}: {stderr}"
        );
    }
    // The good file alone still succeeds.
    backtest_ok(&[good.as_os_str()]);
}

#[test]
fn backtest_prints_out_of_fold_scores_with_folds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").join("synthetic");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("one.csv"), csv(2000, 1500)).unwrap();
    std::fs::write(data.join("two.csv"), csv(2000, 1500)).unwrap();
    let window = r#"[["2024-01-06 02:00:00.000000", "2024-01-06 08:00:00.000000"]]"#;
    let labels = dir.path().join("labels.json");
    std::fs::write(
        &labels,
        format!(r#"{{"synthetic/one.csv": {window}, "synthetic/two.csv": {window}}}"#),
    )
    .unwrap();
    let folds = dir.path().join("folds.json");
    std::fs::write(
        &folds,
        r#"{"folds": {"a": ["synthetic/one.csv"], "b": ["synthetic/two.csv"]}}"#,
    )
    .unwrap();
    let stdout = backtest_ok(&[
        OsStr::new("--labels"),
        labels.as_os_str(),
        OsStr::new("--folds"),
        folds.as_os_str(),
        dir.path().join("data").as_os_str(),
    ]);
    assert!(stdout.contains("in sample"), "{stdout}");
    let oof = stdout
        .split("out of fold")
        .nth(1)
        .unwrap_or_else(|| panic!("no out-of-fold section:\n{stdout}"));
    for profile in ["standard", "reward_low_FP_rate", "reward_low_FN_rate"] {
        let line = oof
            .lines()
            .find(|l| l.trim_start().starts_with(profile))
            .unwrap_or_else(|| panic!("no {profile} line in:\n{stdout}"));
        assert!(line.contains(" a: ") && line.contains(" b: "), "{line}");
        let score: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(score > 80.0, "{line}");
    }
}
