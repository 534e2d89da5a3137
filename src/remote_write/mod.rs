//! Prometheus remote write (protocol 1.0) with a durable on-disk queue.
//!
//! The ingest task hands every applied batch to a [`Tap`] (a bounded
//! channel per remote; it never waits: a full channel counts a drop). Per
//! remote, one writer task filters the samples with the remote's
//! selectors, splits them over ordered lanes by series and commits each
//! lane's part as a block to the redb [`queue`];
//! one sender task per lane posts the blocks oldest first and has them
//! removed after a 2xx.
//!
//! What is sent: every stored sample with its own timestamp (a device's or
//! webhook's event time where the source gives one), the ensemble anomaly
//! score `vitals_anomaly_score{metric="<family>",...}` of every scored
//! sample, and a staleness marker when a series ends (expiry, snapshot
//! removal, source removed). Not sent: the other `vitals_anomaly_*`
//! families (expected, bands, flag, events), vitals' self-metrics, and
//! metadata (HELP/TYPE). Remote write 2.0 is not implemented.
//!
//! The queue holds columnar blocks (series ids, timestamps, values through
//! `pco`) and a series table; the `WriteRequest` is built when a block is
//! sent, by the lane's sender.

pub mod config;
pub mod encoder;
pub mod queue;
pub mod sender;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::{FamilyMeta, Labels, MetricKind, Sample};
use crate::store::Ended;
use crate::telemetry::Telemetry;
pub use config::RemoteWriteConfig;
use encoder::{Point, STALE_NAN};
use queue::{Block, Queue, QueueError};

/// Batches that may wait between the ingest task and a remote's writer.
const TAP_QUEUE: usize = 1024;

/// What the ingest task hands over for one applied batch.
#[derive(Debug, Default)]
pub struct TapBatch {
    /// The samples as stored (after the pipeline's stages), in order.
    pub samples: Vec<Sample>,
    /// Series that ended while the batch (or an expiry pass) was applied.
    pub ended: Vec<Ended>,
}

impl TapBatch {
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.ended.is_empty()
    }
}

/// The ingest task's handle on every remote; cheap to clone.
#[derive(Clone)]
pub struct Tap {
    outs: Arc<[Out]>,
    score: Arc<FamilyMeta>,
}

struct Out {
    tx: mpsc::Sender<Arc<TapBatch>>,
    m: Arc<RemoteMetrics>,
}

impl Tap {
    /// The family of the ensemble anomaly score, for score samples.
    pub fn score_family(&self) -> &Arc<FamilyMeta> {
        &self.score
    }

    /// A score sample of the series `family{labels}` at `timestamp_ms`.
    pub fn score_sample(
        &self,
        family: &str,
        labels: &Labels,
        timestamp_ms: i64,
        score: f64,
    ) -> Sample {
        Sample {
            family: self.score.clone(),
            labels: crate::detect::live::anomaly_labels(family, labels),
            value: score,
            timestamp_ms,
        }
    }

    /// Hand a batch to every remote's writer without waiting.
    pub fn send(&self, mut batch: TapBatch) {
        if batch.is_empty() {
            return;
        }
        // A scored series' anomaly score series ends with it.
        let scores: Vec<Ended> = batch
            .ended
            .iter()
            .filter(|e| e.scored)
            .map(|e| Ended {
                family: self.score.name.clone(),
                labels: crate::detect::live::anomaly_labels(&e.family, &e.labels),
                last_ms: e.last_ms,
                scored: false,
            })
            .collect();
        batch.ended.extend(scores);
        let n = (batch.samples.len() + batch.ended.len()) as u64;
        let batch = Arc::new(batch);
        for out in self.outs.iter() {
            if out.tx.try_send(batch.clone()).is_err() {
                out.m.dropped("writer_behind", n);
            }
        }
    }
}

/// Self-metrics of one remote (labels `remote`, `url`).
pub struct RemoteMetrics {
    remote: String,
    url: String,
    families: Arc<Families>,
    pub newest_queued_ms: AtomicI64,
    pub newest_sent_ms: AtomicI64,
}

struct Families {
    sent: IntCounterVec,
    sent_bytes: IntCounterVec,
    enqueued: IntCounterVec,
    retried: IntCounterVec,
    failed: IntCounterVec,
    dropped: IntCounterVec,
    queue_bytes: IntGaugeVec,
    queue_samples: IntGaugeVec,
    in_flight: IntGaugeVec,
    max_in_flight: IntGaugeVec,
    lag: prometheus::GaugeVec,
}

