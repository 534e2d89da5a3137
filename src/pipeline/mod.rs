//! The pipeline between sources and the store: a chain of synchronous
//! [`Stage`]s applied to every sample, then the store update.
//!
//! One task ([`run_ingest`]) owns the receiving end of the bounded ingest
//! channel, so stages never need locks of their own and never block on I/O.

pub mod filters;
pub mod validate;

/// The event rules moved next to the records they read, selectors to a leaf;
/// both kept at their old paths.
pub use crate::payload::rules;
pub use crate::select;

use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{Batch, BatchMode, Sample};
use crate::store::Store;
use crate::telemetry::Telemetry;

/// What a stage decided about one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the (possibly modified) sample on.
    Keep,
    /// Drop the sample; the reason is a bounded label value.
    Drop(&'static str),
}

/// One synchronous step applied to every sample.
pub trait Stage: Send {
    fn process(&mut self, sample: &mut Sample) -> Verdict;
}

/// The ordered stages of the pipeline.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
    /// The anomaly detectors, run on every kept sample after the store update.
    detect: Option<crate::detect::live::Detect>,
}

impl Pipeline {
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Self {
        Pipeline {
            stages,
            detect: None,
        }
    }

    /// Validation, the `[[pipeline]]` filters and, when `[detect]` is
    /// enabled, the anomaly detectors publishing on `events` (with the demo
    /// source's threshold when one is configured).
    pub fn from_config(cfg: &crate::config::Config, events: crate::events::EventBus) -> Self {
        let mut p = Pipeline::new(vec![
            Box::new(validate::Validate),
            Box::new(filters::Filters::new(cfg.pipeline.clone())),
        ]);
        if cfg.detect.enabled {
            let mut detect = cfg.detect.clone();
            if cfg
                .sources
                .iter()
                .any(|s| matches!(s, crate::config::SourceConfig::Demo(_)))
            {
                detect.thresholds.extend(crate::sources::demo::thresholds());
            }
            p.detect = Some(crate::detect::live::Detect::new(
                detect,
                cfg.pipeline.clone(),
                events,
            ));
        }
        p
    }

    /// The default pipeline: validation only.
    pub fn standard() -> Self {
        Pipeline::new(vec![Box::new(validate::Validate)])
    }

    /// Run every sample of `batch` through the stages and into `store`.
    pub fn apply(&mut self, batch: Batch, store: &mut Store, telemetry: &Telemetry) {
        self.apply_tapped(batch, store, telemetry, None)
    }

    /// [`Pipeline::apply`], handing what was stored (samples, anomaly
    /// scores, series that ended) to `tap` (remote write) without waiting.
    pub fn apply_tapped(
        &mut self,
        batch: Batch,
        store: &mut Store,
        telemetry: &Telemetry,
        tap: Option<&crate::remote_write::Tap>,
    ) {
        let taps = Taps {
            remote_write: tap.cloned(),
            history: None,
        };
        self.apply_to(batch, store, telemetry, &taps)
    }

    /// [`Pipeline::apply`], handing what was stored to every tap.
    pub fn apply_to(
        &mut self,
        mut batch: Batch,
        store: &mut Store,
        telemetry: &Telemetry,
        taps: &Taps,
    ) {
        let tap = taps.any().then_some(taps);
        if batch.mode == BatchMode::Remove {
            store.remove_source(&batch.source);
            telemetry.forget_source_samples(&batch.source);
            telemetry.store_size(store.len(), store.label_bytes());
            if let Some(tap) = tap {
                tap.send(crate::remote_write::TapBatch {
                    samples: Vec::new(),
                    ended: store.take_ended(),
                });
            }
            return;
        }
        let generation = store.begin_batch();
        let mut ingested = 0u64;
        // Which samples were stored, and the scores, when tapped.
        let mut kept: Vec<bool> = Vec::new();
        let mut scores: Vec<Sample> = Vec::new();
        'samples: for sample in batch.samples.iter_mut() {
            if tap.is_some() {
                kept.push(false);
            }
            for stage in self.stages.iter_mut() {
                if let Verdict::Drop(reason) = stage.process(sample) {
                    telemetry.sample_dropped(&batch.source, reason, &sample.family.name);
                    continue 'samples;
                }
            }
            match store.upsert(&batch.source, sample, generation) {
                Ok(series) => {
                    ingested += 1;
                    if let Some(k) = kept.last_mut() {
                        *k = true;
                    }
                    if let Some(detect) = &self.detect
                        && let Some(score) =
                            detect.observe(&batch.source, sample, &mut series.detect)
                    {
                        // The live dashboard draws the score under the value.
                        series.record_score(sample.timestamp_ms, score);
                        if let Some(tap) = tap {
                            scores.push(tap.score_sample(
                                &sample.family.name,
                                &sample.labels,
                                sample.timestamp_ms,
                                score,
                            ));
                        }
                    }
                }
                Err(refused) => {
                    telemetry.sample_dropped(&batch.source, refused.reason(), &sample.family.name)
                }
            }
        }
        if batch.mode == BatchMode::Snapshot {
            store.retain_generation(&batch.source, generation);
        }
        if let Some(tap) = tap {
            let mut i = 0;
            batch.samples.retain(|_| {
                i += 1;
                kept[i - 1]
            });
            let mut samples = std::mem::take(&mut batch.samples);
            samples.append(&mut scores);
            tap.send(crate::remote_write::TapBatch {
                samples,
                ended: store.take_ended(),
            });
        }
        if ingested > 0 {
            telemetry
                .samples_ingested
                .with_label_values(&[&batch.source])
                .inc_by(ingested);
        }
        telemetry.store_size(store.len(), store.label_bytes());
    }
}

