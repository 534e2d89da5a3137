//! Fault tests against real processes: the broker killed while messages
//! flow, PostgreSQL stopped while queries run, a flood of distinct device
//! ids, slow and many concurrent scrapers, SIGTERM under heavy ingest.
//!
//! Covered elsewhere (not repeated here):
//! - a log file deleted and recreated: `tests/logs.rs`,
//!   `deleted_file_is_counted_and_a_recreated_file_is_read_from_its_start`;
//! - a broker stopped and started while idle: `tests/mqtt.rs`,
//!   `reconnects_after_broker_restart` (this file kills it mid-stream).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{Broker, Vitals, free_port, get, sample_value, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A Mosquitto without queue limits, so what the tests count is vitals'
/// doing, not the broker's.
fn unlimited_broker() -> Broker {
    Broker::start_with("max_queued_messages 0\nmax_inflight_messages 0\n")
}
/// A publisher thread that keeps publishing `topic(i)` → `payload(i)`
/// (QoS 0) and keeps reconnecting while the broker is away.
struct Publisher {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Publisher {
    fn start(port: u16, pace: Duration, message: fn(u64) -> (String, String)) -> Publisher {
        use rumqttc::{Client, MqttOptions, QoS};
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut o = MqttOptions::new(format!("fault-pub-{}", free_port()), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = Client::new(o, 1000);
        let (s1, s2) = (stop.clone(), stop.clone());
        let sent1 = sent.clone();
        let publish = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s1.load(Ordering::Relaxed) {
                let (topic, payload) = message(i);
                if client
                    .try_publish(topic, QoS::AtMostOnce, false, payload)
                    .is_ok()
                {
                    i += 1;
                    sent1.store(i, Ordering::Relaxed);
                }
                std::thread::sleep(pace);
            }
            let _ = client.disconnect();
        });
        let drive = std::thread::spawn(move || {
            for event in conn.iter() {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                if event.is_err() {
                    // Broker away: rumqttc reconnects on the next poll.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Publisher {
            stop,
            sent,
            threads: vec![publish, drive],
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Publish `count` messages from `message(i)` with QoS 1 and wait until the
/// broker acknowledged all of them.
fn publish_acked(
    port: u16,
    count: u64,
    message: impl Fn(u64) -> (String, Vec<u8>) + Send + 'static,
) {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new(format!("fault-flood-{}", free_port()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(1000);
    let (client, mut conn) = Client::new(o, 10_000);
    let producer = std::thread::spawn(move || {
        for i in 0..count {
            let (topic, payload) = message(i);
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .expect("queue publish");
        }
        client
    });
    let mut acked = 0u64;
    for event in conn.iter() {
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == count {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("publishing to the test broker failed: {e}"),
        }
    }
    let client = producer.join().expect("producer thread");
    let _ = client.disconnect();
    assert_eq!(acked, count);
}

/// Resident set size of a process, in bytes, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc status");
    kb * 1024
}

fn value(v: &Vitals, name: &str, parts: &[&str]) -> Option<f64> {
    get(v.addr, "/metrics")
        .filter(|(s, _)| *s == 200)
        .and_then(|(_, body)| sample_value(&body, name, parts))
}

fn alive(v: &mut Vitals) {
    if let Ok(Some(status)) = v.child.try_wait() {
        panic!("vitals exited with {status}");
    }
}

fn mqtt_config(port: u16, extra: &str) -> String {
    format!(
        r#"
[system]
enabled = false
[[sources]]
type = "mqtt"
name = "plant"
host = "127.0.0.1"
port = {port}
reconnect_min = "100ms"
reconnect_max = "1s"
{extra}
"#
    )
}

#[test]
fn broker_killed_and_restarted_while_publishing_ingest_resumes_counters_monotonic() {
    let mut broker = unlimited_broker();
    let port = broker.port;
    let mut v = Vitals::start(&mqtt_config(
        port,
        r#"
[[sources.subscriptions]]
name = "seq"
topic = "line/+device/seq"
[sources.subscriptions.mapping]
format = "plain"
[[sources.subscriptions.mapping.metrics]]
name = "fault_sequence"
"#,
    ));
    let messages = |v: &Vitals| value(v, "vitals_mqtt_messages_total", &[r#"subscription="seq""#]);
    wait_for(WAIT, "vitals to subscribe", || {
        value(&v, "vitals_mqtt_subscribed", &[r#"source="plant""#]).filter(|n| *n >= 1.0)
    });
    let publisher = Publisher::start(port, Duration::from_millis(2), |i| {
        (format!("line/d{}/seq", i % 5), i.to_string())
    });
    let mut seen = Vec::new();
    let before_kill = wait_for(WAIT, "messages to flow", || {
        messages(&v).filter(|n| *n >= 200.0)
    });
    seen.push(before_kill);

    broker.kill();
    wait_for(WAIT, "the disconnect to be noticed", || {
        value(&v, "vitals_mqtt_connected", &[r#"source="plant""#]).filter(|c| *c == 0.0)
    });
    // Down: still serving, counters kept.
    for _ in 0..5 {
        alive(&mut v);
        seen.extend(messages(&v));
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent_while_down = publisher.sent();

    broker.spawn();
    let after = wait_for(WAIT, "ingest to resume after the restart", || {
        seen.extend(messages(&v));
        // Values published after the restart arrive.
        value(&v, "fault_sequence", &[])
            .filter(|x| *x as u64 > sent_while_down)
            .and_then(|_| messages(&v))
            .filter(|n| *n > before_kill + 100.0)
    });
    seen.push(after);
    publisher.finish();
    alive(&mut v);
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "vitals_mqtt_messages_total went backwards: {seen:?}"
    );
    let m = v.metrics();
    assert!(
        sample_value(&m, "vitals_mqtt_reconnects_total", &[r#"source="plant""#])
            .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        sample_value(&m, "vitals_mqtt_connected", &[r#"source="plant""#]),
        Some(1.0)
    );
    let status = v
        .terminate(Duration::from_secs(30))
        .expect("exit after SIGTERM");
    assert!(
        status.success(),
        "exit status {status} (a panic exits non-zero)"
    );
}

#[test]
fn a_million_distinct_device_ids_stay_within_the_cardinality_budget() {
    const IDS: u64 = 1_000_000;
    const MAX_SERIES: u64 = 1000;
    let broker = unlimited_broker();
    let port = broker.port;
    let mut v = Vitals::start(&mqtt_config(
        port,
        &format!(
            r#"
[[sources.subscriptions]]
name = "ids"
topic = "fleet/+device/value"
qos = 1
max_series = {MAX_SERIES}
[sources.subscriptions.mapping]
format = "plain"
[[sources.subscriptions.mapping.metrics]]
name = "fleet_value"
"#
        ),
    ));
    wait_for(WAIT, "vitals to subscribe", || {
        value(&v, "vitals_mqtt_subscribed", &[r#"source="plant""#]).filter(|n| *n >= 1.0)
    });
    let baseline = rss_bytes(v.child.id());
    publish_acked(port, IDS, |i| {
        (format!("fleet/dev{i:07}/value"), b"1".to_vec())
    });
    let mut peak = baseline;
    let pid = v.child.id();
    wait_for(
        Duration::from_secs(600),
        "every message to be ingested",
        || {
            peak = peak.max(rss_bytes(pid));
            value(&v, "vitals_mqtt_messages_total", &[r#"subscription="ids""#])
                .filter(|n| *n >= IDS as f64)
        },
    );
    alive(&mut v);
    let m = v.metrics();
    let series = m.lines().filter(|l| l.starts_with("fleet_value{")).count() as u64;
    assert_eq!(series, MAX_SERIES, "series beyond the budget were kept");
    let dropped = sample_value(
        &m,
        "vitals_mqtt_samples_dropped_total",
        &[r#"subscription="ids""#, r#"reason="cardinality""#],
    );
    assert_eq!(
        dropped,
        Some((IDS - MAX_SERIES) as f64),
        "excess not counted"
    );
    peak = peak.max(rss_bytes(pid));
    eprintln!(
        "1,000,000 device ids: RSS {} MiB before, peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    // Per-id state would cost well over 100 bytes each (≥ 100 MB for 10⁶ ids).
    assert!(
        peak < baseline + (64 << 20),
        "RSS grew from {baseline} to {peak} bytes for {IDS} ids"
    );
}

/// `GET /metrics` on a raw socket, reading the answer one byte at a time.
fn slow_scrape(addr: std::net::SocketAddr, pause: Duration) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: vitals\r\nConnection: close\r\n\r\n")
        .expect("send request");
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = s.read(&mut byte) {
        out.push(byte[0]);
        if out.len() % 512 == 0 {
            std::thread::sleep(pause);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn slow_and_a_hundred_concurrent_scrapers_are_served_with_bounded_memory() {
    // System metrics on, so each render does real work.
    let mut v = Vitals::start_with("", &["--web.max-requests", "2"]);
    let addr = v.addr;
    let pid = v.child.id();

    // Slow scrapers as many as the limit: a byte at a time with pauses.
    let slow: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || slow_scrape(addr, Duration::from_millis(20))))
        .collect();
    // Meanwhile the others are served.
    for _ in 0..5 {
        let (status, body) = get(addr, "/metrics").expect("GET /metrics beside slow scrapers");
        assert_eq!(status, 200);
        assert!(body.contains("vitals_build_info"), "{body}");
    }

    let mut rss_after_round = Vec::new();
    for _round in 0..5 {
        let scrapers: Vec<_> = (0..100)
            .map(|_| std::thread::spawn(move || get(addr, "/metrics").map(|(s, b)| (s, b.len()))))
            .collect();
        for s in scrapers {
            let (status, len) = s
                .join()
                .expect("scraper thread")
                .expect("every scraper is answered");
            assert_eq!(status, 200);
            assert!(len > 1000);
        }
        alive(&mut v);
        rss_after_round.push(rss_bytes(pid));
    }
    for s in slow {
        let answer = s.join().expect("slow scraper");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{}",
            &answer[..answer.len().min(200)]
        );
        assert!(answer.contains("vitals_build_info"));
    }
    eprintln!(
        "100 concurrent scrapers × 5 rounds: RSS MiB after each round {:?}",
        rss_after_round.iter().map(|b| b >> 20).collect::<Vec<_>>()
    );
    let (first, last) = (rss_after_round[0], *rss_after_round.last().unwrap());
    assert!(
        last < first + (32 << 20),
        "RSS keeps growing across rounds: {rss_after_round:?}"
    );
    assert!(last < 256 << 20, "RSS {last} bytes");
}

#[test]
fn sigterm_during_heavy_ingest_exits_cleanly_within_the_drain_timeout() {
    let broker = unlimited_broker();
    let port = broker.port;
    let mut v = Vitals::start(&mqtt_config(
        port,
        r#"
[[sources.subscriptions]]
name = "flood"
topic = "flood/+device/value"
max_series = 5000
[sources.subscriptions.mapping]
format = "plain"
[[sources.subscriptions.mapping.metrics]]
name = "flood_value"
"#,
    ));
    wait_for(WAIT, "vitals to subscribe", || {
        value(&v, "vitals_mqtt_subscribed", &[r#"source="plant""#]).filter(|n| *n >= 1.0)
    });
    let publisher = Publisher::start(port, Duration::ZERO, |i| {
        (format!("flood/d{}/value", i % 10_000), i.to_string())
    });
    wait_for(WAIT, "heavy ingest", || {
        value(
            &v,
            "vitals_mqtt_messages_total",
            &[r#"subscription="flood""#],
        )
        .filter(|n| *n >= 20_000.0)
    });
    // shutdown_timeout defaults to 10 s; allow scheduling slack on a busy machine.
    let status = v
        .terminate(Duration::from_secs(20))
        .expect("vitals did not exit within the drain timeout after SIGTERM");
    publisher.finish();
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

/// Every `reason` label of `family` samples whose labels hold all `parts`,
/// with the sum of their values.
fn reasons(metrics: &str, family: &str, parts: &[&str]) -> (Vec<String>, f64) {
    let mut found = Vec::new();
    let mut total = 0.0;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        if !rest.starts_with('{') || !parts.iter().all(|p| rest.contains(p)) {
            continue;
        }
        let (labels, value) = rest.rsplit_once(' ').expect("sample line");
        total += value.parse::<f64>().expect("sample value");
        if let Some(r) = labels.split("reason=\"").nth(1) {
            found.push(r.split('"').next().unwrap_or_default().to_string());
        }
    }
    (found, total)
}

#[test]
fn postgres_stopped_during_a_query_loop_marks_queries_down_others_keep_running_and_it_recovers() {
    let pg = common::postgres::Postgres::start();
    pg.psql("CREATE TABLE t (v int8); INSERT INTO t VALUES (7);");
    // `slow` is in flight most of the time (0.3 s per run every 0.1 s), so
    // the stop usually lands in the middle of a query.
    let mut v = Vitals::start(&format!(
        r#"
[system]
enabled = false

[[sources]]
type = "demo"
name = "demo"
interval = "100ms"
lines = 1
devices_per_line = 1
business = false
anomaly_every = "0s"
silent_device = false

[[sources]]
type = "sql"
name = "db"
dsn = "{dsn}"
interval = "100ms"
timeout = "5s"
connect_timeout = "1s"

[[sources.queries]]
name = "fast"
sql = "SELECT v FROM t"
[[sources.queries.metrics]]
name = "db_value"
column = "v"

[[sources.queries]]
name = "slow"
sql = "SELECT v * 2 AS doubled FROM t, pg_sleep(0.3) AS s"
[[sources.queries.metrics]]
name = "db_doubled"
column = "doubled"
"#,
        dsn = pg.dsn()
    ));
    let db_up = |v: &Vitals| value(v, "vitals_source_up", &[r#"source="db""#]);
    let query_up =
        |v: &Vitals, q: &str| value(v, "vitals_sql_query_up", &[&format!(r#"query="{q}""#)]);
    let healthy = |v: &Vitals| {
        (value(v, "db_value", &[]) == Some(7.0)
            && value(v, "db_doubled", &[]) == Some(14.0)
            && db_up(v) == Some(1.0)
            && query_up(v, "fast") == Some(1.0)
            && query_up(v, "slow") == Some(1.0))
        .then_some(())
    };
    wait_for(WAIT, "both queries to succeed", || healthy(&v));
    let demo_success = |v: &Vitals| {
        value(
            v,
            "vitals_source_last_success_timestamp_seconds",
            &[r#"source="demo""#],
        )
    };
    let db_errors = |v: &Vitals| {
        reasons(
            &v.metrics(),
            "vitals_source_errors_total",
            &[r#"source="db""#],
        )
        .1
    };
    let mut errors_seen = vec![db_errors(&v)];

    pg.stop();
    wait_for(
        WAIT,
        "the source and both queries to be marked down",
        || {
            errors_seen.push(db_errors(&v));
            (db_up(&v) == Some(0.0)
                && query_up(&v, "fast") == Some(0.0)
                && query_up(&v, "slow") == Some(0.0))
            .then_some(())
        },
    );
    wait_for(WAIT, "the failed queries' series to go away", || {
        let m = v.metrics();
        (sample_value(&m, "db_value", &[]).is_none()
            && sample_value(&m, "db_doubled", &[]).is_none())
        .then_some(())
    });
    // While PostgreSQL is away the other source keeps collecting, /metrics
    // keeps answering and the errors keep being counted.
    let demo_before = demo_success(&v).expect("the demo source has succeeded");
    let errors_down = db_errors(&v);
    wait_for(
        WAIT,
        "the demo source to keep collecting and errors to be counted",
        || {
            alive(&mut v);
            errors_seen.push(db_errors(&v));
            (demo_success(&v)? > demo_before + 0.5 && db_errors(&v) > errors_down).then_some(())
        },
    );
    let m = v.metrics();
    assert!(
        sample_value(&m, "demo_temperature_celsius", &[]).is_some(),
        "the demo source's series stay exported"
    );
    assert_eq!(
        sample_value(&m, "vitals_source_up", &[r#"source="demo""#]),
        Some(1.0)
    );
    // Counted by bounded reason, never by error text.
    let allowed = ["connect", "query", "timeout"];
    let (source_reasons, _) = reasons(&m, "vitals_source_errors_total", &[r#"source="db""#]);
    let (query_reasons, query_errors) = reasons(&m, "vitals_sql_query_errors_total", &[]);
    assert!(
        source_reasons.iter().any(|r| r == "connect"),
        "{source_reasons:?}"
    );
    assert!(query_errors >= 2.0, "each query counts its failures");
    for r in source_reasons.iter().chain(&query_reasons) {
        assert!(allowed.contains(&r.as_str()), "unexpected reason {r:?}");
    }

    pg.pg_ctl_start();
    wait_for(WAIT, "both queries to recover by themselves", || {
        alive(&mut v);
        errors_seen.push(db_errors(&v));
        healthy(&v)
    });
    assert!(
        errors_seen.windows(2).all(|w| w[0] <= w[1]),
        "vitals_source_errors_total went backwards: {errors_seen:?}"
    );
    let status = v
        .terminate(Duration::from_secs(30))
        .expect("exit after SIGTERM");
    assert!(
        status.success(),
        "exit status {status} (a panic exits non-zero)"
    );
}
