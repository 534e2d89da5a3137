//! Load generator for bench/relay.sh: POSTs distinct Alertmanager v4
//! notifications to a running `vitals relay` over keep-alive connections
//! and reports accepted notifications/s and accept latency percentiles.
//!
//! usage: relay_load ADDR TOKEN TOTAL CONCURRENCY

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn payload(i: usize) -> String {
    format!(
        r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"Bench{i}\"}}","truncatedAlerts":0,"status":"firing","receiver":"bench","groupLabels":{{"alertname":"Bench{i}"}},"commonLabels":{{"alertname":"Bench{i}","severity":"critical"}},"commonAnnotations":{{}},"externalURL":"http://am:9093","alerts":[{{"status":"firing","labels":{{"alertname":"Bench{i}","severity":"critical","instance":"host-{i}"}},"annotations":{{"summary":"Benchmark alert {i}"}},"startsAt":"2026-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus/graph","fingerprint":"{i:016x}"}}]}}"#
    )
}

async fn worker(
    addr: String,
    token: String,
    ids: Vec<usize>,
) -> std::io::Result<(Vec<Duration>, usize)> {
    let stream = TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut lat = Vec::with_capacity(ids.len());
    let mut errors = 0;
    for i in ids {
        let body = payload(i);
        let req = format!(
            "POST /webhook/bench HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let t = Instant::now();
        w.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        r.read_line(&mut line).await?;
        let ok = line.split_whitespace().nth(1) == Some("200");
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).await?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut buf = vec![0; len];
        r.read_exact(&mut buf).await?;
        lat.push(t.elapsed());
        if !ok
            || !buf.starts_with(b"{\"status\":\"accepted\"")
                && !buf.windows(8).any(|x| x == b"accepted")
        {
            errors += 1;
        }
    }
    Ok((lat, errors))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: relay_load ADDR TOKEN TOTAL CONCURRENCY");
        std::process::exit(2);
    }
    let (addr, token) = (args[1].clone(), args[2].clone());
    let total: usize = args[3].parse().expect("TOTAL");
    let conc: usize = args[4].parse().expect("CONCURRENCY");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conc {
        let ids: Vec<usize> = (c..total).step_by(conc).collect();
        tasks.push(tokio::spawn(worker(addr.clone(), token.clone(), ids)));
    }
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("task").expect("connection");
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    println!(
        "accepted={} errors={} seconds={:.3} rate_per_s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        lat.len() - errors,
        errors,
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    );
}
