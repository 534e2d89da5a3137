//! The Prometheus-shaped query API as clients use it: the real `promtool
//! query` against a running vitals, Prometheus-style 400s (compared with a
//! real Prometheus' answers to the same bad requests), and
//! `[history] prometheus_url` against a real Prometheus that scraped
//! vitals.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Vitals, free_port, get, http, require, sample_value, wait_for};
use serde_json::Value;

const CONFIG: &str = r#"
[system]
interval = "200ms"
"#;

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(require("promtool"))
        .arg("query")
        .args(args)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed: {text}");
    text
}

fn api(addr: SocketAddr, method: &str, path: &str, form: &str) -> (u16, Value) {
    let (status, body) = if method == "GET" {
        http(addr, "GET", &format!("{path}?{form}"), &[], b"")
    } else {
        http(
            addr,
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        )
    }
    .expect("query API answers");
    let json = serde_json::from_str(&body).unwrap_or_else(|_| Value::String(body.clone()));
    (status, json)
}

/// Points of the matrix answer's series, as (seconds, value).
fn points(v: &Value) -> Vec<(f64, f64)> {
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .map(|p| {
            (
                p[0].as_f64().unwrap(),
                p[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn promtool_reads_ranges_instants_series_and_labels() {
    let v = Vitals::start(CONFIG);
    let start = now_s().floor() - 1.0;
    let url = format!("http://{}", v.addr);
    // A few seconds of points in the store's 1 s ring.
    wait_for(Duration::from_secs(20), "three seconds of points", || {
        let (_, j) = api(
            v.addr,
            "GET",
            "/api/v1/query_range",
            &format!(
                "query=vitals_cpu_usage_ratio&start={start}&end={}&step=1",
                now_s()
            ),
        );
        (points(&j).len() >= 3).then_some(())
    });
    let end = now_s().floor();
    let range = promtool(&[
        "range",
        &format!("--start={start}"),
        &format!("--end={end}"),
        "--step=1s",
        &url,
        "vitals_cpu_usage_ratio",
    ]);
    assert!(range.contains("vitals_cpu_usage_ratio"), "{range}");
    // One `value @[time]` line per step with a point; times on the grid.
    let stamps: Vec<f64> = range
        .lines()
        .filter_map(|l| l.split_once(" @[").map(|(_, t)| t.trim_end_matches(']')))
        .map(|t| t.parse().unwrap())
        .collect();
    assert!(stamps.len() >= 3, "too few points: {range}");
    for t in &stamps {
        assert!(
            *t >= start && *t <= end && t.fract() == 0.0,
            "{t} in {range}"
        );
    }

    let instant = promtool(&["instant", &url, "vitals_cpu_usage_ratio"]);
    assert!(
        instant.contains("vitals_cpu_usage_ratio => ") && instant.contains(" @["),
        "{instant}"
    );
    // The instant value is the store's latest one.
    let latest = sample_value(&v.metrics(), "vitals_cpu_usage_ratio", &[]).unwrap();
    assert!((0.0..=1.0).contains(&latest));

    let series = promtool(&["series", "--match=vitals_cpu_usage_ratio", &url]);
    assert!(
        series.contains("__name__=\"vitals_cpu_usage_ratio\""),
        "{series}"
    );
    assert!(
        !series.contains("vitals_memory"),
        "only the match[]: {series}"
    );

    let names = promtool(&["labels", &url, "__name__"]);
    assert!(
        names.lines().any(|l| l.trim() == "vitals_cpu_usage_ratio"),
        "{names}"
    );

    // POST with a form body, as Grafana sends it; a regex matcher and sum.
    let (status, j) = api(
        v.addr,
        "POST",
        "/api/v1/query",
        "query=sum%28%7B__name__%3D~%22vitals_cpu_usage_ratio%7Cvitals_load1%22%7D%29",
    );
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["data"]["resultType"], "vector", "{j}");
    assert_eq!(j["data"]["result"].as_array().unwrap().len(), 1, "{j}");
    let (status, j) = api(
        v.addr,
        "GET",
        "/api/v1/vitals/events",
        &format!("start={start}&limit=5"),
    );
    assert_eq!(status, 200, "{j}");
    assert!(j["data"].is_array(), "{j}");
}

/// The bad requests both servers must refuse alike: (method, path, form).
const SHARED_BAD: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/query_range", "query=up&end=10&step=1"),
    (
        "GET",
        "/api/v1/query_range",
        "query=up&start=x&end=10&step=1",
    ),
    (
        "POST",
        "/api/v1/query_range",
        "query=up&start=10&end=5&step=1",
    ),
    (
        "GET",
        "/api/v1/query_range",
        "query=up&start=1&end=2&step=0",
    ),
    (
        "GET",
        "/api/v1/query_range",
        "query=up&start=1&end=2&step=1x",
    ),
    (
        "GET",
        "/api/v1/query_range",
        "query=up&start=0&end=11001&step=1",
    ),
    ("GET", "/api/v1/query", "query=up&time=yesterday"),
    ("POST", "/api/v1/series", "start=1"),
    ("GET", "/api/v1/labels", "start=soon"),
    ("GET", "/api/v1/label/1bad/values", ""),
];

/// Bad requests only vitals refuses (outside the supported subset) or
/// that exercise its own endpoint: (method, path, form, part of the error).
const VITALS_BAD: &[(&str, &str, &str, &str)] = &[
    ("GET", "/api/v1/query", "query=up%2B1", "binary expressions"),
    (
        "POST",
        "/api/v1/query_range",
        "query=topk(1,up)&start=1&end=2&step=1",
        "aggregation topk",
    ),
    ("GET", "/api/v1/query", "query=up%7B", "parse error"),
    (
        "GET",
        "/api/v1/series",
        "match[]=rate(up[1m])",
        "not a series selector",
    ),
    ("GET", "/api/v1/vitals/events", "limit=0", "limit"),
    (
        "GET",
        "/api/v1/vitals/events",
        "start=9&end=1",
        "before start",
    ),
];

fn check_400(addr: SocketAddr, method: &str, path: &str, form: &str) -> String {
    let (status, j) = api(addr, method, path, form);
    assert_eq!(status, 400, "{method} {path}?{form}: {j}");
    assert_eq!(j["status"], "error", "{j}");
    assert_eq!(j["errorType"], "bad_data", "{j}");
    j["error"].as_str().expect("error text").to_string()
}

/// A Prometheus started for a test (scraping `target` every second, or
/// nothing), killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: Option<SocketAddr>) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n");
        if let Some(t) = target {
            cfg.push_str(&format!(
                "scrape_configs:\n  - job_name: vitals\n    static_configs:\n      - targets: [\"{t}\"]\n"
            ));
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, cfg).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(require("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let child = &mut p.child;
        wait_for(
            Duration::from_secs(30),
            "Prometheus to become ready",
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("prometheus exited early with {status}");
                }
                get(addr, "/-/ready").filter(|(s, _)| *s == 200).map(|_| ())
            },
        );
        p
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_url_answers_ranges_older_than_local_history_and_bad_requests_match_prometheus() {
    // vitals #1 runs a few seconds while Prometheus scrapes it, then stops.
    let mut first = Vitals::start(CONFIG);
    let before = now_s().floor();
    let prom = Prometheus::start(Some(first.addr));
    // Bad requests: vitals answers them with Prometheus' own words.
    let probe = &first;
    let mut differ = Vec::new();
    for (method, path, form) in SHARED_BAD {
        let ours = check_400(probe.addr, method, path, form);
        let theirs = check_400(prom.addr, method, path, form);
        if ours != theirs {
            differ.push(format!(
                "{method} {path}?{form}: vitals {ours:?}, Prometheus {theirs:?}"
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    for (method, path, form, part) in VITALS_BAD {
        let e = check_400(probe.addr, method, path, form);
        assert!(e.contains(part), "{method} {path}?{form}: {e}");
    }

    let scraped = |p: &Prometheus| {
        let (_, j) = api(
            p.addr,
            "GET",
            "/api/v1/query_range",
            &format!(
                "query=vitals_cpu_usage_ratio&start={before}&end={}&step=1",
                now_s()
            ),
        );
        points(&j)
    };
    wait_for(
        Duration::from_secs(30),
        "Prometheus to scrape vitals",
        || (scraped(&prom).len() >= 3).then_some(()),
    );
    first.terminate(Duration::from_secs(10));

    // vitals #2 holds only what it saw since its start locally.
    std::thread::sleep(Duration::from_millis(1100));
    let launched = now_s();
    let second = Vitals::start(&format!(
        "{CONFIG}\n[history]\nenabled = false\nprometheus_url = \"http://{}\"\n",
        prom.addr
    ));
    let query = |v: &Vitals| {
        let (status, j) = api(
            v.addr,
            "GET",
            "/api/v1/query_range",
            &format!(
                "query=vitals_cpu_usage_ratio&start={before}&end={}&step=1",
                now_s().ceil()
            ),
        );
        assert_eq!(status, 200, "{j}");
        points(&j)
    };
    let got = wait_for(Duration::from_secs(20), "local points", || {
        let p = query(&second);
        p.iter().any(|(t, _)| *t > launched).then_some(p)
    });
    // Local points are stamped at their second's start, at or after it.
    let cut = launched.floor() - 1.0;
    let older: Vec<(f64, f64)> = got.iter().copied().filter(|(t, _)| *t < cut).collect();
    assert!(
        !older.is_empty(),
        "no points from before vitals #2 started ({launched}): {got:?}"
    );
    // They are Prometheus' points for those steps (after vitals #1 went
    // stale Prometheus has none; vitals' lookback keeps the last).
    let remote = scraped(&prom);
    let mut same = 0;
    for (t, v) in &older {
        if let Some((_, theirs)) = remote.iter().find(|(rt, _)| rt == t) {
            assert_eq!(theirs, v, "step {t}: {remote:?}");
            same += 1;
        }
    }
    assert!(same >= 2, "{older:?} vs {remote:?}");
    let errors = |v: &Vitals| {
        sample_value(&v.metrics(), "vitals_query_remote_errors_total", &[]).unwrap_or(0.0)
    };
    assert_eq!(errors(&second), 0.0);

    // Prometheus gone: local history still answers; the failure is counted.
    drop(prom);
    let got = query(&second);
    assert!(got.iter().all(|(t, _)| *t >= cut), "{got:?}");
    assert!(!got.is_empty());
    assert!(errors(&second) >= 1.0);
}
