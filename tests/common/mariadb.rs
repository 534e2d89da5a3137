//! A throw-away MariaDB server: `mariadb-install-db` in a temp dir, run as a
//! child process on a free loopback port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process::run_ok as run;
use super::{free_port, require, wait_for};

/// A MariaDB server in a temp dir, run as a child process.
pub struct MariaDb {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        let install = require("mariadb-install-db");
        let server = require("mariadbd");
        let dir = tempfile::Builder::new()
            .prefix("vitals-mariadb-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        run(Command::new(install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]));
        let port = free_port();
        let child = Command::new(server)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!(
                "--log-error={}",
                dir.path().join("err.log").display()
            ))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--user=root", "--skip-log-bin"])
            .args(["--innodb-buffer-pool-size=16M", "--skip-name-resolve"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        let db = MariaDb {
            child,
            _dir: dir,
            port,
        };
        wait_for(
            Duration::from_secs(60),
            "mariadbd to accept connections",
            || {
                Command::new("mariadb")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-u",
                        "root",
                        "-P",
                        &port.to_string(),
                        "-e",
                        "SELECT 1",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .ok()?
                    .success()
                    .then_some(())
            },
        );
        db
    }

    pub fn sql(&self, sql: &str) {
        run(Command::new("mariadb").args([
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "-P",
            &self.port.to_string(),
            "-e",
            sql,
        ]));
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
