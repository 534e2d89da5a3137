//! Slow, silent and idle clients against the real `vitals run` and
//! `vitals relay` over real sockets. The server's open-files limit is
//! lowered (as on a host with `ulimit -n 1024`, scaled down) so that holding
//! every connection would run it out of descriptors. Hundreds of silent,
//! slowloris (head trickled), half-body and idle keep-alive clients must not
//! stop a normal scrape and a normal webhook POST from being answered, and
//! each bad connection must be closed once its timeout has passed, counted
//! by reason.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Vitals, free_port, get, sample_value, wait_for};

/// The two tests together would need more descriptors than a CI shell's
/// default `ulimit -n` gives one process: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Open-files limit given to the server under test, and its connection cap
/// (what is left is for its own files, listener and the good clients).
const SERVER_NOFILE: u64 = 384;
const CAP: usize = 250;
/// Bad clients of each kind in the timeout phase (4 kinds, under the cap).
const EACH: usize = 50;
/// Silent clients in the flood phase: more than the server's descriptors.
const FLOOD: usize = 600;
/// The bound of the functional check on the good requests.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

fn web_limits() -> String {
    format!(
        "max_connections = {CAP}\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"2s\"\nidle_timeout = \"2s\"\n"
    )
}

/// Lower the open-files limit of the running server.
fn limit_files(pid: u32) {
    rlimit::prlimit(
        pid as i32,
        rlimit::Resource::NOFILE,
        Some((SERVER_NOFILE, SERVER_NOFILE)),
        None,
    )
    .expect("prlimit on the server under test");
}

/// Make sure this process may hold what the test opens.
fn raise_own_files() {
    let got = rlimit::increase_nofile_limit(4096).expect("raise RLIMIT_NOFILE");
    assert!(
        got as usize >= FLOOD + 4 * EACH + 100,
        "the test needs RLIMIT_NOFILE of at least {}, the hard limit allows {got}",
        FLOOD + 4 * EACH + 100
    );
}

