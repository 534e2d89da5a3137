//! Remote write against real receivers (Prometheus with its remote-write
//! receiver, VictoriaMetrics single node) and a scripted one: every sample
//! arrives with its event time across a receiver outage and a SIGKILL of
//! vitals; 5xx/429/400 are retried, retried later and dropped; a full disk
//! under the queue is counted and survived.
//!
//! The data: MQTT messages, each an array of readings with their own
//! timestamps (`rw_test_value`), so the expected count per series is known.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::broker::{now_ms, readings_source};
use common::{Broker, OFF, Tmpfs, Vitals, fill, free_port, get, require, sample_value, wait_for};

/// vitals with one MQTT subscription and one remote.
fn config(broker: &Broker, url: &str, queue_dir: &Path, extra: &str) -> String {
    format!(
        r#"{OFF}{source}
[[remote_write]]
name = "central"
url = "{url}"
queue_dir = "{queue}"
min_backoff = "50ms"
max_backoff = "500ms"
batch_max_samples = 500
max_concurrency = 2
external_labels = {{ site = "plant-3" }}
{extra}
[[remote_write.select]]
metric = "rw_test_.*"
"#,
        source = readings_source(broker.port, "rw/+device", "rw_test_value"),
        queue = queue_dir.display(),
    )
}

/// Publish `n` readings of device `dev` in one message, one second apart,
/// the first at `start_ms` (event time, in the past).
fn publish(broker: &Broker, dev: &str, start_ms: i64, first: usize, n: usize) {
    broker.publish_readings(&format!("rw/{dev}"), start_ms, first, n, n);
}

fn metric(v: &Vitals, name: &str, parts: &[&str]) -> f64 {
    sample_value(&v.metrics(), name, parts).unwrap_or(0.0)
}

/// Percent-encode a query parameter.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Prometheus,
    Victoria,
}

