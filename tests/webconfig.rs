//! The web configuration file against real peers: a real Prometheus
//! scraping vitals over TLS with basic auth, promtool validating the same
//! file, curl and openssl as clients.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Vitals, free_port, get, require, wait_for};

const PASSWORD: &str = "s3cret-pass";

/// Make a CA, a server certificate for 127.0.0.1 signed by it (with the
/// given serial) and a client certificate, with the openssl CLI.
fn make_certs(dir: &Path, serial: &str) {
    let openssl = require("openssl");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !dir.join("ca.key").exists() {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=vitals test CA",
        ]);
    }
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    // X.509 v3 with extensions: webpki refuses v1 client certificates.
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key.new",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        serial,
        "-out",
        "server.crt.new",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=scraper",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "77",
        "-out",
        "client.crt",
        "-days",
        "2",
        "-extfile",
        "client.ext",
    ]);
    // Replace key and certificate together, as a rotation would.
    std::fs::rename(dir.join("server.key.new"), dir.join("server.key")).unwrap();
    std::fs::rename(dir.join("server.crt.new"), dir.join("server.crt")).unwrap();
}

fn web_config(dir: &Path, client_auth: &str) -> std::path::PathBuf {
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let ca = if client_auth == "NoClientCert" {
        String::new()
    } else {
        "  client_ca_file: ca.crt\n".to_string()
    };
    let text = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: {client_auth}\n{ca}  min_version: TLS12\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\nbasic_auth_users:\n  prometheus: {hash}\n"
    );
    let path = dir.join("web.yml");
    std::fs::write(&path, text).unwrap();
    path
}

/// /readyz is behind TLS here, so wait for the port instead.
fn start(web: &Path) -> Vitals {
    Vitals::start_tls("", web)
}

