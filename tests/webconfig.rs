//! The web configuration file against real peers: a real Prometheus
//! scraping vitals over TLS with basic auth, promtool validating the same
//! file, curl and openssl as clients.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::certs::{CLIENT_EXT, Ca, KeyType, openssl};
use common::{Vitals, free_port, get, require, wait_for};

const PASSWORD: &str = "s3cret-pass";

/// Make a CA (once), a server certificate for 127.0.0.1 signed by it (with
/// the given serial) and a client certificate, RSA keys.
fn make_certs(dir: &Path, serial: &str) {
    let ca = if dir.join("ca.key").exists() {
        Ca::open(dir, "ca", "crt", KeyType::Rsa)
    } else {
        Ca::new(dir, "ca", "crt", "/CN=vitals test CA", KeyType::Rsa)
    };
    let san = "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
    ca.issue(
        "server.key.new",
        "server.crt.new",
        "/CN=127.0.0.1",
        san,
        Some(serial),
    );
    ca.issue(
        "client.key",
        "client.crt",
        "/CN=scraper",
        CLIENT_EXT,
        Some("77"),
    );
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

/// A client certificate `<name>.crt`/`.key` signed by the test CA, with
/// the given subjectAltName.
fn client_cert_with_sans(dir: &Path, name: &str, san: &str) {
    Ca::open(dir, "ca", "crt", KeyType::Rsa).issue(
        &format!("{name}.key"),
        &format!("{name}.crt"),
        &format!("/CN={name}"),
        &format!("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\nsubjectAltName={san}\n"),
        Some("91"),
    );
}

/// A self-signed client certificate `<name>.crt`/`.key` (openssl's
/// default extensions for `req -x509`: basicConstraints CA:TRUE), as a
/// user makes one for mutual TLS without a CA.
fn self_signed_client_cert(dir: &Path, name: &str) {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// Write `web.yml` (the server certificate part first, then `rest`).
fn write_web(dir: &Path, file: &str, tls_extra: &str, rest: &str) -> std::path::PathBuf {
    let text = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{tls_extra}{rest}"
    );
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// `vitals check` on a configuration naming the web configuration file:
/// (accepted, message).
fn vitals_accepts(web: &Path) -> (bool, String) {
    let config = web.with_extension("toml");
    std::fs::write(
        &config,
        format!("[web]\nconfig_file = {:?}\n", web.display().to_string()),
    )
    .unwrap();
    let out = Command::new(common::vitals_bin())
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn promtool_accepts(web: &Path) -> (bool, String) {
    let out = Command::new(require("promtool"))
        .args(["check", "web-config"])
        .arg(web)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn accept_and_reject_decisions_match_exporter_toolkit() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let d = dir.path();
    // (TLS lines, other sections, accepted by exporter-toolkit, compare
    // with promtool: false where Debian's promtool predates the field).
    let cases: &[(&str, &str, bool, bool)] = &[
        (
            "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA, TLS_AES_128_GCM_SHA256]\n",
            "",
            true,
            true,
        ),
        (
            "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
            "",
            false,
            true,
        ),
        ("  cipher_suites: [NOT_A_CIPHER]\n", "", false, true),
        (
            "  curve_preferences: [CurveP256, CurveP384, CurveP521, X25519]\n",
            "",
            true,
            true,
        ),
        ("  curve_preferences: [CurveP999]\n", "", false, true),
        (
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [scraper.example]\n",
            "",
            true,
            false,
        ),
        (
            "  client_allowed_sans: [scraper.example]\n",
            "",
            false,
            false,
        ),
        (
            "  client_auth_type: VerifyClientCertIfGiven\n",
            "",
            true,
            true,
        ),
        ("  client_auth_type: RequireAnyClientCert\n", "", true, true),
        ("  client_auth_type: RequestClientCert\n", "", true, true),
        ("  client_auth_type: Sometimes\n", "", false, true),
        ("  client_ca_file: ca.crt\n", "", false, true),
        ("  min_version: TLS13\n", "", true, true),
        ("  max_version: TLS12\n", "", true, true),
        ("  min_version: TLS10\n", "", true, true),
        ("  min_version: TLS14\n", "", false, true),
        ("  prefer_server_cipher_suites: false\n", "", true, true),
        ("", "http_server_config:\n  http2: false\n", true, true),
        (
            "",
            "http_server_config:\n  headers:\n    X-XSS-Protection: 1\n",
            true,
            true,
        ),
        (
            "",
            "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n    X-Frame-Options: sameorigin\n    Strict-Transport-Security: max-age=31536000\n    Content-Security-Policy: default-src 'self'\n",
            true,
            true,
        ),
        (
            "",
            "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
            false,
            true,
        ),
        (
            "",
            "http_server_config:\n  headers:\n    X-Frame-Options: allow-from\n",
            false,
            true,
        ),
        (
            "",
            "http_server_config:\n  headers:\n    X-Frame-Options: DENY\n",
            false,
            true,
        ),
        (
            "",
            "http_server_config:\n  headers:\n    x-frame-options: deny\n",
            false,
            true,
        ),
        (
            "",
            "http_server_config:\n  headers:\n    Server: vitals\n",
            false,
            true,
        ),
        (
            "",
            "rate_limit:\n  interval: 1s\n  burst: 10\n",
            true,
            false,
        ),
        ("", "rate_limit:\n  interval: 1m30s\n", true, false),
        ("", "rate_limit:\n  every: 1s\n", false, false),
        (
            "",
            "basic_auth_users:\n  prometheus: plaintext\n",
            false,
            true,
        ),
    ];
    let mut mismatches = Vec::new();
    for (i, (tls, rest, expected, ask_promtool)) in cases.iter().enumerate() {
        let web = write_web(d, &format!("case{i}.yml"), tls, rest);
        let (accepted, message) = vitals_accepts(&web);
        if accepted != *expected {
            mismatches.push(format!(
                "vitals {} case {i} ({tls}{rest}): {message}",
                if accepted { "accepts" } else { "refuses" }
            ));
        }
        if i == 0 {
            // A suite Go knows and rustls lacks: accepted, with a warning.
            assert!(
                message.contains("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA is not implemented by rustls"),
                "{message}"
            );
        }
        if !accepted {
            assert!(
                message.contains(&format!("case{i}.yml")) && message.contains("key `"),
                "the refusal names the file and key: {message}"
            );
        }
        if *ask_promtool {
            let (p, text) = promtool_accepts(&web);
            if p != *expected {
                mismatches.push(format!(
                    "promtool {} case {i} ({tls}{rest}): {text}",
                    if p { "accepts" } else { "refuses" }
                ));
            }
        }
    }
    // tls_server_config without certificate settings is plain HTTP in
    // both (and not an error).
    let web = d.join("plain.yml");
    std::fs::write(&web, "tls_server_config:\n  min_version: TLS13\n").unwrap();
    assert!(vitals_accepts(&web).0 && promtool_accepts(&web).0);
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// curl's HTTP version and status for `url` with `args`.
fn curl_version(args: &[&str], url: &str) -> (String, u32) {
    let out = Command::new(require("curl"))
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (v, code) = text.split_once(' ').unwrap_or(("", "0"));
    (v.to_string(), code.trim().parse().unwrap_or(0))
}

#[test]
fn http2_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let ca = dir.path().join("ca.crt");
    let ca = ca.to_str().unwrap();
    let on = Vitals::start_tls("", &write_web(dir.path(), "on.yml", "", ""));
    let url = format!("https://127.0.0.1:{}/-/healthy", on.addr.port());
    assert_eq!(
        curl_version(&["--cacert", ca, "--http2"], &url),
        ("2".into(), 200)
    );
    assert!(
        speaks_h2_without_alpn(on.addr.port()),
        "HTTP/2 on: prior knowledge works too"
    );
    drop(on);
    let off = Vitals::start_tls(
        "",
        &write_web(
            dir.path(),
            "off.yml",
            "",
            "http_server_config:\n  http2: false\n",
        ),
    );
    let url = format!("https://127.0.0.1:{}/-/healthy", off.addr.port());
    assert_eq!(
        curl_version(&["--cacert", ca, "--http2"], &url),
        ("1.1".into(), 200)
    );
    // Not even when the client skips ALPN and speaks HTTP/2 directly.
    assert!(
        !speaks_h2_without_alpn(off.addr.port()),
        "HTTP/2 off: no prior knowledge either"
    );
}

/// Send the HTTP/2 connection preface and an empty SETTINGS frame over TLS
/// negotiated as HTTP/1.1 (ALPN), and report whether the server answered
/// with an HTTP/2 SETTINGS frame.
fn speaks_h2_without_alpn(port: u16) -> bool {
    use std::io::Write;
    let mut child = Command::new(require("openssl"))
        .args([
            "s_client",
            "-quiet",
            "-alpn",
            "http/1.1",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    stdin.flush().unwrap();
    // Give the server a moment to answer, then close our side; a server
    // that keeps the connection open is ended after a few seconds.
    std::thread::sleep(Duration::from_millis(1500));
    drop(stdin);
    let pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    let b = child.wait_with_output().unwrap().stdout;
    // A frame header: 3 bytes of length, then the type (4 = SETTINGS).
    b.len() >= 9 && b[3] == 0x04
}

/// `openssl s_client` against `port` with `args`: (handshake succeeded,
/// its output).
fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new(require("openssl"))
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let ok =
        out.status.success() && !text.contains("Cipher is (NONE)") && text.contains("Cipher is ");
    (ok, text)
}

#[test]
fn min_and_max_version_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let v = Vitals::start_tls(
        "",
        &write_web(dir.path(), "min.yml", "  min_version: TLS13\n", ""),
    );
    let port = v.addr.port();
    assert!(
        !s_client(port, &["-tls1_2"]).0,
        "TLS 1.2 below min_version TLS13"
    );
    let (ok, text) = s_client(port, &["-tls1_3"]);
    assert!(ok && text.contains("TLSv1.3"), "{text}");
    drop(v);
    let v = Vitals::start_tls(
        "",
        &write_web(dir.path(), "max.yml", "  max_version: TLS12\n", ""),
    );
    let port = v.addr.port();
    assert!(
        !s_client(port, &["-tls1_3"]).0,
        "TLS 1.3 above max_version TLS12"
    );
    let (ok, text) = s_client(port, &["-tls1_2"]);
    assert!(ok && text.contains("TLSv1.2"), "{text}");
    // And a client that allows both gets TLS 1.2 only.
    let (ok, text) = s_client(port, &[]);
    assert!(
        ok && text.contains("TLSv1.2") && !text.contains("TLSv1.3"),
        "{text}"
    );
}

#[test]
fn cipher_suites_restrict_tls12_in_the_given_order() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let web = write_web(
        dir.path(),
        "ciphers.yml",
        "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n",
        "",
    );
    let v = Vitals::start_tls("", &web);
    let port = v.addr.port();
    let (ok, _) = s_client(port, &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"]);
    assert!(!ok, "a suite that is not listed");
    let (ok, text) = s_client(port, &["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"]);
    assert!(ok && text.contains("ECDHE-RSA-AES256-GCM-SHA384"), "{text}");
    // The server's order wins (prefer_server_cipher_suites defaults to true).
    let (ok, text) = s_client(
        port,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305",
        ],
    );
    assert!(ok && text.contains("ECDHE-RSA-CHACHA20-POLY1305"), "{text}");
}

#[test]
fn curve_preferences_include_p521() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let v = Vitals::start_tls(
        "",
        &write_web(
            dir.path(),
            "curves.yml",
            "  curve_preferences: [CurveP521]\n",
            "",
        ),
    );
    let port = v.addr.port();
    for version in ["-tls1_2", "-tls1_3"] {
        let (ok, text) = s_client(port, &[version, "-groups", "P-521"]);
        assert!(ok, "{version} with P-521: {text}");
        assert!(
            text.contains("P-521") || text.contains("secp521r1"),
            "{version}: the key exchange used P-521: {text}"
        );
        let (ok, _) = s_client(port, &[version, "-groups", "X25519:P-256"]);
        assert!(!ok, "{version}: curves not listed are refused");
    }
    // The HTTP answer over a P-521 handshake, with curl.
    let ca = dir.path().join("ca.crt");
    let url = format!("https://127.0.0.1:{port}/-/healthy");
    let (_, code) = curl_version(
        &["--cacert", ca.to_str().unwrap(), "--curves", "P-521"],
        &url,
    );
    assert_eq!(code, 200);
}

#[test]
fn client_certificate_policies_and_allowed_sans() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    let d = dir.path();
    client_cert_with_sans(
        d,
        "sanclient",
        "DNS:scraper.example,URI:spiffe://vitals/scraper,IP:10.0.0.7",
    );
    self_signed_client_cert(d, "selfsigned");
    self_signed_client_cert(d, "stranger");
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let ca = p("ca.crt");
    let with = |name: &str| -> Vec<String> {
        vec![
            "--cert".into(),
            p(&format!("{name}.crt")),
            "--key".into(),
            p(&format!("{name}.key")),
        ]
    };
    let code_of = |v: &Vitals, extra: Vec<String>| {
        let url = format!("https://127.0.0.1:{}/-/healthy", v.addr.port());
        let mut args: Vec<String> = vec!["--cacert".into(), ca.clone()];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl_version(&args, &url).1
    };

    // client_allowed_sans: DNS, URI and IP entries each admit the client.
    for allowed in ["scraper.example", "spiffe://vitals/scraper", "10.0.0.7"] {
        let web = write_web(
            d,
            "sans.yml",
            &format!(
                "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [{allowed:?}]\n"
            ),
            "",
        );
        let v = Vitals::start_tls("", &web);
        assert_eq!(code_of(&v, with("sanclient")), 200, "SAN {allowed}");
        // A certificate from the same CA without that SAN is refused.
        assert_eq!(code_of(&v, with("client")), 0, "no SAN {allowed}");
    }
    let web = write_web(
        d,
        "sans.yml",
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [other.example]\n",
        "",
    );
    let v = Vitals::start_tls("", &web);
    assert_eq!(code_of(&v, with("sanclient")), 0, "SAN not in the list");
    drop(v);

    // VerifyClientCertIfGiven without client_ca_file: no certificate is fine.
    let v = Vitals::start_tls(
        "",
        &write_web(
            d,
            "ifgiven.yml",
            "  client_auth_type: VerifyClientCertIfGiven\n",
            "",
        ),
    );
    assert_eq!(code_of(&v, vec![]), 200);
    // A certificate no system root signed is still refused.
    assert_eq!(code_of(&v, with("client")), 0);
    drop(v);

    // A self-signed client certificate listed as its own CA.
    let v = Vitals::start_tls(
        "",
        &write_web(
            d,
            "selfsigned.yml",
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: selfsigned.crt\n",
            "",
        ),
    );
    assert_eq!(code_of(&v, with("selfsigned")), 200);
    assert_eq!(
        code_of(&v, with("stranger")),
        0,
        "an unlisted self-signed cert"
    );
    assert_eq!(code_of(&v, vec![]), 0, "no certificate");
    drop(v);

    // RequireAnyClientCert: any certificate, none refused.
    let v = Vitals::start_tls(
        "",
        &write_web(
            d,
            "any.yml",
            "  client_auth_type: RequireAnyClientCert\n",
            "",
        ),
    );
    assert_eq!(code_of(&v, with("stranger")), 200);
    assert_eq!(code_of(&v, vec![]), 0);
    drop(v);

    // RequestClientCert: asked for, neither required nor verified.
    let v = Vitals::start_tls(
        "",
        &write_web(
            d,
            "request.yml",
            "  client_auth_type: RequestClientCert\n",
            "",
        ),
    );
    assert_eq!(code_of(&v, vec![]), 200);
    assert_eq!(code_of(&v, with("stranger")), 200);
    drop(v);

    // Inline PEM (cert, key, client_ca) instead of files.
    let indent = |f: &str| {
        std::fs::read_to_string(d.join(f))
            .unwrap()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let inline = format!(
        "tls_server_config:\n  cert: |\n{}  key: |\n{}  client_auth_type: RequireAndVerifyClientCert\n  client_ca: |\n{}",
        indent("server.crt"),
        indent("server.key"),
        indent("ca.crt")
    );
    let web = d.join("inline.yml");
    std::fs::write(&web, inline).unwrap();
    // (Debian's promtool 2.42 predates inline `cert`/`key`.)
    let v = Vitals::start_tls("", &web);
    assert_eq!(code_of(&v, with("client")), 200);
    assert_eq!(code_of(&v, vec![]), 0);
}

#[test]
fn rate_limit_answers_429_and_numeric_headers_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "1");
    // One token a minute: the third request in a row finds the bucket empty.
    let web = write_web(
        dir.path(),
        "rate.yml",
        "",
        "http_server_config:\n  headers:\n    X-XSS-Protection: 1\nrate_limit:\n  interval: 1m\n  burst: 2\n",
    );
    let v = Vitals::start_tls("", &web);
    let ca = dir.path().join("ca.crt");
    let url = format!("https://127.0.0.1:{}/metrics", v.addr.port());
    let (code, text) = curl(&["--cacert", ca.to_str().unwrap(), &url]);
    assert_eq!(code, 200, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-xss-protection: 1"),
        "{text}"
    );
    let (code, _) = curl(&["--cacert", ca.to_str().unwrap(), &url]);
    assert_eq!(code, 200);
    let (code, text) = curl(&["--cacert", ca.to_str().unwrap(), &url]);
    assert_eq!(code, 429, "{text}");
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
