//! The SMTP server of the relay tests: Debian's python3-aiosmtpd running
//! `tests/support/smtp_server.py`, storing every mail as a JSON line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::certs::Certs;
use super::{free_port, require};

/// The user name the server accepts.
pub const SMTP_USER: &str = "relay";
/// The password the server accepts (also `RELAY_SMTP_PASSWORD` of [`super::relay::Relay`]).
pub const SMTP_PASSWORD: &str = "s3cret-pw";

/// A running aiosmtpd server storing mail under `dir`, killed on drop.
pub struct Smtp {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl Smtp {
    /// `mode` is `starttls` or `implicit` (with AUTH, `certs`' leaf certificate).
    pub fn start(port: u16, dir: &Path, mode: &str, certs: &Certs) -> Smtp {
        Smtp::start_with(port, dir, mode, certs, SMTP_PASSWORD, &[])
    }

    /// STARTTLS with the usual password and `env` options such as
    /// `SMTP_REJECT_RCPT`.
    pub fn starttls_env(port: u16, dir: &Path, certs: &Certs, env: &[(&str, &str)]) -> Smtp {
        Smtp::start_with(port, dir, "starttls", certs, SMTP_PASSWORD, env)
    }

    /// `password` is also the XOAUTH2 bearer token the server accepts;
    /// `env` sets options such as `SMTP_REJECT_RCPT`.
    pub fn start_with(
        port: u16,
        dir: &Path,
        mode: &str,
        certs: &Certs,
        password: &str,
        env: &[(&str, &str)],
    ) -> Smtp {
        let args = [
            certs.cert.clone().into_os_string(),
            certs.key.clone().into_os_string(),
            SMTP_USER.into(),
            password.into(),
        ];
        Smtp::spawn(port, dir, mode, &args, env)
    }

    /// Plain SMTP without AUTH on a free port.
    pub fn plain(dir: &Path) -> Smtp {
        Smtp::spawn(free_port(), dir, "plain", &[], &[])
    }

    fn spawn(
        port: u16,
        dir: &Path,
        mode: &str,
        args: &[std::ffi::OsString],
        env: &[(&str, &str)],
    ) -> Smtp {
        require("python3");
        let script = super::process::root().join("tests/support/smtp_server.py");
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir)
            .arg(mode)
            .args(args)
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
            port,
        }
    }

    /// The mails received so far.
    pub fn mails(&self) -> Vec<serde_json::Value> {
        read_mails(&self.dir)
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The records of one of the server's JSON-lines logs (`mails.jsonl`,
/// `rejects.jsonl`, `auths.jsonl`).
pub fn read_log(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The mails stored under `dir`.
pub fn read_mails(dir: &Path) -> Vec<serde_json::Value> {
    read_log(dir, "mails.jsonl")
}
