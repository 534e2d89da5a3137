//! Golden `/metrics` fixtures, one per source kind (`tests/fixtures/`):
//! what each kind renders for a known input — the shape of its families
//! (name, TYPE, HELP, label names) and, where the input fixes them, its
//! sample values. `system` depends on the host, so only its shape is fixed;
//! `demo` draws random values, so only its shape too. Regenerate after an
//! intended change with `UPDATE_GOLDEN=1 cargo test --test golden`
//! and review the diff (see `tests/common/golden.rs`).

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::golden::{assert_golden, assert_golden_shape_on_host, families, families_with, render};
use common::process::run_ok;
use common::relay::Gateway;
use common::{Broker, OFF, Vitals, http, require, sample_value, wait_for, wait_value};

const WAIT: Duration = Duration::from_secs(30);

/// The families a source named `source` renders: those with a sample
/// labelled with it (its data and its per-source telemetry) and those
/// named `vitals_<kind>_` or starting with `data`; the values of the
/// `data` families too when `values` (the input fixes them). Waits until
/// `ready` holds.
fn golden(
    fixture: &str,
    v: &Vitals,
    source: &str,
    kind: &str,
    (data, values): (&str, bool),
    ready: impl Fn(&str) -> bool,
) {
    let m = wait_for(WAIT, &format!("{fixture}: the input in /metrics"), || {
        let m = v.metrics();
        ready(&m).then_some(m)
    });
    let label = format!("source=\"{source}\"");
    let own: BTreeSet<String> = families_with(&m, &[&label]);
    let kind_prefix = format!("vitals_{kind}_");
    let text = render(
        &m,
        |f| own.contains(f) || f.starts_with(&kind_prefix) || f.starts_with(data),
        |f| values && f.starts_with(data),
    );
    assert_golden(fixture, &text);
}

#[test]
fn system_families_have_a_fixed_shape() {
    // The families only an instance with the system source renders.
    let without: BTreeSet<String> = {
        let v = Vitals::start(OFF);
        families(&v.metrics())
    };
    let v = Vitals::start("[system]\nenabled = true\n[detect]\nenabled = false\n");
    let m = wait_for(WAIT, "system families", || {
        let m = v.metrics();
        sample_value(&m, "vitals_cpu_usage_ratio", &[]).map(|_| m)
    });
    let mine = families_with(&m, &["source=\"system\""]);
    // Values, and which disks, interfaces and sensors exist, are the
    // host's: the shape only, checked family by family.
    let text = render(
        &m,
        |f| (mine.contains(f) || !without.contains(f)) && !f.starts_with("vitals_hwmon_"),
        |_| false,
    );
    assert_golden_shape_on_host("system.metrics", &text);
}

#[test]
fn webhook_renders_its_families_for_a_known_payload() {
    let v = Vitals::start(&format!(
        r#"{OFF}
[[sources]]
type = "webhook"
name = "payments"
idempotency_key = "id"

[[sources.metrics]]
name = "payments_events_total"
type = "counter"
help = "Payment events by status."
labels = {{ status = "status" }}

[[sources.metrics]]
name = "payments_amount_total"
type = "counter"
value = "amount"
labels = {{ currency = "currency" }}

[[sources.metrics]]
name = "payments_amount_inr"
type = "histogram"
when = 'currency == "INR"'
value = "amount"
buckets = [1000, 100000]
"#
    ));
    for body in [
        r#"{"id":"g1","amount":250,"currency":"INR","status":"ok"}"#,
        r#"{"id":"g2","amount":150000,"currency":"INR","status":"ok"}"#,
        r#"{"id":"g3","amount":12.5,"currency":"EUR","status":"failed"}"#,
    ] {
        let (status, text) = http(
            v.addr,
            "POST",
            "/ingest/payments",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "{text}");
    }
    golden(
        "webhook.metrics",
        &v,
        "payments",
        "webhook",
        ("payments_", true),
        |m| sample_value(m, "payments_events_total", &["status=\"failed\""]) == Some(1.0),
    );
}

#[test]
fn logs_renders_its_families_for_known_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(
        &log,
        "method=GET status=200 dur=0.05\nmethod=GET status=200 dur=0.5\nmethod=POST status=500 dur=2.0\n",
    )
    .unwrap();
    let v = Vitals::start(&format!(
        r#"{OFF}
[[sources]]
type = "logs"
name = "app"
paths = ["{}"]
poll_interval = "50ms"
start_at = "beginning"
match = 'method=(?P<method>[A-Z]+) status=(?P<status>\d+) dur=(?P<dur>[0-9.]+)'

[[sources.metrics]]
name = "app_requests_total"
type = "counter"
help = "Requests by method and status."
labels = {{ method = "method", status = "status" }}

[[sources.metrics]]
name = "app_request_duration_seconds"
type = "histogram"
value = "dur"
buckets = [0.1, 1.0]
"#,
        log.display()
    ));
    golden("logs.metrics", &v, "app", "logs", ("app_", true), |m| {
        sample_value(m, "app_requests_total", &["method=\"POST\""]) == Some(1.0)
            && sample_value(m, "app_request_duration_seconds_count", &[]) == Some(3.0)
    });
}

