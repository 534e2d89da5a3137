//! `vitals relay` against real peers: an aiosmtpd SMTP server (STARTTLS or
//! implicit TLS with AUTH, certificate signed by a test CA), a local HTTP
//! server standing in for SMS gateways with scripted answers, and a real
//! Alertmanager posting webhooks.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    Tmpfs, fill, free_port, get, http, promtool_check_metrics, require, sample_value, wait_for,
};

const TOKEN: &str = "test-token-123";
const LONG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- helpers

/// A test CA and a leaf certificate for localhost/127.0.0.1 it signed.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    let openssl = require("openssl");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=vitals test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("leaf.pem"),
        key: dir.join("leaf.key"),
    }
}

/// A running aiosmtpd server storing mail under `dir`.
struct Smtp {
    child: Child,
    dir: PathBuf,
}

const SMTP_USER: &str = "relay";
const SMTP_PASSWORD: &str = "s3cret-pw";

impl Smtp {
    fn start(port: u16, dir: &Path, mode: &str, certs: &Certs) -> Smtp {
        Smtp::start_with(port, dir, mode, certs, SMTP_PASSWORD, &[])
    }

    /// `password` is also the XOAUTH2 bearer token the server accepts;
    /// `env` sets options such as `SMTP_REJECT_RCPT`.
    fn start_with(
        port: u16,
        dir: &Path,
        mode: &str,
        certs: &Certs,
        password: &str,
        env: &[(&str, &str)],
    ) -> Smtp {
        let python = PathBuf::from("/usr/bin/python3");
        require("python3");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(dir)
            .arg(mode)
            .arg(&certs.cert)
            .arg(&certs.key)
            .arg(SMTP_USER)
            .arg(password)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd (python3-aiosmtpd; run scripts/test)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY", "aiosmtpd did not start");
        Smtp {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn mails(&self) -> Vec<serde_json::Value> {
        read_mails(&self.dir)
    }
}

/// The records of one of the server's JSON-lines logs (`mails.jsonl`,
/// `rejects.jsonl`, `auths.jsonl`).
fn read_log(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn read_mails(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("mails.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the gateway stand-in received.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP server standing in for an SMS gateway: records every request
/// and answers from a script of (status, extra headers, body), then 200.
struct Gateway {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Req>>>,
    script: Script,
}

impl Gateway {
    fn start(delay: Duration, default_body: &'static str) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let (r, s) = (requests.clone(), script.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (r, s) = (r.clone(), s.clone());
                std::thread::spawn(move || serve(stream, r, s, delay, default_body));
            }
        });
        Gateway {
            addr,
            requests,
            script,
        }
    }

    fn push(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        self.script.lock().unwrap().push_back((
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body.to_string(),
        ));
    }

    fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

type Script = Arc<Mutex<VecDeque<(u16, Vec<(String, String)>, String)>>>;

fn serve(
    stream: TcpStream,
    requests: Arc<Mutex<Vec<Req>>>,
    script: Script,
    delay: Duration,
    default_body: &str,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        std::thread::sleep(delay);
        let (status, extra, resp_body) =
            script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or((200, vec![], default_body.to_string()));
        requests.lock().unwrap().push(Req {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let mut resp = format!(
            "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            resp_body.len()
        );
        for (k, v) in extra {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&resp_body);
        if stream.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A running `vitals relay`; its data directory survives restarts.
struct Relay {
    child: Option<Child>,
    addr: SocketAddr,
    config: PathBuf,
    /// Extra command-line arguments.
    args: Vec<String>,
    /// Set when the listener is HTTPS with basic auth (readiness via curl).
    tls: Option<TlsClient>,
    /// Where stderr goes when it is to be read by the test.
    log: Option<PathBuf>,
}

/// How curl reaches a relay behind a web configuration file.
struct TlsClient {
    ca: PathBuf,
    user: String,
    password: String,
}

impl Relay {
    fn start(dir: &Path, config: &str) -> Relay {
        Relay::start_with(dir, config, &[], None, None)
    }

    fn start_with(
        dir: &Path,
        config: &str,
        args: &[&str],
        tls: Option<TlsClient>,
        log: Option<PathBuf>,
    ) -> Relay {
        let path = dir.join("relay.toml");
        std::fs::write(&path, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut r = Relay {
            child: None,
            addr,
            config: path,
            args: args.iter().map(|a| a.to_string()).collect(),
            tls,
            log,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let stderr = match &self.log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            ),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(common::vitals_bin())
            .args(["relay", "--config"])
            .arg(&self.config)
            .arg("--web.listen-address")
            .arg(self.addr.to_string())
            .args(&self.args)
            .env_remove("RUST_LOG")
            .env("RELAY_TEST_TOKEN", TOKEN)
            .env("RELAY_SMTP_PASSWORD", SMTP_PASSWORD)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn vitals relay");
        let addr = self.addr;
        wait_for(LONG, "the relay to answer /healthz", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("vitals relay exited early with {status}");
            }
            match &self.tls {
                None => get(addr, "/healthz").filter(|(s, _)| *s == 200).map(|_| ()),
                Some(t) => {
                    let user = format!("{}:{}", t.user, t.password);
                    (self.curl(t, &["-u", &user, "/healthz"]).0 == 200).then_some(())
                }
            }
        });
        self.child = Some(child);
    }

    /// curl over HTTPS with the client's CA and credentials; the last
    /// argument is the path. Returns (status, headers + body).
    fn curl(&self, t: &TlsClient, args: &[&str]) -> (u32, String) {
        let (path, rest) = args.split_last().expect("a path");
        let url = format!("https://127.0.0.1:{}{path}", self.addr.port());
        let out = Command::new(require("curl"))
            .args(["-s", "-S", "-i", "--max-time", "10", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(&t.ca)
            .args(rest)
            .arg(url)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let code = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        (code, text)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        let mut h = vec![("Content-Type", "application/json")];
        h.extend_from_slice(headers);
        http(self.addr, "POST", path, &h, body.as_bytes()).expect("POST to the relay")
    }

    fn post_auth(&self, path: &str, body: &str) -> (u16, String) {
        let auth = format!("Bearer {TOKEN}");
        self.post(path, &[("Authorization", &auth)], body)
    }

    fn metrics(&self) -> String {
        let (s, body) = get(self.addr, "/metrics").expect("GET /metrics");
        assert_eq!(s, 200);
        body
    }

    fn metric(&self, name: &str, parts: &[&str]) -> f64 {
        sample_value(&self.metrics(), name, parts).unwrap_or(0.0)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An Alertmanager v4 payload of one group.
fn am_payload(receiver: &str, group: &str, status: &str, alerts: &[(&str, &str, &str)]) -> String {
    let alerts: Vec<serde_json::Value> = alerts
        .iter()
        .map(|(name, severity, instance)| {
            serde_json::json!({
                "status": status,
                "labels": {"alertname": name, "severity": severity, "instance": instance},
                "annotations": {"summary": format!("{name} on {instance}"), "description": "Details <here>."},
                "startsAt": "2026-01-01T00:00:00Z",
                "endsAt": if status == "resolved" { "2026-01-01T00:05:00Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": format!("http://prometheus:9090/graph?g0.expr={name}"),
                "fingerprint": format!("{:016x}", name.len() * 1000 + instance.len()),
            })
        })
        .collect();
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{group}\"}}"),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": group},
        "commonLabels": {"alertname": group},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    })
    .to_string()
}

fn relay_head(dir: &Path) -> String {
    format!(
        r#"[relay]
data_dir = "{}"
dedup_window = "10m"
message_id_domain = "relay.test"
[relay.retry]
initial_backoff = "100ms"
max_backoff = "1s"
multiplier = 2.0
give_up_after = "1h"
"#,
        dir.join("data").display()
    )
}

fn email_channel(name: &str, port: u16, tls: &str, auth: &str, certs: &Certs) -> String {
    format!(
        r#"
[[relay.channels]]
name = "{name}"
type = "email"
to = ["oncall@example.com", "Ops Team <ops@example.com>"]
from = "vitals relay <alerts@example.com>"
smtp = {{ host = "localhost", port = {port}, tls = "{tls}", ca_file = "{}", username = "{SMTP_USER}", password = "env:RELAY_SMTP_PASSWORD", auth = ["{auth}"], timeout = "5s" }}
"#,
        certs.ca.display()
    )
}

fn bearer_receiver(name: &str, channels: &[&str]) -> String {
    format!(
        "\n[[relay.receivers]]\nname = \"{name}\"\nauth = {{ type = \"bearer\", token = \"env:RELAY_TEST_TOKEN\" }}\nchannels = {channels:?}\n"
    )
}

fn http_provider(name: &str, url: &str) -> String {
    format!(
        r#"
[[relay.sms_providers]]
name = "{name}"
type = "http"
url = "{url}/send"
headers = {{ "X-Test" = "yes" }}
body_template = '{{"to": {{{{ to }}}}, "text": {{{{ text }}}}, "id": {{{{ id }}}}}}'
timeout = "5s"
"#
    )
}

fn sms_channel(name: &str, provider: &str, to: &[&str], extra: &str) -> String {
    format!(
        "\n[[relay.channels]]\nname = \"{name}\"\ntype = \"sms\"\nprovider = \"{provider}\"\nto = {to:?}\n{extra}\n"
    )
}

fn count_ok(resp: &(u16, String)) -> bool {
    resp.0 == 200 && resp.1.contains("\"accepted\"")
}

// ------------------------------------------------------------------ tests

#[test]
fn delivers_threaded_multipart_mail_over_starttls_and_implicit_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let (p1, p2) = (free_port(), free_port());
    let starttls = Smtp::start(p1, &dir.path().join("mail1"), "starttls", &certs);
    let implicit = Smtp::start(p2, &dir.path().join("mail2"), "implicit", &certs);
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail-starttls", "mail-implicit"])
        + &email_channel("mail-starttls", p1, "starttls", "plain", &certs)
        + &email_channel("mail-implicit", p2, "implicit", "login", &certs);
    let relay = Relay::start(dir.path(), &config);

    let firing = am_payload(
        "ops",
        "DiskFull",
        "firing",
        &[
            ("DiskFull", "critical", "host-a"),
            ("DiskFull", "critical", "host-b"),
        ],
    );
    assert!(count_ok(&relay.post_auth("/webhook", &firing)));
    // Alertmanager HA: the same group from the peer is not delivered again.
    let dup = relay.post_auth("/webhook/ops", &firing);
    assert_eq!(dup.0, 200);
    assert!(dup.1.contains("duplicate"), "{}", dup.1);
    let resolved = am_payload(
        "ops",
        "DiskFull",
        "resolved",
        &[
            ("DiskFull", "critical", "host-a"),
            ("DiskFull", "critical", "host-b"),
        ],
    );
    assert!(count_ok(&relay.post_auth("/webhook/ops", &resolved)));

    for smtp in [&starttls, &implicit] {
        let mails = wait_for(LONG, "two mails", || {
            let m = smtp.mails();
            (m.len() >= 2).then_some(m)
        });
        let first = mails
            .iter()
            .find(|m| m["subject"].as_str().unwrap().starts_with("[FIRING"))
            .expect("a firing mail");
        let second = mails
            .iter()
            .find(|m| m["subject"].as_str().unwrap().starts_with("[RESOLVED"))
            .expect("a resolved mail");
        assert_eq!(first["subject"], "[FIRING:2] DiskFull");
        assert_eq!(second["subject"], "[RESOLVED] DiskFull");
        let rcpts: BTreeSet<&str> = first["rcpt_tos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            rcpts,
            BTreeSet::from(["oncall@example.com", "ops@example.com"])
        );
        assert!(first["to"].as_str().unwrap().contains("Ops Team"));
        assert_eq!(first["content_type"], "multipart/alternative");
        let text = first["text"].as_str().unwrap();
        assert!(
            text.contains("[FIRING] DiskFull since 2026-01-01T00:00:00Z"),
            "{text}"
        );
        assert!(text.contains("Summary: DiskFull on host-b"));
        assert!(text.contains("Source: http://prometheus:9090/graph?g0.expr=DiskFull"));
        let html = first["html"].as_str().unwrap();
        assert!(html.contains("<b>[FIRING] DiskFull</b>"), "{html}");
        assert!(html.contains("Details &lt;here&gt;."));
        assert!(second["text"].as_str().unwrap().starts_with("RESOLVED"));
        // Threading: distinct Message-IDs, one shared thread root.
        assert_ne!(first["message_id"], second["message_id"]);
        assert!(
            first["message_id"]
                .as_str()
                .unwrap()
                .ends_with("@relay.test>")
        );
        assert_eq!(first["in_reply_to"], second["in_reply_to"]);
        assert_eq!(first["references"], second["references"]);
        assert_eq!(first["references"], first["in_reply_to"]);
        assert!(first["references"].as_str().unwrap().starts_with('<'));
        // Exactly two: the duplicate was not delivered.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(smtp.mails().len(), 2);
    }
    assert_eq!(
        relay.metric(
            "vitals_relay_notifications_deduplicated_total",
            &["receiver=\"ops\""]
        ),
        1.0
    );
    wait_for(LONG, "delivered counters", || {
        (relay.metric(
            "vitals_relay_notifications_delivered_total",
            &["channel=\"mail-implicit\""],
        ) == 2.0)
            .then_some(())
    });
    let (ok, findings) = promtool_check_metrics(&relay.metrics());
    assert!(ok, "promtool check metrics: {findings}");
}

#[test]
fn smtp_outage_then_recovery_delivers_each_mail_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "plain", &certs);
    let relay = Relay::start(dir.path(), &config);
    for i in 0..3 {
        let body = am_payload(
            "ops",
            &format!("Outage{i}"),
            "firing",
            &[("Outage", "warning", "h")],
        );
        assert!(count_ok(&relay.post_auth("/webhook", &body)));
    }
    // The server is down: attempts fail and are retried.
    wait_for(LONG, "failed attempts while SMTP is down", || {
        (relay.metric("vitals_relay_delivery_retries_total", &["channel=\"mail\""]) >= 3.0)
            .then_some(())
    });
    assert_eq!(relay.metric("vitals_relay_outbox_pending", &[]), 3.0);
    let smtp = Smtp::start(port, &dir.path().join("mail"), "starttls", &certs);
    let mails = wait_for(LONG, "three mails after recovery", || {
        let m = smtp.mails();
        (m.len() >= 3).then_some(m)
    });
    wait_for(LONG, "an empty outbox", || {
        (relay.metric("vitals_relay_outbox_pending", &[]) == 0.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let mails_after = smtp.mails();
    assert_eq!(mails_after.len(), 3, "each notification exactly once");
    let ids: BTreeSet<String> = mails
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
}

#[test]
fn sms_gateway_retries_honours_retry_after_and_records_permanent_failures() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(Duration::ZERO, "{}");
    gw.push(500, &[], "{\"error\":\"oops\"}");
    gw.push(429, &[("Retry-After", "1")], "{}");
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["sms"])
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", &gw.url());
    let relay = Relay::start(dir.path(), &config);
    let body = am_payload("ops", "High", "firing", &[("HighLoad", "critical", "db-1")]);
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    wait_for(LONG, "delivery after 500 and 429", || {
        (relay.metric(
            "vitals_relay_notifications_delivered_total",
            &["channel=\"sms\""],
        ) == 1.0)
            .then_some(())
    });
    let reqs = gw.requests();
    assert_eq!(reqs.len(), 3, "500, 429, then 200");
    assert_eq!(reqs[2].method, "POST");
    assert_eq!(reqs[2].path, "/send");
    assert_eq!(reqs[2].header("X-Test"), Some("yes"));
    let sent: serde_json::Value = serde_json::from_str(&reqs[2].body).unwrap();
    assert_eq!(sent["to"], "+15550001");
    assert_eq!(sent["text"], "FIRING:1 HighLoad db-1: HighLoad on db-1");
    assert_eq!(sent["id"], reqs[0].header("Idempotency-Key").unwrap());
    assert_eq!(
        relay.metric(
            "vitals_relay_delivery_retries_total",
            &["reason=\"http_429\""]
        ),
        1.0
    );
    assert_eq!(
        relay.metric(
            "vitals_relay_delivery_retries_total",
            &["reason=\"http_5xx\""]
        ),
        1.0
    );

    // A 400 is permanent: recorded and counted, never retried.
    gw.push(400, &[], "{\"error\":\"bad number\"}");
    let body = am_payload("ops", "Other", "firing", &[("Other", "critical", "db-2")]);
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    wait_for(LONG, "the permanent failure to be counted", || {
        (relay.metric(
            "vitals_relay_notifications_failed_total",
            &["channel=\"sms\"", "reason=\"http_4xx\""],
        ) == 1.0)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gw.requests().len(), 4, "a 400 is not retried");
    assert_eq!(relay.metric("vitals_relay_outbox_pending", &[]), 0.0);
}

#[test]
fn twilio_and_vonage_requests_and_vonage_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = Gateway::start(Duration::ZERO, "{\"sid\":\"SM1\",\"status\":\"queued\"}");
    let vonage = Gateway::start(
        Duration::ZERO,
        "{\"message-count\":\"1\",\"messages\":[{\"status\":\"0\"}]}",
    );
    // Vonage answers 200 with "throttled" first: retried.
    vonage.push(
        200,
        &[],
        "{\"message-count\":\"1\",\"messages\":[{\"status\":\"1\",\"error-text\":\"Throttled\"}]}",
    );
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["tw", "vo"])
        + &sms_channel("tw", "twilio-a", &["+15550001", "+15550002"], "")
        + &sms_channel("vo", "vonage-a", &["+15550003"], "")
        + &format!(
            r#"
[[relay.sms_providers]]
name = "twilio-a"
type = "twilio"
account_sid = "AC123"
auth_token = "env:RELAY_TEST_TOKEN"
from = "+15550000"
base_url = "{}"

[[relay.sms_providers]]
name = "vonage-a"
type = "vonage"
api_key = "key1"
api_secret = "env:RELAY_TEST_TOKEN"
from = "vitals"
base_url = "{}"
"#,
            twilio.url(),
            vonage.url()
        );
    let relay = Relay::start(dir.path(), &config);
    let body = am_payload(
        "ops",
        "Temp",
        "firing",
        &[("TempHigh", "critical", "plant-ü")],
    );
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    wait_for(LONG, "all three SMS", || {
        (twilio.requests().len() == 2 && vonage.requests().len() == 2).then_some(())
    });
    let t = twilio.requests();
    assert_eq!(t[0].path, "/2010-04-01/Accounts/AC123/Messages.json");
    assert!(t[0].header("Authorization").unwrap().starts_with("Basic "));
    let tos: BTreeSet<bool> = t.iter().map(|r| r.body.contains("To=%2B1555000")).collect();
    assert_eq!(tos, BTreeSet::from([true]));
    assert!(t[0].body.contains("From=%2B15550000"));
    assert!(t[0].body.contains("Body=FIRING%3A1+TempHigh"));
    let v = vonage.requests();
    assert_eq!(v[1].path, "/sms/json");
    assert!(v[1].body.contains("api_key=key1"));
    assert!(v[1].body.contains("to=15550003"));
    wait_for(LONG, "vonage delivered", || {
        (relay.metric(
            "vitals_relay_notifications_delivered_total",
            &["channel=\"vo\""],
        ) == 1.0)
            .then_some(())
    });
    assert_eq!(
        relay.metric(
            "vitals_relay_delivery_retries_total",
            &["reason=\"provider_status\""]
        ),
        1.0
    );
}

#[test]
fn sigkill_mid_delivery_then_restart_delivers_every_notification() {
    let dir = tempfile::tempdir().unwrap();
    // A slow gateway, so the relay is killed while deliveries are underway.
    let gw = Gateway::start(Duration::from_millis(300), "{}");
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["sms"])
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", &gw.url());
    let mut relay = Relay::start(dir.path(), &config);
    const N: usize = 20;
    for i in 0..N {
        let body = am_payload(
            "ops",
            &format!("Kill{i}"),
            "firing",
            &[("Kill", "critical", "h")],
        );
        assert!(count_ok(&relay.post_auth("/webhook", &body)));
    }
    wait_for(LONG, "a few deliveries", || {
        (gw.requests().len() >= 3).then_some(())
    });
    relay.kill9();
    let before = gw.requests().len();
    assert!(before < N, "the relay was killed mid-way ({before} of {N})");
    relay.spawn();
    let keys = wait_for(
        Duration::from_secs(120),
        "every notification after restart",
        || {
            let keys: BTreeSet<String> = gw
                .requests()
                .iter()
                .filter_map(|r| r.header("Idempotency-Key").map(str::to_string))
                .collect();
            (keys.len() >= N).then_some(keys)
        },
    );
    assert_eq!(keys.len(), N, "none lost");
    wait_for(LONG, "an empty outbox", || {
        (relay.metric("vitals_relay_outbox_pending", &[]) == 0.0).then_some(())
    });
    // At-least-once on the wire: only sends in flight at the kill (at most
    // the channel's parallelism, 4) may be repeated, with the same key.
    let total = gw.requests().len();
    assert!(total <= N + 4, "{total} requests for {N} notifications");
}

#[test]
fn flood_control_folds_excess_into_a_counted_summary() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(Duration::ZERO, "{}");
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["sms"])
        + &sms_channel(
            "sms",
            "gw",
            &["+15550001"],
            "rate_limit = { max = 2, per = \"3s\" }",
        )
        + &http_provider("gw", &gw.url());
    let relay = Relay::start(dir.path(), &config);
    for i in 0..5 {
        let body = am_payload(
            "ops",
            &format!("Flood{i}"),
            "firing",
            &[("Flood", "critical", "h")],
        );
        assert!(count_ok(&relay.post_auth("/webhook", &body)));
    }
    let reqs = wait_for(LONG, "two messages and a summary", || {
        let r = gw.requests();
        (r.len() >= 3).then_some(r)
    });
    let summary: serde_json::Value = serde_json::from_str(&reqs[2].body).unwrap();
    let text = summary["text"].as_str().unwrap();
    assert!(text.starts_with("3 notification(s)"), "{text}");
    assert_eq!(
        relay.metric(
            "vitals_relay_notifications_folded_total",
            &["channel=\"sms\""]
        ),
        3.0
    );
    assert_eq!(
        relay.metric("vitals_relay_summaries_sent_total", &["channel=\"sms\""]),
        1.0
    );
    wait_for(LONG, "an empty outbox", || {
        (relay.metric("vitals_relay_outbox_pending", &[]) == 0.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(gw.requests().len(), 3);
}

#[test]
fn refuses_bad_input_and_bad_credentials_without_persisting() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(Duration::ZERO, "{}");
    let hash = bcrypt_hash("am-password");
    let config = relay_head(dir.path()).replace("[relay]\n", "[relay]\nmax_body_bytes = 4096\n")
        + &bearer_receiver("ops", &["sms"])
        + &format!(
            "\n[[relay.receivers]]\nname = \"basic\"\nauth = {{ type = \"basic\", users = {{ alertmanager = \"{hash}\" }} }}\nchannels = [\"sms\"]\n"
        )
        + "\n[[relay.receivers]]\nname = \"grafana\"\nauth = { type = \"hmac\", secret = \"env:RELAY_TEST_TOKEN\", header = \"X-Grafana-Alerting-Signature\", timestamp_header = \"X-Grafana-Alerting-Signature-Timestamp\" }\nchannels = [\"sms\"]\n"
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", &gw.url());
    let relay = Relay::start(dir.path(), &config);
    let good = am_payload("ops", "Bad", "firing", &[("Bad", "critical", "h")]);
    let check = |resp: (u16, String), status: u16, needle: &str| {
        assert_eq!(resp.0, status, "{}", resp.1);
        let v: serde_json::Value = serde_json::from_str(&resp.1).expect("a JSON error body");
        let e = v["error"].as_str().expect("an error field");
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        assert!(!resp.1.contains(TOKEN), "the secret is never echoed");
    };
    check(
        relay.post_auth("/webhook/ops", "{not json"),
        400,
        "not valid JSON",
    );
    check(
        relay.post_auth(
            "/webhook/ops",
            &good.replace("\"version\":\"4\"", "\"version\":\"3\""),
        ),
        400,
        "unsupported payload version",
    );
    check(
        relay.post_auth(
            "/webhook/ops",
            r#"{"version":"4","status":"firing","receiver":"ops","alerts":[]}"#,
        ),
        400,
        "groupKey",
    );
    check(
        relay.post_auth("/webhook", &good.replace("\"ops\"", "\"nobody\"")),
        404,
        "nobody",
    );
    let big = format!("{{\"version\":\"4\",\"pad\":\"{}\"}}", "x".repeat(8192));
    check(relay.post_auth("/webhook/ops", &big), 413, "larger than");
    check(relay.post("/webhook/ops", &[], &good), 401, "unauthorized");
    check(
        relay.post("/webhook/ops", &[("Authorization", "Bearer wrong")], &good),
        401,
        "unauthorized",
    );
    use base64_encode as b64;
    let bad_basic = format!("Basic {}", b64("alertmanager:wrong"));
    check(
        relay.post("/webhook/basic", &[("Authorization", &bad_basic)], &good),
        401,
        "unauthorized",
    );
    let unknown_user = format!("Basic {}", b64("mallory:am-password"));
    check(
        relay.post("/webhook/basic", &[("Authorization", &unknown_user)], &good),
        401,
        "unauthorized",
    );
    check(
        relay.post(
            "/webhook/grafana",
            &[
                ("X-Grafana-Alerting-Signature", "00ff"),
                ("X-Grafana-Alerting-Signature-Timestamp", "1700000000"),
            ],
            &good,
        ),
        401,
        "unauthorized",
    );
    assert_eq!(relay.metric("vitals_relay_outbox_pending", &[]), 0.0);
    assert_eq!(
        relay.metric(
            "vitals_relay_requests_total",
            &["receiver=\"ops\"", "code=\"401\""]
        ),
        2.0
    );
    assert!(gw.requests().is_empty(), "nothing refused was delivered");

    // The same credentials done right are accepted.
    let ok_basic = format!("Basic {}", b64("alertmanager:am-password"));
    assert!(count_ok(&relay.post(
        "/webhook/basic",
        &[("Authorization", &ok_basic)],
        &good
    )));
    let grafana = r#"{"version":"1","orgId":1,"state":"alerting","title":"[FIRING:1] Graf","message":"m",
      "groupKey":"g","status":"firing","receiver":"x","alerts":[{"status":"firing",
      "labels":{"alertname":"Graf"},"annotations":{},"startsAt":"2026-01-01T00:00:00Z","values":{"A":1}}]}"#;
    let ts = "1700000000";
    let sig = hmac_sha256_hex(TOKEN.as_bytes(), format!("{ts}:{grafana}").as_bytes());
    assert!(count_ok(&relay.post(
        "/webhook/grafana",
        &[
            ("X-Grafana-Alerting-Signature", &sig),
            ("X-Grafana-Alerting-Signature-Timestamp", ts)
        ],
        grafana
    )));
    let reqs = wait_for(LONG, "both accepted notifications delivered", || {
        let r = gw.requests();
        (r.len() == 2).then_some(r)
    });
    // The Grafana notification was read as such, not just accepted.
    assert!(
        reqs.iter().any(|r| r.body.contains("Graf")),
        "{:?}",
        reqs.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
}

#[test]
fn reload_rejects_a_bad_config_and_keeps_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(Duration::ZERO, "{}");
    let good = relay_head(dir.path())
        + &bearer_receiver("ops", &["sms"])
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", &gw.url());
    let relay = Relay::start(dir.path(), &good);
    std::fs::write(
        &relay.config,
        good.replace("channels = [\"sms\"]", "channels = [\"nope\"]"),
    )
    .unwrap();
    relay.signal("-HUP");
    wait_for(LONG, "the rejected SIGHUP reload", || {
        (relay.metric("vitals_relay_config_reloads_total", &["result=\"failure\""]) == 1.0)
            .then_some(())
    });
    assert_eq!(
        relay.metric("vitals_relay_config_last_reload_successful", &[]),
        0.0
    );
    let (status, body) = relay.post("/-/reload", &[], "");
    assert_eq!(status, 400);
    assert!(body.contains("no channel is named \\\"nope\\\""), "{body}");
    // The old configuration still works.
    let p = am_payload("ops", "Reload", "firing", &[("Reload", "critical", "h")]);
    assert!(count_ok(&relay.post_auth("/webhook/ops", &p)));
    // A good change is applied.
    std::fs::write(
        &relay.config,
        good.clone() + &bearer_receiver("second", &["sms"]),
    )
    .unwrap();
    let (status, body) = relay.post("/-/reload", &[], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        relay.metric("vitals_relay_config_last_reload_successful", &[]),
        1.0
    );
    assert!(count_ok(
        &relay.post_auth("/webhook/second", &p.replace("Reload", "Second"))
    ));
    wait_for(LONG, "both delivered", || {
        (gw.requests().len() == 2).then_some(())
    });
}

#[test]
fn real_alertmanager_routes_critical_to_mail_and_sms_and_warning_to_mail() {
    let am_bin = require("prometheus-alertmanager");
    let amtool = require("amtool");
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let smtp_port = free_port();
    let smtp = Smtp::start(smtp_port, &dir.path().join("mail"), "starttls", &certs);
    let gw = Gateway::start(Duration::ZERO, "{}");
    let config = relay_head(dir.path())
        + &bearer_receiver("critical", &["mail", "sms"])
        + &bearer_receiver("warning", &["mail"])
        + &email_channel("mail", smtp_port, "starttls", "plain", &certs)
        + &sms_channel(
            "sms",
            "gw",
            &["+15550001"],
            "matchers = ['severity=\"critical\"']",
        )
        + &http_provider("gw", &gw.url());
    let relay = Relay::start(dir.path(), &config);

    // The shipped Alertmanager config, pointed at this relay.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("alerting/alertmanager/alertmanager.yml"),
    )
    .unwrap();
    let token_file = dir.path().join("relay-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let am_config = shipped
        .replace(
            "http://vitals-relay:9798",
            &format!("http://{}", relay.addr),
        )
        .replace(
            "/etc/alertmanager/relay-token",
            token_file.to_str().unwrap(),
        )
        .replace("group_wait: 30s", "group_wait: 1s")
        .replace("group_interval: 5m", "group_interval: 2s");
    let am_path = dir.path().join("alertmanager.yml");
    std::fs::write(&am_path, am_config).unwrap();
    let am_port = free_port();
    let mut am = Command::new(am_bin)
        .arg(format!("--config.file={}", am_path.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("am").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alertmanager");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let am_addr: SocketAddr = format!("127.0.0.1:{am_port}").parse().unwrap();
    wait_for(LONG, "alertmanager ready", || {
        if let Ok(Some(s)) = am.try_wait() {
            panic!("alertmanager exited with {s}");
        }
        get(am_addr, "/-/ready")
            .filter(|(s, _)| *s == 200)
            .map(|_| ())
    });
    let _am = Kill(am);
    let add = |labels: &[&str]| {
        let out = Command::new(&amtool)
            .args(["alert", "add"])
            .args(labels)
            .arg("--annotation=summary=Injected by the test")
            .arg(format!("--alertmanager.url=http://{am_addr}"))
            .output()
            .expect("amtool");
        assert!(
            out.status.success(),
            "amtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    add(&[
        "alertname=PumpFailure",
        "severity=critical",
        "instance=pump-1",
    ]);
    add(&["alertname=TankLow", "severity=warning", "instance=tank-2"]);

    let mails = wait_for(
        Duration::from_secs(90),
        "both mails from Alertmanager",
        || {
            let m = smtp.mails();
            (m.len() >= 2).then_some(m)
        },
    );
    let subjects: BTreeSet<String> = mails
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert!(
        subjects.contains("[FIRING:1] PumpFailure instance=pump-1"),
        "{subjects:?}"
    );
    assert!(
        subjects.contains("[FIRING:1] TankLow instance=tank-2"),
        "{subjects:?}"
    );
    let sms = wait_for(LONG, "the critical SMS", || {
        let r = gw.requests();
        (!r.is_empty()).then_some(r)
    });
    assert!(sms[0].body.contains("PumpFailure"), "{}", sms[0].body);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        gw.requests().iter().all(|r| !r.body.contains("TankLow")),
        "warnings do not go to SMS"
    );
}

#[test]
fn shipped_relay_examples_and_alertmanager_config_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Their secrets live where the relay runs: checked without them.
    for f in ["examples/relay.toml", "examples/relay-sms.toml"] {
        let out = Command::new(common::vitals_bin())
            .args(["check", "--skip-secrets", "--config"])
            .arg(root.join(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("relay.receivers[0].auth.token (env:RELAY_TOKEN)"),
            "{f}: {stdout}"
        );
    }
    // A typo is rejected with the key and the file named.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(root.join("examples/relay.toml"))
            .unwrap()
            .replace("dedup_window", "dedup_windw"),
    )
    .unwrap();
    let out = Command::new(common::vitals_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("bad.toml") && err.contains("dedup_windw"),
        "{err}"
    );
    let amtool = require("amtool");
    let out = Command::new(amtool)
        .args(["check-config"])
        .arg(root.join("alerting/alertmanager/alertmanager.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn smtp_550_is_recorded_as_failed_not_retried_and_other_mail_keeps_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let mail_dir = dir.path().join("mail");
    let smtp = Smtp::start_with(
        port,
        &mail_dir,
        "starttls",
        &certs,
        SMTP_PASSWORD,
        &[("SMTP_REJECT_RCPT", "gone@example.com")],
    );
    let gone = email_channel("mail-gone", port, "starttls", "plain", &certs).replace(
        r#"to = ["oncall@example.com", "Ops Team <ops@example.com>"]"#,
        r#"to = ["gone@example.com"]"#,
    );
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail-gone", "mail"])
        + &gone
        + &email_channel("mail", port, "starttls", "plain", &certs);
    let mut relay = Relay::start(dir.path(), &config);
    for i in 0..2 {
        let body = am_payload(
            "ops",
            &format!("Gone{i}"),
            "firing",
            &[("Gone", "critical", "h")],
        );
        assert!(count_ok(&relay.post_auth("/webhook", &body)));
    }
    wait_for(LONG, "both permanent failures counted", || {
        (relay.metric(
            "vitals_relay_notifications_failed_total",
            &["channel=\"mail-gone\"", "reason=\"smtp_5xx\""],
        ) == 2.0)
            .then_some(())
    });
    // The refused channel's next notification was still tried, and the
    // other channel delivered both.
    wait_for(LONG, "both mails on the working channel", || {
        (smtp.mails().len() >= 2).then_some(())
    });
    // More arrive after the failures and still flow.
    let body = am_payload("ops", "Gone2", "firing", &[("Gone", "critical", "h")]);
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    wait_for(LONG, "the third mail and failure", || {
        (smtp.mails().len() >= 3
            && relay.metric(
                "vitals_relay_notifications_failed_total",
                &["channel=\"mail-gone\""],
            ) == 3.0)
            .then_some(())
    });
    // Not retried: retries back off from 100 ms, so two seconds would show them.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        read_log(&mail_dir, "rejects.jsonl").len(),
        3,
        "one RCPT each"
    );
    assert_eq!(
        relay.metric(
            "vitals_relay_delivery_retries_total",
            &["channel=\"mail-gone\""]
        ),
        0.0
    );
    assert_eq!(relay.metric("vitals_relay_outbox_pending", &[]), 0.0);
    let subjects: BTreeSet<String> = smtp
        .mails()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    assert!(
        smtp.mails()
            .iter()
            .all(|m| !m["rcpt_tos"].to_string().contains("gone@")),
        "the refused recipient got nothing"
    );

    // The failures are recorded in the outbox file with reason and detail.
    relay.kill9();
    let db = redb::Database::open(dir.path().join("data/outbox.redb")).expect("open the outbox");
    let read = redb::ReadableDatabase::begin_read(&db).unwrap();
    let failed = read
        .open_table(redb::TableDefinition::<u64, &[u8]>::new("failed"))
        .unwrap();
    let records: Vec<serde_json::Value> = redb::ReadableTable::iter(&failed)
        .unwrap()
        .map(|row| serde_json::from_slice(row.unwrap().1.value()).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r["reason"], "smtp_5xx");
        assert_eq!(r["job"]["channel"], "mail-gone");
        assert!(r["detail"].as_str().unwrap().contains("550"), "{r}");
    }
}

/// A 4 MiB tmpfs for a full-disk test's outbox, or `None` (with the reason
/// printed) where mounting is not allowed; scripts/test runs as root.
fn outbox_tmpfs(data: &Path, test: &str) -> Option<Tmpfs> {
    Tmpfs::mount(data, "4m")
        .map_err(|e| {
            eprintln!(
                "SKIPPED {test}: cannot mount a tmpfs for the outbox ({e}); \
                 this test needs root or CAP_SYS_ADMIN"
            )
        })
        .ok()
}

#[test]
fn full_disk_answers_503_and_loses_nothing_already_accepted() {
    let dir = tempfile::tempdir().unwrap();
    // The outbox lives on a small tmpfs the test can fill (needs root, as
    // scripts/test runs in CI; elsewhere the test says why it did not run).
    let data = dir.path().join("data");
    let Some(_tmpfs) = outbox_tmpfs(
        &data,
        "full_disk_answers_503_and_loses_nothing_already_accepted",
    ) else {
        return;
    };
    let certs = make_certs(dir.path());
    // The SMTP server stays down until the end, so everything accepted
    // must come out of the outbox file after a SIGKILL and restart.
    let port = free_port();
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "plain", &certs);
    let mut relay = Relay::start(dir.path(), &config);
    let post = |relay: &Relay, group: &str| {
        let body = am_payload("ops", group, "firing", &[("Full", "critical", "h")]);
        relay.post_auth("/webhook/ops", &body)
    };
    let mut accepted = BTreeSet::new();
    for i in 0..5 {
        let g = format!("Before{i}");
        assert!(count_ok(&post(&relay, &g)));
        accepted.insert(g);
    }

    let filler = data.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0, "the tmpfs took some filler");
    let mut refused = None;
    for i in 0..1000 {
        let g = format!("During{i}");
        let resp = post(&relay, &g);
        match resp.0 {
            200 => {
                assert!(count_ok(&resp), "{}", resp.1);
                accepted.insert(g);
            }
            503 => {
                refused = Some(resp.1);
                break;
            }
            other => panic!("unexpected {other}: {}", resp.1),
        }
    }
    let refused = refused.expect("a 503 once the disk is full");
    let v: serde_json::Value = serde_json::from_str(&refused).expect("a JSON error body");
    assert!(
        v["error"].as_str().unwrap().contains("cannot persist"),
        "{refused}"
    );
    // Still full: still refused, and counted.
    assert_eq!(post(&relay, "StillFull").0, 503);
    assert!(relay.metric("vitals_relay_persist_errors_total", &[]) >= 2.0);

