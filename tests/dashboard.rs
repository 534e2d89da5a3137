//! The live dashboard in a real browser: Debian's headless Chromium driven
//! over WebDriver (chromedriver) against a running vitals fed by the demo
//! source. With UPDATE_SCREENSHOTS=1 it saves docs/dashboard.png and
//! docs/dashboard-overview.png (the README screenshots).

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

/// A browser on the dashboard of `vitals`, once `snapshot` (a script
/// expression telling that the first snapshot arrived) holds; the driver
/// (keep it alive), the client and the dashboard's URL.
async fn open_dashboard(vitals: &Vitals, snapshot: &str) -> (Driver, Client, String) {
    let driver = start_driver();
    let c = browser(&driver).await;
    let base = format!("http://{}/", vitals.addr);
    c.goto(&base).await.expect("open the dashboard");
    until(&c, "the snapshot", snapshot).await;
    (driver, c, base)
}

/// Painted (non-transparent) pixels of a canvas.
const PAINTED: &str = "(sel) => { const c = document.querySelector(sel); if (!c || !c.width) return 0; \
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; \
    for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_updates_shows_alerts_and_filters_in_chromium() {
    let vitals = Vitals::start(CONFIG);
    // Overview: host charts render, then update as deltas arrive.
    let (_driver, c, base) = open_dashboard(
        &vitals,
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
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    // The README's screenshots are rewritten only on request
    // (UPDATE_SCREENSHOTS=1), so a test run leaves the checkout as it was.
    let shots = std::env::var_os("UPDATE_SCREENSHOTS").is_some();
    let tmp = tempfile::tempdir().unwrap();
    let dir = if shots {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
    } else {
        tmp.path().to_path_buf()
    };
    let out = dir.join("dashboard.png");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&out, png).expect("write dashboard.png");
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
        .expect("write dashboard-overview.png");
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

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Stop `v` (SIGTERM) and start it again on the same address, config
/// and history directory (the harness' `--storage.path`).
fn restart_vitals(v: &mut Vitals) {
    v.terminate(Duration::from_secs(20)).expect("vitals stops");
    v.child = common::vitals_run(&v.dir.path().join("vitals.toml"), v.addr)
        .arg("--storage.path")
        .arg(v.dir.path().join("data"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vitals again");
    common::wait_started(&mut v.child, v.addr, common::Ready::Readyz, None);
}

/// Run `script` (a function body that may `await`) in the page; its value.
async fn run(c: &Client, script: &str) -> Value {
    c.execute(&format!("return (async () => {{ {script} }})();"), vec![])
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// History in the dashboard: a window beyond the in-memory one is read
/// from the query API, so after a restart the 1 h view shows the points
/// from before it; a custom range (set by dragging a chart) lands in the
/// URL and survives a reload; stored events are drawn as markers; the CSV
/// export holds exactly the API's points of the series and range in view.
/// With history off the page keeps working from the in-memory window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_history_restart_zoom_markers_and_csv_in_chromium() {
    // Before the restart: about 12 s of host and demo series (and demo
    // anomalies every 2 s) go into the store, flushed every second.
    let mut vitals = Vitals::start(&format!("{CONFIG}\n[history]\nflush_interval = \"1s\"\n"));
    let first_start = now_s().ceil() + 1.0;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let first_end = now_s().floor() - 1.0;
    tokio::time::sleep(Duration::from_millis(1500)).await; // one flush
    let restart = now_s().floor();
    restart_vitals(&mut vitals);
    // The 1 h window (chosen in the form) shows points from before the
    // restart and keeps streaming.
    let (_driver, c, base) =
        open_dashboard(&vitals, "window.__vitals && __vitals.snapshots >= 1").await;
    run(&c, "const s = document.querySelector('#f-window'); s.value = '3600'; s.dispatchEvent(new Event('change')); return 1;").await;
    let cpu = "([...__vitals.state.series.values()].find(s => s.metric === 'vitals_cpu_usage_ratio') || { t: [], v: [] })";
    let before = until(
        &c,
        "the 1 h view to show CPU points from before the restart",
        &format!(
            "__vitals.hist.version > 0 && __vitals.pts({cpu}).t.filter(t => t < {restart}).length"
        ),
    )
    .await;
    assert!(
        before.as_u64().unwrap() >= 1,
        "{before} CPU points from before the restart in the 1 h view (needs the on-disk history store)"
    );
    let q = run(&c, "return __vitals.hist.lastQuery").await;
    assert!(
        q["end"].as_f64().unwrap() - q["start"].as_f64().unwrap() >= 3600.0,
        "{q}"
    );
    let last = run(&c, &format!("return __vitals.pts({cpu}).t.at(-1)")).await;
    until(
        &c,
        "the 1 h view to keep streaming",
        &format!("__vitals.pts({cpu}).t.at(-1) > {last}"),
    )
    .await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .contains("window=3600")
    );
    c.refresh().await.unwrap();
    until(
        &c,
        "the 1 h window after a reload",
        "document.querySelector('#f-window').value === '3600' && __vitals.hist.fetches >= 1",
    )
    .await;

    // 7 d: one step per pixel of the chart, so the server reads a rollup.
    run(&c, "const s = document.querySelector('#f-window'); s.value = '604800'; s.dispatchEvent(new Event('change')); return 1;").await;
    let q = until(
        &c,
        "the 7 d query",
        "(q => q && q.end - q.start >= 604800 && __vitals.hist.version > 0 && [q.start, q.end, q.step, document.querySelector('#c-cpu').clientWidth])(__vitals.hist.lastQuery)",
    )
    .await;
    let q: Vec<f64> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let points = (q[1] - q[0]) / q[2];
    assert!(
        q[2] >= 600.0 && points <= q[3] + 1.0 && points >= q[3] / 3.0,
        "7 d over a {} px chart at step {} s ({points} points)",
        q[3],
        q[2]
    );

    // Dragging across the middle half of the CPU chart zooms to it, kept
    // in the URL.
    until(
        &c,
        "the CPU chart",
        "document.querySelector('#c-cpu').__geom",
    )
    .await;
    let zoomed = run(
        &c,
        "const cv = document.querySelector('#c-cpu'), g = cv.__geom, r = cv.getBoundingClientRect();
         const x0 = r.left + g.padL + g.plotW / 4, x1 = r.left + g.padL + 3 * g.plotW / 4, y = r.top + 30;
         cv.dispatchEvent(new PointerEvent('pointerdown', { bubbles: true, clientX: x0, clientY: y, button: 0 }));
         window.dispatchEvent(new PointerEvent('pointermove', { clientX: x1, clientY: y }));
         window.dispatchEvent(new PointerEvent('pointerup', { clientX: x1, clientY: y }));
         const span = g.t1 - g.t0;
         return [__vitals.state.from, __vitals.state.to, g.t0 + span / 4, g.t0 + 3 * span / 4];",
    )
    .await;
    let z: Vec<f64> = zoomed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    assert!(
        (z[0] - z[2]).abs() <= 1.0 && (z[1] - z[3]).abs() <= 1.0,
        "zoomed to [from, to, dragged from, dragged to] = {zoomed}"
    );
    let url = c.current_url().await.unwrap();
    assert!(
        url.as_str().contains("from=") && url.as_str().contains("to="),
        "{url}"
    );
    c.refresh().await.unwrap();
    let kept = until(
        &c,
        "the zoomed range after a reload",
        "document.querySelector('#f-window').value === 'custom' && [__vitals.state.from, __vitals.state.to]",
    )
    .await;
    let kept: Vec<f64> = kept
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(kept, vec![z[0], z[1]], "the custom range survives a reload");

    // The sensors over the first run only (before the restart): every
    // point comes from the store.
    let (a, b) = (first_start, first_end);
    let iso = |t: f64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs_f64(t))
            .to_string()
    };
    c.goto(&format!(
        "{base}?view=sensors&from={}&to={}",
        iso(a),
        iso(b)
    ))
    .await
    .unwrap();
    until(
        &c,
        "sensor history from the store",
        "document.querySelectorAll('#cards-sensors .srow').length === 24 && __vitals.hist.version > 0 && __vitals.hist.byKey.size >= 24",
    )
    .await;

    // Markers: each stored demo anomaly in the range whose series chart is
    // on screen is drawn at its time, and the canvas is painted there.
    let checked = until(
        &c,
        "markers for the stored events on the sensor charts",
        &format!(
            r#"(async () => {{
               const r = await fetch('api/v1/vitals/events?start={a}&end={b}&limit=1000');
               const events = (await r.json()).data.filter(e => e.reason === 'demo_injected_spike');
               const key = (metric, l) => metric + JSON.stringify(Object.keys(l).sort().map(k => [k, l[k]]));
               const parse = (text) => Object.fromEntries([...text.matchAll(/(\w+)="([^"]*)"/g)].map(m => [m[1], m[2]]));
               const charts = new Map();
               for (const cv of document.querySelectorAll('#cards-sensors .srow canvas')) {{
                 const s = __vitals.state.series.get(+cv.dataset.id);
                 if (s && cv.__geom) charts.set(key(s.metric, s.labels), cv);
               }}
               const out = [];
               for (const e of events) {{
                 const cv = charts.get(key(e.metric, parse(e.labels)));
                 if (!cv) continue;
                 const m = (cv.__marks || []).find(m => Math.abs(m.t - e.timestamp_ms / 1000) < 1e-6);
                 const dpr = window.devicePixelRatio || 1;
                 const px = m ? [...cv.getContext('2d').getImageData(Math.round(m.x * dpr), Math.round(m.y * dpr), 1, 1).data] : null;
                 out.push({{ event: e, px }});
               }}
               return out.length && out;
             }})()"#
        ),
    )
    .await;
    for m in checked.as_array().unwrap() {
        let p: Vec<u64> = m["px"]
            .as_array()
            .unwrap_or_else(|| panic!("no marker drawn for {}", m["event"]))
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        // The critical colour (red), not a line's.
        assert!(
            p[3] > 0 && p[0] > 150 && p[0] > p[1] + 40 && p[0] > p[2] + 40,
            "marker pixel {p:?} for {}",
            m["event"]
        );
    }

    // CSV export: intercept the download, read the blob.
    let got = run(
        &c,
        "let blob = null, name = null; const orig = URL.createObjectURL;
         URL.createObjectURL = (b) => { blob = b; return orig(b); };
         HTMLAnchorElement.prototype.click = function () { name = this.download; };
         document.querySelector('#export').click();
         return [name, await blob.text(), __vitals.hist.lastQuery];",
    )
    .await;
    let name = got[0].as_str().unwrap();
    let text = got[1].as_str().unwrap();
    let q = &got[2];
    let stamp = |s: String| s.replace(['-', ':'], "");
    assert_eq!(
        name,
        format!("vitals-sensors-{}-{}.csv", stamp(iso(a)), stamp(iso(b)))
    );
    assert!(
        text.contains(",\"{device=\"\"press-01\"\",line=\"\"L1\"\"}\","),
        "labels quoted: {}",
        &text[..text.len().min(600)]
    );
    let api = run(
        &c,
        &format!(
            "const r = await fetch('api/v1/query_range?query=' + encodeURIComponent({}) + '&start={}&end={}&step={}'); return (await r.json()).data.result;",
            q["query"], q["start"], q["end"], q["step"]
        ),
    )
    .await;
    // The API's points in the range, as (metric, labels, t, value).
    let mut want = std::collections::BTreeSet::new();
    for s in api.as_array().unwrap() {
        let m = s["metric"].as_object().unwrap();
        let mut labels: Vec<_> = m.iter().filter(|(k, _)| *k != "__name__").collect();
        labels.sort_by_key(|(k, _)| *k);
        let labels = format!(
            "{{{}}}",
            labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap()))
                .collect::<Vec<_>>()
                .join(",")
        );
        for p in s["values"].as_array().unwrap() {
            let t = p[0].as_f64().unwrap();
            if t >= a && t <= b {
                let v: f64 = p[1].as_str().unwrap().parse().unwrap();
                want.insert((
                    m["__name__"].as_str().unwrap().to_string(),
                    labels.clone(),
                    t.to_string(),
                    v.to_string(),
                ));
            }
        }
    }
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        rows.headers().unwrap(),
        vec![
            "time",
            "unix_seconds",
            "metric",
            "source",
            "labels",
            "value"
        ]
    );
    let mut have = std::collections::BTreeSet::new();
    for r in rows.records() {
        let r = r.expect("a CSV record");
        let v: f64 = r[5].parse().expect("a value");
        have.insert((
            r[2].to_string(),
            r[4].to_string(),
            r[1].parse::<f64>().unwrap().to_string(),
            v.to_string(),
        ));
    }
    assert!(
        want.len() >= 24 * 8,
        "{} API points in the range",
        want.len()
    );
    assert_eq!(have, want, "the CSV holds the API's points of the view");
    let errors = c
        .execute("return window.__vitalsErrors", vec![])
        .await
        .unwrap();
    assert_eq!(errors, json!([]), "script errors on the page");
    drop(vitals);

    // History off: the API answers the in-memory window; the 1 h view
    // draws it without errors.
    let off = Vitals::start(&format!("{CONFIG}\n[history]\nenabled = false\n"));
    c.goto(&format!("http://{}/?window=3600", off.addr))
        .await
        .unwrap();
    until(
        &c,
        "the in-memory window in the 1 h view",
        &format!(
            "__vitals.hist.version > 0 && __vitals.hist.error === '' && ({PAINTED})('#c-cpu') > 500"
        ),
    )
    .await;
    let errors = c
        .execute("return window.__vitalsErrors", vec![])
        .await
        .unwrap();
    assert_eq!(errors, json!([]), "script errors on the page");
    c.close().await.unwrap();
}
