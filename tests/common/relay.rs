//! `vitals relay` and its peers' stand-ins: the relay process (its data
//! directory survives restarts), an HTTP server standing in for SMS
//! gateways with scripted answers, Alertmanager payloads and relay
//! configuration snippets.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::certs::Certs;
use super::smtp::{SMTP_PASSWORD, SMTP_USER};
use super::{free_port, get, http, require, sample_value, wait_for};

/// The bearer token of the test receivers (`env:RELAY_TEST_TOKEN`).
pub const TOKEN: &str = "test-token-123";
/// How long the relay tests wait for a peer.
pub const LONG: Duration = Duration::from_secs(60);

/// One request the gateway stand-in received.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP server standing in for an SMS gateway: records every request
/// and answers from a script of (status, extra headers, body), then 200.
pub struct Gateway {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Req>>>,
    pub script: Script,
}

impl Gateway {
    pub fn start(delay: Duration, default_body: &'static str) -> Gateway {
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

    pub fn push(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        self.script.lock().unwrap().push_back((
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body.to_string(),
        ));
    }

    pub fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub type Script = Arc<Mutex<VecDeque<(u16, Vec<(String, String)>, String)>>>;

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
pub struct Relay {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub config: PathBuf,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Set when the listener is HTTPS with basic auth (readiness via curl).
    pub tls: Option<TlsClient>,
    /// Where stderr goes when it is to be read by the test.
    pub log: Option<PathBuf>,
}

/// How curl reaches a relay behind a web configuration file.
pub struct TlsClient {
    pub ca: PathBuf,
    pub user: String,
    pub password: String,
}

impl Relay {
    pub fn start(dir: &Path, config: &str) -> Relay {
        Relay::start_with(dir, config, &[], None, None)
    }

    pub fn start_with(
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

    pub fn spawn(&mut self) {
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
        let mut child = Command::new(super::vitals_bin())
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
    pub fn curl(&self, t: &TlsClient, args: &[&str]) -> (u32, String) {
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

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        let mut h = vec![("Content-Type", "application/json")];
        h.extend_from_slice(headers);
        http(self.addr, "POST", path, &h, body.as_bytes()).expect("POST to the relay")
    }

    pub fn post_auth(&self, path: &str, body: &str) -> (u16, String) {
        let auth = format!("Bearer {TOKEN}");
        self.post(path, &[("Authorization", &auth)], body)
    }

    /// POST (with the receivers' bearer token) to `path` one firing group
    /// `group` for receiver `ops` with one alert `alert` of `severity` on
    /// instance `h`.
    pub fn fire(&self, path: &str, group: &str, alert: &str, severity: &str) -> (u16, String) {
        let body = am_payload("ops", group, "firing", &[(alert, severity, "h")]);
        self.post_auth(path, &body)
    }

    /// [`Relay::fire`] `n` groups `{alert}0`, `{alert}1`, … of one alert
    /// `alert` each, and assert that every one was accepted.
    pub fn fire_each(&self, path: &str, alert: &str, severity: &str, n: usize) {
        for i in 0..n {
            let resp = self.fire(path, &format!("{alert}{i}"), alert, severity);
            assert!(count_ok(&resp), "{alert}{i}: {resp:?}");
        }
    }

    /// Wait ([`LONG`]) until nothing is left in the outbox.
    pub fn wait_outbox_empty(&self) {
        wait_for(LONG, "an empty outbox", || {
            (self.metric("vitals_relay_outbox_pending", &[]) == 0.0).then_some(())
        });
    }

    pub fn metrics(&self) -> String {
        let (s, body) = get(self.addr, "/metrics").expect("GET /metrics");
        assert_eq!(s, 200);
        body
    }

    pub fn metric(&self, name: &str, parts: &[&str]) -> f64 {
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
pub fn am_payload(
    receiver: &str,
    group: &str,
    status: &str,
    alerts: &[(&str, &str, &str)],
) -> String {
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

pub fn relay_head(dir: &Path) -> String {
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

pub fn email_channel(name: &str, port: u16, tls: &str, auth: &str, certs: &Certs) -> String {
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

pub fn bearer_receiver(name: &str, channels: &[&str]) -> String {
    format!(
        "\n[[relay.receivers]]\nname = \"{name}\"\nauth = {{ type = \"bearer\", token = \"env:RELAY_TEST_TOKEN\" }}\nchannels = {channels:?}\n"
    )
}

pub fn http_provider(name: &str, url: &str) -> String {
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

pub fn sms_channel(name: &str, provider: &str, to: &[&str], extra: &str) -> String {
    format!(
        "\n[[relay.channels]]\nname = \"{name}\"\ntype = \"sms\"\nprovider = \"{provider}\"\nto = {to:?}\n{extra}\n"
    )
}

pub fn count_ok(resp: &(u16, String)) -> bool {
    resp.0 == 200 && resp.1.contains("\"accepted\"")
}

/// Sum of every sample of `name` whose series contains all of `parts`.
/// The sum of every sample `name{labels}` whose series text contains every
/// one of `parts`.
pub fn metric_sum(metrics: &str, name: &str, parts: &[&str]) -> f64 {
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
/// How many mails carry each Message-ID.
pub fn message_id_counts(mails: &[serde_json::Value]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for m in mails {
        *counts
            .entry(m["message_id"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    counts
}