impl Families {
    fn register(t: &Telemetry) -> Families {
        let l = &["remote", "url"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            t.registry()
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), l).expect("valid metric");
            t.registry()
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let lag = prometheus::GaugeVec::new(
            Opts::new(
                "vitals_remote_write_lag_seconds",
                "Newest queued sample time minus newest sent sample time.",
            ),
            l,
        )
        .expect("valid metric");
        t.registry()
            .register(Box::new(lag.clone()))
            .expect("metric names are unique");
        Families {
            sent: counter(
                "vitals_remote_storage_samples_sent_total",
                "Samples the remote accepted (2xx).",
                l,
            ),
            sent_bytes: counter(
                "vitals_remote_storage_sent_bytes_total",
                "Compressed request bytes the remote accepted.",
                l,
            ),
            enqueued: counter(
                "vitals_remote_storage_samples_enqueued_total",
                "Samples committed to the on-disk queue.",
                l,
            ),
            retried: counter(
                "vitals_remote_storage_samples_retried_total",
                "Samples sent again after a 5xx, 429 or network error.",
                l,
            ),
            failed: counter(
                "vitals_remote_storage_samples_failed_total",
                "Samples the remote refused with a 4xx other than 429 (not sent again).",
                l,
            ),
            dropped: counter(
                "vitals_remote_storage_samples_dropped_total",
                "Samples not queued or dropped from the queue, by reason (writer_behind, queue_full, disk_error).",
                &["remote", "url", "reason"],
            ),
            queue_bytes: gauge(
                "vitals_remote_storage_queue_bytes",
                "Bytes of queued blocks and of their series table (compressed).",
            ),
            queue_samples: gauge(
                "vitals_remote_storage_queue_samples",
                "Samples waiting in the on-disk queue.",
            ),
            in_flight: gauge(
                "vitals_remote_storage_concurrency",
                "Requests to the remote in flight.",
            ),
            max_in_flight: gauge(
                "vitals_remote_storage_max_concurrency",
                "Requests allowed in flight at once (lanes).",
            ),
            lag,
        }
    }
}

impl RemoteMetrics {
    fn labels(&self) -> [&str; 2] {
        [&self.remote, &self.url]
    }

    pub fn dropped(&self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        self.families
            .dropped
            .with_label_values(&[&self.remote, &self.url, reason])
            .inc_by(n);
    }

    pub fn sent(&self, samples: u64, bytes: u64, newest_ms: i64) {
        self.families
            .sent
            .with_label_values(&self.labels())
            .inc_by(samples);
        self.families
            .sent_bytes
            .with_label_values(&self.labels())
            .inc_by(bytes);
        self.newest_sent_ms.fetch_max(newest_ms, Ordering::Relaxed);
        self.update_lag();
    }

    pub fn retried(&self, n: u64) {
        self.families
            .retried
            .with_label_values(&self.labels())
            .inc_by(n);
    }

    pub fn failed(&self, n: u64) {
        self.families
            .failed
            .with_label_values(&self.labels())
            .inc_by(n);
    }

    pub fn in_flight(&self, delta: i64) {
        self.families
            .in_flight
            .with_label_values(&self.labels())
            .add(delta);
    }

    fn queue(&self, q: &Queue) {
        self.families
            .queue_bytes
            .with_label_values(&self.labels())
            .set(q.bytes() as i64);
        self.families
            .queue_samples
            .with_label_values(&self.labels())
            .set(q.samples() as i64);
    }

    fn update_lag(&self) {
        let queued = self.newest_queued_ms.load(Ordering::Relaxed);
        let sent = self.newest_sent_ms.load(Ordering::Relaxed);
        let lag = if queued == i64::MIN || sent == i64::MIN {
            0.0
        } else {
            (queued - sent).max(0) as f64 / 1000.0
        };
        self.families.lag.with_label_values(&self.labels()).set(lag);
    }
}

/// Why remote write could not start.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("remote_write {name:?}: {source}")]
    Queue { name: String, source: QueueError },
    #[error("remote_write {name:?}: {reason}")]
    Client { name: String, reason: String },
}

/// Requests from the senders to the writer, which owns the queue.
pub enum Ctl {
    Next {
        lane: u32,
        after: Option<u64>,
        reply: oneshot::Sender<Option<Block>>,
    },
    Done {
        lane: u32,
        seq: u64,
    },
}