    // Space again: new notifications are accepted again.
    std::fs::remove_file(&filler).unwrap();
    wait_for(LONG, "the relay to accept again", || {
        (post(&relay, "After0").0 == 200).then_some(())
    });
    accepted.insert("After0".to_string());
    assert!(count_ok(&post(&relay, "After1")));
    accepted.insert("After1".to_string());

    // Nothing accepted was lost: kill the relay, start the SMTP server,
    // restart the relay from its outbox file.
    relay.kill9();
    let smtp = Smtp::start(port, &dir.path().join("mail"), "starttls", &certs);
    relay.spawn();
    let n = accepted.len();
    wait_for(LONG, "every accepted notification delivered", || {
        (smtp.mails().len() >= n).then_some(())
    });
    wait_for(LONG, "an empty outbox", || {
        (relay.metric("vitals_relay_outbox_pending", &[]) == 0.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let delivered: Vec<String> = smtp
        .mails()
        .iter()
        .map(|m| {
            let subject = m["subject"].as_str().unwrap();
            subject
                .strip_prefix("[FIRING:1] ")
                .unwrap_or(subject)
                .to_string()
        })
        .collect();
    assert_eq!(delivered.len(), n, "each exactly once: {delivered:?}");
    let delivered: BTreeSet<String> = delivered.into_iter().collect();
    assert_eq!(delivered, accepted, "exactly the accepted ones");
}

#[test]
fn deliveries_during_a_full_disk_are_recorded_and_not_repeated_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_tmpfs) = outbox_tmpfs(
        &data,
        "deliveries_during_a_full_disk_are_recorded_and_not_repeated_after_a_restart",
    ) else {
        return;
    };
    let certs = make_certs(dir.path());
    let port = free_port();
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "plain", &certs);
    let mut relay = Relay::start(dir.path(), &config);
    const N: usize = 4;
    for i in 0..N {
        let body = am_payload(
            "ops",
            &format!("Mark{i}"),
            "firing",
            &[("Mark", "critical", "h")],
        );
        assert!(count_ok(&relay.post_auth("/webhook/ops", &body)));
    }
    // Fill the disk until the outbox refuses to commit.
    let filler = data.join("filler");
    fill(&filler);
    let mut n = N;
    let mut attempt = 0;
    wait_for(LONG, "a 503 on the full disk", || {
        attempt += 1;
        let g = format!("Full{attempt}");
        let body = am_payload("ops", &g, "firing", &[("Full", "critical", "h")]);
        match relay.post_auth("/webhook/ops", &body).0 {
            503 => Some(()),
            _ => {
                n += 1;
                None
            }
        }
    });
    // The SMTP server comes up while the disk is full: everything is
    // delivered; recording that may fail (the marks are kept and committed
    // again, every second, without new traffic) or fit in freed pages.
    let smtp = Smtp::start(port, &dir.path().join("mail"), "starttls", &certs);
    wait_for(LONG, "every mail delivered", || {
        (smtp.mails().len() >= n).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    std::fs::remove_file(&filler).unwrap();
    wait_for(LONG, "the deliveries recorded", || {
        (relay.metric("vitals_relay_outbox_pending", &[]) == 0.0).then_some(())
    });
    relay.kill9();
    relay.spawn();
    assert_eq!(relay.metric("vitals_relay_outbox_pending", &[]), 0.0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(smtp.mails().len(), n, "nothing delivered twice");
}

#[test]
fn xoauth2_login_with_a_token_file_and_a_refused_token_retried_until_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let mail_dir = dir.path().join("mail");
    const FRESH: &str = "ya29.fresh-access-token";
    const EXPIRED: &str = "ya29.expired-access-token";
    let smtp = Smtp::start_with(port, &mail_dir, "starttls", &certs, FRESH, &[]);
    let token_file = dir.path().join("smtp-token");
    std::fs::write(&token_file, format!("{EXPIRED}\n")).unwrap();
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "xoauth2", &certs).replace(
            "password = \"env:RELAY_SMTP_PASSWORD\"",
            &format!("password = \"file:{}\"", token_file.display()),
        );
    let log = dir.path().join("relay.log");
    let relay = Relay::start_with(
        dir.path(),
        &config,
        &["--log.level", "debug"],
        None,
        Some(log.clone()),
    );
    let body = am_payload("ops", "OAuth", "firing", &[("OAuth", "warning", "h")]);
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    // The server refuses the expired token (535): retried, not dropped.
    wait_for(LONG, "refused logins retried", || {
        (relay.metric(
            "vitals_relay_delivery_retries_total",
            &["channel=\"mail\"", "reason=\"smtp_auth\""],
        ) >= 2.0)
            .then_some(())
    });
    assert_eq!(relay.metric("vitals_relay_outbox_pending", &[]), 1.0);
    assert!(smtp.mails().is_empty());
    // The token is refreshed in its file; a reload picks it up.
    std::fs::write(&token_file, format!("{FRESH}\n")).unwrap();
    let (status, resp) = relay.post("/-/reload", &[], "");
    assert_eq!(status, 200, "{resp}");
    let mails = wait_for(LONG, "the mail after the reload", || {
        let m = smtp.mails();
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["subject"], "[FIRING:1] OAuth");
    let auths = read_log(&mail_dir, "auths.jsonl");
    assert!(
        auths.iter().all(|a| a["mechanism"] == "XOAUTH2"),
        "only XOAUTH2 was used: {auths:?}"
    );
    assert_eq!(auths.last().unwrap()["ok"], true);
    assert!(auths.iter().any(|a| a["ok"] == false));
    assert_eq!(
        relay.metric(
            "vitals_relay_notifications_failed_total",
            &["channel=\"mail\""]
        ),
        0.0
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Delivery failed; will retry."), "{text}");
    for secret in [FRESH, EXPIRED, TOKEN] {
        assert!(!text.contains(secret), "a token reached the log");
    }
}

#[test]
fn web_config_file_serves_webhooks_over_tls_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let gw = Gateway::start(Duration::ZERO, "{}");
    const PW: &str = "am-over-tls";
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: leaf.pem\n  key_file: leaf.key\n  min_version: TLS12\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  alertmanager: {}\n",
            bcrypt_hash(PW)
        ),
    )
    .unwrap();
    // The listener does the authentication, so the receiver needs none.
    let config = relay_head(dir.path())
        + "\n[[relay.receivers]]\nname = \"ops\"\nauth = { type = \"none\" }\nchannels = [\"sms\"]\n"
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", &gw.url());
    let client = TlsClient {
        ca: certs.ca.clone(),
        user: "alertmanager".into(),
        password: PW.into(),
    };
    let relay = Relay::start_with(
        dir.path(),
        &config,
        &["--web.config.file", web.to_str().unwrap()],
        Some(client),
        None,
    );
    let t = relay.tls.as_ref().unwrap();
    let body = am_payload("ops", "Tls", "firing", &[("Tls", "critical", "h")]);
    let post = |creds: Option<&str>| {
        let mut args = vec!["-H", "Content-Type: application/json", "-d", &body];
        if let Some(c) = creds {
            args.extend(["-u", c]);
        }
        args.push("/webhook/ops");
        relay.curl(t, &args)
    };
    let (code, text) = post(None);
    assert_eq!(code, 401, "{text}");
    let (code, text) = post(Some("alertmanager:wrong"));
    assert_eq!(code, 401, "{text}");
    let (code, text) = post(Some(&format!("mallory:{PW}")));
    assert_eq!(code, 401, "{text}");
    let (code, text) = post(Some(&format!("alertmanager:{PW}")));
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"accepted\""), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{text}"
    );
    let (code, text) = relay.curl(t, &["-u", &format!("alertmanager:{PW}"), "/metrics"]);
    assert_eq!(code, 200);
    assert!(text.contains("vitals_relay_requests_total"));
    // Plain HTTP to the TLS port gets a clear 400.
    let (status, answer) = get(relay.addr, "/healthz").expect("an answer to plain HTTP");
    assert_eq!(status, 400);
    assert!(
        answer.contains("HTTP request to an HTTPS server"),
        "{answer}"
    );
    wait_for(LONG, "the one authenticated notification delivered", || {
        (gw.requests().len() == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gw.requests().len(), 1, "refused requests delivered nothing");

    // A bad web configuration stops the relay at start with the key named.
    let bad = dir.path().join("bad-web.yml");
    std::fs::write(&bad, "basic_auth_users:\n  am: plain-text\n").unwrap();
    let out = Command::new(common::vitals_bin())
        .args(["relay", "--config"])
        .arg(&relay.config)
        .arg("--web.config.file")
        .arg(&bad)
        .arg("--web.listen-address")
        .arg(format!("127.0.0.1:{}", free_port()))
        .env("RELAY_TEST_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad-web.yml") && err.contains("basic_auth_users.am"),
        "{err}"
    );
}

