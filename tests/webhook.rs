//! The `webhook` source: pushed events over real HTTP to the real binary
//! (auth, idempotency, body limit, malformed bodies, the fraud rule), and
//! in-process for the rule event published on the event bus.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Vitals, assert_samples, check_config, check_file, http, promtool_check_metrics, sample_value,
    wait_for,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const TOKEN: &str = "s3cret-token";

fn config(secret_file: &std::path::Path, auth: &str, extra: &str) -> String {
    format!(
        r#"
[system]
enabled = false

[[sources]]
type = "webhook"
name = "payments"
idempotency_key = "id"
max_body_bytes = 4096
{extra}

[sources.auth]
scheme = "{auth}"
secret_file = "{secret}"

[[sources.metrics]]
name = "payments_events_total"
type = "counter"
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

[[sources.rules]]
name = "potential_fraud"
when = 'amount > 100000 and currency == "INR"'
severity = "critical"
value = "amount"
labels = ["id", "merchant"]
"#,
        secret = secret_file.display()
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    v: Vitals,
}

fn start(auth: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{TOKEN}\n")).unwrap();
    let v = Vitals::start(&config(&secret, auth, extra));
    Setup { _dir: dir, v }
}

fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> (u16, serde_json::Value) {
    let (status, body) = http(addr, "POST", "/ingest/payments", headers, body.as_bytes()).unwrap();
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, json)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn error_count(v: &Vitals, reason: &str) -> Option<f64> {
    sample_value(
        &v.metrics(),
        "vitals_source_errors_total",
        &["source=\"payments\"", &format!("reason=\"{reason}\"")],
    )
}

const FRAUD: &str =
    r#"{"id":"t-1","amount":125000,"currency":"INR","merchant":"m-9","status":"ok"}"#;

#[test]
fn fraud_rule_flags_a_payment_over_one_lakh_rupees() {
    let s = start("bearer", "");
    let auth = bearer();
    let h = [("Authorization", auth.as_str())];
    let (status, body) = post(s.v.addr, &h, FRAUD);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    let (status, _) = post(
        s.v.addr,
        &h,
        r#"[{"id":"t-2","amount":100000,"currency":"INR","status":"ok"},
            {"id":"t-3","amount":250000,"currency":"USD","status":"failed"}]"#,
    );
    assert_eq!(status, 200);
    // Answered 200 means queued; the store applies it right after.
    let m = wait_for(Duration::from_secs(10), "the events in the store", || {
        let m = s.v.metrics();
        (sample_value(&m, "payments_events_total", &["status=\"ok\""]) == Some(2.0)).then_some(m)
    });
    assert_eq!(
        sample_value(
            &m,
            "vitals_rule_hits_total",
            &["rule=\"potential_fraud\"", "source=\"payments\""]
        ),
        Some(1.0),
        "only the INR payment over 1,00,000 is flagged"
    );
    assert_samples(
        &m,
        &[
            ("payments_events_total", &["status=\"failed\""], Some(1.0)),
            (
                "payments_amount_total",
                &["currency=\"INR\""],
                Some(225000.0),
            ),
            ("payments_amount_inr_bucket", &["le=\"100000\""], Some(1.0)),
            ("payments_amount_inr_bucket", &["le=\"+Inf\""], Some(2.0)),
            ("payments_amount_inr_count", &[], Some(2.0)),
        ],
    );
    let (ok, findings) = promtool_check_metrics(&m);
    assert!(ok, "promtool check metrics: {findings}");
}

#[test]
fn bearer_token_is_required_and_checked() {
    let s = start("bearer", "");
    let (status, body) = post(s.v.addr, &[], FRAUD);
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "missing_credentials");
    let (status, body) = post(s.v.addr, &[("Authorization", "Bearer wrong")], FRAUD);
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "bad_token");
    assert!(body["error"].is_string());
    assert_eq!(error_count(&s.v, "bad_token"), Some(1.0));
    // The rule's counter exists from the start, at 0: refused events count nowhere.
    let m = wait_for(Duration::from_secs(10), "the initial counters", || {
        let m = s.v.metrics();
        sample_value(&m, "vitals_rule_hits_total", &["rule=\"potential_fraud\""]).map(|v| (m, v))
    });
    assert_eq!(m.1, 0.0);
    let m = m.0;
    assert_eq!(sample_value(&m, "payments_events_total", &[]), None);
}

