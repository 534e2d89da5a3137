//! A real Mosquitto broker on free loopback ports, and publishing to it.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::certs::{CLIENT_EXT, Ca, KeyType};
use super::{free_port, require, wait_for};

/// The user and password of the TLS listener of [`Broker::start_tls`].
pub const USER: &str = "vitals";
pub const PASSWORD: &str = "s3cret-pass";

/// A Mosquitto process on a free loopback port with its own configuration
/// directory, killed on drop.
pub struct Broker {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    /// With [`Broker::start_tls`]: TLS, `USER`/`PASSWORD` required.
    pub tls_port: Option<u16>,
    /// With [`Broker::start_tls`]: TLS, a client certificate signed by the
    /// test CA required.
    pub mtls_port: Option<u16>,
}

impl Broker {
    /// One anonymous plain listener.
    pub fn start() -> Broker {
        Self::start_with("")
    }

    /// Same, with `extra` general settings (lines ending in `\n`).
    pub fn start_with(extra: &str) -> Broker {
        Self::configure(extra, false)
    }

    /// The plain listener, a TLS listener requiring `USER`/`PASSWORD` and a
    /// mutual-TLS one; in the broker's dir ([`Broker::path`]) the test CA
    /// `ca.pem`, an untrusted `other-ca.pem` and a client certificate
    /// `client.pem`/`client.key` the test CA signed.
    pub fn start_tls() -> Broker {
        Self::configure("per_listener_settings true\n", true)
    }

    fn configure(extra: &str, tls: bool) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        // `user root`: as root, Mosquitto would otherwise switch to a user
        // that cannot read the private temp dir.
        let mut conf = format!(
            "user root\npersistence false\nlog_dest stderr\nlog_type error\n{extra}\
             listener {port} 127.0.0.1\nallow_anonymous true\n"
        );
        let (mut tls_port, mut mtls_port) = (None, None);
        if tls {
            make_certs(dir.path());
            let status = Command::new(require("mosquitto_passwd"))
                .arg("-b")
                .arg("-c")
                .arg(dir.path().join("passwd"))
                .args([USER, PASSWORD])
                .status()
                .expect("run mosquitto_passwd");
            assert!(status.success(), "mosquitto_passwd failed");
            let (p, m) = (free_port(), free_port());
            let d = dir.path().display();
            let certs =
                format!("cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n");
            conf.push_str(&format!(
                "listener {p} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwd\n{certs}\
                 listener {m} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\n{certs}"
            ));
            (tls_port, mtls_port) = (Some(p), Some(m));
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut b = Broker {
            child: None,
            dir,
            port,
            tls_port,
            mtls_port,
        };
        b.spawn();
        b
    }

    /// Start (again, after [`Broker::kill`]) and wait until it listens.
    pub fn spawn(&mut self) {
        let child = Command::new(require("mosquitto"))
            .arg("-c")
            .arg(self.path("mosquitto.conf"))
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

    /// A file in the broker's directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Publish one message with QoS 1 and wait for the acknowledgement.
    pub fn publish(&self, topic: &str, payload: &str) {
        self.publish_all(&[msg(topic, payload)]);
    }

    /// Publish with QoS 1 and wait until the broker acknowledged every message.
    pub fn publish_all(&self, messages: &[(String, Vec<u8>)]) {
        publish_to(self.port, messages);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message for [`publish_to`].
pub fn msg(topic: &str, payload: &str) -> (String, Vec<u8>) {
    (topic.to_string(), payload.as_bytes().to_vec())
}

/// Publish `messages` with QoS 1 to the broker on `port` and wait until it
/// acknowledged every one (packets up to 4 MiB).
pub fn publish_to(port: u16, messages: &[(String, Vec<u8>)]) {
    use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};
    let mut o = MqttOptions::new(format!("test-pub-{}", free_port()), "127.0.0.1", port);
    o.set_max_packet_size(4 << 20, 4 << 20);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = Client::new(o, messages.len() + 10);
    for (topic, payload) in messages {
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .expect("queue publish");
    }
    let mut acked = 0;
    for event in conn.iter() {
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == messages.len() {
                    let _ = client.disconnect();
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => panic!("publishing to the test broker failed: {e}"),
        }
    }
    assert_eq!(acked, messages.len());
}

/// A test CA (`ca.pem`), a server certificate for 127.0.0.1 and localhost
/// (`server.pem`), a client certificate (`client.pem`) and an untrusted
/// second CA (`other-ca.pem`), EC keys.
fn make_certs(dir: &std::path::Path) {
    let ca = Ca::new(dir, "ca", "pem", "/CN=vitals test ca", KeyType::Ec);
    Ca::new(
        dir,
        "other-ca",
        "pem",
        "/CN=vitals test other-ca",
        KeyType::Ec,
    );
    let server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n";
    ca.issue(
        "server.key",
        "server.pem",
        "/CN=localhost",
        server_ext,
        None,
    );
    ca.issue(
        "client.key",
        "client.pem",
        "/CN=vitals-client",
        CLIENT_EXT,
        None,
    );
}

/// A `[[sources]]` MQTT source `plant` on the broker at `port` with one
/// subscription `readings` of `topic` (ending in `+device`): a message
/// `{"r":[{"ts":…,"v":…},…]}` is samples of `metric` at their own times.
pub fn readings_source(port: u16, topic: &str, metric: &str) -> String {
    format!(
        r#"
[[sources]]
type = "mqtt"
name = "plant"
host = "127.0.0.1"
port = {port}

[[sources.subscriptions]]
name = "readings"
topic = "{topic}"
[sources.subscriptions.mapping]
each = "r"
timestamp = "ts"
[[sources.subscriptions.mapping.metrics]]
name = "{metric}"
path = "v"
"#
    )
}

impl Broker {
    /// Publish readings `first..first + n` to `topic` for
    /// [`readings_source`], one second apart from `start_ms` (reading `i`
    /// at `start_ms + i s`, value `i`), at most `per_message` a message.
    pub fn publish_readings(
        &self,
        topic: &str,
        start_ms: i64,
        first: usize,
        n: usize,
        per_message: usize,
    ) {
        for chunk in (first..first + n)
            .collect::<Vec<_>>()
            .chunks(per_message.max(1))
        {
            let readings: Vec<String> = chunk
                .iter()
                .map(|i| format!(r#"{{"ts":{},"v":{i}}}"#, start_ms + *i as i64 * 1000))
                .collect();
            self.publish(topic, &format!(r#"{{"r":[{}]}}"#, readings.join(",")));
        }
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