/// Sum of every sample of `name` whose series contains all of `parts`.
fn metric_sum(metrics: &str, name: &str, parts: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next() == Some(name) && parts.iter().all(|p| series.contains(p)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The Message-IDs the catcher stored, with how often each arrived.
fn message_id_counts(mails: &[serde_json::Value]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for m in mails {
        *counts
            .entry(m["message_id"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// An alert name and label values ten times longer than an SMTP line may
/// be (RFC 5322: 998 characters). The catcher refuses a longer line with
/// `500 Line too long` as real servers do, so the mail arrives only if every
/// header is folded or encoded and every body line encoded.
#[test]
fn a_10000_character_alert_name_and_label_values_arrive_intact() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let mail_dir = dir.path().join("mail");
    let smtp = Smtp::start(port, &mail_dir, "starttls", &certs);
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "plain", &certs);
    let relay = Relay::start(dir.path(), &config);
    // No spaces anywhere, so nothing can be folded at a space.
    let name: String = (0..10_000u32)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .collect();
    let cluster: String = (0..10_000u32)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    let unicode = "ünïcødé✓".repeat(1250);
    let description = "x".repeat(10_000);
    let body = serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{name}\"}}"),
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "ops",
        "groupLabels": {"alertname": name, "cluster": cluster},
        "commonLabels": {"alertname": name},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": name, "cluster": cluster, "detail": unicode},
            "annotations": {"summary": unicode, "description": description},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": format!("http://prometheus:9090/graph?g0.expr={name}"),
            "fingerprint": "00000000000000aa",
        }],
    })
    .to_string();
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    let mail = wait_for(LONG, "the mail, or its failure", || {
        if let Some(m) = smtp.mails().into_iter().next() {
            return Some(m);
        }
        let failed = metric_sum(
            &relay.metrics(),
            "vitals_relay_notifications_failed_total",
            &["channel=\"mail\""],
        );
        assert!(
            failed == 0.0,
            "the long alert was recorded as failed (the server refused a line)"
        );
        None
    });
    assert_eq!(
        mail["subject"].as_str().unwrap(),
        format!("[FIRING:1] {name} cluster={cluster}")
    );
    let text = mail["text"].as_str().unwrap();
    for needle in [&name, &cluster, &unicode, &description] {
        assert!(text.contains(needle.as_str()), "text body lacks a value");
    }
    assert!(text.contains(&format!("[FIRING] {name} since")));
    let html = mail["html"].as_str().unwrap();
    assert!(html.contains(&format!("<b>[FIRING] {name}</b>")));
    assert!(html.contains(&unicode));
    // What went over the wire: no line above 998 characters.
    let mut files = 0;
    for entry in std::fs::read_dir(mail_dir.join("new")).unwrap() {
        let raw = std::fs::read(entry.unwrap().path()).unwrap();
        files += 1;
        let longest = raw
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
            .max()
            .unwrap_or(0);
        assert!(longest <= 998, "a line of {longest} characters");
    }
    assert_eq!(files, 1);
}

