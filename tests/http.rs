//! The `http` source against a real HTTP server: an axum app in the test
//! serving JSON fixtures (changeable while vitals polls), plus a raw socket
//! that cuts a response short.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::certs::make_certs;
use common::{
    Vitals, WAIT, assert_samples, check_config, free_port, metric, promtool_check_metrics,
    sample_value, serve_on_thread, wait_absent, wait_for, wait_value,
};

/// Path → (status, content type, body).
type Fixtures = Arc<Mutex<HashMap<String, (u16, &'static str, String)>>>;

/// An axum server on a free port, running on its own thread until dropped.
struct Api {
    addr: SocketAddr,
    fixtures: Fixtures,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Api {
    fn start() -> Api {
        let fixtures: Fixtures = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = fixtures.clone();
        let thread = serve_on_thread(listener, move |listener| async move {
            let app = axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let state = state.clone();
                    async move { respond(&state, method, uri, headers, body).await }
                },
            );
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Api {
            addr,
            fixtures,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn set(&self, path: &str, status: u16, content_type: &'static str, body: &str) {
        self.fixtures
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, content_type, body.to_string()));
    }

    fn json(&self, path: &str, body: &str) {
        self.set(path, 200, "application/json", body);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn respond(
    fixtures: &Fixtures,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let authorized = match uri.path() {
        // POST with a JSON body, a custom header and a bearer token.
        "/secure" => {
            method == Method::POST
                && header("authorization") == "Bearer tok-1"
                && header("x-tenant") == "acme"
                && header("content-type") == "application/json"
                && body.as_ref() == br#"{"report":"daily"}"#
        }
        // user:pw
        "/basic" => header("authorization") == "Basic dXNlcjpwdw==",
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            true
        }
        _ => true,
    };
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "no").into_response();
    }
    let found = fixtures.lock().unwrap().get(uri.path()).cloned();
    match found {
        Some((status, ctype, body)) => (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", ctype)],
            body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// A server that promises 500 bytes, sends a few, and hangs up.
fn cut_short_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"servers\": [",
            );
        }
    });
    addr
}

const STATS: &str = r#"{
  "service": "shop",
  "servers": [
    {"name": "a", "load": 0.5, "state": "up", "requests": 10},
    {"name": "b", "load": "1.5", "state": "down", "requests": 20}
  ],
  "queues": {"email": {"depth": 3}, "sms": {"depth": 7}},
  "data": {"region": {"name": "south", "pools": [{"id": "p1", "free": 4}, {"id": "p2", "free": 0}]}}
}"#;

fn stats_mappings() -> &'static str {
    r#"
[[sources.mappings]]
each = "servers"
labels = { server = "name", service = "$.service" }
[[sources.mappings.metrics]]
name = "shop_server_load"
path = "load"
help = "Load of a shop server."
[[sources.mappings.metrics]]
name = "shop_server_up"
path = "state"
values = { up = 1, down = 0 }
[[sources.mappings.metrics]]
name = "shop_server_requests_total"
path = "requests"
kind = "counter"

[[sources.mappings]]
each = "queues"
each_key_label = "queue"
[[sources.mappings.metrics]]
name = "shop_queue_depth"
path = "depth"

[[sources.mappings]]
each = "data.region.pools"
labels = { pool = "id", region = "$.data.region.name" }
[[sources.mappings.metrics]]
name = "shop_pool_free"
path = "free"
"#
}

