//! The durable outbox: every accepted notification is written to a redb
//! file and committed (fsync'd) before the webhook is answered 2xx, and
//! removed only once it was delivered or recorded as failed.
//!
//! One writer thread owns all write transactions and commits whatever
//! arrived while the previous commit ran in one go (group commit), so many
//! concurrent webhooks share one fsync.
//!
//! When a commit fails (a full disk, say), the webhooks of that batch get
//! 503 and nothing of them is kept; the file is opened again before the
//! next commit, which brings it back to its last durable state, and the
//! delivered/failed marks of the failed batch are committed again later.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::payload::Notification;

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const FAILED: TableDefinition<u64, &[u8]> = TableDefinition::new("failed");
/// De-duplication key → expiry (Unix ms).
const DEDUP: TableDefinition<&str, u64> = TableDefinition::new("dedup");

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox storage error: {0}")]
    Store(#[from] redb::Error),
    #[error("outbox record is corrupt: {0}")]
    Corrupt(String),
    #[error("the outbox cannot persist right now: {0}")]
    Unavailable(String),
    #[error("the outbox writer has stopped")]
    Stopped,
}

/// One notification for one channel (and, for SMS, one recipient).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub channel: String,
    /// The SMS number this job is for; `None` for e-mail (all recipients).
    pub recipient: Option<String>,
    pub dedup_key: String,
    pub accepted_ms: u64,
    pub notification: Arc<Notification>,
}

/// A job before it has an id.
pub struct NewJob {
    pub channel: String,
    pub recipient: Option<String>,
}

#[derive(Serialize)]
struct FailedRecord<'a> {
    job: &'a Job,
    reason: &'a str,
    detail: &'a str,
    failed_ms: u64,
}

pub enum Accepted {
    Jobs(Vec<Job>),
    Duplicate,
}

enum Op {
    Accept(AcceptOp),
    Mark(Mark),
}

struct AcceptOp {
    dedup_key: String,
    window: Duration,
    notification: Arc<Notification>,
    jobs: Vec<NewJob>,
    reply: oneshot::Sender<Result<Accepted, OutboxError>>,
}

/// The end of a job. Kept and committed again after a failed commit, so a
/// delivery is not repeated after a restart because its mark was lost.
#[derive(Clone)]
enum Mark {
    Done {
        id: u64,
    },
    Failed {
        job: Box<Job>,
        reason: &'static str,
        detail: String,
    },
}

/// Handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Op>,
    depth: Arc<AtomicI64>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Outbox {
    /// Open (or create) the outbox file and start its writer thread.
    /// Returns the jobs still pending from a previous run, oldest first.
    pub fn open(path: &Path) -> Result<(Outbox, Vec<Job>), OutboxError> {
        let db = Database::create(path).map_err(redb::Error::from)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        {
            txn.open_table(JOBS).map_err(redb::Error::from)?;
            txn.open_table(FAILED).map_err(redb::Error::from)?;
            txn.open_table(DEDUP).map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;

        let read = db.begin_read().map_err(redb::Error::from)?;
        let jobs_t = read.open_table(JOBS).map_err(redb::Error::from)?;
        let mut pending = Vec::new();
        for row in jobs_t.iter().map_err(redb::Error::from)? {
            let (_, v) = row.map_err(redb::Error::from)?;
            let job: Job = serde_json::from_slice(v.value())
                .map_err(|e| OutboxError::Corrupt(e.to_string()))?;
            pending.push(job);
        }
        let failed_t = read.open_table(FAILED).map_err(redb::Error::from)?;
        let last_job = jobs_t
            .last()
            .map_err(redb::Error::from)?
            .map(|(k, _)| k.value());
        let last_failed = failed_t
            .last()
            .map_err(redb::Error::from)?
            .map(|(k, _)| k.value());
        let next_id = last_job.max(last_failed).map_or(1, |k| k + 1);
        let now = now_ms();
        let mut dedup = HashMap::new();
        for row in read
            .open_table(DEDUP)
            .map_err(redb::Error::from)?
            .iter()
            .map_err(redb::Error::from)?
        {
            let (k, v) = row.map_err(redb::Error::from)?;
            if v.value() > now {
                dedup.insert(k.value().to_string(), v.value());
            }
        }
        drop(jobs_t);
        drop(failed_t);
        drop(read);

        let depth = Arc::new(AtomicI64::new(pending.len() as i64));
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            path: path.to_path_buf(),
            db: Some(db),
            next_id: AtomicU64::new(next_id),
            dedup,
            depth: depth.clone(),
            carry: Vec::new(),
            failing: false,
        };
        std::thread::Builder::new()
            .name("relay-outbox".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OutboxError::Store(redb::Error::Io(e)))?;
        Ok((Outbox { tx, depth }, pending))
    }

    /// Persist `jobs` for a notification unless its key was accepted within
    /// `window`. Returns once the commit is durable.
    pub async fn accept(
        &self,
        notification: Arc<Notification>,
        window: Duration,
        jobs: Vec<NewJob>,
    ) -> Result<Accepted, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Accept(AcceptOp {
                dedup_key: notification.dedup_key(),
                window,
                notification,
                jobs,
                reply,
            }))
            .map_err(|_| OutboxError::Stopped)?;
        rx.await.map_err(|_| OutboxError::Stopped)?
    }

    /// The job was delivered: remove it.
    pub fn done(&self, id: u64) {
        let _ = self.tx.send(Op::Mark(Mark::Done { id }));
    }

    /// The job failed permanently: move it to the failed records.
    pub fn failed(&self, job: Job, reason: &'static str, detail: String) {
        let _ = self.tx.send(Op::Mark(Mark::Failed {
            job: Box::new(job),
            reason,
            detail,
        }));
    }

    /// A handle whose writer has stopped: every accept fails (tests of the
    /// 503 path).
    #[doc(hidden)]
    pub fn stopped() -> Outbox {
        let (tx, _) = mpsc::channel();
        Outbox {
            tx,
            depth: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Notifications accepted and not yet delivered or failed.
    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }
}