/// A send the server has accepted is recorded at once, not when the
/// slowest send of its batch ends: killed while one send of a batch of four
/// is held by the server, the relay repeats only that one after a restart.
#[test]
fn a_delivered_mail_is_recorded_at_once_not_after_a_slower_send_of_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let mail_dir = dir.path().join("mail");
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "plain", &certs);
    // No SMTP server yet: the four notifications queue up and go out as one
    // batch of four (the channel's parallelism) once it answers.
    let mut relay = Relay::start(dir.path(), &config);
    let names = ["Slow", "Fast1", "Fast2", "Fast3"];
    for name in names {
        let body = am_payload("ops", name, "firing", &[(name, "critical", "h")]);
        assert!(count_ok(&relay.post_auth("/webhook", &body)));
    }
    wait_for(LONG, "a failed connection attempt", || {
        (relay.metric("vitals_relay_delivery_retries_total", &["channel=\"mail\""]) >= 1.0)
            .then_some(())
    });
    let smtp = Smtp::start_with(
        port,
        &mail_dir,
        "starttls",
        &certs,
        SMTP_PASSWORD,
        &[("SMTP_DELAY_SUBJECT", "Slow"), ("SMTP_DELAY_SECONDS", "60")],
    );
    wait_for(LONG, "the three fast mails", || {
        (smtp.mails().len() >= 3).then_some(())
    });
    // Their outcome is known; the outbox commits it within milliseconds
    // (the slow send is held for a minute).
    std::thread::sleep(Duration::from_secs(2));
    relay.kill9();
    drop(smtp);
    let smtp = Smtp::start(port, &mail_dir, "starttls", &certs);
    relay.spawn();
    wait_for(LONG, "the slow mail after the restart", || {
        smtp.mails()
            .iter()
            .any(|m| m["subject"] == "[FIRING:1] Slow")
            .then_some(())
    });
    wait_for(LONG, "an empty outbox", || {
        (relay.metric("vitals_relay_outbox_pending", &[]) == 0.0).then_some(())
    });
    let mails = smtp.mails();
    for name in names {
        let n = mails
            .iter()
            .filter(|m| m["subject"] == format!("[FIRING:1] {name}"))
            .count();
        assert_eq!(n, 1, "{name} arrived {n} times");
    }
    assert!(message_id_counts(&mails).values().all(|&n| n == 1));
}