#[test]
fn json_api_maps_arrays_object_keys_child_arrays_and_strings() {
    let api = Api::start();
    api.json("/stats", STATS);
    let v = Vitals::start(&format!(
        r#"
[system]
enabled = false

[[sources]]
type = "http"
name = "shop_api"
url = "{url}"
interval = "200ms"
labels = {{ env = "test" }}
{mappings}
"#,
        url = api.url("/stats"),
        mappings = stats_mappings()
    ));
    wait_value(&v, "shop_server_load", &[r#"server="a""#], 0.5);
    let m = v.metrics();
    // Labels from element fields, from the root and from the source.
    assert_eq!(
        sample_value(
            &m,
            "shop_server_load",
            &[r#"server="b""#, r#"service="shop""#, r#"env="test""#]
        ),
        Some(1.5),
        "{m}"
    );
    // String → number, through the table and as numeric text.
    assert_samples(
        &m,
        &[
            ("shop_server_up", &[r#"server="a""#], Some(1.0)),
            ("shop_server_up", &[r#"server="b""#], Some(0.0)),
            ("shop_server_requests_total", &[r#"server="b""#], Some(20.0)),
        ],
    );
    assert!(m.contains("# TYPE shop_server_requests_total counter"));
    // Object members → one series each, keyed by the member name.
    assert_samples(
        &m,
        &[
            ("shop_queue_depth", &[r#"queue="email""#], Some(3.0)),
            ("shop_queue_depth", &[r#"queue="sms""#], Some(7.0)),
        ],
    );
    // A child array deep in the document.
    assert_samples(
        &m,
        &[
            (
                "shop_pool_free",
                &[r#"pool="p1""#, r#"region="south""#],
                Some(4.0),
            ),
            ("shop_pool_free", &[r#"pool="p2""#], Some(0.0)),
            (
                "vitals_source_up",
                &[r#"source="shop_api""#, r#"type="http""#],
                Some(1.0),
            ),
        ],
    );
    let (ok, findings) = promtool_check_metrics(&m);
    assert!(ok, "promtool: {findings}");

    // Elements and members that go away take their series with them; an
    // emptied child array is zero series, not an error.
    api.json(
        "/stats",
        r#"{"service": "shop",
            "servers": [{"name": "a", "load": 0.75, "state": "up", "requests": 11}],
            "queues": {"email": {"depth": 1}},
            "data": {"region": {"name": "south", "pools": []}}}"#,
    );
    wait_value(&v, "shop_server_load", &[r#"server="a""#], 0.75);
    wait_absent(&v, "shop_server_load", &[r#"server="b""#]);
    wait_absent(&v, "shop_queue_depth", &[r#"queue="sms""#]);
    wait_absent(&v, "shop_pool_free", &[]);
    assert_eq!(
        metric(&v, "vitals_source_up", &[r#"source="shop_api""#]),
        Some(1.0)
    );
}

#[test]
fn post_with_body_headers_bearer_and_basic_auth_from_files() {
    let api = Api::start();
    api.json("/secure", r#"{"total": 42}"#);
    api.json("/basic", r#"{"total": 7}"#);
    let dir = tempfile::tempdir().unwrap();
    let token: &Path = &dir.path().join("token");
    std::fs::write(token, "tok-1\n").unwrap();
    let password: &Path = &dir.path().join("password");
    std::fs::write(password, "pw\n").unwrap();
    let v = Vitals::start(&format!(
        r#"
[system]
enabled = false

[[sources]]
type = "http"
name = "report"
url = "{secure}"
method = "POST"
body = '{{"report":"daily"}}'
headers = {{ X-Tenant = "acme" }}
bearer_token_file = "{token}"
interval = "200ms"
[[sources.mappings]]
[[sources.mappings.metrics]]
name = "report_total_orders"
path = "total"

[[sources]]
type = "http"
name = "basic"
url = "{basic}"
basic_auth = {{ username = "user", password_file = "{password}" }}
interval = "200ms"
[[sources.mappings]]
[[sources.mappings.metrics]]
name = "basic_total_orders"
path = "total"

[[sources]]
type = "http"
name = "wrong_token"
url = "{secure}"
method = "POST"
body = '{{"report":"daily"}}'
headers = {{ X-Tenant = "acme" }}
bearer_token = "tok-2"
interval = "200ms"
[[sources.mappings]]
[[sources.mappings.metrics]]
name = "wrong_total_orders"
path = "total"
"#,
        secure = api.url("/secure"),
        basic = api.url("/basic"),
        token = token.display(),
        password = password.display(),
    ));
    wait_value(&v, "report_total_orders", &[], 42.0);
    wait_value(&v, "basic_total_orders", &[], 7.0);
    wait_for(WAIT, "a 401 counted as http_status", || {
        let m = v.metrics();
        (sample_value(
            &m,
            "vitals_source_errors_total",
            &[r#"source="wrong_token""#, r#"reason="http_status""#],
        )? >= 1.0)
            .then_some(())
    });
    let m = v.metrics();
    assert_eq!(
        sample_value(&m, "vitals_source_up", &[r#"source="wrong_token""#]),
        Some(0.0)
    );
    assert!(sample_value(&m, "wrong_total_orders", &[]).is_none());
    assert!(!m.contains("tok-"), "a token leaked into /metrics");
}

#[test]
fn bad_responses_are_counted_by_reason_and_never_stop_other_sources() {
    let api = Api::start();
    api.json("/stats", STATS);
    api.set("/notjson", 200, "text/plain", "hello, I am not JSON");
    api.json("/truncated", r#"{"servers": [{"name": "a", "lo"#);
    api.json(
        "/wrongtype",
        r#"{"servers": [{"name": "a", "load": {"one": 1}}]}"#,
    );
    api.json(
        "/unmapped",
        r#"{"servers": [{"name": "a", "state": "maintenance"}]}"#,
    );
    api.json("/missing", r#"{"hosts": []}"#);
    api.set("/error", 500, "application/json", r#"{"error": "boom"}"#);
    api.json("/slow", STATS);
    let cut = cut_short_server();
    let nobody = free_port();
    let server_mapping = r#"
[[sources.mappings]]
each = "servers"
labels = { server = "name" }
[[sources.mappings.metrics]]
name = "NAME_load"
path = "load"
[[sources.mappings.metrics]]
name = "NAME_up"
path = "state"
values = { up = 1, down = 0 }
"#;
    let mut config = String::from("[system]\nenabled = false\n");
    let cases = [
        ("good", api.url("/stats"), "", ""),
        (
            "unreachable",
            format!("http://127.0.0.1:{nobody}/stats"),
            "",
            "connect",
        ),
        ("notjson", api.url("/notjson"), "", "invalid_json"),
        ("truncated", api.url("/truncated"), "", "invalid_json"),
        ("cut", format!("http://{cut}/stats"), "", "body"),
        ("wrongtype", api.url("/wrongtype"), "", "wrong_type"),
        ("unmapped", api.url("/unmapped"), "", "unmapped_string"),
        ("missing", api.url("/missing"), "", "missing_field"),
        ("status", api.url("/error"), "", "http_status"),
        ("slow", api.url("/slow"), "timeout = \"300ms\"", "timeout"),
        (
            "large",
            api.url("/stats"),
            "max_response_bytes = 64",
            "too_large",
        ),
    ];
    for (name, url, extra, _) in &cases {
        config.push_str(&format!(
            "\n[[sources]]\ntype = \"http\"\nname = \"{name}\"\nurl = \"{url}\"\ninterval = \"200ms\"\n{extra}\n{}",
            server_mapping.replace("NAME", name)
        ));
    }
    let v = Vitals::start(&config);
    wait_value(&v, "good_load", &[r#"server="a""#], 0.5);
    for (name, _, _, reason) in cases.iter().skip(1) {
        wait_for(WAIT, &format!("{name} errors by {reason}"), || {
            let m = v.metrics();
            let n = sample_value(
                &m,
                "vitals_source_errors_total",
                &[
                    &format!("source=\"{name}\""),
                    &format!("reason=\"{reason}\""),
                ],
            )?;
            (n >= 1.0).then_some(())
        });
        assert_eq!(
            metric(&v, "vitals_source_up", &[&format!("source=\"{name}\"")]),
            Some(0.0),
            "{name} should be down"
        );
        assert!(metric(&v, &format!("{name}_load"), &[]).is_none());
    }
    // The good source kept polling all along, and vitals is still serving.
    api.json("/stats", &STATS.replace("0.5", "0.25"));
    wait_value(&v, "good_load", &[r#"server="a""#], 0.25);
    assert_eq!(
        metric(&v, "vitals_source_up", &[r#"source="good""#]),
        Some(1.0)
    );
    // Recovery: the broken API is fixed and its source comes back up.
    api.json("/wrongtype", STATS);
    wait_value(&v, "wrongtype_load", &[r#"server="b""#], 1.5);
    wait_value(&v, "vitals_source_up", &[r#"source="wrongtype""#], 1.0);
}

fn check(config: &str) -> (bool, String) {
    let checked = check_config("c.toml", config);
    (checked.ok(), checked.output())
}

#[test]
fn check_names_the_key_of_a_bad_http_source() {
    let base = r#"
[[sources]]
type = "http"
name = "api"
url = "https://api.example.test/stats"
bearer_token = "very-secret"
[[sources.mappings]]
each = "items"
[[sources.mappings.metrics]]
name = "api_items"
path = "n"
"#;
    assert!(check(base).0, "{}", check(base).1);
    for (from, to, key) in [
        (
            "https://api.example.test/stats",
            "gopher://x/y",
            "sources[0].url",
        ),
        (
            "path = \"n\"",
            "path = \"n\"\nkind = \"counter\"",
            "sources[0].mappings[0]",
        ),
        ("path = \"n\"", "path = \"n[\"", "sources[0].mappings[0]"),
        (
            "each = \"items\"",
            "each = \"items\"\nbogus = 1",
            "sources[0]",
        ),
        (
            "bearer_token = \"very-secret\"",
            "bearer_token = \"very-secret\"\nbearer_token_env = \"T\"",
            "sources[0].bearer_token",
        ),
    ] {
        let (ok, out) = check(&base.replace(from, to));
        assert!(!ok, "{to}: {out}");
        assert!(out.contains(key), "{to}: expected key {key} in {out}");
        assert!(!out.contains("very-secret"), "{out}");
    }
}

/// An HTTPS server answering every request with `body` (JSON), on its own
/// thread for the rest of the test process.
fn tls_server(dir: &Path, body: &'static str) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("leaf.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    serve_on_thread(listener, move |listener| async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // Handshake failures (an untrusting client) just end here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[test]
fn https_with_a_ca_file_or_insecure_skip_verify_and_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let addr = tls_server(dir.path(), r#"{"ok": 1}"#);
    let source = |name: &str, tls: &str| {
        format!(
            r#"
[[sources]]
type = "http"
name = "{name}"
url = "https://{addr}/status"
interval = "200ms"
{tls}
[[sources.mappings]]
[[sources.mappings.metrics]]
name = "{name}_ok"
path = "ok"
"#
        )
    };
    let ca = dir.path().join("ca.pem");
    let config = [
        "[system]\nenabled = false\n".to_string(),
        source(
            "trusted",
            &format!("tls = {{ ca_file = \"{}\" }}", ca.display()),
        ),
        source("insecure", "tls = { insecure_skip_verify = true }"),
        source("untrusted", ""),
    ]
    .concat();
    let v = Vitals::start(&config);
    wait_value(&v, "trusted_ok", &[], 1.0);
    wait_value(&v, "insecure_ok", &[], 1.0);
    wait_for(WAIT, "the untrusted certificate to be refused", || {
        let m = v.metrics();
        (sample_value(
            &m,
            "vitals_source_errors_total",
            &[r#"source="untrusted""#, r#"reason="tls""#],
        )? >= 1.0)
            .then_some(())
    });
    assert_eq!(
        metric(&v, "vitals_source_up", &[r#"source="untrusted""#]),
        Some(0.0)
    );
    assert!(metric(&v, "untrusted_ok", &[]).is_none());
}

#[test]
fn reload_removes_an_http_source_and_its_series() {
    let api = Api::start();
    api.json("/stats", STATS);
    let with_source = format!(
        "[system]\nenabled = false\n\n[[sources]]\ntype = \"http\"\nname = \"shop_api\"\nurl = \"{}\"\ninterval = \"200ms\"\n{}",
        api.url("/stats"),
        stats_mappings()
    );
    let v = Vitals::start(&with_source);
    wait_value(&v, "shop_queue_depth", &[r#"queue="sms""#], 7.0);
    std::fs::write(
        v.config_dir().join("vitals.toml"),
        "[system]\nenabled = false\n",
    )
    .unwrap();
    let (status, body) = common::http(v.addr, "POST", "/-/reload", &[], b"").unwrap();
    assert_eq!(status, 200, "{body}");
    wait_absent(&v, "shop_queue_depth", &[]);
    wait_absent(&v, "shop_server_load", &[]);
}