fn sign(body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let sig = mac.finalize().into_bytes();
    let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[test]
fn hmac_signature_of_the_body_is_verified() {
    let s = start("hmac", "");
    let good = sign(FRAUD);
    let (status, body) = post(s.v.addr, &[("X-Signature-256", &good)], FRAUD);
    assert_eq!(status, 200, "{body}");
    // The same signature over another body fails.
    let other = FRAUD.replace("125000", "125001");
    let (status, body) = post(s.v.addr, &[("X-Signature-256", &good)], &other);
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "bad_signature");
    let (status, body) = post(s.v.addr, &[("X-Signature-256", "sha256=zz")], FRAUD);
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("bad_signature"))
    );
    let (status, body) = post(s.v.addr, &[], FRAUD);
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("missing_credentials"))
    );
    assert_eq!(error_count(&s.v, "bad_signature"), Some(2.0));
    let m = wait_for(Duration::from_secs(10), "the signed event", || {
        let m = s.v.metrics();
        sample_value(&m, "payments_events_total", &[]).map(|_| m)
    });
    assert_eq!(
        sample_value(&m, "payments_events_total", &["status=\"ok\""]),
        Some(1.0)
    );
}

#[test]
fn retried_post_is_not_counted_twice() {
    let s = start("bearer", "");
    let auth = bearer();
    let h = [("Authorization", auth.as_str())];
    let batch = "{\"id\":\"a\",\"amount\":5,\"currency\":\"INR\",\"status\":\"ok\"}\n\
                 {\"id\":\"b\",\"amount\":7,\"currency\":\"INR\",\"status\":\"ok\"}\n";
    let (status, body) = post(s.v.addr, &h, batch);
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(2)));
    let (status, body) = post(s.v.addr, &h, batch);
    assert_eq!(status, 200, "a retry is acknowledged");
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(0), Some(2))
    );
    // Duplicates inside one body too.
    let (_, body) = post(
        s.v.addr,
        &h,
        r#"[{"id":"c","amount":1,"currency":"INR","status":"ok"},{"id":"c","amount":1,"currency":"INR","status":"ok"}]"#,
    );
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    let m = wait_for(Duration::from_secs(10), "three events", || {
        let m = s.v.metrics();
        (sample_value(
            &m,
            "vitals_webhook_events_total",
            &["outcome=\"duplicate\""],
        ) == Some(3.0))
        .then_some(m)
    });
    assert_samples(
        &m,
        &[
            ("payments_events_total", &["status=\"ok\""], Some(3.0)),
            ("payments_amount_total", &["currency=\"INR\""], Some(13.0)),
            (
                "vitals_webhook_events_total",
                &["outcome=\"accepted\""],
                Some(3.0),
            ),
        ],
    );
}

#[test]
fn body_over_the_limit_gets_413_with_a_json_error() {
    let s = start("bearer", "");
    let auth = bearer();
    let big = format!("[{}]", vec![FRAUD; 100].join(","));
    assert!(big.len() > 4096);
    let (status, body) = post(s.v.addr, &[("Authorization", &auth)], &big);
    assert_eq!(status, 413);
    assert_eq!(body["reason"], "body_too_large");
    assert_eq!(error_count(&s.v, "body_too_large"), Some(1.0));
    assert_eq!(
        sample_value(&s.v.metrics(), "payments_events_total", &[]),
        None
    );
}