/// The delivery guarantee, measured: 200 notifications, the relay SIGKILLed
/// ten times while it delivers them. Nothing may be lost; a notification
/// may arrive twice (same Message-ID) only if its send was in flight at a
/// kill, so duplicates are at most the channel's parallelism per kill. The
/// figure is printed (SECURITY.md quotes it).
#[test]
fn repeated_sigkill_mid_delivery_loses_nothing_and_bounds_duplicates() {
    const N: usize = 200;
    const KILLS: usize = 10;
    const PARALLELISM: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let smtp = Smtp::start(port, &dir.path().join("mail"), "starttls", &certs);
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "plain", &certs);
    let mut relay = Relay::start(dir.path(), &config);
    for i in 0..N {
        let body = am_payload(
            "ops",
            &format!("Kill{i}"),
            "firing",
            &[("Kill", "critical", "h")],
        );
        assert!(count_ok(&relay.post_auth("/webhook", &body)));
    }
    let mut kills = 0;
    for i in 0..KILLS {
        let seen = smtp.mails().len();
        // Kill at varied points: after 3 to 13 more mails, then 0-39 ms.
        let more = 3 + (i * 7) % 11;
        let unique = wait_for(LONG, "more deliveries", || {
            let mails = smtp.mails();
            let unique = message_id_counts(&mails).len();
            (mails.len() >= seen + more || unique >= N).then_some(unique)
        });
        if unique >= N {
            break;
        }
        std::thread::sleep(Duration::from_millis(((i * 13) % 40) as u64));
        relay.kill9();
        kills += 1;
        relay.spawn();
    }
    assert!(kills >= 5, "only {kills} kills happened mid-delivery");
    wait_for(Duration::from_secs(180), "every notification", || {
        (message_id_counts(&smtp.mails()).len() >= N).then_some(())
    });
    wait_for(LONG, "an empty outbox", || {
        (relay.metric("vitals_relay_outbox_pending", &[]) == 0.0).then_some(())
    });
    let mails = smtp.mails();
    let counts = message_id_counts(&mails);
    let duplicates = mails.len() - counts.len();
    eprintln!(
        "relay SIGKILL test: {N} notifications, {kills} kills mid-delivery, parallelism {PARALLELISM}: \
         {} mails, {duplicates} duplicate(s) by Message-ID ({:.2} per kill), none lost",
        mails.len(),
        duplicates as f64 / kills as f64
    );
    assert_eq!(counts.len(), N, "none lost");
    assert!(
        duplicates <= kills * PARALLELISM,
        "{duplicates} duplicates over {kills} kills"
    );
}

