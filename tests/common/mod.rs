//! Test harness shared by the integration tests: start the real `vitals`
//! binary on a free loopback port, talk plain HTTP to it, wait for
//! conditions, and check that external tools the tests need are installed.
//! The real peers the tests start live in the submodules: certificates,
//! Mosquitto, PostgreSQL, MariaDB, SMTP, Prometheus, Alertmanager and
//! `vitals relay`; golden `/metrics` fixtures in [`golden`]. One harness for
//! every test file: reuse these, do not copy them.
#![allow(dead_code)]

pub mod alertmanager;
pub mod broker;
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
pub use broker::Broker;
#[allow(unused_imports)]
pub use wait::{WAIT, metric, wait_absent, wait_value};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Config text: no system source, and no detectors (their families are
/// not a source's).
pub const OFF: &str = "[system]\nenabled = false\n[detect]\nenabled = false\n";

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
    let written = stream.write_all(&request_bytes(addr, method, path, headers, body));
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

/// The bytes of a `Connection: close` HTTP/1.1 request, head and body
/// together: sent in one write, a server that answers early and closes
/// (plain HTTP on a TLS port) cannot fail the body's write with a broken pipe.
pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Run an in-test server on its own thread with a current-thread tokio
/// runtime: `serve` gets `listener` as a tokio listener.
pub fn serve_on_thread<F, Fut>(listener: TcpListener, serve: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            serve(listener).await
        });
    })
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
        Self::launch(config, extra_args, &[], Ready::Readyz)
    }

    /// Like [`Vitals::start`], with extra environment variables (the test's
    /// own environment is passed through too). Names must not start with
    /// `VITALS_`, which vitals reads as configuration overrides.
    pub fn start_env(config: &str, env: &[(&str, &str)]) -> Vitals {
        Self::launch(config, &[], env, Ready::Readyz)
    }

    /// Start `vitals run` with `config` and a web configuration file that
    /// turns on TLS; waits until the port accepts connections.
    pub fn start_tls(config: &str, web_config: &Path) -> Vitals {
        let web = web_config.to_str().expect("a UTF-8 web config path");
        Self::launch(config, &["--web.config.file", web], &[], Ready::Listening)
    }

    /// `vitals run` with `config` in a new temp dir on a free port, then
    /// wait until it is `ready`.
    fn launch(config: &str, extra_args: &[&str], env: &[(&str, &str)], ready: Ready) -> Vitals {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vitals.toml");
        std::fs::write(&path, config).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = vitals_run(&path, addr)
            // POST /-/reload, which tests use, needs it since it is gated.
            .arg("--web.enable-lifecycle")
            .args(extra_args)
            .args(own_history(config, &dir))
            .envs(env.iter().copied())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vitals");
        let mut v = Vitals { child, addr, dir };
        wait_started(&mut v.child, addr, ready, None);
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

/// `vitals run --config <config> --web.listen-address <addr>`, stdout to
/// null and `RUST_LOG` unset; the caller adds flags, stderr and spawns.
pub fn vitals_run(config: &Path, addr: SocketAddr) -> Command {
    let mut cmd = Command::new(vitals_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--web.listen-address")
        .arg(addr.to_string())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null());
    cmd
}

/// When a started `vitals` counts as up.
#[derive(Clone, Copy)]
pub enum Ready {
    /// `GET /readyz` answers 200.
    Readyz,
    /// The port accepts TCP connections (TLS, where plain GET cannot tell).
    Listening,
}

/// Wait (at most [`WAIT`]) until `child`, serving on `addr`, is `ready`;
/// panics if it exits first (with the text of `log`, its stderr, if given).
pub fn wait_started(child: &mut Child, addr: SocketAddr, ready: Ready, log: Option<&Path>) {
    let what = match ready {
        Ready::Readyz => "vitals to become ready",
        Ready::Listening => "vitals to listen",
    };
    wait_for(WAIT, what, || {
        if let Ok(Some(status)) = child.try_wait() {
            let log = log.map(|p| std::fs::read_to_string(p).unwrap_or_default());
            panic!(
                "vitals exited early with {status}: {}",
                log.unwrap_or_default()
            );
        }
        match ready {
            Ready::Readyz => get(addr, "/readyz").filter(|(s, _)| *s == 200).map(|_| ()),
            Ready::Listening => TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ()),
        }
    });
}

/// What `vitals check --config` said about a configuration.
pub struct Checked {
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Checked {
    /// Whether the check passed (exit 0).
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output, then standard error.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run `vitals check --config <path>` (a path relative to the repository
/// root, where `cargo test` runs, or an absolute one).
pub fn check_file(path: &Path) -> Checked {
    let out = Command::new(vitals_bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run vitals check");
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Write `config` to a file named `file` in a new temp dir and run
/// `vitals check --config` on it.
pub fn check_config(file: &str, config: &str) -> Checked {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(file);
    std::fs::write(&path, config).expect("write config");
    check_file(&path)
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

/// Assert, for each `(name, parts, want)`, that [`sample_value`] of
/// `name` with `parts` in `metrics` is `want`.
pub fn assert_samples(metrics: &str, want: &[(&str, &[&str], Option<f64>)]) {
    for (name, parts, value) in want {
        assert_eq!(
            sample_value(metrics, name, parts),
            *value,
            "{name}{parts:?}"
        );
    }
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
