//! The shipped alerting stack: Prometheus rules (promtool checks and unit
//! tests), the compose files, and alerts end to end through a real
//! Prometheus, Alertmanager and `vitals relay` to SMTP and an SMS stand-in.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::alertmanager::Alertmanager;
use crate::common::process::{files, root, run};
use crate::common::prometheus::Prometheus;
use crate::common::relay::Relay;
use crate::common::smtp::Smtp;
use crate::common::stack::{deploy_config, recorded_series, yaml};
use crate::common::{Broker, Vitals, free_port, http, require, wait_for};
use serde_json::Value;
use yaml_rust2::Yaml;

// ------------------------------------------------------------------ rules

#[test]
fn promtool_check_rules_is_clean() {
    let promtool = require("promtool");
    let rules = files("alerting/prometheus/rules", ".yml");
    let (ok, out) = run(Command::new(promtool).args(["check", "rules"]).args(&rules));
    assert!(ok, "promtool check rules failed:\n{out}");
    assert!(
        !out.contains("WARNING") && !out.contains("FAILED"),
        "promtool check rules has findings:\n{out}"
    );
}

#[test]
fn promtool_check_config_accepts_the_shipped_prometheus_config() {
    let promtool = require("promtool");
    let (ok, out) = run(Command::new(promtool)
        .args(["check", "config"])
        .arg(root().join("alerting/prometheus/prometheus.yml")));
    assert!(ok, "promtool check config failed:\n{out}");
}

#[test]
fn promtool_rule_unit_tests_pass() {
    let promtool = require("promtool");
    let tests = files("alerting/prometheus/tests", "_test.yml");
    let (ok, out) = run(Command::new(promtool)
        .args(["test", "rules"])
        .args(&tests)
        .current_dir(root().join("alerting/prometheus")));
    assert!(ok, "promtool test rules failed:\n{out}");
    assert_eq!(
        out.matches("SUCCESS").count(),
        tests.len(),
        "every test file passes:\n{out}"
    );
}

/// Every alerting rule in the shipped rule files, by name.
fn alert_rules() -> BTreeMap<String, Yaml> {
    let mut alerts = BTreeMap::new();
    for file in files("alerting/prometheus/rules", ".yml") {
        let doc = yaml(&file);
        for group in doc["groups"].as_vec().expect("groups") {
            for rule in group["rules"].as_vec().expect("rules") {
                if let Some(name) = rule["alert"].as_str() {
                    let dup = alerts.insert(name.to_string(), rule.clone());
                    assert!(dup.is_none(), "alert {name} defined twice");
                }
            }
        }
    }
    alerts
}

#[test]
fn every_alert_has_a_severity_annotations_and_a_runbook_section() {
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).unwrap();
    let anchors: HashSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect();
    let alerts = alert_rules();
    assert!(alerts.len() >= 20, "{} alerts", alerts.len());
    let mut bases = BTreeSet::new();
    for (name, rule) in &alerts {
        let severity = rule["labels"]["severity"].as_str();
        if always_firing(rule) {
            // The Watchdog pages nobody itself: severity none.
            assert_eq!(severity, Some("none"), "{name}: severity label");
        } else {
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{name}: severity label {severity:?}"
            );
        }
        for key in ["summary", "description", "runbook_url"] {
            let v = rule["annotations"][key].as_str().unwrap_or("");
            assert!(!v.trim().is_empty(), "{name}: annotation {key} is missing");
        }
        // Absolute, so a link in an e-mail or SMS opens; one base for all,
        // which alerting/set-runbook-url.sh changes.
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let (base, anchor) = url
            .split_once("#")
            .filter(|(b, _)| b.starts_with("https://") || b.starts_with("http://"))
            .unwrap_or_else(|| {
                panic!("{name}: runbook_url {url} is not an absolute URL with #anchor")
            });
        assert!(base.ends_with("/runbooks.md"), "{name}: runbook_url {url}");
        bases.insert(base.to_string());
        assert!(
            anchors.contains(anchor),
            "{name}: no section #{anchor} in docs/runbooks.md (have {anchors:?})"
        );
    }
    assert_eq!(bases.len(), 1, "one runbook base URL: {bases:?}");
}