struct Writer {
    path: PathBuf,
    /// `None` after a failed commit: redb refuses every later transaction
    /// once a write failed, so the file is opened again (which recovers it
    /// to the last durable commit) before the next one.
    db: Option<Database>,
    next_id: AtomicU64,
    /// Key → expiry (Unix ms); mirrors the `dedup` table.
    dedup: HashMap<String, u64>,
    depth: Arc<AtomicI64>,
    /// Marks whose commit failed, committed again with the next batch.
    carry: Vec<Mark>,
    /// The last commit failed (state changes are logged, not every batch).
    failing: bool,
}

/// How many queued operations one commit takes at most.
const BATCH: usize = 4096;
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// How soon carried marks are committed again when nothing else arrives.
const RETRY_EVERY: Duration = Duration::from_secs(1);

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut last_prune = std::time::Instant::now();
        loop {
            let first = if self.carry.is_empty() {
                match rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(RETRY_EVERY) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut batch: Vec<Op> = first.into_iter().collect();
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let prune = last_prune.elapsed() >= PRUNE_EVERY;
            if prune {
                last_prune = std::time::Instant::now();
            }
            self.commit(batch, prune);
        }
        // Every handle is gone: one last try for marks still carried.
        if !self.carry.is_empty() {
            self.commit(Vec::new(), false);
        }
    }

    fn commit(&mut self, batch: Vec<Op>, prune: bool) {
        let now = now_ms();
        let mut accepts = Vec::new();
        let mut marks = std::mem::take(&mut self.carry);
        for op in batch {
            match op {
                Op::Accept(a) => accepts.push(a),
                Op::Mark(m) => marks.push(m),
            }
        }
        let mut new_keys: Vec<(String, u64)> = Vec::new();
        let mut depth_delta = 0i64;
        // Per accept: the jobs made, or `None` for a duplicate.
        let mut outcomes: Vec<Option<Vec<Job>>> = Vec::with_capacity(accepts.len());
        let result = self.transaction(
            now,
            prune,
            &accepts,
            &marks,
            &mut outcomes,
            &mut new_keys,
            &mut depth_delta,
        );
        match result {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!("Outbox commits succeed again.");
                }
                self.dedup.extend(new_keys);
                if prune {
                    self.dedup.retain(|_, exp| *exp > now);
                }
                self.depth.fetch_add(depth_delta, Ordering::Relaxed);
                for (a, outcome) in accepts.into_iter().zip(outcomes) {
                    let _ = a.reply.send(Ok(match outcome {
                        Some(jobs) => Accepted::Jobs(jobs),
                        None => Accepted::Duplicate,
                    }));
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::error!(error = %e, "Outbox commit failed; webhooks get 503 until commits succeed again.");
                } else {
                    tracing::debug!(error = %e, "Outbox commit failed again.");
                }
                // Reopened (and so recovered) before the next commit.
                self.db = None;
                self.carry = marks;
                for a in accepts {
                    let _ = a.reply.send(Err(OutboxError::Unavailable(e.to_string())));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn transaction(
        &mut self,
        now: u64,
        prune: bool,
        accepts: &[AcceptOp],
        marks: &[Mark],
        outcomes: &mut Vec<Option<Vec<Job>>>,
        new_keys: &mut Vec<(String, u64)>,
        depth_delta: &mut i64,
    ) -> Result<(), OutboxError> {
        if self.db.is_none() {
            self.db = Some(Database::create(&self.path).map_err(redb::Error::from)?);
        }
        let Some(db) = &self.db else {
            return Err(OutboxError::Stopped);
        };
        let txn = db.begin_write().map_err(redb::Error::from)?;
        {
            let mut jobs_t = txn.open_table(JOBS).map_err(redb::Error::from)?;
            let mut failed_t = txn.open_table(FAILED).map_err(redb::Error::from)?;
            let mut dedup_t = txn.open_table(DEDUP).map_err(redb::Error::from)?;
            let mut batch_keys = HashSet::new();
            for a in accepts {
                let seen = self.dedup.get(&a.dedup_key).is_some_and(|&exp| exp > now)
                    || batch_keys.contains(&a.dedup_key);
                if seen {
                    outcomes.push(None);
                    continue;
                }
                let expiry = now + a.window.as_millis() as u64;
                dedup_t
                    .insert(a.dedup_key.as_str(), expiry)
                    .map_err(redb::Error::from)?;
                let mut made = Vec::with_capacity(a.jobs.len());
                for j in &a.jobs {
                    let job = Job {
                        id: self.next_id.fetch_add(1, Ordering::Relaxed),
                        channel: j.channel.clone(),
                        recipient: j.recipient.clone(),
                        dedup_key: a.dedup_key.clone(),
                        accepted_ms: now,
                        notification: a.notification.clone(),
                    };
                    let bytes = serde_json::to_vec(&job)
                        .map_err(|e| OutboxError::Corrupt(e.to_string()))?;
                    jobs_t
                        .insert(job.id, bytes.as_slice())
                        .map_err(redb::Error::from)?;
                    made.push(job);
                }
                *depth_delta += made.len() as i64;
                batch_keys.insert(a.dedup_key.clone());
                new_keys.push((a.dedup_key.clone(), expiry));
                outcomes.push(Some(made));
            }
            for m in marks {
                match m {
                    Mark::Done { id } => {
                        if jobs_t.remove(*id).map_err(redb::Error::from)?.is_some() {
                            *depth_delta -= 1;
                        }
                    }
                    Mark::Failed {
                        job,
                        reason,
                        detail,
                    } => {
                        let rec = FailedRecord {
                            job,
                            reason,
                            detail,
                            failed_ms: now,
                        };
                        let bytes = serde_json::to_vec(&rec)
                            .map_err(|e| OutboxError::Corrupt(e.to_string()))?;
                        failed_t
                            .insert(job.id, bytes.as_slice())
                            .map_err(redb::Error::from)?;
                        if jobs_t.remove(job.id).map_err(redb::Error::from)?.is_some() {
                            *depth_delta -= 1;
                        }
                    }
                }
            }
            if prune {
                dedup_t
                    .retain(|_, exp| exp > now)
                    .map_err(redb::Error::from)?;
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::payload::parse;

    fn notification() -> Arc<Notification> {
        Arc::new(
            parse(
                br#"{"version":"4","groupKey":"g","status":"firing","receiver":"ops",
                "alerts":[{"status":"firing","labels":{"alertname":"A"},"startsAt":"2024-01-01T00:00:00Z","fingerprint":"1"}]}"#,
            )
            .unwrap(),
        )
    }

    fn new_jobs() -> Vec<NewJob> {
        vec![
            NewJob {
                channel: "mail".into(),
                recipient: None,
            },
            NewJob {
                channel: "sms".into(),
                recipient: Some("+1555".into()),
            },
        ]
    }

    #[tokio::test]
    async fn persists_dedups_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        let ids: Vec<u64>;
        {
            let (outbox, pending) = Outbox::open(&path).unwrap();
            assert!(pending.is_empty());
            let window = Duration::from_secs(60);
            let Accepted::Jobs(jobs) = outbox
                .accept(notification(), window, new_jobs())
                .await
                .unwrap()
            else {
                panic!("first accept must not be a duplicate")
            };
            ids = jobs.iter().map(|j| j.id).collect();
            assert!(matches!(
                outbox
                    .accept(notification(), window, new_jobs())
                    .await
                    .unwrap(),
                Accepted::Duplicate
            ));
            outbox.done(ids[0]);
            // A later accept is committed after the `done` above.
            let mut other = (*notification()).clone();
            other.group_key = "other".into();
            outbox
                .accept(Arc::new(other), window, vec![])
                .await
                .unwrap();
            assert_eq!(outbox.depth(), 1);
        }
        // The writer thread exits when the handle is dropped; wait for the
        // file lock to be released.
        let mut reopened = None;
        for _ in 0..100 {
            match Outbox::open(&path) {
                Ok(o) => {
                    reopened = Some(o);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let (outbox, pending) = reopened.expect("reopen outbox");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, ids[1]);
        assert_eq!(pending[0].recipient.as_deref(), Some("+1555"));
        assert!(matches!(
            outbox
                .accept(notification(), Duration::from_secs(60), new_jobs())
                .await
                .unwrap(),
            Accepted::Duplicate
        ));
    }
}
