//! Test harness shared by the integration tests: start the real `vitals`
//! binary on a free loopback port, talk plain HTTP to it, wait for
//! conditions, and check that external tools the tests need are installed.
//! The real peers the tests start live in the submodules: certificates,
//! PostgreSQL, MariaDB, SMTP, Prometheus, Alertmanager and `vitals relay`;
//! golden `/metrics` fixtures in [`golden`]. One harness for every test
//! file: reuse these, do not copy them.
#![allow(dead_code)]

pub mod alertmanager;
pub mod certs;
pub mod golden;
pub mod mariadb;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod relay;
pub mod smtp;
pub mod stack;
pub mod wait;

#[allow(unused_imports)]
pub use wait::{WAIT, metric, wait_absent, wait_value};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `vitals` binary built for these tests.
pub fn vitals_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vitals"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Panic with a clear message when an external tool is missing.
pub fn require(cmd: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{cmd}` is not installed; run scripts/test, which installs what the tests need")
    })
}

/// Poll `cond` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // One write: a server that answers early and closes (plain HTTP on a
    // TLS port) would otherwise fail the body's write with a broken pipe.
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let written = stream.write_all(&bytes);
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        // Nothing came back: report why (the failed write first).
        written?;
        read?;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET a path; `None` while the server is not answering.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http(addr, "GET", path, &[], b"").ok()
}

/// A running `vitals` process, killed when dropped.
pub struct Vitals {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Vitals {
    /// Start `vitals run` with `config` (TOML) on a free port and wait
    /// until `/readyz` answers 200.
    pub fn start(config: &str) -> Vitals {
        Self::start_with(config, &[])
    }

    /// Like [`Vitals::start`], with extra command-line arguments.
    pub fn start_with(config: &str, extra_args: &[&str]) -> Vitals {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vitals.toml");
        std::fs::write(&path, config).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(vitals_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--web.listen-address")
            .arg(addr.to_string())
            // POST /-/reload, which tests use, needs it since it is gated.
            .arg("--web.enable-lifecycle")
            .args(extra_args)
            .args(own_history(config, &dir))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vitals");
        let mut v = Vitals { child, addr, dir };
        let addr = v.addr;
        let child = &mut v.child;
        wait_for(Duration::from_secs(20), "vitals to become ready", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("vitals exited early with {status}");
            }
            get(addr, "/readyz").filter(|(s, _)| *s == 200).map(|_| ())
        });
        v
    }

    /// Start `vitals run` with `config` and a web configuration file that
    /// turns on TLS; waits until the port accepts connections.
    pub fn start_tls(config: &str, web_config: &Path) -> Vitals {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vitals.toml");
        std::fs::write(&path, config).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(vitals_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--web.listen-address")
            .arg(addr.to_string())
            .arg("--web.config.file")
            .arg(web_config)
            .arg("--web.enable-lifecycle")
            .args(own_history(config, &dir))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vitals");
        let mut v = Vitals { child, addr, dir };
        let child = &mut v.child;
        wait_for(Duration::from_secs(20), "vitals to listen", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("vitals exited early with {status}");
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ())
        });
        v
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The body of `/metrics`.
    pub fn metrics(&self) -> String {
        let (status, body) = get(self.addr, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "GET /metrics");
        body
    }

    /// Send SIGTERM and wait for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Each instance keeps its history and detector state in its own temp dir
/// (not `data/` in the working directory, shared by every test), unless
/// the test sets `[history] path` itself
/// (`--storage.path` overrides `[history] path`, so it is passed only then).
fn own_history(config: &str, dir: &tempfile::TempDir) -> Vec<std::ffi::OsString> {
    let sets_path = toml::from_str::<toml::Table>(config)
        .ok()
        .and_then(|t| t.get("history")?.get("path").cloned())
        .is_some();
    if sets_path {
        Vec::new()
    } else {
        vec!["--storage.path".into(), dir.path().join("data").into()]
    }
}

impl Drop for Vitals {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first sample line `name{labels} value` whose series
/// text (name plus labels) contains every one of `parts`.
pub fn sample_value(metrics: &str, name: &str, parts: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            if base == name && parts.iter().all(|p| series.contains(p)) {
                value.parse().ok()
            } else {
                None
            }
        })
}

/// Run `promtool check metrics` on an exposition; returns its findings.
pub fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    let promtool = require("promtool");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.trim().is_empty(), text)
}

/// A Mosquitto process on a free loopback port with its own configuration
/// directory, killed on drop.
pub struct Broker {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Broker {
    /// One anonymous plain listener.
    pub fn start() -> Broker {
        Self::start_with("")
    }

    /// Same, with `extra` general settings (lines ending in `\n`).
    pub fn start_with(extra: &str) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        // `user root`: as root, Mosquitto would otherwise switch to a user
        // that cannot read the private temp dir.
        let conf = format!(
            "user root\npersistence false\nlog_dest stderr\nlog_type error\n{extra}\
             listener {port} 127.0.0.1\nallow_anonymous true\n"
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut b = Broker {
            child: None,
            dir,
            port,
        };
        b.spawn();
        b
    }

    /// Start (again, after [`Broker::kill`]) and wait until it listens.
    pub fn spawn(&mut self) {
        let child = Command::new(require("mosquitto"))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(60), "mosquitto to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// SIGKILL: no clean disconnect for anyone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Publish with QoS 1 and wait for the broker's acknowledgement.
    pub fn publish(&self, topic: &str, payload: &str) {
        use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};
        let mut o = MqttOptions::new(format!("test-pub-{}", free_port()), "127.0.0.1", self.port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = Client::new(o, 10);
        client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .expect("queue publish");
        for event in conn.iter() {
            match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = client.disconnect();
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => panic!("publishing to the test broker failed: {e}"),
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tmpfs mounted for one test, unmounted (lazily) when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (e.g. "4m") at `at`; needs root or CAP_SYS_ADMIN.
    pub fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("vitals-test")
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(at.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Write to `path` until the filesystem is full.
pub fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut total = 0u64;
    for chunk in [1 << 16, 4096, 512, 1] {
        let buf = vec![0xa5u8; chunk];
        while f.write_all(&buf).is_ok() {
            total += chunk as u64;
        }
    }
    let _ = f.sync_all();
    total
}
