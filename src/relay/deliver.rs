//! Delivery from the outbox: one worker per channel takes its jobs in
//! order, retries transient failures with exponential backoff (never less
//! than a `Retry-After`), records permanent ones, and folds what exceeds a
//! rate limit into one summary per recipient and window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::metrics::RelayMetrics;
use super::notify::{DeliveryError, Outgoing};
use super::outbox::{Job, Outbox, now_ms};
use super::runtime::{Channel, Runtime};
use super::templates;

/// The current runtime, swapped whole on reload.
pub type Shared = Arc<RwLock<Arc<Runtime>>>;

struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    wake: Notify,
}

/// Hands jobs to per-channel workers, starting a worker the first time a
/// channel gets a job.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<DispatcherInner>,
}

struct DispatcherInner {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    runtime: Shared,
    outbox: Outbox,
    metrics: Arc<RelayMetrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Dispatcher {
    pub fn new(
        runtime: Shared,
        outbox: Outbox,
        metrics: Arc<RelayMetrics>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(DispatcherInner {
                queues: Mutex::new(HashMap::new()),
                runtime,
                outbox,
                metrics,
                shutdown,
                tracker,
            }),
        }
    }

    /// Queue jobs that are already persisted.
    pub fn enqueue(&self, jobs: Vec<Job>) {
        let mut by_channel: HashMap<String, Vec<Job>> = HashMap::new();
        for j in jobs {
            by_channel.entry(j.channel.clone()).or_default().push(j);
        }
        for (channel, jobs) in by_channel {
            let q = self.queue(&channel);
            q.jobs.lock().extend(jobs);
            q.wake.notify_one();
        }
    }

    fn queue(&self, channel: &str) -> Arc<Queue> {
        let mut queues = self.inner.queues.lock();
        if let Some(q) = queues.get(channel) {
            return q.clone();
        }
        let q = Arc::new(Queue {
            jobs: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
        });
        queues.insert(channel.to_string(), q.clone());
        let worker = Worker {
            name: channel.to_string(),
            queue: q.clone(),
            inner: self.inner.clone(),
            limits: HashMap::new(),
            failures: 0,
        };
        self.inner.tracker.spawn(worker.run());
        q
    }
}

/// Flood-control state of one recipient of a channel.
struct Window {
    started: Instant,
    sent: u32,
    /// Jobs over the limit, still in the outbox until the summary is sent.
    folded: Vec<Job>,
}

struct Worker {
    name: String,
    queue: Arc<Queue>,
    inner: Arc<DispatcherInner>,
    limits: HashMap<String, Window>,
    /// Consecutive transient failures (drives the backoff).
    failures: u32,
}

enum Step {
    Next,
    /// Nothing to do: wait for a new job or this long.
    Wait(Duration),
    /// The channel failed: wait this long whatever arrives meanwhile.
    Backoff(Duration),
}