/// `vitals check` reads a relay configuration's secrets as `vitals relay`
/// does and fails with the same message; `--skip-secrets` (for a machine
/// without them) passes and lists what it did not read.
#[test]
fn check_reads_relay_secrets_as_the_relay_does() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("gateway-token");
    let config = relay_head(dir.path())
        + "\n[[relay.receivers]]\nname = \"ops\"\nauth = { type = \"bearer\", token = \"env:VITALS_TEST_UNSET_TOKEN\" }\nchannels = [\"sms\"]\n"
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", "http://127.0.0.1:9")
        + &format!("bearer_token = \"file:{}\"\n", token_file.display());
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, &config).unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(common::vitals_bin())
            .args(args)
            .arg("--config")
            .arg(&path)
            .args(if args[0] == "relay" {
                vec![
                    "--web.listen-address".to_string(),
                    format!("127.0.0.1:{}", free_port()),
                ]
            } else {
                vec![]
            })
            .env_remove("VITALS_TEST_UNSET_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The token file is missing: both refuse, with the same line.
    let (code, _, check_err) = run(&["check"], &[("VITALS_TEST_UNSET_TOKEN", "t")]);
    let (relay_code, _, relay_err) = run(&["relay"], &[("VITALS_TEST_UNSET_TOKEN", "t")]);
    assert_eq!((code, relay_code), (Some(2), Some(2)), "{check_err}");
    assert!(
        check_err.contains("relay.sms_providers[0]") && check_err.contains("gateway-token"),
        "{check_err}"
    );
    assert_eq!(check_err.trim(), relay_err.trim());
    // The environment variable is unset: both refuse, naming key and variable.
    std::fs::write(&token_file, "gateway-secret\n").unwrap();
    let (code, _, check_err) = run(&["check"], &[]);
    let (relay_code, _, relay_err) = run(&["relay"], &[]);
    assert_eq!((code, relay_code), (Some(2), Some(2)), "{check_err}");
    assert!(
        check_err.contains("relay.receivers[0].auth.token")
            && check_err.contains("environment variable VITALS_TEST_UNSET_TOKEN is not set"),
        "{check_err}"
    );
    assert_eq!(check_err.trim(), relay_err.trim());
    // Everything there: check passes.
    let (code, out, err) = run(&["check"], &[("VITALS_TEST_UNSET_TOKEN", "t")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(": OK") && !out.contains("not read"), "{out}");
    // --skip-secrets: passes without them and says what it did not read.
    std::fs::remove_file(&token_file).unwrap();
    let (code, out, err) = run(&["check", "--skip-secrets"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("not read (--skip-secrets)")
            && out.contains("relay.receivers[0].auth.token (env:VITALS_TEST_UNSET_TOKEN)")
            && out.contains(&format!(
                "relay.sms_providers[0].bearer_token (file:{})",
                token_file.display()
            )),
        "{out}"
    );
}

/// Links in the HTML mail are made only of http/https URLs; a
/// `javascript:` (or any other) generator URL is shown as escaped text.
#[test]
fn html_mail_links_only_http_and_https_urls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let smtp = Smtp::start(port, &dir.path().join("mail"), "starttls", &certs);
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "plain", &certs);
    let relay = Relay::start(dir.path(), &config);
    let body = am_payload("ops", "Xss", "firing", &[("Xss", "critical", "h")])
        .replace(
            "http://prometheus:9090/graph?g0.expr=Xss",
            "javascript:alert(document.cookie)",
        )
        .replace("http://alertmanager:9093", " JAVASCRIPT:alert(2)");
    assert!(body.contains("javascript:alert(document.cookie)"));
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    let mail = wait_for(LONG, "the mail", || smtp.mails().into_iter().next());
    let html = mail["html"].as_str().unwrap();
    let lower = html.to_lowercase();
    assert!(!lower.contains("href=\"javascript"), "{html}");
    assert!(!lower.contains("href=\" javascript"), "{html}");
    assert!(
        html.contains("Source: javascript:alert(document.cookie)"),
        "{html}"
    );
    // An http(s) URL still becomes a link.
    let body = am_payload("ops", "Fine", "firing", &[("Fine", "critical", "h")]);
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    let mail = wait_for(LONG, "the second mail", || smtp.mails().get(1).cloned());
    let html = mail["html"].as_str().unwrap();
    assert!(
        html.contains(
            "<a href=\"http:&#x2f;&#x2f;prometheus:9090&#x2f;graph?g0.expr=Fine\">Source</a>"
        ),
        "{html}"
    );
}

// ------------------------------------------------------- small test utils

/// A bcrypt hash (low cost, for speed) made with the relay's own bcrypt crate.
fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(msg);
    hex::encode(mac.finalize().into_bytes())
}
