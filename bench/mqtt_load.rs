//! MQTT load generator and bare subscriber for bench/mqtt.sh.
//!
//! Speaks just enough MQTT 3.1.1 over a plain TCP socket (CONNECT, PUBLISH
//! QoS 0, SUBSCRIBE) that the generator itself costs little CPU, so the
//! broker and the subscriber under test are what is measured.
//!
//! ```text
//! mqtt-load pub  PORT DEVICES RATE SECONDS FIELDS   # RATE 0 = as fast as possible
//! mqtt-load sub  PORT FILTER SECONDS                # counts PUBLISH packets
//! ```
//! Both print one line `key=value ...` on stdout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn connect(port: u16, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the broker");
    s.set_nodelay(true).ok();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut pkt = vec![0x10];
    remaining_length(body.len(), &mut pkt);
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).expect("send CONNECT");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("read CONNACK");
    assert_eq!(ack[0], 0x20, "expected CONNACK");
    assert_eq!(ack[3], 0, "connection refused: {}", ack[3]);
    s
}

fn publish_packet(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x30);
    remaining_length(2 + topic.len() + payload.len(), out);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
}

fn publisher(port: u16, devices: usize, rate: u64, seconds: f64, fields: usize) {
    let mut s = connect(port, &format!("load-pub-{}", std::process::id()));
    let topics: Vec<String> = (0..devices)
        .map(|i| format!("sensors/dev{i}/state"))
        .collect();
    let mut buf = Vec::with_capacity(1 << 20);
    let mut sent: u64 = 0;
    let start = Instant::now();
    let end = Duration::from_secs_f64(seconds);
    let mut i = 0usize;
    let mut payload = String::new();
    let mut one = |buf: &mut Vec<u8>, i: &mut usize| {
        use std::fmt::Write as _;
        let d = *i % devices;
        let v = (*i / devices) % 100;
        payload.clear();
        let _ = match fields {
            3 => write!(
                payload,
                r#"{{"temperature":{}.{},"humidity":{}.1,"battery":3.{}}}"#,
                20 + v / 10,
                v % 10,
                40 + v % 7,
                v % 10
            ),
            _ => write!(
                payload,
                r#"{{"temperature":{}.{},"humidity":{}.1}}"#,
                20 + v / 10,
                v % 10,
                40 + v % 7
            ),
        };
        publish_packet(&topics[d], payload.as_bytes(), buf);
        *i += 1;
    };
    if devices > 0 && seconds == 0.0 {
        // One message per device, then stop.
        for _ in 0..devices {
            one(&mut buf, &mut i);
            sent += 1;
        }
        s.write_all(&buf).expect("publish");
    } else {
        loop {
            let elapsed = start.elapsed();
            if elapsed >= end {
                break;
            }
            let due = if rate == 0 {
                sent + 2000
            } else {
                (elapsed.as_secs_f64() * rate as f64) as u64
            };
            buf.clear();
            while sent < due {
                one(&mut buf, &mut i);
                sent += 1;
            }
            if !buf.is_empty() {
                s.write_all(&buf).expect("publish");
            }
            if rate != 0 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
    // DISCONNECT, then let the broker read everything.
    s.write_all(&[0xe0, 0]).ok();
    s.flush().ok();
    let took = start.elapsed().as_secs_f64();
    println!(
        "sent={sent} seconds={took:.3} rate={:.0}",
        sent as f64 / took.max(1e-9)
    );
}

fn subscriber(port: u16, filter: &str, seconds: f64) {
    let mut s = connect(port, &format!("load-sub-{}", std::process::id()));
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(0);
    let mut pkt = vec![0x82];
    remaining_length(body.len(), &mut pkt);
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).expect("send SUBSCRIBE");
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    // Ready once SUBACK arrives.
    let mut buf = vec![0u8; 1 << 20];
    let mut have = 0usize;
    let mut count: u64 = 0;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    eprintln!("subscribed");
    while Instant::now() < deadline {
        match s.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => panic!("read: {e}"),
        }
        let mut pos = 0;
        loop {
            if have - pos < 2 {
                break;
            }
            let kind = buf[pos] >> 4;
            let (mut len, mut mult, mut i) = (0usize, 1usize, pos + 1);
            let mut complete = false;
            while i < have {
                let b = buf[i];
                len += (b & 0x7f) as usize * mult;
                mult *= 128;
                i += 1;
                if b & 0x80 == 0 {
                    complete = true;
                    break;
                }
            }
            if !complete || have - i < len {
                break;
            }
            if kind == 3 {
                count += 1;
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
            }
            pos = i + len;
        }
        buf.copy_within(pos..have, 0);
        have -= pos;
    }
    let span = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    println!(
        "received={count} seconds={span:.3} rate={:.0}",
        if span > 0.0 { count as f64 / span } else { 0.0 }
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "pub" => publisher(
            arg(2).parse().expect("PORT"),
            arg(3).parse().expect("DEVICES"),
            arg(4).parse().expect("RATE"),
            arg(5).parse().expect("SECONDS"),
            arg(6).parse().unwrap_or(2),
        ),
        "sub" => subscriber(
            arg(2).parse().expect("PORT"),
            &arg(3),
            arg(4).parse().expect("SECONDS"),
        ),
        _ => {
            eprintln!(
                "usage: mqtt-load pub PORT DEVICES RATE SECONDS [FIELDS] | sub PORT FILTER SECONDS"
            );
            std::process::exit(2);
        }
    }
}
