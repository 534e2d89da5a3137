//! The live dashboard in a real browser: Debian's headless Chromium driven
//! over WebDriver (chromedriver) against a running vitals fed by the demo
//! source. Saves docs/dashboard.png (the README screenshot).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Vitals, free_port, require};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CONFIG: &str = r#"
[dashboard]
history = "15m"

[[sources]]
type = "demo"
name = "plant"
lines = 2
devices_per_line = 3
anomaly_every = "2s"
silent_device = false
"#;

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    let bin = require("chromedriver");
    require("chromium");
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    // chromedriver keeps connections open, so probe the port rather than
    // the harness' read-to-close HTTP helper.
    common::wait_for(Duration::from_secs(20), "chromedriver to listen", || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
    });
    Driver {
        child,
        port,
        _profile: tempfile::tempdir().expect("profile dir"),
    }
}

async fn browser(driver: &Driver) -> Client {
    let profile = driver._profile.path().display().to_string();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1440,900",
                format!("--user-data-dir={profile}"),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("WebDriver session")
}

/// Evaluate `expr` in the page until it is truthy; returns its value.
async fn until(c: &Client, what: &str, expr: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c
            .execute(&format!("return ({expr});"), vec![])
            .await
            .expect("script runs");
        let truthy = match &v {
            Value::Null | Value::Bool(false) => false,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            let errors = c.execute("return window.__vitalsErrors", vec![]).await.ok();
            panic!("timed out waiting for {what} (`{expr}` = {v}); page errors: {errors:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Painted (non-transparent) pixels of a canvas.
const PAINTED: &str = "(sel) => { const c = document.querySelector(sel); if (!c || !c.width) return 0; \
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; \
    for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_updates_shows_alerts_and_filters_in_chromium() {
    let vitals = Vitals::start(CONFIG);
    let driver = start_driver();
    let c = browser(&driver).await;
    let base = format!("http://{}/", vitals.addr);

    // Overview: host charts render, then update as deltas arrive.
    c.goto(&base).await.expect("open the dashboard");
    until(
        &c,
        "the snapshot",
        "window.__vitals && __vitals.snapshots >= 1 && __vitals.state.series.size > 0",
    )
    .await;
    until(
        &c,
        "the CPU chart to be drawn",
        &format!("({PAINTED})('#c-cpu') > 500"),
    )
    .await;
    until(
        &c,
        "the memory chart to be drawn",
        &format!("({PAINTED})('#c-mem') > 500"),
    )
    .await;
    let points = until(&c, "points", "__vitals.points()")
        .await
        .as_u64()
        .unwrap();
    until(
        &c,
        "charts to update",
        &format!("__vitals.deltas >= 3 && __vitals.points() > {points}"),
    )
    .await;
    until(
        &c,
        "the process group table",
        "document.querySelectorAll('#t-groups tbody tr .pill').length >= 1",
    )
    .await;
    until(
        &c,
        "the sources table",
        "document.querySelector('#t-sources tbody').textContent.includes('plant')",
    )
    .await;
    let links = c
        .execute(
            "return [...document.querySelectorAll('a')].map(a => a.getAttribute('href'))",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        links.as_array().unwrap().iter().any(|l| l == "metrics"),
        "{links}"
    );
    assert!(
        links.as_array().unwrap().iter().any(|l| l == "healthz"),
        "{links}"
    );

    // Alerts: the demo publishes an anomaly every 2 s; each appears in the
    // feed, and the page measures the delay from publication to display.
    until(&c, "an anomaly in the alerts feed", "[...document.querySelectorAll('#feed li')].some(li => li.textContent.includes('demo_injected_spike'))").await;
    until(
        &c,
        "three anomalies shown live",
        "__vitals.eventDelays.filter(e => e.kind === 'anomaly').length >= 3",
    )
    .await;
    let best = c
        .execute("return Math.min(...__vitals.eventDelays.filter(e => e.kind === 'anomaly').map(e => e.ms))", vec![])
        .await
        .unwrap();
    assert!(
        best.as_f64().unwrap() <= 1000.0,
        "fastest anomaly took {best} ms from publication to the feed"
    );
    assert!(
        c.execute("return document.querySelector('#badge').hidden", vec![])
            .await
            .unwrap()
            == json!(false)
    );

    // Sensors: one small chart per series, grouped by line / device.
    c.find(Locator::Css("button[data-view=sensors]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let all = until(
        &c,
        "24 sensor rows",
        "document.querySelectorAll('#cards-sensors .srow').length === 24 && 24",
    )
    .await;
    assert_eq!(all, json!(24));
    until(
        &c,
        "a small chart to be drawn",
        &format!("({PAINTED})('#cards-sensors .srow canvas') > 100"),
    )
    .await;
    until(
        &c,
        "an anomalous point marked",
        "[...__vitals.state.series.values()].some(s => s.s && s.s.some(x => x >= 0.8))",
    )
    .await;

    // A filter narrows the view and lands in the URL.
    let labels = c.find(Locator::Css("#f-labels")).await.unwrap();
    labels.send_keys("line=L1").await.unwrap();
    until(
        &c,
        "the filter to narrow the view",
        "document.querySelectorAll('#cards-sensors .srow').length === 12",
    )
    .await;
    let titles = c.execute("return [...document.querySelectorAll('#cards-sensors .card h3 span:first-child')].map(e => e.textContent)", vec![]).await.unwrap();
    assert!(
        titles
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.as_str().unwrap().starts_with("L1 /")),
        "{titles}"
    );
    let url = c.current_url().await.unwrap();
    assert!(url.as_str().contains("labels=line%3DL1"), "{url}");
    assert!(url.as_str().contains("view=sensors"), "{url}");

    // The URL reproduces the view.
    c.goto(&format!("{base}?view=sensors&labels=line%3DL2&window=60"))
        .await
        .unwrap();
    until(&c, "the shared view", "document.querySelectorAll('#cards-sensors .srow').length === 12 && document.querySelector('#cards-sensors .card h3 span').textContent.startsWith('L2')").await;

    let errors = c
        .execute("return window.__vitalsErrors", vec![])
        .await
        .unwrap();
    assert_eq!(errors, json!([]), "script errors on the page");

    // Screenshot for the README: everything, one-minute window.
    c.goto(&format!("{base}?view=sensors&window=60"))
        .await
        .unwrap();
    until(
        &c,
        "all sensor rows",
        "document.querySelectorAll('#cards-sensors .srow').length === 24",
    )
    .await;
    until(
        &c,
        "anomalies in the feed",
        "document.querySelectorAll('#feed li').length >= 2",
    )
    .await;
    // Let half a minute of history build up so the picture shows a trend.
    until(
        &c,
        "30 s of history",
        "[...__vitals.state.series.values()].every(s => s.source !== 'plant' || s.t.length >= 30)",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let png = c.screenshot().await.expect("screenshot");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, png).expect("write docs/dashboard.png");
    c.goto(&format!("{base}?window=60")).await.unwrap();
    until(
        &c,
        "the overview again",
        &format!("({PAINTED})('#c-net') > 500"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(out.with_file_name("dashboard-overview.png"), png)
        .expect("write docs/dashboard-overview.png");
    c.close().await.unwrap();
    drop(vitals);
}

/// The status of a WebSocket upgrade request to `/api/ws`, as a browser
/// sends it (the handshake is all these tests need).
fn ws_upgrade(addr: std::net::SocketAddr) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    // The status line is all that is needed; the socket may stay open.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
}

#[test]
fn dashboard_disabled_serves_a_plain_page_and_no_stream() {
    let v = Vitals::start(&CONFIG.replace("[dashboard]\n", "[dashboard]\nenabled = false\n"));
    let (status, page) = common::get(v.addr, "/").expect("an answer at /");
    assert_eq!(status, 200);
    assert!(page.contains("href=\"metrics\""), "{page}");
    assert!(
        !page.contains("<script") && !page.contains("api/ws"),
        "no dashboard code on the plain page: {page}"
    );
    assert_eq!(
        ws_upgrade(v.addr),
        404,
        "no WebSocket when the dashboard is off"
    );
    for path in ["/api/ws", "/api/series", "/assets/app.js"] {
        let (status, _) = common::get(v.addr, path).expect("an answer");
        assert_eq!(status, 404, "{path}");
    }
    // The data keeps flowing to /metrics.
    common::wait_for(Duration::from_secs(30), "demo series on /metrics", || {
        v.metrics()
            .contains("demo_temperature_celsius")
            .then_some(())
    });
}

#[test]
fn dashboard_routes_are_read_only() {
    let v = Vitals::start(CONFIG);
    // Serving: the stream upgrades, the page and the JSON answer GET.
    assert_eq!(ws_upgrade(v.addr), 101, "the dashboard stream is on");
    for path in ["/", "/api/series", "/assets/app.js"] {
        let (status, _) = common::get(v.addr, path).expect("an answer");
        assert_eq!(status, 200, "GET {path}");
    }
    // No route of the dashboard takes a state-changing method.
    for path in ["/", "/api/series", "/api/ws", "/assets/app.js"] {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let (status, _) = common::http(
                v.addr,
                method,
                path,
                &[("Content-Type", "application/json")],
                b"{}",
            )
            .expect("an answer");
            assert_eq!(status, 405, "{method} {path}");
        }
    }
}