impl Worker {
    async fn run(mut self) {
        let shutdown = self.inner.shutdown.clone();
        let mut missing_logged = false;
        loop {
            let step = {
                let runtime = self.inner.runtime.read().clone();
                match runtime.channels.get(&self.name).cloned() {
                    Some(channel) => {
                        missing_logged = false;
                        self.step(&runtime, &channel).await
                    }
                    None => {
                        if !missing_logged && !self.queue.jobs.lock().is_empty() {
                            warn!(channel = %self.name, "Pending notifications name a channel the configuration no longer has; they wait until it is configured again.");
                            missing_logged = true;
                        }
                        Step::Wait(Duration::from_secs(5))
                    }
                }
            };
            let wait = match step {
                Step::Next => continue,
                Step::Wait(d) => d,
                Step::Backoff(d) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(d) => {}
                    }
                    continue;
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.queue.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Do one unit of work; say how long to wait when there is none.
    async fn step(&mut self, runtime: &Runtime, channel: &Channel) -> Step {
        // Summaries whose window has opened again go first.
        if let Some(wait) = self.flush_summaries(runtime, channel).await {
            return wait;
        }
        let Some(job) = self.queue.jobs.lock().front().cloned() else {
            return Step::Wait(self.next_window_opening(channel));
        };
        let metrics = &self.inner.metrics;
        let retry = &runtime.cfg.retry;
        if now_ms().saturating_sub(job.accepted_ms) > retry.give_up_after.as_millis() as u64 {
            self.pop(job.id);
            metrics
                .failed
                .with_label_values(&[&self.name, "expired"])
                .inc();
            warn!(channel = %self.name, job = job.id, "Notification expired undelivered; recorded as failed.");
            self.inner
                .outbox
                .failed(job, "expired", "give_up_after elapsed".into());
            self.update_depth();
            return Step::Next;
        }
        if let Some(rl) = &channel.rate_limit {
            let key = job.recipient.clone().unwrap_or_default();
            let w = self.limits.entry(key).or_insert_with(|| Window {
                started: Instant::now(),
                sent: 0,
                folded: Vec::new(),
            });
            if w.started.elapsed() >= rl.per && w.folded.is_empty() {
                w.started = Instant::now();
                w.sent = 0;
            }
            if w.sent >= rl.max {
                w.folded.push(job.clone());
                metrics.folded.with_label_values(&[&self.name]).inc();
                self.pop(job.id);
                return Step::Next;
            }
        }
        // Without flood control, up to `parallelism` jobs are sent at once.
        let batch: Vec<Job> = if channel.rate_limit.is_none() && channel.parallelism > 1 {
            self.queue
                .jobs
                .lock()
                .iter()
                .take(channel.parallelism)
                .cloned()
                .collect()
        } else {
            vec![job]
        };
        let mut ready = Vec::with_capacity(batch.len());
        for job in batch {
            match render(runtime, channel, &job) {
                Ok(r) => ready.push((job, r)),
                Err(e) => {
                    self.pop(job.id);
                    metrics
                        .failed
                        .with_label_values(&[&self.name, "template"])
                        .inc();
                    warn!(channel = %self.name, job = job.id, error = %e, "Rendering the notification failed; recorded as failed.");
                    self.inner.outbox.failed(job, "template", e.to_string());
                    self.update_depth();
                }
            }
        }
        if ready.is_empty() {
            return Step::Next;
        }
        // Each outcome is recorded the moment it is known, not once the
        // whole batch is done: a mail the server has accepted is marked
        // delivered (and its mark committed) while slower sends of the same
        // batch are still under way, so a crash then repeats only the sends
        // whose outcome was not known yet.
        let outgoing: Vec<Outgoing<'_>> = ready.iter().map(|(job, r)| r.outgoing(job)).collect();
        let mut sends: FuturesUnordered<_> = outgoing
            .iter()
            .enumerate()
            .map(|(i, o)| async move { (i, channel.notifier.send(o).await) })
            .collect();
        let metrics = self.inner.metrics.clone();
        let mut transient = None;
        while let Some((i, result)) = sends.next().await {
            let job = &ready[i].0;
            match result {
                Ok(()) => {
                    self.inner.outbox.done(job.id);
                    self.failures = 0;
                    self.pop(job.id);
                    if let Some(w) = self.limits.get_mut(job.recipient.as_deref().unwrap_or("")) {
                        w.sent += 1;
                    }
                    metrics.delivered.with_label_values(&[&self.name]).inc();
                    metrics
                        .latency
                        .with_label_values(&[&self.name])
                        .observe(now_ms().saturating_sub(job.accepted_ms) as f64 / 1000.0);
                }
                Err(e) if e.permanent => {
                    self.failed(runtime, vec![job.clone()], e);
                }
                Err(e) => {
                    if transient.is_none() {
                        transient = Some((job.clone(), e));
                    } else {
                        metrics
                            .retries
                            .with_label_values(&[&self.name, e.reason])
                            .inc();
                    }
                }
            }
        }
        drop(sends);
        self.update_depth();
        match transient {
            Some((job, e)) => self.failed(runtime, vec![job], e),
            None => Step::Next,
        }
    }

    /// Handle a failed send of `jobs` (one job, or the jobs of a summary).
    fn failed(&mut self, runtime: &Runtime, jobs: Vec<Job>, e: DeliveryError) -> Step {
        let metrics = &self.inner.metrics;
        if e.permanent {
            metrics
                .failed
                .with_label_values(&[&self.name, e.reason])
                .inc_by(jobs.len() as u64);
            warn!(channel = %self.name, reason = e.reason, error = %e.detail, "Delivery failed permanently; recorded, not retried.");
            for job in jobs {
                self.pop(job.id);
                self.inner.outbox.failed(job, e.reason, e.detail.clone());
            }
            self.update_depth();
            return Step::Next;
        }
        metrics
            .retries
            .with_label_values(&[&self.name, e.reason])
            .inc();
        let retry = &runtime.cfg.retry;
        let exp = retry.multiplier.powi(self.failures.min(60) as i32);
        let mut backoff = retry.initial_backoff.mul_f64(exp).min(retry.max_backoff);
        // Up to 10% jitter so channels recovering together do not stampede.
        backoff += backoff.mul_f64(fastrand::f64() * 0.1);
        if let Some(ra) = e.retry_after {
            backoff = backoff.max(ra.min(retry.max_backoff));
        }
        self.failures = self.failures.saturating_add(1);
        warn!(channel = %self.name, reason = e.reason, error = %e.detail, retry_in = ?backoff, "Delivery failed; will retry.");
        Step::Backoff(backoff)
    }

    /// Send the summary of every recipient whose window has opened again.
    async fn flush_summaries(&mut self, runtime: &Runtime, channel: &Channel) -> Option<Step> {
        let per = channel.rate_limit.as_ref()?.per;
        let due: Vec<String> = self
            .limits
            .iter()
            .filter(|(_, w)| !w.folded.is_empty() && w.started.elapsed() >= per)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let jobs = match self.limits.get(&key) {
                Some(w) => w.folded.clone(),
                None => continue,
            };
            let notifications: Vec<&super::payload::Notification> =
                jobs.iter().map(|j| j.notification.as_ref()).collect();
            let (subject, text) = templates::fold_summary(&notifications);
            let text = channel.notifier.fit(text);
            let first = jobs.first().map_or(0, |j| j.id);
            let last = jobs.last().map_or(0, |j| j.id);
            let message_id = format!("<summary.{first}-{last}@{}>", runtime.cfg.message_id_domain);
            let thread_id = format!("<summary.{}@{}>", self.name, runtime.cfg.message_id_domain);
            let out = Outgoing {
                subject: &subject,
                text: &text,
                html: None,
                message_id: &message_id,
                thread_id: &thread_id,
                recipient: if key.is_empty() { None } else { Some(&key) },
                job_id: first,
            };
            match channel.notifier.send(&out).await {
                Ok(()) => {
                    self.failures = 0;
                    let metrics = &self.inner.metrics;
                    metrics.summaries.with_label_values(&[&self.name]).inc();
                    metrics
                        .delivered
                        .with_label_values(&[&self.name])
                        .inc_by(jobs.len() as u64);
                    info!(channel = %self.name, notifications = jobs.len(), "Flood-control summary sent.");
                    for j in &jobs {
                        metrics
                            .latency
                            .with_label_values(&[&self.name])
                            .observe(now_ms().saturating_sub(j.accepted_ms) as f64 / 1000.0);
                        self.inner.outbox.done(j.id);
                    }
                    if let Some(w) = self.limits.get_mut(&key) {
                        w.folded.clear();
                        w.started = Instant::now();
                        w.sent = 1;
                    }
                    self.update_depth();
                }
                Err(e) => {
                    if e.permanent
                        && let Some(w) = self.limits.get_mut(&key)
                    {
                        w.folded.clear();
                    }
                    return Some(self.failed(runtime, jobs, e));
                }
            }
        }
        None
    }

    /// How long until the next folded summary is due (or a long nap).
    fn next_window_opening(&self, channel: &Channel) -> Duration {
        let idle = Duration::from_secs(3600);
        let Some(rl) = &channel.rate_limit else {
            return idle;
        };
        self.limits
            .values()
            .filter(|w| !w.folded.is_empty())
            .map(|w| rl.per.saturating_sub(w.started.elapsed()))
            .min()
            .unwrap_or(idle)
            .max(Duration::from_millis(10))
    }

    /// Remove a job from the in-memory queue (it is usually at the front).
    fn pop(&self, id: u64) {
        let mut q = self.queue.jobs.lock();
        if let Some(i) = q.iter().position(|j| j.id == id) {
            q.remove(i);
        }
    }

    fn update_depth(&self) {
        // The writer applies `done`/`failed` asynchronously; the gauge is
        // refreshed from its count at scrape time too.
        self.inner
            .metrics
            .outbox_depth
            .set(self.inner.outbox.depth());
    }
}

/// A job's message, rendered.
struct Rendered {
    subject: String,
    text: String,
    html: Option<String>,
    message_id: String,
    thread_id: String,
}

impl Rendered {
    fn outgoing<'a>(&'a self, job: &'a Job) -> Outgoing<'a> {
        Outgoing {
            subject: &self.subject,
            text: &self.text,
            html: self.html.as_deref(),
            message_id: &self.message_id,
            thread_id: &self.thread_id,
            recipient: job.recipient.as_deref(),
            job_id: job.id,
        }
    }
}

/// Render a job: e-mail subject and bodies or SMS text, plus its unique
/// Message-ID (also the SMS idempotency key) and its group's thread id.
fn render(
    runtime: &Runtime,
    channel: &Channel,
    job: &Job,
) -> Result<Rendered, templates::TemplateError> {
    let domain = &runtime.cfg.message_id_domain;
    let (subject, text, html) = channel
        .notifier
        .render(&channel.templates, &job.notification)?;
    Ok(Rendered {
        subject,
        text,
        html,
        message_id: format!("<{}.{}@{domain}>", job.id, job.dedup_key),
        thread_id: format!("<{}@{domain}>", job.notification.group_hash()),
    })
}