/// An alert that fires by design all the time (the Watchdog).
fn always_firing(rule: &Yaml) -> bool {
    rule["expr"].as_str().map(str::trim) == Some("vector(1)")
}

/// `alerting/set-runbook-url.sh` points every runbook_url (rules and their
/// unit tests) at another base; the rules still check and their tests pass.
#[test]
fn set_runbook_url_rewrites_every_runbook_url() {
    let promtool = require("promtool");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("alerting");
    let (ok, out) = run(Command::new("cp")
        .arg("-r")
        .arg(root().join("alerting"))
        .arg(&copy));
    assert!(ok, "{out}");
    let base = "https://wiki.example.org/ops/vitals/runbooks.md";
    let (ok, out) = run(Command::new("bash")
        .arg(copy.join("set-runbook-url.sh"))
        .arg(base));
    assert!(ok, "set-runbook-url.sh:\n{out}");
    let mut count = 0;
    for sub in ["prometheus/rules", "prometheus/tests"] {
        for e in std::fs::read_dir(copy.join(sub)).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            for line in text.lines().filter(|l| l.contains("runbook_url:")) {
                assert!(
                    line.contains(&format!("\"{base}#")),
                    "not rewritten: {line}"
                );
                count += 1;
            }
        }
    }
    assert!(count >= 2 * alert_rules().len(), "{count} runbook URLs");
    let entries = |sub: &str| -> Vec<PathBuf> {
        std::fs::read_dir(copy.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .args(entries("prometheus/rules")));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .args(entries("prometheus/tests"))
        .current_dir(copy.join("prometheus")));
    assert!(ok, "promtool test rules after the rewrite:\n{out}");
    // Twice in a row is fine (the current base is read from the rules).
    let (ok, out) = run(Command::new("bash")
        .arg(copy.join("set-runbook-url.sh"))
        .arg("https://runbooks.example.net/vitals/runbooks.md"));
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(copy.join("prometheus/rules/host.yml")).unwrap();
    assert!(text.contains("\"https://runbooks.example.net/vitals/runbooks.md#"));
    assert!(!text.contains(base));
}

/// Every recording rule has a `promtool test rules` case that pins its
/// value and labels.
#[test]
fn every_recording_rule_is_unit_tested() {
    let mut tested = BTreeSet::new();
    for file in files("alerting/prometheus/tests", "_test.yml") {
        let doc = yaml(&file);
        for test in doc["tests"].as_vec().expect("tests") {
            for case in test["promql_expr_test"].as_vec().into_iter().flatten() {
                let expr = case["expr"].as_str().expect("expr").trim().to_string();
                if case["exp_samples"].as_vec().is_some_and(|v| !v.is_empty()) {
                    tested.insert(expr);
                }
            }
        }
    }
    for r in recorded_series() {
        assert!(
            tested.contains(&r),
            "recording rule {r} has no promql_expr_test with expected samples"
        );
    }
}

/// Parse a promtool duration such as `90s`, `5m` or `1h30m` into seconds.
fn duration_secs(s: &str) -> u64 {
    let (mut total, mut num) = (0u64, String::new());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().unwrap_or_else(|_| panic!("duration {s}"));
        num.clear();
        total += n * match c {
            's' => 1,
            'm' if chars.peek() == Some(&'s') => panic!("ms in {s}"),
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => panic!("duration {s}"),
        };
    }
    assert!(num.is_empty(), "duration {s} without unit");
    total
}

