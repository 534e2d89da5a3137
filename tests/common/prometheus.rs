//! A real Prometheus on a free loopback port scraping test targets every
//! second and evaluating the shipped rules, with its HTTP API.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{free_port, get, http, require, wait_for};

/// A Prometheus server started for a test, killed when dropped.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Start Prometheus scraping `targets` (job → address) every second
    /// and evaluating the shipped rules every second.
    pub fn start(targets: &[(&str, String)]) -> Prometheus {
        Self::start_alerting(targets, None)
    }

    /// Like [`Prometheus::start`], sending alerts to `alertmanager`.
    pub fn start_alerting(
        targets: &[(&str, String)],
        alertmanager: Option<SocketAddr>,
    ) -> Prometheus {
        let bin = require("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n",
        );
        for f in super::process::files("alerting/prometheus/rules", ".yml") {
            cfg.push_str(&format!("  - {}\n", f.display()));
        }
        if let Some(am) = alertmanager {
            cfg.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"{am}\"]\n"
            ));
        }
        cfg.push_str("scrape_configs:\n");
        for (job, addr) in targets {
            cfg.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
            ));
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, cfg).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let child = &mut p.child;
        wait_for(
            Duration::from_secs(30),
            "Prometheus to become ready",
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("prometheus exited early with {status}");
                }
                get(addr, "/-/ready").filter(|(s, _)| *s == 200).map(|_| ())
            },
        );
        p
    }

    /// POST a form to the HTTP API; returns (status, JSON body).
    pub fn api(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let (status, text) = http(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
        .expect("Prometheus API");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// Run an instant query: Err(message) when Prometheus rejects it,
    /// else the number of series returned.
    pub fn query(&self, expr: &str) -> Result<usize, String> {
        let (status, v) = self.api("/api/v1/query", &[("query", expr)]);
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {v}"));
        }
        Ok(match &v["data"]["result"] {
            Value::Array(a) => a.len(),
            Value::Null => 0,
            _ => 1, // scalar or string
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
