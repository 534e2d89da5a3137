//! A real Alertmanager (Debian's prometheus-alertmanager) on a free
//! loopback port with its own data directory.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, get, require, wait_for};

/// An Alertmanager process, killed when dropped.
pub struct Alertmanager {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    pub fn start(config: &str) -> Alertmanager {
        let bin = require("prometheus-alertmanager");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alertmanager.yml");
        std::fs::write(&path, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn alertmanager");
        let mut am = Alertmanager {
            child,
            addr,
            _dir: dir,
        };
        let child = &mut am.child;
        wait_for(
            Duration::from_secs(30),
            "Alertmanager to become ready",
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("alertmanager exited early with {status}");
                }
                get(addr, "/-/ready").filter(|(s, _)| *s == 200).map(|_| ())
            },
        );
        am
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