#[test]
fn every_alert_is_unit_tested_firing_quiet_and_resolved() {
    // alert → (eval time, fired?) of every check in the promtool tests.
    let mut checks: BTreeMap<String, Vec<(u64, bool)>> = BTreeMap::new();
    for file in files("alerting/prometheus/tests", "_test.yml") {
        let doc = yaml(&file);
        for test in doc["tests"].as_vec().expect("tests") {
            for case in test["alert_rule_test"].as_vec().into_iter().flatten() {
                let name = case["alertname"].as_str().expect("alertname").to_string();
                let at = duration_secs(case["eval_time"].as_str().expect("eval_time"));
                let fired = case["exp_alerts"].as_vec().is_some_and(|v| !v.is_empty());
                if fired {
                    for alert in case["exp_alerts"].as_vec().unwrap() {
                        assert!(
                            !alert["exp_annotations"].is_badvalue(),
                            "{name} at {at}s: expected alerts must pin their annotations"
                        );
                    }
                }
                checks.entry(name).or_default().push((at, fired));
            }
        }
    }
    for name in alert_rules().keys() {
        let cases = checks
            .get(name)
            .unwrap_or_else(|| panic!("alert {name} has no promtool unit test"));
        if always_firing(&alert_rules()[name]) {
            // Fires from the first evaluation on and never resolves.
            assert!(
                cases.iter().all(|(_, f)| *f) && cases.iter().any(|(t, _)| *t == 0),
                "{name}: always firing, tested at 0s and never quiet"
            );
            continue;
        }
        let first_fire = cases
            .iter()
            .filter(|(_, f)| *f)
            .map(|(t, _)| *t)
            .min()
            .unwrap_or_else(|| panic!("{name}: no test where it fires"));
        assert!(
            cases.iter().any(|(t, f)| !f && *t < first_fire),
            "{name}: no test where it stays quiet before firing"
        );
        assert!(
            cases.iter().any(|(t, f)| !f && *t > first_fire),
            "{name}: no test where it resolves after firing"
        );
    }
    for name in checks.keys() {
        assert!(
            alert_rules().contains_key(name),
            "tests name an unknown alert {name}"
        );
    }
}

// ---------------------------------------------------------------- compose

#[test]
fn docker_compose_config_accepts_the_stack() {
    let compose = require("docker-compose");
    let (ok, out) = run(Command::new(compose)
        .args(["-f", "docker-compose.yml", "config", "--quiet"])
        .current_dir(root()));
    assert!(ok, "docker-compose config failed:\n{out}");
    let (ok, out) = run(Command::new(require("docker-compose"))
        .args(["-f", "docker-compose.yml", "config", "--services"])
        .current_dir(root()));
    assert!(ok, "{out}");
    let services: BTreeSet<&str> = out.lines().collect();
    for want in [
        "vitals",
        "vitals-relay",
        "demo",
        "prometheus",
        "alertmanager",
        "grafana",
        "mosquitto",
        "mailpit",
    ] {
        assert!(
            services.contains(want),
            "service {want} missing: {services:?}"
        );
    }
}

#[test]
fn every_file_the_compose_stack_mounts_exists() {
    let doc = yaml(&root().join("docker-compose.yml"));
    let mut mounts = 0;
    for (name, svc) in doc["services"].as_hash().expect("services") {
        for v in svc["volumes"].as_vec().into_iter().flatten() {
            let Some(spec) = v.as_str() else { continue };
            let host = spec.split(':').next().unwrap();
            if !host.starts_with("./") {
                continue; // a named volume
            }
            mounts += 1;
            assert!(
                root().join(host).exists(),
                "service {name:?} mounts {host}, which does not exist"
            );
        }
    }
    assert!(mounts >= 6, "{mounts} bind mounts");
}

// ------------------------------------------------------------ end to end

/// Records every HTTP POST it receives (time, path, JSON body); answers 200.
struct Receiver {
    addr: std::net::SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String, Value)>>>,
}

impl Receiver {
    fn start() -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                sink.lock()
                    .unwrap()
                    .push((std::time::Instant::now(), path, json));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Receiver { addr, got }
    }

    /// The first notification (time, path, body) for which `pred` holds.
    fn find(
        &self,
        pred: impl Fn(&str, &Value) -> bool,
    ) -> Option<(std::time::Instant, String, Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .find(|(_, p, v)| pred(p, v))
            .cloned()
    }
}

/// Alertmanager routing by severity, as the shipped configuration does
/// (critical and warning receivers), with test timings: group_wait 1s.
/// (The shipped file itself, with a real relay and SMTP server, is run by
/// `alerts_are_emailed_and_texted_through_the_relay`.)
fn alertmanager_config(receiver: std::net::SocketAddr) -> String {
    format!(
        r#"route:
  receiver: warning
  group_by: ["alertname", "instance"]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
  routes:
    - matchers: ['severity="critical"']
      receiver: critical
    - matchers: ['severity="warning"']
      receiver: warning
receivers:
  - name: critical
    webhook_configs:
      - url: http://{receiver}/webhook/critical
        send_resolved: true
  - name: warning
    webhook_configs:
      - url: http://{receiver}/webhook/warning
        send_resolved: true
"#
    )
}