/// Where the ingest task hands what it stored, without waiting: remote
/// write and the history store.
#[derive(Clone, Default)]
pub struct Taps {
    pub remote_write: Option<crate::remote_write::Tap>,
    pub history: Option<crate::history::Tap>,
}

impl Taps {
    fn any(&self) -> bool {
        self.remote_write.is_some() || self.history.is_some()
    }

    fn score_sample(
        &self,
        family: &str,
        labels: &crate::model::Labels,
        ts: i64,
        score: f64,
    ) -> Sample {
        match (&self.remote_write, &self.history) {
            (Some(rw), _) => rw.score_sample(family, labels, ts, score),
            (None, Some(h)) => h.score_sample(family, labels, ts, score),
            (None, None) => unreachable!("scores are only made for a tap"),
        }
    }

    fn send(&self, batch: crate::remote_write::TapBatch) {
        if let Some(h) = &self.history {
            h.send(&batch.samples);
        }
        if let Some(rw) = &self.remote_write {
            rw.send(batch);
        }
    }
}

/// A new pipeline for the ingest task, built from a reloaded configuration.
pub struct Reconfigure {
    pub pipeline: Pipeline,
    /// Drop the detector state kept in the store (`[detect]` or the
    /// `[[pipeline]]` rules changed, so the old state no longer fits).
    pub reset_detectors: bool,
    /// [`crate::detect::state::config_fingerprint`] of the new configuration
    /// (saved with the detector state).
    pub state_config: crate::detect::state::Digest32,
    /// Render per-detector scores (`[detect] detector_scores`).
    pub detector_scores: bool,
    /// Answered once the new pipeline is in place.
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// Receive batches until the channel closes or `shutdown` fires, applying
/// each to the store. Expiry runs once a second.
pub async fn run_ingest(
    rx: mpsc::Receiver<Batch>,
    pipeline: Pipeline,
    store: Arc<RwLock<Store>>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) {
    let (_keep, control) = mpsc::channel(1);
    run_ingest_with_control(
        rx,
        control,
        pipeline,
        store,
        telemetry,
        Taps::default(),
        shutdown,
    )
    .await
}

/// [`run_ingest`] that also swaps in a new pipeline on each [`Reconfigure`]
/// from `control` (hot reload). A swap is taken before the next batch, so
/// every batch queued after the reload answered goes through the new one.
/// What is stored is also handed to the `taps` (remote write, history).
pub async fn run_ingest_with_control(
    mut rx: mpsc::Receiver<Batch>,
    mut control: mpsc::Receiver<Reconfigure>,
    mut pipeline: Pipeline,
    store: Arc<RwLock<Store>>,
    telemetry: Arc<Telemetry>,
    taps: Taps,
    shutdown: CancellationToken,
) {
    let tap = taps.remote_write.as_ref();
    if tap.is_some() {
        store.write().track_ended();
    }
    let mut expiry = tokio::time::interval(std::time::Duration::from_secs(1));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut control_open = true;
    loop {
        tokio::select! {
            biased;
            r = control.recv(), if control_open => match r {
                Some(r) => {
                    pipeline = r.pipeline;
                    let mut store = store.write();
                    if r.reset_detectors {
                        store.reset_detectors();
                    }
                    store.persisted.set_config(r.state_config);
                    store.set_detector_scores(r.detector_scores);
                    drop(store);
                    let _ = r.done.send(());
                }
                None => control_open = false,
            },
            batch = rx.recv() => match batch {
                Some(batch) => pipeline.apply_to(batch, &mut store.write(), &telemetry, &taps),
                None => break,
            },
            _ = expiry.tick() => {
                let mut store = store.write();
                store.expire(crate::model::now_ms());
                telemetry.store_size(store.len(), store.label_bytes());
                    if let Some(tap) = tap {
                    let ended = store.take_ended();
                    tap.send(crate::remote_write::TapBatch { samples: Vec::new(), ended });
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    // Whatever is already queued is applied before exit, so nothing
    // accepted by a source is lost on shutdown.
    while let Ok(batch) = rx.try_recv() {
        pipeline.apply_to(batch, &mut store.write(), &telemetry, &taps);
    }
}