#[test]
fn malformed_json_and_csv_get_400_and_count_nothing() {
    let s = start("bearer", "");
    let auth = bearer();
    let h = [("Authorization", auth.as_str())];
    for bad in [
        r#"{"id":"x","amount":"#,
        "{\"id\":\"ok-1\",\"amount\":1}\nnot json\n",
        "[1, 2]",
        "",
    ] {
        let (status, body) = post(s.v.addr, &h, bad);
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["reason"], "malformed_json");
    }
    assert_eq!(error_count(&s.v, "malformed_json"), Some(4.0));
    let accepted = wait_for(Duration::from_secs(10), "the initial counters", || {
        sample_value(
            &s.v.metrics(),
            "vitals_webhook_events_total",
            &["outcome=\"accepted\""],
        )
    });
    assert_eq!(accepted, 0.0, "a body with one bad line is refused whole");

    let csv = start("bearer", "format = \"csv\"");
    let h = [("Authorization", auth.as_str())];
    let (status, body) = post(
        csv.v.addr,
        &h,
        "id,amount,currency,status\nc-1,\"5,INR,ok\n",
    );
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("malformed_csv"))
    );
    let (status, body) = post(csv.v.addr, &h, "id,amount,currency,status\nc-1,5\n");
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("malformed_csv"))
    );
    let (status, body) = post(
        csv.v.addr,
        &h,
        "id,amount,currency,status,merchant\nc-1,150000,INR,ok,m-1\nc-2,10,INR,failed,m-2\n",
    );
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    let m = wait_for(Duration::from_secs(10), "csv events", || {
        let m = csv.v.metrics();
        sample_value(&m, "payments_events_total", &["status=\"failed\""]).map(|_| m)
    });
    assert_eq!(
        sample_value(&m, "vitals_rule_hits_total", &["rule=\"potential_fraud\""]),
        Some(1.0)
    );
}

#[test]
fn unreadable_secret_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vitals::start(&config(&dir.path().join("missing"), "bearer", ""));
    let (status, body) = post(v.addr, &[("Authorization", "Bearer anything")], FRAUD);
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("secret_unavailable"))
    );
}