fn alert_in(v: &Value, alertname: &str, status: &str) -> bool {
    v["status"] == status
        && v["alerts"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["labels"]["alertname"] == alertname && x["status"] == status)
        })
}

/// POST one payment event to the `payments` webhook of `vitals`; it must
/// be accepted.
fn post_payment(vitals: &Vitals, event: &[u8]) {
    let (status, body) = http(
        vitals.addr,
        "POST",
        "/ingest/payments",
        &[("Content-Type", "application/json")],
        event,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
}

/// The alert `alertname` of a notification `v`.
fn alert_named<'a>(v: &'a Value, alertname: &str) -> &'a Value {
    v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == alertname)
        .unwrap()
}

/// Assert each label of `alert` has its value in `want`.
fn assert_labels(alert: &Value, want: &[(&str, &str)]) {
    for (label, value) in want {
        assert_eq!(alert["labels"][label], *value, "label {label}");
    }
}

/// Whether annotation `key` of `alert` contains `part`.
fn annotation_has(alert: &Value, key: &str, part: &str) -> bool {
    alert["annotations"][key].as_str().unwrap().contains(part)
}

#[test]
fn fraud_and_overheating_alert_end_to_end_through_alertmanager() {
    let broker = Broker::start();
    let vitals = Vitals::start_with(&deploy_config(broker.port), &["--log.level", "warn"]);
    let receiver = Receiver::start();
    let am = Alertmanager::start(&alertmanager_config(receiver.addr));
    let prom = Prometheus::start_alerting(&[("vitals", vitals.addr.to_string())], Some(am.addr));

    use rumqttc::{Client, MqttOptions, QoS};
    let mut o = MqttOptions::new("e2e-plant", "127.0.0.1", broker.port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = Client::new(o, 100);
    std::thread::spawn(move || for _ in conn.iter() {});
    let temperature = std::sync::Arc::new(std::sync::Mutex::new(62.0f64));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (temperature, stop) = (temperature.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = *temperature.lock().unwrap();
                let payload = format!(
                    r#"{{"temperature": {t:.1}, "pressure_kpa": 101.3, "humidity_pct": 42, "vibration_mm_s": 1.9}}"#
                );
                let _ = client.publish(
                    "factory/L1/oven-1/telemetry",
                    QoS::AtLeastOnce,
                    false,
                    payload,
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    // Normal readings reach Prometheus first.
    wait_for(
        Duration::from_secs(60),
        "plant temperature in Prometheus",
        || {
            (prom
                .query(r#"plant_temperature_celsius{device="oven-1"}"#)
                .ok()?
                > 0)
            .then_some(())
        },
    );

    // A fraudulent transaction: SuspectedFraud (critical, no `for`).
    let posted = std::time::Instant::now();
    post_payment(
        &vitals,
        br#"{"id":"e2e-1","amount":150000,"currency":"INR","merchant":"m-9","status":"ok"}"#,
    );
    // Wait at most `secs` for a notification of `alertname` with `status`.
    let notice = |secs, alertname: &str, status: &str| {
        let what = format!("{alertname} {status} notification");
        wait_for(Duration::from_secs(secs), &what, || {
            receiver.find(|_, v| alert_in(v, alertname, status))
        })
    };
    let (at, path, v) = notice(90, "SuspectedFraud", "firing");
    let fraud_time = at - posted;
    assert_eq!(
        path, "/webhook/critical",
        "critical alerts use the critical receiver"
    );
    let alert = alert_named(&v, "SuspectedFraud");
    assert_labels(
        alert,
        &[("rule", "potential_fraud"), ("severity", "critical")],
    );
    assert!(
        annotation_has(alert, "summary", "potential_fraud"),
        "{alert}"
    );

    // The oven overheats: TemperatureOutOfRange after its `for: 30s`.
    let hot = std::time::Instant::now();
    *temperature.lock().unwrap() = 96.5;
    let (at, path, v) = notice(120, "TemperatureOutOfRange", "firing");
    let hot_time = at - hot;
    assert_eq!(path, "/webhook/critical");
    let alert = alert_named(&v, "TemperatureOutOfRange");
    assert_labels(
        alert,
        &[
            ("device", "oven-1"),
            ("line", "L1"),
            ("metric", "plant_temperature_celsius"),
        ],
    );
    assert!(annotation_has(alert, "description", "96.5 °C"), "{alert}");

    // Back to normal: the resolved notice follows.
    let cooled = std::time::Instant::now();
    *temperature.lock().unwrap() = 61.0;
    let (at, _, _) = notice(120, "TemperatureOutOfRange", "resolved");
    let resolve_time = at - cooled;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = publisher.join();
    drop(prom);

    // scrape 1 s + evaluation 1 s + group_wait 1 s + 2 s.
    eprintln!(
        "time-to-alert (sample → Alertmanager webhook): SuspectedFraud {:.2} s (target ≤ 5 s: scrape 1 s + evaluation 1 s + group_wait 1 s + 2 s); \
         TemperatureOutOfRange {:.2} s (includes its for: 30s); resolved notice {:.2} s",
        fraud_time.as_secs_f64(),
        hot_time.as_secs_f64(),
        resolve_time.as_secs_f64()
    );
}

#[test]
fn the_compose_vitals_config_passes_check() {
    let (ok, out) = run(Command::new(crate::common::vitals_bin())
        .arg("check")
        .arg("--config")
        .arg(root().join("deploy/vitals.toml")));
    assert!(ok, "vitals check deploy/vitals.toml:\n{out}");
}

/// `vitals relay` with the compose configuration (deploy/relay.toml)
/// pointed at the test SMTP server and SMS gateway stand-in.
fn shipped_relay(
    dir: &Path,
    smtp_port: u16,
    sms_gateway: std::net::SocketAddr,
    token: &Path,
) -> Relay {
    let shipped = std::fs::read_to_string(root().join("deploy/relay.toml")).unwrap();
    let data = dir.join("relay-data");
    let cfg = shipped
        .replace("/var/lib/vitals-relay", &data.display().to_string())
        .replace(
            "host = \"mailpit\", port = 1025",
            &format!("host = \"127.0.0.1\", port = {smtp_port}"),
        )
        .replace(
            "http://mailpit:8025/api/v1/send",
            &format!("http://{sms_gateway}/sms"),
        )
        .replace(
            "file:/etc/vitals/relay-token",
            &format!("file:{}", token.display()),
        );
    assert!(
        cfg.contains(&format!("port = {smtp_port}")) && cfg.contains("/sms"),
        "relay config rewritten"
    );
    Relay::start_with(dir, &cfg, &["--log.level", "warn"], None, None)
}

/// The shipped Alertmanager configuration with the test's relay address,
/// token file, SMTP server (for the fallback receiver) and short timings
/// (group_wait 1s, group_interval 2s).
fn shipped_alertmanager_config(
    relay: std::net::SocketAddr,
    token: &Path,
    smtp_port: u16,
) -> String {
    let shipped =
        std::fs::read_to_string(root().join("alerting/alertmanager/alertmanager.yml")).unwrap();
    let cfg = shipped
        .replace("http://vitals-relay:9798", &format!("http://{relay}"))
        .replace(
            "/etc/alertmanager/relay-token",
            &token.display().to_string(),
        )
        .replace(
            "smtp_smarthost: mailpit:1025",
            &format!("smtp_smarthost: 127.0.0.1:{smtp_port}"),
        );
    assert!(
        cfg.contains(&format!("127.0.0.1:{smtp_port}")),
        "smarthost rewritten"
    );
    let cfg = regex_replace(&cfg, "group_wait:", "1s");
    let cfg = regex_replace(&cfg, "group_interval:", "2s");
    assert!(cfg.contains(&relay.to_string()), "relay URL rewritten");
    cfg
}

/// Replace the value of every `key: value` line.
fn regex_replace(text: &str, key: &str, value: &str) -> String {
    text.lines()
        .map(|l| match l.split_once(key) {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}{key} {value}"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn alertmanager_routes_every_shipped_alert_by_its_severity() {
    let amtool = require("amtool");
    let config = root().join("alerting/alertmanager/alertmanager.yml");
    let (ok, out) = run(Command::new(&amtool).arg("check-config").arg(&config));
    assert!(ok, "amtool check-config:\n{out}");
    // Every shipped alert, with its own severity, reaches the receiver
    // the routing promises: critical → relay-critical (e-mail + SMS),
    // warning → relay-warning (e-mail); the relay's own alerts first to
    // Alertmanager's own e-mail (the relay may be what is down), the
    // Watchdog to the dead man's switch only.
    for (name, rule) in alert_rules() {
        let severity = rule["labels"]["severity"].as_str().unwrap();
        let want = if always_firing(&rule) {
            "watchdog".to_string()
        } else if name.starts_with("Relay") {
            format!("fallback-email,relay-{severity}")
        } else {
            format!("relay-{severity}")
        };
        let (ok, out) = run(Command::new(&amtool)
            .args(["config", "routes", "test"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--verify.receivers={want}"))
            .arg(format!("alertname={name}"))
            .arg(format!("severity={severity}"))
            .arg("instance=vitals:9797"));
        assert!(ok, "{name} ({severity}) should route to {want}:\n{out}");
    }
    // An alert without a severity still reaches someone.
    let (ok, out) = run(Command::new(&amtool)
        .args(["config", "routes", "test"])
        .arg(format!("--config.file={}", config.display()))
        .arg("--verify.receivers=relay-warning")
        .arg("alertname=SomethingElse"));
    assert!(ok, "alerts without severity go to relay-warning:\n{out}");
}

/// The relay is down: `RelayDown` still reaches a mailbox, through the
/// shipped Alertmanager configuration's own e-mail receiver
/// (`fallback-email`), with its runbook link.
#[test]
fn relay_down_reaches_the_fallback_email_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let (token, smtp) = token_and_mailbox(dir.path());
    // Nothing listens there: the relay is down.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let am = Alertmanager::start(&shipped_alertmanager_config(dead, &token, smtp.port));
    let prom = Prometheus::start_alerting(&[("vitals-relay", dead.to_string())], Some(am.addr));
    let started = std::time::Instant::now();
    // RelayDown has `for: 1m`.
    let mail = wait_for(Duration::from_secs(150), "the RelayDown e-mail", || {
        mail_with(&smtp, "RelayDown")
    });
    drop(prom);
    let text = format!(
        "{}{}",
        mail["text"].as_str().unwrap_or(""),
        mail["html"].as_str().unwrap_or("")
    );
    assert!(
        mail["to"].as_str().unwrap().contains("ops@vitals.demo"),
        "{mail}"
    );
    assert!(
        text.contains("runbooks.md#relaydeliveryfailing"),
        "runbook link in {mail}"
    );
    eprintln!(
        "RelayDown e-mailed by Alertmanager's fallback receiver {:.1} s after the relay went down (for: 1m)",
        started.elapsed().as_secs_f64()
    );
}

/// The relay's bearer token file (`relay-token`) in `dir` and a plain SMTP
/// server storing mail in `dir/mail`.
fn token_and_mailbox(dir: &Path) -> (PathBuf, Smtp) {
    let token = dir.join("relay-token");
    std::fs::write(&token, "e2e-token\n").unwrap();
    (token, Smtp::plain(&dir.join("mail")))
}

fn mail_with(smtp: &Smtp, subject_part: &str) -> Option<Value> {
    smtp.mails().into_iter().find(|m| {
        m["subject"]
            .as_str()
            .is_some_and(|s| s.contains(subject_part))
    })
}

/// The issue's end-to-end path: MQTT + webhook → vitals → Prometheus (shipped
/// rules) → Alertmanager (shipped routing, test timings) → `vitals relay`
/// (compose configuration) → SMTP server that stores mail, and the SMS
/// gateway stand-in.
#[test]
fn alerts_are_emailed_and_texted_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (token, smtp) = token_and_mailbox(dir.path());
    let sms = Receiver::start();
    let relay = shipped_relay(dir.path(), smtp.port, sms.addr, &token);
    let broker = Broker::start();
    let vitals = Vitals::start_with(&deploy_config(broker.port), &["--log.level", "warn"]);
    let am = Alertmanager::start(&shipped_alertmanager_config(relay.addr, &token, smtp.port));
    let prom = Prometheus::start_alerting(
        &[
            ("vitals", vitals.addr.to_string()),
            ("vitals-relay", relay.addr.to_string()),
        ],
        Some(am.addr),
    );
    use rumqttc::{Client, MqttOptions, QoS};
    let mut o = MqttOptions::new("e2e-relay-plant", "127.0.0.1", broker.port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = Client::new(o, 100);
    std::thread::spawn(move || for _ in conn.iter() {});
    let publish = |t: f64| {
        let _ = client.publish(
            "factory/L1/oven-1/telemetry",
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"temperature": {t:.1}, "pressure_kpa": 101.3, "humidity_pct": 42, "vibration_mm_s": 1.9}}"#),
        );
    };
    // Publish temperature `t` every 250 ms until `cond` holds (at most `secs`).
    let publish_until = |secs, what: &str, t: f64, cond: &mut dyn FnMut() -> Option<Value>| {
        wait_for(Duration::from_secs(secs), what, || {
            publish(t);
            std::thread::sleep(Duration::from_millis(250));
            cond()
        })
    };
    publish_until(60, "plant temperature in Prometheus", 62.0, &mut || {
        (prom.query("plant_temperature_celsius").ok()? > 0).then_some(Value::Null)
    });

    // A fraudulent transaction: e-mail and SMS (critical).
    let posted = std::time::Instant::now();
    post_payment(
        &vitals,
        br#"{"id":"e2e-relay-1","amount":175000,"currency":"INR","merchant":"m-9","status":"ok"}"#,
    );
    let mail = wait_for(
        Duration::from_secs(120),
        "the SuspectedFraud e-mail",
        || mail_with(&smtp, "SuspectedFraud"),
    );
    let time_to_mail = posted.elapsed();
    let subject = mail["subject"].as_str().unwrap();
    assert!(subject.starts_with("[FIRING"), "{subject}");
    assert!(
        mail["text"].as_str().unwrap().contains("potential_fraud"),
        "{mail}"
    );
    // The runbook link, absolute, in the text body.
    assert!(
        mail["text"]
            .as_str()
            .unwrap()
            .contains("Runbook: https://vitals.invalid/docs/runbooks.md#suspectedfraud"),
        "runbook_url in the text body: {mail}"
    );
    assert!(
        mail["to"].as_str().unwrap().contains("ops@vitals.demo"),
        "{mail}"
    );
    let (_, path, sms_body) = wait_for(Duration::from_secs(60), "the SuspectedFraud SMS", || {
        sms.find(|_, v| v.to_string().contains("SuspectedFraud"))
    });
    assert_eq!(path, "/sms");
    assert!(sms_body["Text"].as_str().is_some(), "{sms_body}");

    // The resolved notice: SuspectedFraud looks back 5 minutes, so use the
    // temperature path: publish 97 °C until its mail, then normal again.
    let hot = std::time::Instant::now();
    let mail = publish_until(180, "the TemperatureOutOfRange e-mail", 97.0, &mut || {
        mail_with(&smtp, "TemperatureOutOfRange")
    });
    let time_hot = hot.elapsed();
    assert!(mail["text"].as_str().unwrap().contains("oven-1"), "{mail}");
    let cooled = std::time::Instant::now();
    publish_until(
        180,
        "the TemperatureOutOfRange resolved e-mail",
        61.0,
        &mut || {
            smtp.mails().into_iter().find(|m| {
                m["subject"].as_str().is_some_and(|s| {
                    s.starts_with("[RESOLVED") && s.contains("TemperatureOutOfRange")
                })
            })
        },
    );
    eprintln!(
        "time-to-alert (sample → e-mail stored): SuspectedFraud {:.2} s (target: scrape 1 s + evaluation 1 s + group_wait 1 s + 2 s = 5 s); \
         TemperatureOutOfRange {:.2} s (includes for: 30s); resolved e-mail {:.2} s after cooling",
        time_to_mail.as_secs_f64(),
        time_hot.as_secs_f64(),
        cooled.elapsed().as_secs_f64()
    );
}
