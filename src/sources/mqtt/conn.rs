//! The connection layer: the rumqttc client and event loop of either
//! protocol version. `poll` returns what arrived; it maps nothing itself.

use std::sync::Arc;

use rumqttc::v5;

use super::config::{MqttConfig, Protocol, TlsConfig};
use super::ingest::{Sub, sub_filter};

fn qos5(q: rumqttc::QoS) -> v5::mqttbytes::QoS {
    match q {
        rumqttc::QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// A connection error of either protocol version.
pub(super) enum ConnError {
    V4(rumqttc::ConnectionError),
    V5(v5::ConnectionError),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::V4(e) => write!(f, "{e}"),
            ConnError::V5(e) => write!(f, "{e}"),
        }
    }
}

fn io_reason(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    if e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    {
        return "tls";
    }
    match e.kind() {
        ConnectionRefused => "connection_refused",
        TimedOut => "timeout",
        ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe => "connection_lost",
        InvalidData => "tls",
        _ => "io",
    }
}

/// Whether a TLS (rustls) error is anywhere in the chain of `e`.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

impl ConnError {
    /// Bounded reason label.
    pub(super) fn reason(&self) -> &'static str {
        let tls = match self {
            ConnError::V4(e) => is_tls(e),
            ConnError::V5(e) => is_tls(e),
        };
        if tls {
            return "tls";
        }
        use rumqttc::ConnectReturnCode as C4;
        use v5::mqttbytes::v5::ConnectReturnCode as C5;
        match self {
            ConnError::V4(e) => match e {
                rumqttc::ConnectionError::ConnectionRefused(
                    C4::BadUserNamePassword | C4::NotAuthorized,
                ) => "not_authorized",
                rumqttc::ConnectionError::ConnectionRefused(_) => "refused",
                rumqttc::ConnectionError::Tls(_) => "tls",
                rumqttc::ConnectionError::Io(e) => io_reason(e),
                rumqttc::ConnectionError::NetworkTimeout
                | rumqttc::ConnectionError::FlushTimeout => "timeout",
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::Io(e)) => io_reason(e),
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted) => {
                    "connection_lost"
                }
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp) => {
                    "timeout"
                }
                _ => "protocol",
            },
            ConnError::V5(e) => match e {
                v5::ConnectionError::ConnectionRefused(
                    C5::BadUserNamePassword | C5::NotAuthorized,
                ) => "not_authorized",
                v5::ConnectionError::ConnectionRefused(_) => "refused",
                v5::ConnectionError::Tls(_) => "tls",
                v5::ConnectionError::Io(e) => io_reason(e),
                v5::ConnectionError::Timeout(_) => "timeout",
                v5::ConnectionError::MqttState(v5::StateError::Io(e)) => io_reason(e),
                v5::ConnectionError::MqttState(v5::StateError::ConnectionAborted) => {
                    "connection_lost"
                }
                v5::ConnectionError::MqttState(v5::StateError::AwaitPingResp) => "timeout",
                _ => "protocol",
            },
        }
    }
}

/// The client of either protocol version. Only the source task touches it.
pub(super) enum Conn {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

/// What one poll of the event loop yielded, reduced to what the source needs.
pub(super) enum Polled {
    Connected,
    /// A message arrived; the loop hands it to the ingest side.
    Publish(Publish),
    SubscribeRefused(usize),
    Other,
}

/// A received PUBLISH packet of either protocol version.
pub(super) enum Publish {
    V4(rumqttc::Publish),
    V5(v5::mqttbytes::v5::Publish),
}

impl Publish {
    /// The topic name; v5 carries it as bytes, which may not be UTF-8.
    pub(super) fn topic(&self) -> Result<&str, std::str::Utf8Error> {
        match self {
            Publish::V4(p) => Ok(&p.topic),
            Publish::V5(p) => std::str::from_utf8(&p.topic),
        }
    }