/// In process: the rule hit is published on the event bus (what the live
/// dashboard and the log subscribe to) and counted in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_rule_publishes_a_rule_event_on_the_bus() {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use parking_lot::RwLock;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, TOKEN).unwrap();
    // The source's own config, built directly (no whole-file load needed).
    let wh: vitals::sources::webhook::WebhookConfig = serde_json::from_value(serde_json::json!({
        "name": "payments",
        "auth": {"scheme": "bearer", "secret_file": secret},
        "metrics": [{"name": "payments_events_total", "type": "counter", "labels": {"status": "status"}}],
        "rules": [{
            "name": "potential_fraud",
            "when": "amount > 100000 and currency == \"INR\"",
            "severity": "critical",
            "value": "amount",
            "labels": ["id", "merchant"],
        }],
    }))
    .unwrap();
    wh.validate().unwrap();

    let telemetry = Arc::new(vitals::telemetry::Telemetry::new());
    let store = Arc::new(RwLock::new(vitals::store::Store::new()));
    let events = vitals::events::EventBus::default();
    let mut rx_events = events.subscribe();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let ingest = tokio::spawn(vitals::pipeline::run_ingest(
        rx,
        vitals::pipeline::Pipeline::standard(),
        store.clone(),
        telemetry.clone(),
        shutdown.clone(),
    ));
    let ctx = vitals::sources::SourceContext {
        tx,
        telemetry,
        events,
        shutdown: shutdown.clone(),
        store: store.clone(),
    };
    let (router, _source) = vitals::sources::webhook::router(wh, ctx);
    let resp = router
        .oneshot(
            Request::post("/ingest/payments")
                .header("authorization", bearer())
                .body(Body::from(FRAUD))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;

    let event = tokio::time::timeout(Duration::from_secs(10), rx_events.recv())
        .await
        .expect("an event within 10 s")
        .expect("the bus is open");
    assert_eq!(event.kind, "rule");
    assert_eq!(event.reason, "potential_fraud");
    assert_eq!(event.severity, vitals::events::Severity::Critical);
    assert_eq!(event.source, "payments");
    assert_eq!(event.value, 125000.0);
    assert_eq!(event.labels, r#"{id="t-1",merchant="m-9"}"#);

    // The 200 came after the batch was queued; stop the ingest task, which
    // applies what is queued before it exits.
    shutdown.cancel();
    ingest.await.unwrap();
    let mut out = String::new();
    vitals::exposition::store_text(&store.read(), &mut out);
    assert_eq!(
        sample_value(
            &out,
            "vitals_rule_hits_total",
            &["rule=\"potential_fraud\""]
        ),
        Some(1.0),
        "{out}"
    );
}

#[test]
fn business_example_configs_pass_vitals_check() {
    for file in ["examples/webhook.toml", "examples/logs.toml"] {
        let checked = check_file(Path::new(file));
        assert!(checked.ok(), "{file}: {}", checked.stderr);
    }
}

#[test]
fn label_values_beyond_the_budget_are_dropped_and_counted_not_stored() {
    let extra = r#"
[[sources.metrics]]
name = "payments_by_merchant_total"
type = "counter"
labels = { merchant = "merchant" }
max_series = 2
"#;
    let s = start("bearer", extra);
    let auth = bearer();
    let body = (1..=3)
        .map(|i| {
            format!(
                r#"{{"id":"m{i}","amount":1,"currency":"INR","merchant":"m-{i}","status":"ok"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let (status, _) = post(s.v.addr, &[("Authorization", &auth)], &body);
    assert_eq!(status, 200);
    let m = wait_for(Duration::from_secs(10), "three events", || {
        let m = s.v.metrics();
        (sample_value(&m, "payments_events_total", &["status=\"ok\""]) == Some(3.0)).then_some(m)
    });
    let series = m
        .lines()
        .filter(|l| l.starts_with("payments_by_merchant_total{"))
        .count();
    assert_eq!(series, 2, "{m}");
    assert_eq!(
        sample_value(
            &m,
            "vitals_samples_dropped_total",
            &["source=\"payments\"", "reason=\"cardinality\""]
        ),
        Some(1.0)
    );
}

#[test]
fn a_typo_in_a_business_source_is_rejected_with_its_key() {
    // Each bad config with the two parts its error must name.
    let cases = [
        (
            r#"
[[sources]]
type = "webhook"
name = "payments"
idempotency_keys = "id"

[[sources.metrics]]
name = "payments_events_total"
type = "counter"
"#,
            ["bad.toml", "idempotency_keys"],
        ),
        (
            r#"
[[sources]]
type = "logs"
name = "app"
paths = ["/var/log/app.log"]
match = 'x=(?P<x>\d+)'

[[sources.metrics]]
name = "app_x_total"
type = "counter"
labels = { y = "y" }
"#,
            ["sources[0].metrics[0].match", "`y`"],
        ),
    ];
    for (config, [first, second]) in cases {
        let checked = check_config("bad.toml", config);
        let err = &checked.stderr;
        assert_eq!(checked.code, Some(2));
        assert!(err.contains(first) && err.contains(second), "{err}");
    }
}

/// Ids used to be compared as text: `7`, `7.0` and `"7"` were one key (and
/// large integers were rounded through f64), while an object-valued id was
/// never de-duplicated at all.
#[test]
fn idempotency_keys_keep_their_json_type_and_object_ids_are_refused() {
    let s = start("bearer", "");
    let auth = bearer();
    let h = [("Authorization", auth.as_str())];
    let ev = |id: &str| format!(r#"{{"id":{id},"status":"ok"}}"#);
    for id in [
        "7",
        "7.0",
        "\"7\"",
        "9007199254740993",
        "9007199254740992",
        "true",
    ] {
        let (status, body) = post(s.v.addr, &h, &ev(id));
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(
            (body["accepted"].as_u64(), body["duplicates"].as_u64()),
            (Some(1), Some(0)),
            "{id} is a key of its own"
        );
    }
    // The same value again is a duplicate, however it is spelled: a float by
    // value, a string with its escapes decoded.
    for (id, again) in [("7", "7"), ("7.0", "7e0"), ("\"7\"", "\"\\u0037\"")] {
        let (_, body) = post(s.v.addr, &h, &ev(again));
        assert_eq!(
            (body["accepted"].as_u64(), body["duplicates"].as_u64()),
            (Some(0), Some(1)),
            "{again} repeats {id}"
        );
    }
    // An object or an array cannot be a key: the request is refused, counted,
    // and nothing of it counts.
    for id in [r#"{"a":1}"#, "[1,2]"] {
        let body = format!("{}\n{}", ev("\"fine\""), ev(id));
        let (status, json) = post(s.v.addr, &h, &body);
        assert_eq!(status, 400, "{id}: {json}");
        assert_eq!(json["reason"], "invalid_idempotency_key", "{json}");
    }
    assert_eq!(error_count(&s.v, "invalid_idempotency_key"), Some(2.0));
    let (_, body) = post(s.v.addr, &h, &ev("\"fine\""));
    assert_eq!(
        body["accepted"].as_u64(),
        Some(1),
        "the refused requests remembered no key"
    );
    let m = wait_for(Duration::from_secs(10), "seven events", || {
        let m = s.v.metrics();
        (sample_value(&m, "payments_events_total", &["status=\"ok\""]) == Some(7.0)).then_some(m)
    });
    assert_eq!(
        sample_value(
            &m,
            "vitals_webhook_events_total",
            &["outcome=\"duplicate\""]
        ),
        Some(3.0)
    );
}

/// Label values used to have no length limit, so the cardinality budget
/// did not bound memory: 100 events with 400 kB labels took the exporter to
/// 255 MiB. Now a new series over the label limits is dropped and counted,
/// the store's label bytes stay under series × max_label_bytes, and a
/// source can be given wider limits of its own.
#[test]
fn huge_label_values_are_dropped_and_counted_and_memory_stays_bounded() {
    let source = |name: &str| {
        format!(
            "[[sources]]\ntype = \"webhook\"\nname = \"{name}\"\n\
             [[sources.metrics]]\nname = \"{name}_by_merchant_total\"\ntype = \"counter\"\n\
             labels = {{ merchant = \"merchant\" }}\n\
             [[sources.metrics]]\nname = \"{name}_by_five_total\"\ntype = \"counter\"\n\
             labels = {{ a = \"a\", b = \"b\", c = \"c\", d = \"d\", e = \"e\" }}\n"
        )
    };
    let v = Vitals::start(&format!(
        "[system]\nenabled = false\n{}{}\
         [store.source_limits.wide]\nmax_label_value_bytes = 4096\nmax_label_bytes = 8192\n",
        source("shop"),
        source("wide")
    ));
    let push = |name: &str, body: &str| {
        let (status, text) = http(
            v.addr,
            "POST",
            &format!("/ingest/{name}"),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "{text}");
    };
    // 100 events, each with its own 400 kB merchant: 40 MB of label values.
    for i in 0..100 {
        let merchant = format!("{i:03}{}", "m".repeat(400_000));
        push("shop", &format!(r#"{{"merchant":"{merchant}"}}"#));
    }
    // Five labels of 1,000 bytes each: every value fits, the set does not.
    let kb = "k".repeat(1000);
    let five = format!(r#"{{"a":"1{kb}","b":"2{kb}","c":"3{kb}","d":"4{kb}","e":"5{kb}"}}"#);
    push("shop", &five);
    // A 2,000-byte value: over the default, within `wide`'s own limits.
    let two_kb = format!(r#"{{"merchant":"{}"}}"#, "w".repeat(2000));
    push("shop", &two_kb);
    push("wide", &two_kb);
    push("wide", &five);
    push("shop", r#"{"merchant":"m-1"}"#);

    let dropped = |source: &str, reason: &str| {
        sample_value(
            &v.metrics(),
            "vitals_samples_dropped_total",
            &[
                &format!("source=\"{source}\""),
                &format!("reason=\"{reason}\""),
            ],
        )
    };
    let m = wait_for(Duration::from_secs(30), "the small merchant stored", || {
        let m = v.metrics();
        (sample_value(&m, "shop_by_merchant_total", &["merchant=\"m-1\""]) == Some(1.0))
            .then_some(m)
    });
    assert_eq!(dropped("shop", "label_value_too_long"), Some(101.0), "{m}");
    assert_eq!(dropped("shop", "labels_too_large"), Some(1.0));
    assert_eq!(dropped("wide", "label_value_too_long"), None);
    assert_eq!(dropped("wide", "labels_too_large"), None);
    assert!(m.contains(&format!(
        "wide_by_merchant_total{{merchant=\"{}\"}} 1",
        "w".repeat(2000)
    )));
    assert!(sample_value(&m, "wide_by_five_total", &["a=\"1k"]).is_some());
    assert!(!m.contains("mmmmmmmmmm"), "no huge label reached /metrics");

    let series = sample_value(&m, "vitals_store_series", &[]).unwrap();
    let bytes = sample_value(&m, "vitals_store_label_bytes", &[]).unwrap();
    assert!(
        bytes <= series * (8192.0 + 256.0),
        "{bytes} label bytes for {series} series"
    );
    assert!(bytes < 64.0 * 1024.0, "{bytes} label bytes held");
    assert!(m.len() < 256 * 1024, "a scrape is {} bytes", m.len());
    let (ok, out) = promtool_check_metrics(&m);
    assert!(ok, "{out}");
}
