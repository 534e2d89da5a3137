//! The source task: the one loop that polls the connection, hands each
//! publish to the ingest side, sends batches and backs off after errors.

use std::time::{Duration, Instant};

use super::config::MqttConfig;
use super::conn::{Conn, Polled, tls_config};
use super::ingest::Ingest;
use crate::model::{Batch, now_ms};
use crate::sources::{Health, SourceContext};

/// Most samples held before a batch is sent even in the middle of a burst.
const MAX_BATCH: usize = 4096;
/// Messages per second above which reads are coalesced (`read_coalesce`).
const COALESCE_ABOVE: u64 = 5_000;
/// Longest a sample waits in an unsent batch.
const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// Period of the silent-device and expiry bookkeeping.
const TICK: Duration = Duration::from_secs(1);

/// Run one MQTT source until shutdown.
pub async fn run(cfg: MqttConfig, ctx: SourceContext, health: Health) {
    let name = cfg.name.clone();
    let broker = format!("{}:{}", cfg.host, cfg.port());
    let telemetry = ctx.telemetry.clone();
    health.down(None);
    let mut ingest = match Ingest::new(&cfg, telemetry.clone()) {
        Ok(i) => i,
        Err(error) => {
            tracing::error!(source = %name, %error, "MQTT source not started.");
            return;
        }
    };
    if let Some(ttl) = ingest.ttl_ms {
        ctx.store
            .write()
            .set_ttl(&name, Some(Duration::from_millis(ttl as u64)));
    }
    ingest.limits = ctx.store.read().label_limits(&name);
    let setup = cfg
        .password()
        .and_then(|p| cfg.tls.as_ref().map(tls_config).transpose().map(|t| (p, t)));
    let (password, tls) = match setup {
        Ok(v) => v,
        Err(error) => {
            health.count("config", 1);
            tracing::error!(source = %name, broker = %broker, %error, "MQTT source cannot connect: its credentials or TLS files are unusable.");
            ctx.shutdown.cancelled().await;
            return;
        }
    };
    let mut conn = Conn::new(&cfg, password, tls);
    let mut backoff = cfg.reconnect_min;
    let mut connections = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Batching policy. A network read that had to wait means vitals is
    // ahead of the stream: flush what it has (latency), and under load sleep
    // `read_coalesce` so the next read returns many messages at once. A read
    // that found data waiting means vitals is behind: keep filling the batch.
    let mut waited = true;
    // Bounds how long a sample waits in a batch that is not flushed yet.
    let flush_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(flush_timer);
    let mut armed = false;
    let mut messages_this_tick = 0u64;
    let mut rate = 0u64;
    loop {
        let network_read = conn.drained();
        let started = network_read.then(Instant::now);
        let polled = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break,
            _ = tick.tick() => {
                rate = messages_this_tick;
                messages_this_tick = 0;
                ingest.tick(now_ms());
                if let Some(b) = ingest.take_batch()
                    && !send(&ctx, b).await
                {
                    break;
                }
                armed = false;
                continue;
            }
            _ = &mut flush_timer, if armed => {
                armed = false;
                if let Some(b) = ingest.take_batch()
                    && !send(&ctx, b).await
                {
                    break;
                }
                continue;
            }
            p = conn.poll() => p,
        };
        if let Some(t) = started {
            waited = t.elapsed() > Duration::from_micros(50);
        }
        match polled {
            Ok(Polled::Publish(publish)) => {
                match publish.topic() {
                    Ok(topic) => {
                        ingest.on_message(topic, publish.payload(), Instant::now(), now_ms())
                    }
                    Err(_) => health.error("invalid_topic", &"Topic name is not valid UTF-8."),
                }
                messages_this_tick += 1;
                let full = ingest.batch.len() >= MAX_BATCH;
                if full || (waited && conn.drained()) {
                    armed = false;
                    if let Some(b) = ingest.take_batch()
                        && !send(&ctx, b).await
                    {
                        break;
                    }
                    if !full && rate >= COALESCE_ABOVE && !cfg.read_coalesce.is_zero() {
                        tokio::select! {
                            _ = ctx.shutdown.cancelled() => break,
                            _ = tokio::time::sleep(cfg.read_coalesce) => {}
                        }
                    }
                } else if !armed && !ingest.batch.is_empty() {
                    flush_timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + FLUSH_AFTER);
                    armed = true;
                }
            }
            Ok(Polled::Connected) => {
                connections += 1;
                if connections > 1 {
                    ingest.metrics.reconnects.inc();
                }
                ingest.metrics.connected.set(1);
                backoff = cfg.reconnect_min;
                health.up();
                tracing::info!(source = %name, broker = %broker, "Connected to the MQTT broker.");
                if let Err(error) = conn.subscribe(&ingest.subs) {
                    health.error("subscribe", &error);
                }
            }
            Ok(Polled::SubscribeRefused(0)) => ingest.metrics.subscribed.set(1),
            Ok(Polled::SubscribeRefused(n)) => {
                ingest.metrics.subscribed.set(0);
                health.count("subscribe_refused", n as u64);
                tracing::error!(source = %name, broker = %broker, refused = n, "The broker refused subscriptions (check its ACL and the filters).");
            }
            Ok(_) => {}
            Err(error) => {
                let reason = error.reason();
                ingest.metrics.connected.set(0);
                ingest.metrics.subscribed.set(0);
                health.down(None);
                health.count(reason, 1);
                if let Some(b) = ingest.take_batch()
                    && !send(&ctx, b).await
                {
                    break;
                }
                if let Some(suppressed) = telemetry.should_log(&name, reason) {
                    tracing::warn!(source = %name, broker = %broker, reason, %error, retry_in = ?backoff, suppressed, "MQTT connection failed; retrying.");
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(cfg.reconnect_max);
            }
        }
    }
    if let Some(b) = ingest.take_batch() {
        let _ = ctx.tx.send(b).await;
    }
    ingest.metrics.connected.set(0);
    if let Conn::V4(c, _) = &conn {
        let _ = c.try_disconnect();
    } else if let Conn::V5(c, _) = &conn {
        let _ = c.try_disconnect();
    }
}

/// Hand a batch to the pipeline, waiting for room; false on shutdown.
async fn send(ctx: &SourceContext, batch: Batch) -> bool {
    tokio::select! {
        r = ctx.tx.send(batch) => r.is_ok(),
        _ = ctx.shutdown.cancelled() => false,
    }
}