/// curl over TLS; returns (HTTP status, headers+body).
fn curl(args: &[&str]) -> (u32, String) {
    let out = Command::new(require("curl"))
        .args(["-s", "-S", "-i", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    // curl's own errors first, so the status stays the last line.
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let code = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[test]
fn promtool_accepts_the_same_web_config_files() {
    let promtool = require("promtool");
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    for auth in ["NoClientCert", "RequireAndVerifyClientCert"] {
        let web = web_config(dir.path(), auth);
        let out = Command::new(&promtool)
            .args(["check", "web-config"])
            .arg(&web)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check web-config: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web/web-config.yml");
    // The example names certificate files that do not exist here; promtool
    // checks their presence too, so copy it next to generated ones.
    std::fs::copy(&example, dir.path().join("example.yml")).unwrap();
    let out = Command::new(&promtool)
        .args(["check", "web-config"])
        .arg(dir.path().join("example.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "example: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let example_hash = std::fs::read_to_string(&example).unwrap();
    let hash = example_hash
        .lines()
        .find_map(|l| l.trim().strip_prefix("prometheus: "))
        .unwrap();
    assert!(
        bcrypt::verify("change-me", hash).unwrap(),
        "the example's hash is the documented password"
    );
}

#[test]
fn tls_basic_auth_headers_and_plain_http_refused() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let web = web_config(dir.path(), "NoClientCert");
    let v = start(&web);
    let url = format!("https://127.0.0.1:{}/metrics", v.addr.port());
    let ca = dir.path().join("ca.crt");
    let ca = ca.to_str().unwrap();

    let (code, text) = curl(&[
        "--cacert",
        ca,
        "-u",
        &format!("prometheus:{PASSWORD}"),
        &url,
    ]);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("vitals_build_info"));
    assert!(
        text.to_ascii_lowercase().contains("x-frame-options: deny"),
        "{text}"
    );

    let (code, text) = curl(&["--cacert", ca, "-u", "prometheus:wrong", &url]);
    assert_eq!(code, 401, "{text}");
    assert!(
        text.contains("WWW-Authenticate: Basic") || text.contains("www-authenticate: Basic"),
        "{text}"
    );
    let (code, _) = curl(&["--cacert", ca, "-u", &format!("nobody:{PASSWORD}"), &url]);
    assert_eq!(code, 401);
    let (code, _) = curl(&["--cacert", ca, &url]);
    assert_eq!(code, 401);

    // Plain HTTP to the TLS port gets a clear 400, not a hang or a reset.
    let (status, body) = get(v.addr, "/metrics").expect("an answer to plain HTTP");
    assert_eq!(status, 400);
    assert!(body.contains("HTTP request to an HTTPS server"), "{body}");
}

#[test]
fn certificate_rotation_applies_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let web = web_config(dir.path(), "NoClientCert");
    let v = start(&web);
    let serial = || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial",
                v.addr.port()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(serial(), "serial=01");
    // Modification times have a granularity; make sure the new files differ.
    std::thread::sleep(Duration::from_millis(1100));
    make_certs(dir.path(), "2");
    wait_for(Duration::from_secs(15), "the rotated certificate", || {
        (serial() == "serial=02").then_some(())
    });
}

#[test]
fn mutual_tls_requires_a_client_certificate_signed_by_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let web = web_config(dir.path(), "RequireAndVerifyClientCert");
    let v = start(&web);
    let url = format!("https://127.0.0.1:{}/metrics", v.addr.port());
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let auth = format!("prometheus:{PASSWORD}");
    let (code, _) = curl(&["--cacert", &p("ca.crt"), "-u", &auth, &url]);
    assert_eq!(code, 0, "no client certificate: the handshake must fail");
    let (code, text) = curl(&[
        "--cacert",
        &p("ca.crt"),
        "--cert",
        &p("client.crt"),
        "--key",
        &p("client.key"),
        "-u",
        &auth,
        &url,
    ]);
    assert_eq!(code, 200, "{text}");
}

#[test]
fn real_prometheus_scrapes_over_tls_with_basic_auth() {
    let prometheus = require("prometheus");
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let web = web_config(dir.path(), "NoClientCert");
    let v = start(&web);
    let prom_port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vitals\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prometheus\n      password: {PASSWORD}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
        ca = dir.path().join("ca.crt").display(),
        port = v.addr.port()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let mut prom = PromGuard(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let addr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let body = wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape vitals over TLS",
        || {
            if let Ok(Some(status)) = prom.0.try_wait() {
                panic!("prometheus exited: {status}");
            }
            let (_, body) = get(addr, "/api/v1/query?query=vitals_build_info")?;
            body.contains("\"result\":[{").then_some(body)
        },
    );
    assert!(body.contains("\"job\":\"vitals\""), "{body}");
    let (_, up) = get(addr, "/api/v1/query?query=up").unwrap();
    assert!(
        up.contains("\"value\":[") && up.contains("\"1\"]"),
        "up: {up}"
    );
    prom.0.kill().ok();
}

struct PromGuard(Child);
impl Drop for PromGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A webhook source (with its own HMAC signature) and the dashboard (on by
/// default), served behind the web config's TLS and basic auth.
fn push_and_dashboard_config(secret: &Path) -> String {
    format!(
        r#"
[system]
enabled = false

[[sources]]
type = "webhook"
name = "payments"

[sources.auth]
scheme = "hmac"
secret_file = "{secret}"

[[sources.metrics]]
name = "payments_events_total"
type = "counter"
labels = {{ status = "status" }}
"#,
        secret = secret.display()
    )
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Open `/api/ws` over TLS (trusting `ca`), with `Authorization: Basic`
/// when `credentials` are given. `Ok` holds the first message the server
/// sent; `Err` the HTTP status that refused the upgrade.
async fn dashboard_ws(
    addr: std::net::SocketAddr,
    ca: &Path,
    credentials: Option<&str>,
) -> Result<String, u16> {
    use base64::Engine as _;
    use futures_util::StreamExt;
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let mut request = format!("wss://127.0.0.1:{}/api/ws", addr.port())
        .into_client_request()
        .unwrap();
    if let Some(c) = credentials {
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(c)
        );
        request
            .headers_mut()
            .insert("authorization", value.parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((mut ws, response)) => {
            assert_eq!(response.status(), 101);
            let first = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .expect("a first message within 30 s")
                .expect("the stream stays open")
                .expect("a valid frame");
            Ok(first.into_text().unwrap().to_string())
        }
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

#[test]
fn webhook_ingest_and_dashboard_api_honour_tls_and_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let web = web_config(dir.path(), "NoClientCert");
    let secret = dir.path().join("hook-secret");
    std::fs::write(&secret, "hook-key\n").unwrap();
    let v = Vitals::start_tls(&push_and_dashboard_config(&secret), &web);
    let base = format!("https://127.0.0.1:{}", v.addr.port());
    let ca = dir.path().join("ca.crt");
    let ca_s = ca.to_str().unwrap();
    let user = format!("prometheus:{PASSWORD}");

    // Webhook ingestion: basic auth in front of the source's own HMAC.
    let body = r#"{"id":"p-1","status":"ok","amount":10}"#;
    let signature = format!(
        "x-signature-256: sha256={}",
        hmac_hex(b"hook-key", body.as_bytes())
    );
    let ingest = format!("{base}/ingest/payments");
    let post = |extra: &[&str]| {
        let mut args = vec![
            "--cacert",
            ca_s,
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            &signature,
            "--data-binary",
            body,
        ];
        args.extend_from_slice(extra);
        args.push(&ingest);
        curl(&args)
    };
    // curl speaks HTTP/2 here (ALPN): a 401 sent before the body was read
    // used to reach it as a reset stream about one time in seven.
    let (code, text) = post(&[]);
    assert_eq!(code, 401, "no credentials: {text}");
    let (code, text) = post(&["-u", "prometheus:wrong"]);
    assert_eq!(code, 401, "a wrong password: {text}");
    let (code, text) = post(&["-u", &user]);
    assert!((200..300).contains(&code), "with credentials: {text}");
    let metrics = format!("{base}/metrics");
    wait_for(
        Duration::from_secs(30),
        "the pushed event to be counted",
        || {
            let (code, text) = curl(&["--cacert", ca_s, "-u", &user, &metrics]);
            (code == 200
                && common::sample_value(&text, "payments_events_total", &[r#"status="ok""#])
                    == Some(1.0))
            .then_some(())
        },
    );
    // Plain HTTP is refused on the TLS port for the push route too.
    let (status, _) = common::http(v.addr, "POST", "/ingest/payments", &[], body.as_bytes())
        .expect("an answer to plain HTTP");
    assert_eq!(status, 400);

    // The dashboard's JSON and page.
    for path in ["/api/series", "/"] {
        let url = format!("{base}{path}");
        let (code, text) = curl(&["--cacert", ca_s, &url]);
        assert_eq!(code, 401, "{path} without credentials: {text}");
        let (code, text) = curl(&["--cacert", ca_s, "-u", &user, &url]);
        assert_eq!(code, 200, "{path} with credentials: {text}");
    }
    let (_, text) = curl(&["--cacert", ca_s, "-u", &user, &format!("{base}/api/series")]);
    assert!(text.contains("payments_events_total"), "{text}");

    // The dashboard WebSocket.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(dashboard_ws(v.addr, &ca, None).await, Err(401));
        assert_eq!(
            dashboard_ws(v.addr, &ca, Some("prometheus:wrong")).await,
            Err(401)
        );
        let first = dashboard_ws(v.addr, &ca, Some(&user))
            .await
            .expect("the upgrade succeeds with credentials");
        assert!(first.starts_with('{'), "a JSON message: {first}");
    });
}

#[test]
fn a_stalled_tls_handshake_is_closed_after_the_handshake_timeout() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let web = web_config(dir.path(), "NoClientCert");
    let v = Vitals::start_tls("[web]\ntls_handshake_timeout = \"1s\"\n", &web);
    // The first byte of a TLS record, then nothing.
    let mut stalled = std::net::TcpStream::connect(v.addr).unwrap();
    stalled.write_all(&[0x16]).unwrap();
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(8)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stalled.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected answer {:?}", &buf[..n]),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the stalled handshake was not closed within 8s: {e}"
        ),
    }
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let url = format!("https://127.0.0.1:{}/metrics", v.addr.port());
    let auth = format!("prometheus:{PASSWORD}");
    let (code, text) = curl(&["--cacert", &p("ca.crt"), "-u", &auth, &url]);
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains("vitals_http_connections_closed_total{reason=\"tls_handshake_timeout\"} 1"),
        "{text}"
    );
}