/// Open every remote's queue and start its writer and senders; `None`
/// when no remote is configured.
pub fn start(
    remotes: &[RemoteWriteConfig],
    telemetry: &Arc<Telemetry>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Option<Tap>, RemoteWriteError> {
    if remotes.is_empty() {
        return Ok(None);
    }
    let families = Arc::new(Families::register(telemetry));
    let mut outs = Vec::new();
    for cfg in remotes {
        let cfg = Arc::new(cfg.clone());
        let external: Vec<(String, String)> = cfg
            .external_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let queue = Queue::open(
            &cfg.queue_dir,
            &cfg.name,
            cfg.max_concurrency,
            cfg.queue_max_bytes,
            &external,
        )
        .map_err(|source| RemoteWriteError::Queue {
            name: cfg.name.clone(),
            source,
        })?;
        let client = cfg.client().map_err(|reason| RemoteWriteError::Client {
            name: cfg.name.clone(),
            reason,
        })?;
        let auth = cfg.auth().map_err(|(_, reason)| RemoteWriteError::Client {
            name: cfg.name.clone(),
            reason,
        })?;
        let m = Arc::new(RemoteMetrics {
            remote: cfg.name.clone(),
            url: cfg.url.clone(),
            families: families.clone(),
            newest_queued_ms: AtomicI64::new(queue.newest_ms().unwrap_or(i64::MIN)),
            // Until something is sent, the lag counts from the start.
            newest_sent_ms: AtomicI64::new(crate::model::now_ms()),
        });
        m.queue(&queue);
        families
            .max_in_flight
            .with_label_values(&m.labels())
            .set(queue.lanes() as i64);
        m.in_flight(0);
        for reason in ["writer_behind", "queue_full", "disk_error"] {
            families
                .dropped
                .with_label_values(&[&cfg.name, &cfg.url, reason]);
        }
        m.sent(0, 0, i64::MIN);
        m.retried(0);
        m.failed(0);
        families.enqueued.with_label_values(&m.labels()).inc_by(0);
        let lanes = queue.lanes();
        let notify: Arc<[Notify]> = (0..lanes).map(|_| Notify::new()).collect();
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        let (ctl_tx, ctl_rx) = mpsc::channel(4 * lanes + 16);
        tracker.spawn(writer(
            cfg.clone(),
            queue,
            rx,
            ctl_rx,
            notify.clone(),
            m.clone(),
        ));
        let sender = Arc::new(sender::Sender::new(
            cfg.clone(),
            client,
            auth,
            m.clone(),
            telemetry.clone(),
        ));
        for lane in 0..lanes {
            tracker.spawn(sender.clone().run(
                lane as u32,
                ctl_tx.clone(),
                notify.clone(),
                shutdown.clone(),
            ));
        }
        outs.push(Out { tx, m });
    }
    Ok(Some(Tap {
        outs: outs.into(),
        score: FamilyMeta::new(
            "vitals_anomaly_score",
            MetricKind::Gauge,
            "Ensemble anomaly score of the series (0..1).",
        ),
    }))
}

/// The points of `batches` this remote sends: selected samples, then a
/// staleness marker for each selected series that ended (never older than
/// its last sample).
fn points_of<'a>(
    cfg: &RemoteWriteConfig,
    batches: &'a [Arc<TapBatch>],
    now_ms: i64,
) -> Vec<Point<'a>> {
    let mut out = Vec::with_capacity(batches.iter().map(|b| b.samples.len()).sum());
    for b in batches {
        for s in &b.samples {
            if cfg.selects(&s.family.name, &s.labels) {
                out.push(Point {
                    family: &s.family.name,
                    labels: &s.labels,
                    value: s.value,
                    timestamp_ms: s.timestamp_ms,
                });
            }
        }
        for e in &b.ended {
            if cfg.selects(&e.family, &e.labels) {
                out.push(Point {
                    family: &e.family,
                    labels: &e.labels,
                    value: f64::from_bits(STALE_NAN),
                    timestamp_ms: now_ms.max(e.last_ms + 1),
                });
            }
        }
    }
    out
}