/// A real receiver on a free port, storage kept across stop/start.
struct Receiver {
    kind: Kind,
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Receiver {
    fn start(kind: Kind) -> Receiver {
        let mut r = Receiver {
            kind,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        };
        r.spawn();
        r
    }

    fn url(&self) -> String {
        match self.kind {
            Kind::Prometheus => format!("http://127.0.0.1:{}/api/v1/write", self.port),
            Kind::Victoria => format!("http://127.0.0.1:{}/api/v1/write", self.port),
        }
    }

    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let child = match self.kind {
            Kind::Prometheus => {
                let conf = self.dir.path().join("prometheus.yml");
                std::fs::write(&conf, "global:\n  scrape_interval: 1m\n").unwrap();
                Command::new(require("prometheus"))
                    .arg(format!("--config.file={}", conf.display()))
                    .arg(format!("--storage.tsdb.path={}", data.display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
                    .arg("--web.enable-remote-write-receiver")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn prometheus")
            }
            Kind::Victoria => Command::new(require("victoria-metrics"))
                .arg(format!("-storageDataPath={}", data.display()))
                .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
                .arg("-search.latencyOffset=0s")
                .arg("-search.disableCache")
                // Exact counts even if a block is sent twice after a kill.
                .arg("-dedup.minScrapeInterval=1ms")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn victoria-metrics"),
        };
        self.child = Some(child);
        let addr = self.addr();
        let path = match self.kind {
            Kind::Prometheus => "/-/ready",
            Kind::Victoria => "/health",
        };
        wait_for(Duration::from_secs(60), "the receiver to be ready", || {
            get(addr, path).filter(|(s, _)| *s == 200)
        });
    }

    /// SIGTERM, so the receiver persists what it took (VictoriaMetrics
    /// keeps recent rows in memory until it flushes).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The value of an instant query returning one series, if any.
    fn query(&self, promql: &str) -> Option<f64> {
        if self.kind == Kind::Victoria {
            let _ = get(self.addr(), "/internal/force_flush");
        }
        let (status, body) = get(self.addr(), &format!("/api/v1/query?query={}", enc(promql)))?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Wait until `promql` returns `want`; panics with the last value.
    fn wait_value(&self, promql: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(promql);
            if last == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{promql}: wanted {want}, last {last:?}");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Readings `first..first+n` of `dev` at event times from `start_ms`,
/// all stored at the receiver (and nothing more).
fn expect_count(r: &Receiver, dev: &str, n: usize) {
    r.wait_value(
        &format!(r#"count_over_time(rw_test_value{{device="{dev}",site="plant-3"}}[2h])"#),
        n as f64,
        Duration::from_secs(30),
    );
}

#[test]
fn prometheus_receives_every_sample_with_event_time_across_an_outage() {
    let broker = Broker::start();
    let mut prom = Receiver::start(Kind::Prometheus);
    let queue = tempfile::tempdir().unwrap();
    let v = Vitals::start(&config(&broker, &prom.url(), queue.path(), ""));
    // Event times 20 minutes in the past: they must land there, not now.
    let start = now_ms() - 20 * 60 * 1000;
    wait_for(Duration::from_secs(20), "the MQTT subscription", || {
        publish(&broker, "d1", start, 0, 1);
        (metric(&v, "vitals_remote_storage_samples_enqueued_total", &[]) > 0.0).then_some(())
    });
    // Reading 0 may have been sent more than once (same time, same value).
    publish(&broker, "d1", start, 1, 99);
    expect_count(&prom, "d1", 100);
    // Value 42 was observed at start + 42 s.
    let at = (start + 42_000) as f64 / 1000.0;
    let (_, body) = get(
        prom.addr(),
        &format!(
            "/api/v1/query?query={}&time={at}",
            enc(r#"rw_test_value{device="d1"}"#)
        ),
    )
    .unwrap();
    assert!(body.contains(r#""42""#), "{body}");

    // The receiver goes away for a while; what comes meanwhile is queued.
    prom.stop();
    publish(&broker, "d1", start, 100, 150);
    wait_for(Duration::from_secs(20), "the gap to be queued", || {
        (metric(&v, "vitals_remote_storage_queue_samples", &[]) >= 150.0).then_some(())
    });
    wait_for(
        Duration::from_secs(20),
        "retries while the receiver is down",
        || (metric(&v, "vitals_remote_storage_samples_retried_total", &[]) > 0.0).then_some(()),
    );
    prom.spawn();
    expect_count(&prom, "d1", 250);
    wait_for(Duration::from_secs(20), "the queue to drain", || {
        (metric(&v, "vitals_remote_storage_queue_samples", &[]) == 0.0).then_some(())
    });
    // Reading 0 may have gone more than once while the subscription started.
    let sent = metric(&v, "vitals_remote_storage_samples_sent_total", &[]);
    assert!(sent >= 250.0, "{sent}");
    assert_eq!(
        metric(&v, "vitals_remote_storage_samples_failed_total", &[]),
        0.0
    );
}

#[test]
fn victoriametrics_gets_every_sample_after_outage_and_sigkill() {
    let broker = Broker::start();
    let mut vm = Receiver::start(Kind::Victoria);
    let queue = tempfile::tempdir().unwrap();
    let cfg = config(&broker, &vm.url(), queue.path(), "");
    let mut v = Vitals::start(&cfg);
    let start = now_ms() - 30 * 60 * 1000;
    wait_for(Duration::from_secs(20), "the MQTT subscription", || {
        publish(&broker, "d2", start, 0, 1);
        (metric(&v, "vitals_remote_storage_samples_enqueued_total", &[]) > 0.0).then_some(())
    });
    publish(&broker, "d2", start, 1, 199);
    expect_count(&vm, "d2", 200);

    // Receiver down, 300 more readings queued, then vitals is SIGKILLed.
    vm.stop();
    publish(&broker, "d2", start, 200, 300);
    wait_for(Duration::from_secs(20), "the gap to be queued", || {
        (metric(&v, "vitals_remote_storage_queue_samples", &[]) >= 300.0).then_some(())
    });
    v.child.kill().unwrap();
    v.child.wait().unwrap();
    drop(v);

    // vitals comes back first (the receiver still down), then the receiver.
    let v = Vitals::start(&cfg);
    assert!(metric(&v, "vitals_remote_storage_queue_samples", &[]) >= 300.0);
    vm.spawn();
    expect_count(&vm, "d2", 500);
    wait_for(Duration::from_secs(20), "the queue to drain", || {
        (metric(&v, "vitals_remote_storage_queue_samples", &[]) == 0.0).then_some(())
    });
}

/// One request the scripted receiver saw.
#[derive(Clone)]
struct Seen {
    at: Instant,
    status: u16,
    headers: axum::http::HeaderMap,
    samples: usize,
    body: Vec<u8>,
}

/// An in-test receiver answering from a script (then 204), recording
/// every request.
fn scripted(script: Vec<(u16, Option<&'static str>)>) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let s2 = seen.clone();
    common::serve_on_thread(listener, move |l| async move {
        let app = axum::Router::new().route(
            "/api/v1/write",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let seen = s2.clone();
                    let script = script.clone();
                    async move {
                        let (status, retry_after) =
                            script.lock().unwrap().pop_front().unwrap_or((204, None));
                        let samples = vitals::remote_write::encoder::decode(&body)
                            .map(|r| r.timeseries.iter().map(|t| t.samples.len()).sum())
                            .unwrap_or(0);
                        seen.lock().unwrap().push(Seen {
                            at: Instant::now(),
                            status,
                            headers,
                            samples,
                            body: body.to_vec(),
                        });
                        let mut resp = axum::response::Response::builder().status(status);
                        if let Some(ra) = retry_after {
                            resp = resp.header("Retry-After", ra);
                        }
                        resp.body(axum::body::Body::empty()).unwrap()
                    }
                },
            ),
        );
        axum::serve(l, app).await.unwrap();
    });
    (addr, seen)
}

#[test]
fn scripted_receiver_5xx_and_429_are_retried_400_is_dropped_and_counted() {
    let broker = Broker::start();
    // First block: 500, then 429 with Retry-After: 2, then accepted.
    // Second block: 400, given up.
    let (addr, seen) = scripted(vec![
        (500, None),
        (429, Some("2")),
        (204, None),
        (400, None),
    ]);
    let queue = tempfile::tempdir().unwrap();
    let secret = queue.path().join("token");
    std::fs::write(&secret, "rw-token\n").unwrap();
    let extra = format!(
        "headers = {{ X-Scope-OrgID = \"tenant-1\" }}\nbearer_token_file = \"{}\"\nmax_backoff = \"100ms\"\n",
        secret.display()
    );
    let cfg = config(
        &broker,
        &format!("http://{addr}/api/v1/write"),
        queue.path(),
        &extra,
    )
    .replace("max_backoff = \"500ms\"\n", "")
    .replace("max_concurrency = 2", "max_concurrency = 1");
    let v = Vitals::start(&cfg);
    let start = now_ms() - 60_000;
    // Published again only while nothing was queued (the source may not
    // be subscribed yet), so one block is all there is.
    let mut published: Option<Instant> = None;
    wait_for(
        Duration::from_secs(20),
        "the first block to be accepted",
        || {
            if metric(&v, "vitals_remote_storage_samples_enqueued_total", &[]) == 0.0
                && published.is_none_or(|t| t.elapsed() > Duration::from_secs(2))
            {
                publish(&broker, "d3", start, 0, 10);
                published = Some(Instant::now());
            }
            seen.lock()
                .unwrap()
                .iter()
                .any(|s| s.status == 204)
                .then_some(())
        },
    );
    let first: Vec<Seen> = seen.lock().unwrap().clone();
    assert_eq!(
        first.iter().map(|s| s.status).collect::<Vec<_>>(),
        [500, 429, 204]
    );
    // The same block each time, the retry after the 429 not before 2 s.
    assert!(first.iter().all(|s| s.body == first[0].body));
    assert!(first[2].at - first[1].at >= Duration::from_millis(1900));
    assert!(first[1].at - first[0].at < Duration::from_millis(1900));
    let h = &first[0].headers;
    assert_eq!(h["content-encoding"], "snappy");
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
    assert_eq!(h["x-scope-orgid"], "tenant-1");
    assert_eq!(h["authorization"], "Bearer rw-token");
    let n1 = first[0].samples as f64;
    assert!(n1 >= 1.0);

    wait_for(Duration::from_secs(10), "sent to be counted", || {
        (metric(&v, "vitals_remote_storage_samples_sent_total", &[]) == n1).then_some(())
    });
    assert_eq!(
        metric(&v, "vitals_remote_storage_samples_retried_total", &[]),
        2.0 * n1
    );

    // The next block gets 400: dropped, counted, not sent again.
    publish(&broker, "d3", start, 100, 5);
    wait_for(Duration::from_secs(10), "the refusal to be counted", || {
        (metric(&v, "vitals_remote_storage_samples_failed_total", &[]) > 0.0).then_some(())
    });
    let failed = metric(&v, "vitals_remote_storage_samples_failed_total", &[]);
    std::thread::sleep(Duration::from_millis(500));
    let seen_now = seen.lock().unwrap().clone();
    assert_eq!(seen_now.iter().filter(|s| s.status == 400).count(), 1);
    assert_eq!(
        failed,
        seen_now.iter().find(|s| s.status == 400).unwrap().samples as f64
    );
    // Nothing after the 400 is a resend of that block.
    let refused = seen_now
        .iter()
        .find(|s| s.status == 400)
        .unwrap()
        .body
        .clone();
    assert_eq!(seen_now.iter().filter(|s| s.body == refused).count(), 1);
    wait_for(Duration::from_secs(10), "the queue to be empty", || {
        (metric(&v, "vitals_remote_storage_queue_samples", &[]) == 0.0).then_some(())
    });
}

#[test]
fn full_disk_under_the_queue_is_counted_and_survived() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("queue");
    let _tmpfs = match Tmpfs::mount(&data, "4m") {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "SKIPPED full_disk_under_the_queue_is_counted_and_survived: cannot mount a \
                 tmpfs for the queue ({e}); this test needs root or CAP_SYS_ADMIN"
            );
            return;
        }
    };
    let broker = Broker::start();
    // Nobody listens at the URL: everything stays queued.
    let url = format!("http://127.0.0.1:{}/api/v1/write", free_port());
    let v = Vitals::start(&config(&broker, &url, &data, ""));
    let start = now_ms() - 60_000;
    wait_for(Duration::from_secs(20), "the MQTT subscription", || {
        publish(&broker, "d4", start, 0, 1);
        (metric(&v, "vitals_remote_storage_samples_enqueued_total", &[]) > 0.0).then_some(())
    });
    let filler = data.join("filler");
    assert!(fill(&filler) > 0, "the tmpfs took some filler");
    // Samples keep coming: the commits fail, are counted, and vitals stays up.
    let mut i = 10;
    wait_for(Duration::from_secs(30), "a disk_error drop", || {
        publish(&broker, "d4", start, i, 200);
        i += 200;
        (metric(
            &v,
            "vitals_remote_storage_samples_dropped_total",
            &[r#"reason="disk_error""#],
        ) > 0.0)
            .then_some(())
    });
    // The store (and /metrics) are not affected.
    publish(&broker, "d4", start, 5000, 1);
    wait_for(
        Duration::from_secs(10),
        "the newest value in the store",
        || (metric(&v, "rw_test_value", &[r#"device="d4""#]) == 5000.0).then_some(()),
    );
    // Room again: commits succeed again.
    std::fs::remove_file(&filler).unwrap();
    let enqueued = metric(&v, "vitals_remote_storage_samples_enqueued_total", &[]);
    wait_for(Duration::from_secs(20), "commits to succeed again", || {
        publish(&broker, "d4", start, i, 5);
        i += 5;
        (metric(&v, "vitals_remote_storage_samples_enqueued_total", &[]) > enqueued).then_some(())
    });
}
