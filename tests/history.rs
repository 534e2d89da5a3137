//! The on-disk history with the real binary: a SIGKILL loses at most the
//! flush interval and a restart reads back what came before it; a full
//! disk (a small tmpfs) is counted and survived, and writes resume; a
//! damaged store is moved aside with a warning.
//!
//! The data: MQTT messages carrying readings with their own timestamps
//! (`hist_test_value`), so what must be in the store is known exactly. The
//! store is read back with the library's `HistoryReader` once vitals has
//! stopped (a running vitals holds the file's lock).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::broker::{now_ms, readings_source};
use common::{Broker, OFF, Tmpfs, fill, free_port, get, sample_value, wait_for};
use vitals::history::HistoryReader;
use vitals::query::{MatchOp, Matcher, SeriesReader};

const WAIT: Duration = Duration::from_secs(30);

fn config(broker: &Broker) -> String {
    format!(
        "{OFF}\n[history]\nflush_interval = \"1s\"\n{}",
        readings_source(broker.port, "h/+device", "hist_test_value")
    )
}

/// `vitals run` on a free port with its history in `storage`; stderr to
/// `<cfg_dir>/stderr.log`.
struct Proc {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Proc {
    fn start(cfg_dir: &Path, config: &str, storage: &Path) -> Proc {
        let path = cfg_dir.join("vitals.toml");
        std::fs::write(&path, config).unwrap();
        let log = cfg_dir.join("stderr.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = common::vitals_run(&path, addr)
            .arg("--storage.path")
            .arg(storage)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn vitals");
        common::wait_started(&mut child, addr, common::Ready::Readyz, Some(&log));
        Proc { child, addr, log }
    }

    fn metric(&self, name: &str, parts: &[&str]) -> f64 {
        get(self.addr, "/metrics")
            .and_then(|(_, body)| sample_value(&body, name, parts))
            .unwrap_or(0.0)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        wait_for(WAIT, "vitals to stop", || {
            self.child.try_wait().ok().flatten()
        });
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Publish readings `first..first + n` of device `dev`, one second apart
/// from `start_ms`, value = index, 100 to a message.
fn publish(broker: &Broker, dev: &str, start_ms: i64, first: usize, n: usize) {
    broker.publish_readings(&format!("h/{dev}"), start_ms, first, n, 100);
}

/// The points of `hist_test_value{device=dev}` in the store (vitals stopped).
fn stored(storage: &Path, dev: &str, start_ms: i64) -> Vec<(i64, f64)> {
    let reader = HistoryReader::open(storage).expect("the store opens");
    let m = |name: &str, value: &str| Matcher {
        name: name.into(),
        op: MatchOp::Equal,
        value: value.into(),
        regex: None,
    };
    let got = reader
        .select(
            &[m("__name__", "hist_test_value"), m("device", dev)],
            start_ms,
            now_ms() + 60_000,
            1000,
        )
        .expect("history reads");
    got.into_iter().flat_map(|s| s.points).collect()
}

fn expected(start_ms: i64, range: std::ops::Range<usize>) -> Vec<(i64, f64)> {
    range
        .map(|i| (start_ms + i as i64 * 1000, i as f64))
        .collect()
}

#[test]
fn sigkill_loses_at_most_the_flush_interval_and_a_restart_reads_back_what_came_before() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("data");
    let cfg = config(&broker);
    let start = now_ms() - 1_200_000;
    let mut v = Proc::start(dir.path(), &cfg, &storage);
    publish(&broker, "a", start, 0, 300);
    wait_for(WAIT, "300 samples written", || {
        (v.metric("vitals_history_samples_written_total", &[]) >= 300.0).then_some(())
    });
    // Received well over one flush interval (1 s) before the SIGKILL.
    publish(&broker, "a", start, 300, 100);
    wait_for(WAIT, "the live value of the last reading", || {
        (v.metric("hist_test_value", &["device=\"a\""]) == 399.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(2500));
    v.kill9();
    assert_eq!(stored(&storage, "a", start), expected(start, 0..400));

    // Restarted on the same store: it takes more, and a clean stop
    // writes what is buffered.
    let mut v = Proc::start(dir.path(), &cfg, &storage);
    publish(&broker, "a", start, 400, 200);
    wait_for(WAIT, "the live value after the restart", || {
        (v.metric("hist_test_value", &["device=\"a\""]) == 599.0).then_some(())
    });
    v.terminate();
    assert_eq!(stored(&storage, "a", start), expected(start, 0..600));
}

#[test]
fn a_full_disk_is_counted_survived_and_writes_resume() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    let _fs = Tmpfs::mount(&mount, "8m").expect("mount a tmpfs (the tests run as root)");
    let storage = mount.join("data");
    let start = now_ms() - 1_200_000;
    let v = Proc::start(dir.path(), &config(&broker), &storage);
    publish(&broker, "a", start, 0, 200);
    wait_for(WAIT, "200 samples written", || {
        (v.metric("vitals_history_samples_written_total", &[]) >= 200.0).then_some(())
    });
    let filler = mount.join("filler");
    fill(&filler);
    publish(&broker, "a", start, 200, 300);
    wait_for(WAIT, "a counted write error", || {
        (v.metric(
            "vitals_history_write_errors_total",
            &["reason=\"disk_full\""],
        ) >= 1.0)
            .then_some(())
    });
    // The live view goes on.
    publish(&broker, "a", start, 500, 10);
    wait_for(WAIT, "the live value while the disk is full", || {
        (v.metric("hist_test_value", &["device=\"a\""]) == 509.0).then_some(())
    });
    assert!(v.metric("vitals_history_buffered_samples", &[]) >= 300.0);
    // Space comes back: what was buffered is written.
    std::fs::remove_file(&filler).unwrap();
    wait_for(WAIT, "the buffer written after the disk has room", || {
        (v.metric("vitals_history_buffered_samples", &[]) == 0.0
            && v.metric("vitals_history_samples_written_total", &[]) >= 510.0)
            .then_some(())
    });
    let mut v = v;
    v.terminate();
    assert_eq!(stored(&storage, "a", start), expected(start, 0..510));
}

#[test]
fn a_damaged_store_is_moved_aside_with_a_warning() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("data");
    std::fs::create_dir_all(&storage).unwrap();
    std::fs::write(storage.join("history.redb"), vec![0x42u8; 50_000]).unwrap();
    let start = now_ms() - 600_000;
    let mut v = Proc::start(dir.path(), &config(&broker), &storage);
    publish(&broker, "a", start, 0, 20);
    wait_for(WAIT, "the samples written to the new store", || {
        (v.metric("vitals_history_samples_written_total", &[]) >= 20.0).then_some(())
    });
    v.terminate();
    let log = std::fs::read_to_string(&v.log).unwrap();
    assert!(log.contains("moved it aside"), "{log}");
    assert!(
        log.contains(&storage.join("history.redb").display().to_string()),
        "{log}"
    );
    let aside: Vec<_> = std::fs::read_dir(&storage)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("history.redb.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(stored(&storage, "a", start), expected(start, 0..20));
}
