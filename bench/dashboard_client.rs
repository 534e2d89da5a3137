//! Dashboard benchmark client (run by bench/dashboard.sh).
//!
//! ```text
//! dashboard-bench clients ADDR N SECONDS   # N WebSocket dashboards reading everything
//! dashboard-bench latency ADDR SECONDS     # headless Chromium; sample→drawn latency
//! ```
//!
//! `clients` opens N connections to `ws://ADDR/api/ws` (no filter: every
//! series), reads every message for SECONDS and prints messages and bytes.
//! `latency` loads the page in Debian's headless Chromium through
//! chromedriver and reads the page's own measurements: for every series
//! drawn, the time from the sample's timestamp (taken by the source when
//! the value was read) to the animation frame that drew it, on the same
//! clock (the page corrects for server/browser clock skew).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("clients") => {
            let addr = &args[2];
            let n: usize = args[3].parse().expect("N");
            let secs: u64 = args[4].parse().expect("SECONDS");
            clients(addr, n, Duration::from_secs(secs)).await
        }
        Some("latency") => {
            let addr = &args[2];
            let secs: u64 = args[3].parse().expect("SECONDS");
            latency(addr, Duration::from_secs(secs)).await
        }
        _ => {
            eprintln!("usage: dashboard-bench clients ADDR N SECONDS | latency ADDR SECONDS");
            std::process::exit(2);
        }
    }
}

async fn clients(addr: &str, n: usize, dur: Duration) {
    let url = format!("ws://{addr}/api/ws");
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let (mut msgs, mut bytes) = (0u64, 0u64);
            let deadline = tokio::time::Instant::now() + dur;
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
                msgs += 1;
                bytes += m.len() as u64;
            }
            (msgs, bytes)
        }));
    }
    let (mut msgs, mut bytes) = (0, 0);
    for t in tasks {
        let (m, b) = t.await.expect("client task");
        msgs += m;
        bytes += b;
    }
    println!(
        "clients={n} seconds={} messages={msgs} bytes={bytes} per_client_msgs_per_s={:.1} per_client_kib_per_s={:.1}",
        dur.as_secs(),
        msgs as f64 / n as f64 / dur.as_secs_f64(),
        bytes as f64 / 1024.0 / n as f64 / dur.as_secs_f64()
    );
}

async fn latency(addr: &str, dur: Duration) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt install chromium-driver)");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = tempfile::tempdir().expect("profile");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--window-size=1440,900", format!("--user-data-dir={}", profile.path().display())],
        }),
    );
    let c =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("WebDriver session");
    c.goto(&format!("http://{addr}/?view=sensors&window=60"))
        .await
        .expect("open page");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Discard what was measured while the page loaded.
    c.execute("__vitals.latencies.length = 0; return 0", vec![])
        .await
        .expect("reset");
    tokio::time::sleep(dur).await;
    let v = c
        .execute("return __vitals.latencies.slice()", vec![])
        .await
        .expect("latencies");
    let mut l: Vec<f64> = v
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    l.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "latency samples={} p50_ms={:.0} p95_ms={:.0} p99_ms={:.0} max_ms={:.0}",
        l.len(),
        q(0.5),
        q(0.95),
        q(0.99),
        l.last().copied().unwrap_or(f64::NAN)
    );
    let _ = c.close().await;
    let _ = driver.kill();
    let _ = driver.wait();
}