#[test]
fn mqtt_renders_its_families_for_known_messages() {
    let broker = Broker::start();
    let v = Vitals::start(&format!(
        r#"{OFF}
[[sources]]
type = "mqtt"
name = "plant"
host = "127.0.0.1"
port = {}

[[sources.subscriptions]]
name = "json"
topic = "factory/+line/+device/telemetry"
[[sources.subscriptions.mapping.metrics]]
name = "plant_temperature"
unit = "celsius"
path = "temp"
help = "Temperature of a device."
[[sources.subscriptions.mapping.metrics]]
name = "plant_vibration_mm_per_second"
path = "vib"
"#,
        broker.port
    ));
    wait_value(&v, "vitals_mqtt_subscribed", &["source=\"plant\""], 1.0);
    broker.publish(
        "factory/L1/oven-1/telemetry",
        r#"{"temp": 71.5, "vib": 1.25}"#,
    );
    broker.publish(
        "factory/L2/press-4/telemetry",
        r#"{"temp": 40, "vib": 0.5}"#,
    );
    golden("mqtt.metrics", &v, "plant", "mqtt", ("plant_", true), |m| {
        sample_value(m, "plant_temperature_celsius", &["device=\"press-4\""]) == Some(40.0)
            && sample_value(m, "plant_temperature_celsius", &["device=\"oven-1\""]) == Some(71.5)
    });
}

#[test]
fn sql_renders_its_families_for_a_known_table() {
    let sqlite3 = require("sqlite3");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("readings.db");
    run_ok(Command::new(&sqlite3).arg(&db).arg(
        "CREATE TABLE readings (sensor TEXT, celsius REAL, count INTEGER);
         INSERT INTO readings VALUES ('boiler', 71.5, 10), ('tank', 20.0, 4);",
    ));
    let v = Vitals::start(&format!(
        r#"{OFF}
[[sources]]
type = "sql"
name = "lite"
dsn = "sqlite://{}?mode=ro"
interval = "200ms"

[[sources.queries]]
name = "readings"
sql = "SELECT sensor, celsius, count FROM readings"
labels = ["sensor"]
[[sources.queries.metrics]]
name = "plant_temperature_celsius"
column = "celsius"
help = "Temperature by sensor."
[[sources.queries.metrics]]
name = "plant_readings_total"
column = "count"
kind = "counter"
"#,
        db.display()
    ));
    golden("sql.metrics", &v, "lite", "sql", ("plant_", true), |m| {
        sample_value(m, "plant_readings_total", &["sensor=\"tank\""]) == Some(4.0)
            && sample_value(m, "vitals_sql_query_up", &["query=\"readings\""]) == Some(1.0)
    });
}

#[test]
fn http_renders_its_families_for_a_known_document() {
    let api = Gateway::start(
        Duration::ZERO,
        r#"{"service": "shop", "servers": [{"name": "a", "load": 0.5, "state": "up"}, {"name": "b", "load": "1.5", "state": "down"}], "queues": {"email": {"depth": 3}}}"#,
    );
    let v = Vitals::start(&format!(
        r#"{OFF}
[[sources]]
type = "http"
name = "shop_api"
url = "{}/stats"
interval = "200ms"
labels = {{ env = "test" }}

[[sources.mappings]]
each = "servers"
labels = {{ server = "name", service = "$.service" }}
[[sources.mappings.metrics]]
name = "shop_server_load"
path = "load"
help = "Load of a shop server."
[[sources.mappings.metrics]]
name = "shop_server_up"
path = "state"
values = {{ up = 1, down = 0 }}

[[sources.mappings]]
each = "queues"
each_key_label = "queue"
[[sources.mappings.metrics]]
name = "shop_queue_depth"
path = "depth"
"#,
        api.url()
    ));
    golden(
        "http.metrics",
        &v,
        "shop_api",
        "http",
        ("shop_", true),
        |m| {
            sample_value(m, "shop_server_up", &["server=\"b\""]) == Some(0.0)
                && sample_value(m, "shop_queue_depth", &[]) == Some(3.0)
        },
    );
}

#[test]
fn demo_families_have_a_fixed_shape() {
    let v = Vitals::start(&format!(
        r#"{OFF}
[[sources]]
type = "demo"
name = "demo"
interval = "100ms"
lines = 1
devices_per_line = 2
anomaly_every = "0s"
silent_device = false
"#
    ));
    // Values are random: the shape only.
    golden("demo.metrics", &v, "demo", "demo", ("demo_", false), |m| {
        m.lines().any(|l| l.starts_with("demo_"))
            && sample_value(m, "vitals_source_up", &["source=\"demo\""]) == Some(1.0)
    });
}
