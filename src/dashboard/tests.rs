//! Stream tests: sessions driven through channels (no sockets), against a
//! real store and hub.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, PollSender};

use super::stream::{ClientMsg, Ended, session};
use super::*;
use crate::events::{Event, EventBus, Severity};
use crate::model::{MetricKind, Sample};

struct Rig {
    dash: Dashboard,
    store: Arc<RwLock<Store>>,
    events: EventBus,
    shutdown: CancellationToken,
    src: Arc<str>,
    family: Arc<FamilyMeta>,
}

impl Rig {
    fn new(cfg: DashboardConfig) -> Rig {
        let store = Arc::new(RwLock::new(Store::new()));
        store.write().set_history(60, Duration::from_secs(1));
        let dash = Dashboard::new(cfg, store.clone(), Arc::new(Telemetry::new()));
        let events = EventBus::new(64);
        let shutdown = CancellationToken::new();
        tokio::spawn(dash.clone().run_hub(events.clone(), shutdown.clone()));
        Rig {
            dash,
            store,
            events,
            shutdown,
            src: "demo".into(),
            family: FamilyMeta::new("t_celsius", MetricKind::Gauge, "t"),
        }
    }

    fn put(&self, line: &str, device: &str, value: f64, ts: i64) {
        let mut store = self.store.write();
        let g = store.begin_batch();
        store
            .upsert(
                &self.src,
                &Sample {
                    family: self.family.clone(),
                    labels: Labels::from_pairs(&[("line", line), ("device", device)]),
                    value,
                    timestamp_ms: ts,
                },
                g,
            )
            .unwrap();
    }

    /// Put one sample through the production pipeline (validation,
    /// filters, detectors: a static threshold above 5 on the family), as
    /// the ingest task does.
    fn ingest(&self, line: &str, device: &str, value: f64, ts: i64) {
        let mut cfg = crate::config::Config::default();
        cfg.detect.thresholds = vec![
            toml::from_str(&format!("metric = \"{}\"\nabove = 5.0", self.family.name)).unwrap(),
        ];
        let batch = crate::model::Batch {
            source: self.src.clone(),
            mode: crate::model::BatchMode::Update,
            samples: vec![Sample {
                family: self.family.clone(),
                labels: Labels::from_pairs(&[("line", line), ("device", device)]),
                value,
                timestamp_ms: ts,
            }],
        };
        let mut pipeline = crate::pipeline::Pipeline::from_config(&cfg, self.events.clone());
        pipeline.apply(batch, &mut self.store.write(), &Telemetry::new());
    }

    /// Start a session; returns (client → server sender, server → client receiver, task).
    fn connect(
        &self,
        filters: Vec<Filter>,
        capacity: usize,
    ) -> (
        mpsc::Sender<ClientMsg>,
        mpsc::Receiver<String>,
        tokio::task::JoinHandle<Ended>,
    ) {
        let (out_tx, out_rx) = mpsc::channel::<String>(capacity);
        let (in_tx, in_rx) = mpsc::channel::<ClientMsg>(16);
        let incoming = incoming(in_rx);
        let task = tokio::spawn(session(
            self.dash.clone(),
            PollSender::new(out_tx),
            incoming,
            filters,
            None,
            self.shutdown.clone(),
        ));
        (in_tx, out_rx, task)
    }
}

fn incoming(rx: mpsc::Receiver<ClientMsg>) -> Pin<Box<dyn Stream<Item = ClientMsg> + Send>> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    }))
}

fn cfg() -> DashboardConfig {
    DashboardConfig {
        update_interval: Duration::from_millis(50),
        send_timeout: Duration::from_millis(300),
        ..DashboardConfig::default()
    }
}