    pub(super) fn payload(&self) -> &[u8] {
        match self {
            Publish::V4(p) => &p.payload,
            Publish::V5(p) => &p.payload,
        }
    }
}

impl Conn {
    pub(super) fn new(
        cfg: &MqttConfig,
        password: Option<String>,
        tls: Option<rumqttc::TlsConfiguration>,
    ) -> Conn {
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("vitals-{}", cfg.name));
        let mut net = rumqttc::NetworkOptions::new();
        // A large socket buffer absorbs bursts while a batch is handed on.
        net.set_tcp_recv_buffer_size(4 * 1024 * 1024);
        net.set_connection_timeout(10);
        let transport = match tls {
            Some(t) => rumqttc::Transport::tls_with_config(t),
            None => rumqttc::Transport::tcp(),
        };
        match cfg.protocol {
            Protocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(client_id, cfg.host.clone(), cfg.port());
                o.set_keep_alive(cfg.keep_alive)
                    .set_clean_session(cfg.clean_session)
                    .set_max_packet_size(cfg.max_packet_bytes, 64 * 1024)
                    .set_transport(transport);
                if let Some(u) = &cfg.username {
                    o.set_credentials(u.clone(), password.unwrap_or_default());
                }
                let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
                el.set_network_options(net);
                Conn::V4(client, Box::new(el))
            }
            Protocol::V5 => {
                let mut o = v5::MqttOptions::new(client_id, cfg.host.clone(), cfg.port());
                o.set_keep_alive(cfg.keep_alive)
                    .set_clean_start(cfg.clean_session)
                    .set_max_packet_size(Some(cfg.max_packet_bytes as u32))
                    .set_transport(transport)
                    .set_network_options(net);
                if !cfg.clean_session {
                    o.set_session_expiry_interval(Some(cfg.session_expiry.as_secs() as u32));
                }
                if let Some(u) = &cfg.username {
                    o.set_credentials(u.clone(), password.unwrap_or_default());
                }
                let (client, el) = v5::AsyncClient::new(o, 16);
                Conn::V5(client, Box::new(el))
            }
        }
    }

    /// True when the next poll will read from the network (no buffered events).
    pub(super) fn drained(&self) -> bool {
        match self {
            Conn::V4(_, el) => el.state.events.is_empty(),
            Conn::V5(_, el) => el.state.events.is_empty(),
        }
    }

    pub(super) fn subscribe(&self, subs: &[Sub]) -> Result<(), String> {
        match self {
            Conn::V4(c, _) => c
                .try_subscribe_many(
                    subs.iter()
                        .map(|s| rumqttc::SubscribeFilter::new(sub_filter(s), s.qos)),
                )
                .map_err(|e| e.to_string()),
            Conn::V5(c, _) => c
                .try_subscribe_many(
                    subs.iter()
                        .map(|s| v5::mqttbytes::v5::Filter::new(sub_filter(s), qos5(s.qos))),
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Poll the event loop once: what arrived, or the connection error.
    pub(super) async fn poll(&mut self) -> Result<Polled, ConnError> {
        match self {
            Conn::V4(_, el) => {
                use rumqttc::{Event, Packet};
                match el.poll().await.map_err(ConnError::V4)? {
                    Event::Incoming(Packet::Publish(p)) => Ok(Polled::Publish(Publish::V4(p))),
                    Event::Incoming(Packet::ConnAck(_)) => Ok(Polled::Connected),
                    Event::Incoming(Packet::SubAck(a)) => Ok(Polled::SubscribeRefused(
                        a.return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .count(),
                    )),
                    _ => Ok(Polled::Other),
                }
            }
            Conn::V5(_, el) => {
                use v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
                match el.poll().await.map_err(ConnError::V5)? {
                    v5::Event::Incoming(Packet::Publish(p)) => Ok(Polled::Publish(Publish::V5(p))),
                    v5::Event::Incoming(Packet::ConnAck(_)) => Ok(Polled::Connected),
                    v5::Event::Incoming(Packet::SubAck(a)) => Ok(Polled::SubscribeRefused(
                        a.return_codes
                            .iter()
                            .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                            .count(),
                    )),
                    _ => Ok(Polled::Other),
                }
            }
        }
    }
}

/// Build the rustls client configuration from the TLS section.
pub(super) fn tls_config(t: &TlsConfig) -> Result<rumqttc::TlsConfiguration, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("bad CA file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the broker with".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("bad certificate {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate rejected: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}