/// The writer of one remote: owns the queue, commits tapped batches and
/// serves the senders' reads and removals. Runs until the tap is dropped
/// (the ingest task ended), so what was applied before shutdown is queued.
async fn writer(
    cfg: Arc<RemoteWriteConfig>,
    queue: Queue,
    mut rx: mpsc::Receiver<Arc<TapBatch>>,
    mut ctl: mpsc::Receiver<Ctl>,
    notify: Arc<[Notify]>,
    m: Arc<RemoteMetrics>,
) {
    let mut queue = Some(queue);
    let mut ctl_open = true;
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            op = ctl.recv(), if ctl_open => {
                let Some(op) = op else { ctl_open = false; continue };
                let mut ops = vec![op];
                while ops.len() < 1024 {
                    match ctl.try_recv() {
                        Ok(op) => ops.push(op),
                        Err(_) => break,
                    }
                }
                let mut q = queue.take().expect("queue is back after each step");
                let (q, err) = tokio::task::spawn_blocking(move || {
                    let done: Vec<(u32, u64)> = ops
                        .iter()
                        .filter_map(|op| match op {
                            Ctl::Done { lane, seq } => Some((*lane, *seq)),
                            Ctl::Next { .. } => None,
                        })
                        .collect();
                    let err = q.remove(&done).err();
                    for op in ops {
                        if let Ctl::Next { lane, after, reply } = op {
                            let _ = reply.send(q.next(lane, after).unwrap_or(None));
                        }
                    }
                    (q, err)
                })
                .await
                .expect("queue step does not panic");
                if let Some(error) = err {
                    tracing::warn!(remote = %cfg.name, %error, "Removing sent blocks from the remote write queue failed; they may be sent again.");
                }
                m.queue(&q);
                queue = Some(q);
            }
            batch = rx.recv() => {
                let Some(first) = batch else { break };
                let mut batches = vec![first];
                let mut n = batches[0].samples.len();
                while n < cfg.batch_max_samples * notify.len() {
                    match rx.try_recv() {
                        Ok(b) => {
                            n += b.samples.len();
                            batches.push(b);
                        }
                        Err(_) => break,
                    }
                }
                let mut q = queue.take().expect("queue is back after each step");
                let cfg2 = cfg.clone();
                let (q, result) = tokio::task::spawn_blocking(move || {
                    let points = points_of(&cfg2, &batches, crate::model::now_ms());
                    let samples = points.len() as u64;
                    let r = q.append(&points, cfg2.batch_max_samples).map_err(|e| (e, samples));
                    (q, r)
                })
                .await
                .expect("queue step does not panic");
                match result {
                    Ok(appended) => {
                        if failing {
                            failing = false;
                            tracing::info!(remote = %cfg.name, "Remote write queue commits succeed again.");
                        }
                        m.families.enqueued.with_label_values(&m.labels()).inc_by(appended.kept);
                        m.dropped("queue_full", appended.dropped_oldest + appended.dropped_new);
                        if let Some(t) = appended.newest_ms {
                            m.newest_queued_ms.fetch_max(t, Ordering::Relaxed);
                        }
                        m.update_lag();
                        for lane in appended.lanes {
                            notify[lane as usize].notify_one();
                        }
                    }
                    Err((error, samples)) => {
                        m.dropped("disk_error", samples);
                        if !failing {
                            failing = true;
                            tracing::error!(remote = %cfg.name, %error, "Remote write queue commit failed; samples are dropped until commits succeed again.");
                        }
                    }
                }
                m.queue(&q);
                queue = Some(q);
            }
        }
    }
    tracing::debug!(remote = %cfg.name, "Remote write queue writer stopped.");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Batch, BatchMode};
    use crate::pipeline::Pipeline;
    use crate::store::Store;

    fn tap(capacity: usize) -> (Tap, mpsc::Receiver<Arc<TapBatch>>, Arc<Telemetry>) {
        let telemetry = Arc::new(Telemetry::new());
        let families = Arc::new(Families::register(&telemetry));
        let (tx, rx) = mpsc::channel(capacity);
        let m = Arc::new(RemoteMetrics {
            remote: "r".into(),
            url: "http://x/".into(),
            families,
            newest_queued_ms: AtomicI64::new(i64::MIN),
            newest_sent_ms: AtomicI64::new(i64::MIN),
        });
        let tap = Tap {
            outs: vec![Out { tx, m }].into(),
            score: FamilyMeta::new("vitals_anomaly_score", MetricKind::Gauge, "s"),
        };
        (tap, rx, telemetry)
    }

    fn sample(name: &str, dev: &str, value: f64, ts: i64) -> Sample {
        Sample {
            family: FamilyMeta::new(name, MetricKind::Gauge, "h"),
            labels: Labels::from_pairs(&[("device", dev)]),
            value,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn tap_gets_stored_samples_with_their_time_and_the_series_that_ended() {
        let (tap, mut rx, telemetry) = tap(8);
        let mut store = Store::new();
        store.track_ended();
        let mut p = Pipeline::standard();
        let batch = |samples| Batch {
            source: Arc::from("s"),
            mode: BatchMode::Snapshot,
            samples,
        };
        p.apply_tapped(
            batch(vec![
                sample("t", "a", 1.0, 1000),
                sample("t", "b", f64::NAN, 1001),
                sample("t", "c", 3.0, 1002),
            ]),
            &mut store,
            &telemetry,
            Some(&tap),
        );
        let got = rx.try_recv().unwrap();
        // The NaN was dropped by validation: not stored, not sent.
        let seen: Vec<(String, i64)> = got
            .samples
            .iter()
            .map(|s| (s.labels.get("device").unwrap(), s.timestamp_ms))
            .collect();
        assert_eq!(seen, [("a".into(), 1000), ("c".into(), 1002)]);
        assert!(got.ended.is_empty());
        // The next snapshot lacks `c`: it ended.
        p.apply_tapped(
            batch(vec![sample("t", "a", 2.0, 2000)]),
            &mut store,
            &telemetry,
            Some(&tap),
        );
        let got = rx.try_recv().unwrap();
        assert_eq!(got.samples.len(), 1);
        assert_eq!(got.ended.len(), 1);
        assert_eq!(got.ended[0].labels.get("device").as_deref(), Some("c"));
        assert_eq!(got.ended[0].last_ms, 1002);
    }

    #[test]
    fn scores_are_tapped_and_a_full_channel_counts_drops() {
        let (tap, mut rx, telemetry) = tap(1);
        let mut store = Store::new();
        let cfg = crate::config::Config::default();
        let mut p = Pipeline::from_config(&cfg, crate::events::EventBus::new(16));
        let mut scores = 0;
        for i in 0..200 {
            p.apply_tapped(
                Batch {
                    source: Arc::from("s"),
                    mode: BatchMode::Update,
                    samples: vec![sample("t", "a", (i % 7) as f64, 1000 * i)],
                },
                &mut store,
                &telemetry,
                Some(&tap),
            );
            if let Ok(b) = rx.try_recv() {
                scores += b
                    .samples
                    .iter()
                    .filter(|s| {
                        &*s.family.name == "vitals_anomaly_score"
                            && s.labels.get("metric").as_deref() == Some("t")
                            && s.timestamp_ms == 1000 * i
                    })
                    .count();
            }
        }
        assert!(scores > 0, "the detectors scored some samples");
        // Nobody reads: the second batch does not fit and is counted.
        for _ in 0..2 {
            tap.send(TapBatch {
                samples: vec![sample("t", "a", 1.0, 1)],
                ended: Vec::new(),
            });
        }
        let text = crate::exposition::own_text(&telemetry);
        assert!(
            text.contains(r#"vitals_remote_storage_samples_dropped_total{reason="writer_behind",remote="r",url="http://x/"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn lanes_keep_a_series_together_and_stale_markers_follow_its_last_sample() {
        let cfg: RemoteWriteConfig = toml::from_str(
            "name = \"r\"\nurl = \"http://x/\"\nqueue_dir = \"/tmp/q\"\nbatch_max_samples = 2\n",
        )
        .unwrap();
        let b = Arc::new(TapBatch {
            samples: (0..6)
                .map(|i| sample("t", &format!("d{}", i % 3), i as f64, i))
                .collect(),
            ended: vec![Ended {
                family: Arc::from("t"),
                labels: Labels::from_pairs(&[("device", "d9")]),
                last_ms: 5000,
                scored: false,
            }],
        });
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(dir.path(), "r", 2, 1 << 20, &[]).unwrap();
        let batches = [b];
        let points = points_of(&cfg, &batches, 10);
        q.append(&points, cfg.batch_max_samples).unwrap();
        let mut blocks = Vec::new();
        for lane in 0..2 {
            let mut after = None;
            while let Some(b) = q.next(lane, after).unwrap() {
                after = Some(b.seq);
                blocks.push((lane, b));
            }
        }
        let mut per_series: std::collections::HashMap<String, (u32, Vec<i64>)> = Default::default();
        for (lane, e) in &blocks {
            assert!(e.samples <= 2);
            for ts in encoder::decode(&e.body().unwrap()).unwrap().timeseries {
                let dev = ts
                    .labels
                    .iter()
                    .find(|l| l.name == "device")
                    .unwrap()
                    .value
                    .clone();
                let entry = per_series.entry(dev).or_insert((*lane, Vec::new()));
                assert_eq!(entry.0, *lane, "a series stays in one lane");
                entry.1.extend(ts.samples.iter().map(|s| s.timestamp));
                if ts.samples.iter().any(|s| s.value.to_bits() == STALE_NAN) {
                    // Never older than the series' last sample.
                    assert_eq!(ts.samples.last().unwrap().timestamp, 5001);
                }
            }
        }
        assert_eq!(per_series["d0"].1, [0, 3]);
        assert_eq!(per_series["d9"].1, [5001]);
    }
}