/// The next message of `kind`, skipping others; panics after 10 s.
async fn next_of(rx: &mut mpsc::Receiver<String>, kind: &str) -> Value {
    let wait = async {
        loop {
            let msg = rx.recv().await.expect("session still sending");
            let v: Value = serde_json::from_str(&msg).expect("valid JSON");
            if v["type"] == kind {
                return v;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no {kind} message within 10 s"))
}

/// The next delta for which `pred` holds.
async fn delta_where(rx: &mut mpsc::Receiver<String>, pred: impl Fn(&Value) -> bool) -> Value {
    let wait = async {
        loop {
            let v = next_of(rx, "delta").await;
            if pred(&v) {
                return v;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("matching delta within 10 s")
}

fn subscribe(filters: Value) -> ClientMsg {
    ClientMsg::Text(serde_json::json!({"type": "subscribe", "filters": filters}).to_string())
}

#[tokio::test]
async fn snapshot_on_connect_then_deltas_with_new_points_and_series() {
    let rig = Rig::new(cfg());
    let now = crate::model::now_ms();
    rig.put("L1", "a", 1.0, now - 2000);
    rig.put("L1", "a", 2.0, now - 1000);
    rig.put("L1", "b", 5.0, now - 1000);
    let (_in, mut rx, _task) = rig.connect(vec![], 64);
    let hello = next_of(&mut rx, "hello").await;
    assert_eq!(hello["history"], 900);
    let snap = next_of(&mut rx, "snapshot").await;
    let series = snap["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    let a = series
        .iter()
        .find(|s| s["labels"]["device"] == "a")
        .unwrap();
    assert_eq!(floats(&a["v"]), vec![1.0, 2.0]);
    assert_eq!(a["t"].as_array().unwrap().len(), 2);
    assert_eq!(a["metric"], "t_celsius");
    assert_eq!(a["m"], 1);
    let a_id = a["id"].as_u64().unwrap();

    rig.put("L1", "a", 3.0, now);
    rig.put("L2", "c", 7.0, now);
    let d = delta_where(&mut rx, |d| {
        d["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == a_id && p["value"] == 3.0)
    })
    .await;
    let _ = d;
    let d = if d_has_new(&d, "c") {
        d
    } else {
        delta_where(&mut rx, |d| d_has_new(d, "c")).await
    };
    let c = &d["series"].as_array().unwrap()[0];
    assert_eq!(c["labels"]["line"], "L2");
    let c_point = d["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == c["id"])
        .expect("points of the new series in the same delta");
    assert_eq!(floats(&c_point["v"]), vec![7.0]);
    rig.shutdown.cancel();
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn d_has_new(d: &Value, device: &str) -> bool {
    d["series"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["labels"]["device"] == device)
}

#[tokio::test]
async fn filters_narrow_series_and_events_and_tag_them_with_a_mask() {
    let rig = Rig::new(cfg());
    let now = crate::model::now_ms();
    rig.put("L1", "a", 1.0, now);
    rig.put("L2", "b", 1.0, now);
    let (tx, mut rx, _task) = rig.connect(vec![], 64);
    next_of(&mut rx, "snapshot").await;
    tx.send(subscribe(serde_json::json!([
        {"labels": {"line": ["L1"]}},
        {"text": "DEVICE=\"a\""}
    ])))
    .await
    .unwrap();
    let snap = next_of(&mut rx, "snapshot").await;
    let series = snap["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{snap}");
    assert_eq!(series[0]["labels"]["device"], "a");
    assert_eq!(series[0]["m"], 3);

    for (line, device) in [("L2", "b"), ("L1", "a")] {
        rig.events.publish(Event {
            kind: "anomaly",
            severity: Severity::Critical,
            timestamp_ms: now,
            source: "demo".into(),
            metric: "t_celsius".into(),
            labels: Labels::from_pairs(&[("line", line), ("device", device)])
                .as_str()
                .into(),
            value: 9.0,
            expected: Some(1.0),
            lower: Some(0.0),
            upper: Some(2.0),
            score: 0.95,
            reason: "test".into(),
        });
    }
    let d = delta_where(&mut rx, |d| !d["events"].as_array().unwrap().is_empty()).await;
    let events = d["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{d}");
    assert_eq!(events[0]["labels"], r#"{device="a",line="L1"}"#);
    assert_eq!(events[0]["severity"], "critical");
    // The events were forwarded, not recorded: a score lands on a point
    // only through the pipeline, which scores the sample (here a static
    // threshold fires on it) in the same store write as its upsert.
    rig.ingest("L2", "b", 9.0, now);
    rig.ingest("L1", "a", 9.0, now);
    let has_score = |d: &Value| {
        d["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["s"].is_array())
    };
    let d = if has_score(&d) {
        d
    } else {
        delta_where(&mut rx, has_score).await
    };
    let p = &d["points"].as_array().unwrap()[0];
    assert_eq!(p["id"], series[0]["id"], "{d}");
    assert!((p["s"].as_array().unwrap().last().unwrap().as_f64().unwrap() - 1.0).abs() < 1e-6);
    // Updates of series outside the filter are not sent.
    rig.put("L2", "b", 2.0, now + 1000);
    rig.put("L1", "a", 2.0, now + 1000);
    let d = delta_where(&mut rx, |d| !d["points"].as_array().unwrap().is_empty()).await;
    assert!(
        d["points"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"] == series[0]["id"]),
        "{d}"
    );
    rig.shutdown.cancel();
}

#[tokio::test]
async fn malformed_messages_and_unknown_filter_values_get_notices_not_a_crash() {
    let rig = Rig::new(cfg());
    rig.put("L1", "a", 1.0, crate::model::now_ms());
    let (tx, mut rx, task) = rig.connect(vec![], 64);
    next_of(&mut rx, "snapshot").await;
    tx.send(ClientMsg::Text("{not json".into())).await.unwrap();
    let n = next_of(&mut rx, "notice").await;
    assert_eq!(n["reason"], "malformed");
    tx.send(ClientMsg::Text(
        r#"{"type":"subscribe","filters":[{"colour":["red"]}]}"#.into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_of(&mut rx, "notice").await["reason"], "malformed");
    tx.send(ClientMsg::Binary).await.unwrap();
    assert_eq!(next_of(&mut rx, "notice").await["reason"], "binary");
    let too_many: Vec<Value> = (0..9).map(|_| serde_json::json!({})).collect();
    tx.send(subscribe(Value::Array(too_many))).await.unwrap();
    assert_eq!(next_of(&mut rx, "notice").await["reason"], "filter");
    tx.send(subscribe(serde_json::json!([
        {"source": ["nope"], "labels": {"colour": ["red"]}, "metric": ["zzz_*"]}
    ])))
    .await
    .unwrap();
    let n = next_of(&mut rx, "notice").await;
    assert_eq!(n["reason"], "unknown_filter_value");
    assert_eq!(
        n["unknown"],
        serde_json::json!(["source=nope", "metric=zzz_*", "label=colour"])
    );
    let snap = next_of(&mut rx, "snapshot").await;
    assert!(snap["series"].as_array().unwrap().is_empty());
    tx.send(ClientMsg::Text(r#"{"type":"ping","t":12.5}"#.into()))
        .await
        .unwrap();
    assert_eq!(next_of(&mut rx, "pong").await["t"], 12.5);
    assert!(!task.is_finished());
    tx.send(ClientMsg::Close).await.unwrap();
    assert_eq!(task.await.unwrap(), Ended::Closed);
    rig.shutdown.cancel();
}

// Paused clock: timeouts and ticks advance when every task waits, so the
// outcome does not depend on the machine's speed.
#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_is_dropped_and_nothing_piles_up() {
    let rig = Rig::new(cfg());
    // Capacity 1 and never read: the second message cannot be delivered.
    let (_tx, rx_never_read, task) = rig.connect(vec![], 1);
    let writer = {
        let store = rig.store.clone();
        let family = rig.family.clone();
        let src = rig.src.clone();
        let shutdown = rig.shutdown.clone();
        tokio::spawn(async move {
            let mut i = 0i64;
            while !shutdown.is_cancelled() {
                i += 1;
                {
                    let mut s = store.write();
                    let g = s.begin_batch();
                    for d in 0..50 {
                        let _ = s.upsert(
                            &src,
                            &Sample {
                                family: family.clone(),
                                labels: Labels::from_pairs(&[("device", d.to_string())]),
                                value: i as f64,
                                timestamp_ms: crate::model::now_ms(),
                            },
                            g,
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let ended = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("slow client dropped")
        .unwrap();
    assert_eq!(ended, Ended::Slow);
    // The shared backlog is bounded whatever the client does.
    assert!(rig.dash.inner.ticks.len() <= TICK_BACKLOG);
    assert_eq!(
        rig.dash
            .inner
            .metrics
            .dropped
            .with_label_values(&["slow"])
            .get(),
        1
    );
    drop(rx_never_read);
    rig.shutdown.cancel();
    writer.await.unwrap();
}

// Not on a paused clock: the hub paces ticks with `std::time::Instant`.
#[tokio::test]
async fn a_lagging_client_is_skipped_ahead_with_a_fresh_snapshot() {
    let rig = Rig::new(DashboardConfig {
        send_timeout: Duration::from_secs(30),
        ..cfg()
    });
    let (out_tx, mut out_rx) = mpsc::channel::<String>(1024);
    // A sink that takes 200 ms per message: ticks arrive every ~50 ms.
    let slow = futures_util::sink::unfold(out_tx, |tx, msg: String| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(msg).await.map_err(|_| ())?;
        Ok::<_, ()>(tx)
    });
    let (_in_tx, in_rx) = mpsc::channel::<ClientMsg>(1);
    let _task = tokio::spawn(session(
        rig.dash.clone(),
        Box::pin(slow),
        incoming(in_rx),
        vec![],
        None,
        rig.shutdown.clone(),
    ));
    next_of(&mut out_rx, "snapshot").await;
    let store = rig.store.clone();
    let (family, src, shutdown) = (rig.family.clone(), rig.src.clone(), rig.shutdown.clone());
    tokio::spawn(async move {
        let mut i = 0;
        while !shutdown.is_cancelled() {
            i += 1;
            {
                let mut s = store.write();
                let g = s.begin_batch();
                let _ = s.upsert(
                    &src,
                    &Sample {
                        family: family.clone(),
                        labels: Labels::empty(),
                        value: i as f64,
                        timestamp_ms: crate::model::now_ms(),
                    },
                    g,
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let again = tokio::time::timeout(Duration::from_secs(30), next_of(&mut out_rx, "snapshot"))
        .await
        .expect("resync snapshot");
    assert_eq!(again["series"].as_array().unwrap().len(), 1);
    assert!(rig.dash.inner.metrics.resyncs.get() >= 1);
    rig.shutdown.cancel();
}

#[test]
fn history_ring_is_bounded_coalesces_and_carries_scores() {
    let mut store = Store::new();
    store.set_history(3, Duration::from_secs(1));
    let src: Arc<str> = "s".into();
    let f = FamilyMeta::new("x", MetricKind::Gauge, "x");
    let base = 1_700_000_000_000i64;
    for (i, ts) in [0, 400, 1000, 2000, 3000, 3500, 2500].iter().enumerate() {
        let g = store.begin_batch();
        let s = store
            .upsert(
                &src,
                &Sample {
                    family: f.clone(),
                    labels: Labels::empty(),
                    value: i as f64,
                    timestamp_ms: base + ts,
                },
                g,
            )
            .unwrap();
        if *ts == 3500 {
            assert!(s.record_score(base + ts, 0.9));
        }
    }
    let s = store.get("x", &Labels::empty()).unwrap();
    let pts: Vec<(i64, f32)> = s.history.points().map(|p| (p.unix_ms(), p.value)).collect();
    // 3 points kept; 3000 and 3500 share a slot (the later value wins);
    // the out-of-order 2500 only updated the latest value.
    assert_eq!(
        pts,
        vec![(base + 1000, 2.0), (base + 2000, 3.0), (base + 3000, 5.0)]
    );
    assert_eq!(s.value, 6.0);
    assert_eq!(s.history.points().last().unwrap().score, 0.9f32);
    assert!(s.history.points().next().unwrap().score.is_nan());
    assert!(s_heap(&store) <= 64 * std::mem::size_of::<crate::store::Point>());
}

fn s_heap(store: &Store) -> usize {
    store
        .get("x", &Labels::empty())
        .unwrap()
        .history
        .heap_bytes()
}