/// One request on a fresh connection that must be answered within
/// `ANSWER_WITHIN`; returns the status.
fn answered(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> u16 {
    let start = Instant::now();
    let result = (|| -> std::io::Result<u16> {
        let mut s = TcpStream::connect_timeout(&addr, ANSWER_WITHIN)?;
        s.set_read_timeout(Some(ANSWER_WITHIN))?;
        s.write_all(&common::request_bytes(addr, method, path, headers, body))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        Ok(text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    })();
    let took = start.elapsed();
    match result {
        Ok(status) if took <= ANSWER_WITHIN => status,
        Ok(status) => panic!("{method} {path} answered {status} only after {took:?}"),
        Err(e) => panic!("{method} {path} not answered within {ANSWER_WITHIN:?} ({took:?}): {e}"),
    }
}

/// The bad clients of the timeout phase, held open by the test.
struct BadClients {
    silent: Vec<TcpStream>,
    slowloris: Vec<TcpStream>,
    half_body: Vec<TcpStream>,
    idle: Vec<TcpStream>,
    /// Stops the thread that trickles the slowloris heads.
    stop: Arc<AtomicBool>,
    trickler: Option<std::thread::JoinHandle<()>>,
}

impl BadClients {
    fn open(addr: SocketAddr, post_path: &str) -> BadClients {
        let connect = || TcpStream::connect(addr).expect("connect a bad client");
        let silent: Vec<_> = (0..EACH).map(|_| connect()).collect();
        let slowloris: Vec<_> = (0..EACH)
            .map(|_| {
                let mut s = connect();
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
                s
            })
            .collect();
        let half_body: Vec<_> = (0..EACH)
            .map(|_| {
                let mut s = connect();
                let head = format!(
                    "POST {post_path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"id\": "
                );
                s.write_all(head.as_bytes()).unwrap();
                s
            })
            .collect();
        let idle: Vec<_> = (0..EACH)
            .map(|_| {
                let mut s = connect();
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                // Read the whole (small) answer; the connection stays open.
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !complete_response(&got) {
                    let n = s.read(&mut buf).expect("the /healthz answer");
                    assert!(n > 0, "connection closed before the /healthz answer");
                    got.extend_from_slice(&buf[..n]);
                }
                assert!(
                    got.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&got)
                );
                s
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut trickled: Vec<TcpStream> =
            slowloris.iter().map(|s| s.try_clone().unwrap()).collect();
        let stop2 = stop.clone();
        let trickler = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) && !trickled.is_empty() {
                // One header byte per client every 200 ms; a closed one is dropped.
                trickled.retain_mut(|s| s.write_all(b"X").is_ok());
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        BadClients {
            silent,
            slowloris,
            half_body,
            idle,
            stop,
            trickler: Some(trickler),
        }
    }

    /// Wait until the server has closed every bad connection (within
    /// `within`); half-body ones must have been answered 408 first.
    fn expect_all_closed(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let kinds = [
            ("silent", &mut self.silent),
            ("slowloris", &mut self.slowloris),
            ("half-body", &mut self.half_body),
            ("idle keep-alive", &mut self.idle),
        ];
        for (kind, streams) in kinds {
            for (i, s) in streams.iter_mut().enumerate() {
                let got = read_until_closed(s, deadline)
                    .unwrap_or_else(|| panic!("{kind} client {i} still open after {within:?}"));
                if kind == "half-body" {
                    assert!(
                        got.starts_with(b"HTTP/1.1 408"),
                        "half-body client {i} got {:?}",
                        String::from_utf8_lossy(&got)
                    );
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.trickler.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for BadClients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether `got` holds a whole response with a Content-Length body.
fn complete_response(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    body.len() >= len
}

/// Read until the peer closes (EOF or reset); `None` when `deadline` passes
/// first. Returns what was read.
fn read_until_closed(s: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // Reset by the server: closed as well.
            Err(_) => return Some(got),
        }
    }
}

fn counter(metrics: &str, name: &str, reason: &str) -> f64 {
    sample_value(metrics, name, &[&format!("reason=\"{reason}\"")]).unwrap_or(0.0)
}

/// The whole scenario against one server: `good` sends the normal scrape
/// and POST (asserting each is answered in time), `metrics` reads the
/// server's own metrics.
fn scenario(addr: SocketAddr, post_path: &str, good: &dyn Fn(), metrics: &dyn Fn() -> String) {
    // Phase 1: 4 × EACH bad clients, under the cap: good requests are
    // answered while they are held, and each is closed after its timeout.
    let mut bad = BadClients::open(addr, post_path);
    for _ in 0..3 {
        good();
    }
    bad.expect_all_closed(Duration::from_secs(15));
    let m = metrics();
    let closed = "vitals_http_connections_closed_total";
    // Silent and slowloris clients never sent a whole head.
    assert!(
        counter(&m, closed, "header_timeout") >= (2 * EACH) as f64,
        "{m}"
    );
    assert!(counter(&m, closed, "body_timeout") >= EACH as f64, "{m}");
    assert!(counter(&m, closed, "idle_timeout") >= EACH as f64, "{m}");

    // Phase 2: more silent connections than the server has descriptors.
    // Newcomers take the places of the oldest unused ones, so the good
    // requests still get in; the others are closed, never left waiting.
    let before = counter(&m, closed, "evicted") + counter(&m, closed, "header_timeout");
    let flood: Vec<TcpStream> = (0..FLOOD)
        .map(|_| TcpStream::connect(addr).expect("connect a flood client"))
        .collect();
    for _ in 0..3 {
        good();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for (i, mut s) in flood.into_iter().enumerate() {
        read_until_closed(&mut s, deadline)
            .unwrap_or_else(|| panic!("flood client {i} still open after 15s"));
    }
    let m = metrics();
    // Which of the two closed each one depends on how fast the flood came.
    assert!(
        counter(&m, closed, "evicted") > 0.0,
        "the cap was never reached: {m}"
    );
    let after = counter(&m, closed, "evicted") + counter(&m, closed, "header_timeout");
    assert!(after - before >= FLOOD as f64, "{before} → {after}: {m}");
    let open = sample_value(&m, "vitals_http_connections_open", &[]).unwrap_or(-1.0);
    assert!(
        (0.0..=2.0).contains(&open),
        "connections still open: {open}\n{m}"
    );
}

#[test]
fn exporter_serves_scrapes_and_posts_through_slow_and_silent_clients() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    raise_own_files();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "tok\n").unwrap();
    let config = format!(
        r#"
[web]
{limits}
[system]
enabled = false

[[sources]]
type = "webhook"
name = "orders"

[sources.auth]
scheme = "bearer"
secret_file = "{secret}"

[[sources.metrics]]
name = "orders_total"
type = "counter"
"#,
        limits = web_limits(),
        secret = secret.display()
    );
    let v = Vitals::start(&config);
    limit_files(v.child.id());
    let addr = v.addr;
    let good = || {
        assert_eq!(answered(addr, "GET", "/metrics", &[], b""), 200);
        let status = answered(
            addr,
            "POST",
            "/ingest/orders",
            &[
                ("Authorization", "Bearer tok"),
                ("Content-Type", "application/json"),
            ],
            br#"{"n": 1}"#,
        );
        assert!(
            (200..300).contains(&status),
            "POST /ingest/orders: {status}"
        );
    };
    scenario(addr, "/ingest/orders", &good, &|| v.metrics());
    let m = v.metrics();
    assert!(
        sample_value(&m, "orders_total", &[]).unwrap_or(0.0) >= 6.0,
        "{m}"
    );
}

#[test]
fn relay_serves_webhooks_through_slow_and_silent_clients() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    raise_own_files();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[relay]
data_dir = "{data}"
[relay.web]
{limits}
[[relay.receivers]]
name = "ops"
auth = {{ type = "bearer", token = "tok" }}
channels = ["mail"]

[[relay.channels]]
name = "mail"
type = "email"
to = ["oncall@example.com"]
from = "relay@example.com"
smtp = {{ host = "127.0.0.1", port = {smtp}, tls = "none", timeout = "1s" }}
"#,
        data = dir.path().join("data").display(),
        limits = web_limits(),
        smtp = free_port(),
    );
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Command::new(common::vitals_bin())
        .args(["relay", "--config"])
        .arg(&path)
        .arg("--web.listen-address")
        .arg(addr.to_string())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vitals relay");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    wait_for(
        Duration::from_secs(20),
        "the relay to answer /healthz",
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("vitals relay exited early with {status}");
            }
            get(addr, "/healthz").filter(|(s, _)| *s == 200).map(|_| ())
        },
    );
    limit_files(child.id());
    let _child = Kill(child);
    let body = serde_json::json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"Slow\"}",
        "status": "firing",
        "receiver": "ops",
        "groupLabels": {"alertname": "Slow"},
        "commonLabels": {"alertname": "Slow"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "Slow"},
            "annotations": {},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": "0123456789abcdef"
        }],
    })
    .to_string();
    let good = || {
        assert_eq!(answered(addr, "GET", "/metrics", &[], b""), 200);
        let status = answered(
            addr,
            "POST",
            "/webhook/ops",
            &[
                ("Authorization", "Bearer tok"),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        );
        assert_eq!(status, 200, "POST /webhook/ops");
    };
    let metrics = || {
        let (status, body) = get(addr, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        body
    };
    scenario(addr, "/webhook/ops", &good, &metrics);
}
