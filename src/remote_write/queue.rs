//! The durable queue of one remote, in a redb file: blocks of samples,
//! committed (fsync'd) before the samples count as taken, removed once
//! sent, and a series table.
//!
//! A block is columnar: the series ids of its runs, the run lengths, the
//! timestamps and the values, each column compressed with `pco`. A
//! series' labels (with `__name__` and the external labels, encoded as the
//! protobuf `Label`s of the request) are written once to the series table,
//! in the same transaction as the first block that uses the series, and the
//! `WriteRequest` is built when a block is sent, from each series' label
//! fields encoded once and the block's columns. Series no block refers to
//! and not seen for [`SERIES_IDLE_MS`] leave the table.
//!
//! Appending finds a sample's series by a hash of its family and label
//! set (checked against the series' key; a colliding series is looked up
//! by its whole key), with buffers kept from one append to the next.
//!
//! Blocks live in ordered lanes (`max_concurrency` of them); a series always
//! goes to the same lane, and each lane is sent oldest first, so a series'
//! samples arrive in order. A full queue drops its oldest blocks; a failed
//! commit (a full disk) drops the new block and reopens the file, which
//! brings it back to its last durable state.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use rustc_hash::FxHashMap;

use super::encoder::{Point, RequestEncoder, label_fields};

/// (lane, sequence) → [samples: u32 LE][newest ms: i64 LE][columns].
const BLOCKS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("blocks_v2");
/// series id → encoded [`SeriesRow`].
const SERIES: TableDefinition<u32, &[u8]> = TableDefinition::new("series_v2");
/// The table of an earlier format (ready-made snappy requests), not read.
const OLD_BLOCKS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("blocks");
const HEADER: usize = 12;
/// A series no queued block uses leaves the table after this long unseen.
pub const SERIES_IDLE_MS: i64 = 10 * 60 * 1000;
/// How often the series table is swept.
const SWEEP_EVERY_MS: i64 = 60 * 1000;

/// A row of the series table.
#[derive(Clone, PartialEq, prost::Message)]
struct SeriesRow {
    /// External labels, family and label set, as the writer looks it up.
    #[prost(string, tag = "1")]
    key: String,
    /// The encoded `Label` messages sent with the series.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    labels: Vec<Bytes>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("remote write queue storage error: {0}")]
    Store(#[from] redb::Error),
    #[error("cannot create the queue directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
    #[error("remote write queue block {lane}/{seq} is damaged: {reason}")]
    Damaged { lane: u32, seq: u64, reason: String },
}

fn store<E: Into<redb::Error>>(e: E) -> QueueError {
    QueueError::Store(e.into())
}

/// What the index keeps of a queued block.
#[derive(Debug, Clone, Copy)]
struct Meta {
    seq: u64,
    bytes: u64,
    samples: u32,
    newest_ms: i64,
}

/// A series of the table.
struct Series {
    /// External labels, family and label set (the row's key).
    key: Box<str>,
    /// The encoded `Label` messages (the row's labels).
    labels: Arc<[Bytes]>,
    /// The label fields of its `TimeSeries`, copied into every request.
    fields: Bytes,
    /// [`series_hash`] of its family and label set (current prefix only).
    hash: Option<u64>,
    lane: u32,
    /// Newest block using it.
    last_seq: u64,
    last_used_ms: i64,
    bytes: u64,
}

/// A block read back for sending: runs of samples, each of one series.
/// The timestamp and value columns are decoded by [`Block::body`] (in the
/// sender, off the writer's thread).
#[derive(Debug, Clone)]
pub struct Block {
    pub lane: u32,
    pub seq: u64,
    pub samples: u32,
    pub newest_ms: i64,
    /// Label fields of each run's series (`None`: missing from the table,
    /// its samples are skipped) and the run's length.
    runs: Vec<(Option<Bytes>, u32)>,
    /// The timestamp and value columns, still compressed.
    columns: Vec<u8>,
}

impl Block {
    /// The snappy-compressed `WriteRequest` of the block.
    pub fn body(&self) -> Result<Vec<u8>, QueueError> {
        self.body_with(&mut RequestEncoder::default())
    }

    /// [`Block::body`] with the sender's buffers.
    pub fn body_with(&self, enc: &mut RequestEncoder) -> Result<Vec<u8>, QueueError> {
        let damaged = |reason: String| QueueError::Damaged {
            lane: self.lane,
            seq: self.seq,
            reason,
        };
        let mut src = &self.columns[..];
        let timestamps: Vec<i64> = take_column(&mut src).map_err(damaged)?;
        let values: Vec<f64> = take_column(&mut src).map_err(damaged)?;
        let total: usize = self.runs.iter().map(|r| r.1 as usize).sum();
        if total != timestamps.len() || total != values.len() {
            return Err(damaged("columns of different lengths".into()));
        }
        let mut at = 0usize;
        Ok(enc.body(self.runs.iter().filter_map(|(fields, n)| {
            let (a, b) = (at, at + *n as usize);
            at = b;
            fields
                .as_ref()
                .map(|f| (&f[..], &timestamps[a..b], &values[a..b]))
        })))
    }
}

/// What an append did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Samples of old blocks dropped to make room.
    pub dropped_oldest: u64,
    /// Samples of new blocks that could not be kept at all (a block larger
    /// than the whole queue).
    pub dropped_new: u64,
    /// Samples committed.
    pub kept: u64,
    /// Newest sample time committed.
    pub newest_ms: Option<i64>,
    /// Lanes that received a block.
    pub lanes: Vec<u32>,
}

pub struct Queue {
    path: PathBuf,
    /// `None` after a failed commit; opened again before the next one.
    db: Option<Database>,
    lanes: Vec<VecDeque<Meta>>,
    next_seq: u64,
    bytes: u64,
    samples: u64,
    max_bytes: u64,
    external: Vec<(String, String)>,
    /// Prefix of every key: the external labels.
    key_prefix: String,
    series: FxHashMap<u32, Series>,
    /// [`series_hash`] → id, for series of the current external labels.
    index: FxHashMap<u64, u32>,
    /// Whole key → id of a series whose hash another series holds.
    collided: FxHashMap<Box<str>, u32>,
    next_id: u32,
    last_sweep_ms: i64,
    key: String,
    /// Buffers of [`Queue::append`], kept between appends.
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    per_lane: Vec<Vec<(u32, i64, f64)>>,
    ids: Vec<u32>,
    counts: Vec<u32>,
    timestamps: Vec<i64>,
    values: Vec<f64>,
}

/// The hash a series is found by: its family and its label set.
fn series_hash(family: &str, labels: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(family.as_bytes());
    h.write_u8(0xff);
    h.write(labels.as_bytes());
    h.finish()
}

/// Family and label set of a key without its prefix (the label set, when
/// there is one, starts at the first `{`, which a family name lacks).
fn split_key(rest: &str) -> (&str, &str) {
    rest.split_at(rest.find('{').unwrap_or(rest.len()))
}

fn key_prefix(external: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in external {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('\u{1}');
    }
    s.push('\u{2}');
    s
}

fn lane_of(key: &str, lanes: usize) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as u32
}

fn pco_config() -> pco::ChunkConfig {
    pco::ChunkConfig::default().with_compression_level(4)
}

fn put_column<T: pco::data_types::Number>(out: &mut Vec<u8>, nums: &[T]) {
    let c = pco::standalone::simple_compress(nums, &pco_config())
        .expect("the default pco configuration is valid");
    out.extend_from_slice(&(c.len() as u32).to_le_bytes());
    out.extend_from_slice(&c);
}

fn take_column<T: pco::data_types::Number>(src: &mut &[u8]) -> Result<Vec<T>, String> {
    if src.len() < 4 {
        return Err("truncated column".into());
    }
    let n = u32::from_le_bytes(src[..4].try_into().expect("4 bytes")) as usize;
    if src.len() < 4 + n {
        return Err("truncated column".into());
    }
    let col = pco::standalone::simple_decompress(&src[4..4 + n]).map_err(|e| e.to_string())?;
    *src = &src[4 + n..];
    Ok(col)
}

impl Queue {
    /// Open (or create) `<dir>/<name>.redb` with at least `lanes` lanes
    /// (more if the file holds blocks of more lanes from an earlier run).
    pub fn open(
        dir: &Path,
        name: &str,
        lanes: usize,
        max_bytes: u64,
        external: &[(String, String)],
    ) -> Result<Queue, QueueError> {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::Dir {
            dir: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(format!("{name}.redb"));
        let db = Database::create(&path).map_err(store)?;
        let txn = db.begin_write().map_err(store)?;
        txn.open_table(BLOCKS).map_err(store)?;
        txn.open_table(SERIES).map_err(store)?;
        txn.commit().map_err(store)?;
        let mut q = Queue {
            path,
            db: None,
            lanes: (0..lanes.max(1)).map(|_| VecDeque::new()).collect(),
            next_seq: 1,
            bytes: 0,
            samples: 0,
            max_bytes,
            external: external.to_vec(),
            key_prefix: key_prefix(external),
            series: FxHashMap::default(),
            index: FxHashMap::default(),
            collided: FxHashMap::default(),
            next_id: 0,
            last_sweep_ms: crate::model::now_ms(),
            key: String::new(),
            scratch: Scratch::default(),
        };
        {
            let read = db.begin_read().map_err(store)?;
            if let Ok(old) = read.open_table(OLD_BLOCKS)
                && old.len().map_err(store)? > 0
            {
                tracing::warn!(path = %q.path.display(), blocks = old.len().map_err(store)?, "The remote write queue holds blocks of an earlier format; they are not sent.");
            }
            let t = read.open_table(BLOCKS).map_err(store)?;
            let mut metas: Vec<(u32, Meta)> = Vec::new();
            for row in t.iter().map_err(store)? {
                let (k, v) = row.map_err(store)?;
                let (lane, seq) = k.value();
                let v = v.value();
                if v.len() < HEADER {
                    continue;
                }
                metas.push((
                    lane,
                    Meta {
                        seq,
                        bytes: v.len() as u64,
                        samples: u32::from_le_bytes(v[0..4].try_into().expect("4 bytes")),
                        newest_ms: i64::from_le_bytes(v[4..12].try_into().expect("8 bytes")),
                    },
                ));
            }
            metas.sort_by_key(|(lane, m)| (*lane, m.seq));
            for (lane, m) in metas {
                while q.lanes.len() <= lane as usize {
                    q.lanes.push(VecDeque::new());
                }
                q.next_seq = q.next_seq.max(m.seq + 1);
                q.bytes += m.bytes;
                q.samples += m.samples as u64;
                q.lanes[lane as usize].push_back(m);
            }
            let t = read.open_table(SERIES).map_err(store)?;
            let now = crate::model::now_ms();
            for row in t.iter().map_err(store)? {
                let (k, v) = row.map_err(store)?;
                let id = k.value();
                let bytes = v.value().len() as u64;
                let Ok(row) = <SeriesRow as prost::Message>::decode(v.value()) else {
                    continue;
                };
                let lane = lane_of(&row.key, q.lanes.len());
                let mut hash = None;
                if let Some(rest) = row.key.strip_prefix(&q.key_prefix) {
                    let (family, labels) = split_key(rest);
                    let h = series_hash(family, labels);
                    if let std::collections::hash_map::Entry::Vacant(e) = q.index.entry(h) {
                        e.insert(id);
                        hash = Some(h);
                    } else {
                        q.collided.insert(row.key.clone().into(), id);
                    }
                }
                q.next_id = q.next_id.max(id.wrapping_add(1));
                q.bytes += bytes;
                q.series.insert(
                    id,
                    Series {
                        key: row.key.into(),
                        fields: label_fields(&row.labels),
                        labels: row.labels.into(),
                        hash,
                        lane,
                        last_seq: q.next_seq,
                        last_used_ms: now,
                        bytes,
                    },
                );
            }
        }
        q.db = Some(db);
        Ok(q)
    }

    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Bytes of queued blocks and of the series table (the file is larger).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Series in the series table.
    pub fn series(&self) -> usize {
        self.series.len()
    }

    fn db(&mut self) -> Result<&Database, QueueError> {
        if self.db.is_none() {
            self.db = Some(Database::create(&self.path).map_err(store)?);
        }
        Ok(self.db.as_ref().expect("opened above"))
    }

    /// The id and lane of series `family{labels}`, added to the table (in
    /// memory; `fresh` collects it for the commit) when new.
    fn intern(
        &mut self,
        family: &str,
        labels: &crate::model::Labels,
        fresh: &mut Vec<u32>,
    ) -> (u32, u32) {
        let labels_str = labels.as_str();
        let hash = series_hash(family, labels_str);
        let plen = self.key_prefix.len();
        if let Some(id) = self.index.get(&hash)
            && let Some(s) = self.series.get(id)
        {
            let rest = &s.key[plen..];
            if rest.len() == family.len() + labels_str.len()
                && rest.starts_with(family)
                && rest.ends_with(labels_str)
            {
                return (*id, s.lane);
            }
        }
        self.key.clear();
        self.key.push_str(&self.key_prefix);
        self.key.push_str(family);
        self.key.push_str(labels_str);
        if let Some(id) = self.collided.get(self.key.as_str()) {
            return (*id, self.series[id].lane);
        }
        let mut id = self.next_id;
        while self.series.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        let labels = super::encoder::series_labels(family, labels, &self.external);
        let key: Box<str> = self.key.as_str().into();
        let bytes = (key.len() + labels.iter().map(|l| l.len() + 2).sum::<usize>() + 8) as u64;
        let hash = match self.index.entry(hash) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
                Some(hash)
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(key.clone(), id);
                None
            }
        };
        let lane = lane_of(&key, self.lanes.len());
        self.series.insert(
            id,
            Series {
                lane,
                key,
                fields: label_fields(&labels),
                labels: labels.into(),
                hash,
                last_seq: 0,
                last_used_ms: 0,
                bytes,
            },
        );
        fresh.push(id);
        (id, lane)
    }

    fn forget(&mut self, id: u32) {
        if let Some(s) = self.series.remove(&id) {
            match s.hash {
                Some(h) => {
                    if self.index.get(&h) == Some(&id) {
                        self.index.remove(&h);
                    }
                }
                None => {
                    if self.collided.get(&s.key) == Some(&id) {
                        self.collided.remove(&s.key);
                    }
                }
            }
        }
    }

    /// Split `points` over the lanes by series, into blocks of at most
    /// `batch_max` samples, and commit them (with the series they bring)
    /// in one transaction, dropping the oldest queued blocks first if they
    /// would not fit. On error nothing changed (the new blocks are not kept).
    pub fn append(
        &mut self,
        points: &[Point<'_>],
        batch_max: usize,
    ) -> Result<Appended, QueueError> {
        let mut out = Appended::default();
        let now = crate::model::now_ms();
        let mut fresh: Vec<u32> = Vec::new();
        let mut sc = std::mem::take(&mut self.scratch);
        sc.per_lane.resize_with(self.lanes.len(), Vec::new);
        for l in sc.per_lane.iter_mut() {
            l.clear();
        }
        for p in points {
            let (id, lane) = self.intern(p.family, p.labels, &mut fresh);
            sc.per_lane[lane as usize].push((id, p.timestamp_ms, p.value));
        }
        // Encode the blocks: runs of one series, ordered by series id, each
        // run in the order given.
        let mut blocks: Vec<(u32, Vec<u8>, u32, i64, Vec<u32>)> = Vec::new();
        let Scratch {
            per_lane,
            ids: run_ids,
            counts,
            timestamps: ts,
            values,
        } = &mut sc;
        for (lane, pts) in per_lane.iter_mut().enumerate() {
            for chunk in pts.chunks_mut(batch_max.max(1)) {
                // Stable: a series' samples keep the order given.
                chunk.sort_by_key(|p| p.0);
                run_ids.clear();
                counts.clear();
                for p in chunk.iter() {
                    if run_ids.last() == Some(&p.0) {
                        *counts.last_mut().expect("a run per id") += 1;
                    } else {
                        run_ids.push(p.0);
                        counts.push(1);
                    }
                }
                ts.clear();
                ts.extend(chunk.iter().map(|p| p.1));
                values.clear();
                values.extend(chunk.iter().map(|p| p.2));
                let newest = ts.iter().copied().max().unwrap_or(i64::MIN);
                let mut v = Vec::with_capacity(HEADER + 16 + chunk.len() * 8);
                v.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
                v.extend_from_slice(&newest.to_le_bytes());
                put_column(&mut v, run_ids);
                put_column(&mut v, counts);
                put_column(&mut v, ts);
                put_column(&mut v, values);
                blocks.push((lane as u32, v, chunk.len() as u32, newest, run_ids.clone()));
            }
        }
        self.scratch = sc;
        let fresh_bytes: u64 = fresh.iter().map(|id| self.series[id].bytes).sum();
        let mut keep = Vec::with_capacity(blocks.len());
        let mut need = fresh_bytes;
        for b in blocks {
            let size = b.1.len() as u64;
            if need + size > self.max_bytes {
                out.dropped_new += b.2 as u64;
            } else {
                need += size;
                keep.push(b);
            }
        }
        if keep.is_empty() {
            need = 0;
        }
        // The oldest blocks (lowest sequence across lanes) that must go.
        let mut evict: Vec<(u32, Meta)> = Vec::new();
        let mut cursor: Vec<usize> = vec![0; self.lanes.len()];
        let mut free = self.max_bytes.saturating_sub(self.bytes);
        while free < need {
            let oldest = self
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.get(cursor[i]).map(|m| (i, *m)))
                .min_by_key(|(_, m)| m.seq);
            let Some((i, m)) = oldest else { break };
            cursor[i] += 1;
            free += m.bytes;
            evict.push((i as u32, m));
        }
        if keep.is_empty() && evict.is_empty() {
            for id in fresh {
                self.forget(id);
            }
            return Ok(out);
        }
        let first_seq = self.next_seq;
        let rows: Vec<(u32, Vec<u8>)> = fresh
            .iter()
            .map(|id| {
                let s = &self.series[id];
                let row = SeriesRow {
                    key: s.key.to_string(),
                    labels: s.labels.to_vec(),
                };
                (*id, prost::Message::encode_to_vec(&row))
            })
            .collect();
        let result = (|| -> Result<(), QueueError> {
            let db = self.db()?;
            let txn = db.begin_write().map_err(store)?;
            {
                let mut s = txn.open_table(SERIES).map_err(store)?;
                for (id, row) in &rows {
                    s.insert(*id, row.as_slice()).map_err(store)?;
                }
                let mut t = txn.open_table(BLOCKS).map_err(store)?;
                for (lane, m) in &evict {
                    t.remove((*lane, m.seq)).map_err(store)?;
                }
                for (i, b) in keep.iter().enumerate() {
                    t.insert((b.0, first_seq + i as u64), b.1.as_slice())
                        .map_err(store)?;
                }
            }
            txn.commit().map_err(store)?;
            Ok(())
        })();
        if let Err(e) = result {
            // redb refuses further writes after a failed one; reopening
            // recovers the last durable state, which lacks the new series.
            self.db = None;
            for id in fresh {
                self.forget(id);
            }
            return Err(e);
        }
        for id in &fresh {
            self.bytes += self.series[id].bytes;
        }
        for (lane, m) in evict {
            let l = &mut self.lanes[lane as usize];
            if let Some(pos) = l.iter().position(|x| x.seq == m.seq) {
                l.remove(pos);
            }
            self.bytes -= m.bytes;
            self.samples -= m.samples as u64;
            out.dropped_oldest += m.samples as u64;
        }
        self.next_seq = first_seq + keep.len() as u64;
        for (i, (lane, v, samples, newest_ms, ids)) in keep.into_iter().enumerate() {
            let seq = first_seq + i as u64;
            for id in ids {
                if let Some(s) = self.series.get_mut(&id) {
                    s.last_seq = seq;
                    s.last_used_ms = now;
                }
            }
            let m = Meta {
                seq,
                bytes: v.len() as u64,
                samples,
                newest_ms,
            };
            self.bytes += m.bytes;
            self.samples += m.samples as u64;
            out.kept += samples as u64;
            out.newest_ms = out.newest_ms.max(Some(newest_ms));
            self.lanes[lane as usize].push_back(m);
            if !out.lanes.contains(&lane) {
                out.lanes.push(lane);
            }
        }
        Ok(out)
    }

    /// The oldest block of `lane` after sequence `after` (`None`: the head).
    pub fn next(&mut self, lane: u32, after: Option<u64>) -> Result<Option<Block>, QueueError> {
        let Some(l) = self.lanes.get(lane as usize) else {
            return Ok(None);
        };
        let Some(m) = l.iter().find(|m| after.is_none_or(|a| m.seq > a)).copied() else {
            return Ok(None);
        };
        let db = self.db()?;
        let read = db.begin_read().map_err(store)?;
        let t = read.open_table(BLOCKS).map_err(store)?;
        let Some(v) = t.get((lane, m.seq)).map_err(store)? else {
            return Ok(None);
        };
        let damaged = |reason: String| QueueError::Damaged {
            lane,
            seq: m.seq,
            reason,
        };
        let v = v.value();
        let mut src = &v[HEADER.min(v.len())..];
        let ids: Vec<u32> = take_column(&mut src).map_err(damaged)?;
        let counts: Vec<u32> = take_column(&mut src).map_err(damaged)?;
        let total: u64 = counts.iter().map(|c| *c as u64).sum();
        if ids.len() != counts.len() || total != m.samples as u64 {
            return Err(damaged("columns of different lengths".into()));
        }
        // A run whose series is missing from the table cannot be sent.
        let mut missing = false;
        let runs = ids
            .iter()
            .zip(&counts)
            .map(|(id, n)| {
                let fields = self.series.get(id).map(|s| s.fields.clone());
                missing |= fields.is_none();
                (fields, *n)
            })
            .collect();
        if missing {
            tracing::warn!(path = %self.path.display(), lane, seq = m.seq, "A remote write queue block names series missing from the series table; their samples are skipped.");
        }
        Ok(Some(Block {
            lane,
            seq: m.seq,
            samples: m.samples,
            newest_ms: m.newest_ms,
            runs,
            columns: src.to_vec(),
        }))
    }

    /// Remove sent (or given up) blocks; already-gone keys are ignored.
    /// Now and then also drops unused series from the series table.
    pub fn remove(&mut self, keys: &[(u32, u64)]) -> Result<(), QueueError> {
        let keys: Vec<(u32, u64)> = keys
            .iter()
            .copied()
            .filter(|(lane, seq)| {
                self.lanes
                    .get(*lane as usize)
                    .is_some_and(|l| l.iter().any(|m| m.seq == *seq))
            })
            .collect();
        let now = crate::model::now_ms();
        let sweep = now - self.last_sweep_ms >= SWEEP_EVERY_MS;
        if keys.is_empty() && !sweep {
            return Ok(());
        }
        let mut gone = Vec::new();
        if sweep {
            self.last_sweep_ms = now;
            gone = self.unused_series(now, &keys, SERIES_IDLE_MS);
        }
        self.commit_removal(&keys, &gone)
    }

    /// Drop every series no queued block uses and not seen for `idle_ms`
    /// (tests; [`Queue::remove`] does it every minute with
    /// [`SERIES_IDLE_MS`]).
    pub fn sweep_series(&mut self, idle_ms: i64) -> Result<usize, QueueError> {
        let now = crate::model::now_ms();
        let gone = self.unused_series(now, &[], idle_ms);
        let n = gone.len();
        self.commit_removal(&[], &gone)?;
        Ok(n)
    }

    /// Series older than every block still queued after removing `keys`
    /// and unseen for `idle_ms`.
    fn unused_series(&self, now: i64, keys: &[(u32, u64)], idle_ms: i64) -> Vec<u32> {
        let oldest = self
            .lanes
            .iter()
            .flat_map(|l| l.iter().find(|m| !keys.iter().any(|k| k.1 == m.seq)))
            .map(|m| m.seq)
            .min()
            .unwrap_or(u64::MAX);
        self.series
            .iter()
            .filter(|(_, s)| s.last_seq < oldest && now - s.last_used_ms >= idle_ms)
            .map(|(id, _)| *id)
            .collect()
    }

    fn commit_removal(&mut self, keys: &[(u32, u64)], gone: &[u32]) -> Result<(), QueueError> {
        if keys.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let result = (|| -> Result<(), QueueError> {
            let db = self.db()?;
            let txn = db.begin_write().map_err(store)?;
            {
                let mut t = txn.open_table(BLOCKS).map_err(store)?;
                for k in keys {
                    t.remove(*k).map_err(store)?;
                }
                let mut s = txn.open_table(SERIES).map_err(store)?;
                for id in gone {
                    s.remove(*id).map_err(store)?;
                }
            }
            txn.commit().map_err(store)?;
            Ok(())
        })();
        if let Err(e) = result {
            self.db = None;
            return Err(e);
        }
        for (lane, seq) in keys {
            let l = &mut self.lanes[*lane as usize];
            if let Some(pos) = l.iter().position(|m| m.seq == *seq) {
                let m = l.remove(pos).expect("position found");
                self.bytes -= m.bytes;
                self.samples -= m.samples as u64;
            }
        }
        for id in gone {
            if let Some(s) = self.series.get(id) {
                self.bytes -= s.bytes;
            }
            self.forget(*id);
        }
        Ok(())
    }

    /// Newest sample time of any queued block.
    pub fn newest_ms(&self) -> Option<i64> {
        self.lanes
            .iter()
            .flat_map(|l| l.back())
            .map(|m| m.newest_ms)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::super::encoder::{STALE_NAN, decode};
    use super::*;
    use crate::model::Labels;

    fn labels(dev: &str) -> Labels {
        Labels::from_pairs(&[("device", dev)])
    }

    fn points<'a>(ls: &'a [Labels], t0: i64, n: usize) -> Vec<Point<'a>> {
        (0..n)
            .map(|i| Point {
                family: "temp",
                labels: &ls[i % ls.len()],
                value: i as f64 * 0.5,
                timestamp_ms: t0 + i as i64,
            })
            .collect()
    }

    /// (device, timestamp, value bits) of every sample of a block.
    fn contents(b: &Block) -> Vec<(String, i64, u64)> {
        let mut out = Vec::new();
        for ts in decode(&b.body().unwrap()).unwrap().timeseries {
            let dev = ts
                .labels
                .iter()
                .find(|l| l.name == "device")
                .map(|l| l.value.clone())
                .unwrap();
            assert_eq!(ts.labels[0].name, "__name__");
            assert_eq!(ts.labels[0].value, "temp");
            for s in ts.samples {
                out.push((dev.clone(), s.timestamp, s.value.to_bits()));
            }
        }
        out
    }

    #[test]
    fn survives_reopen_in_lane_order_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let ls: Vec<Labels> = (0..4).map(|i| labels(&format!("d{i}"))).collect();
        let ext = [("site".to_string(), "p3".to_string())];
        {
            let mut q = Queue::open(dir.path(), "r", 1, 1 << 20, &ext).unwrap();
            let mut pts = points(&ls, 100, 8);
            pts[7].value = f64::from_bits(STALE_NAN);
            let a = q.append(&pts, 5).unwrap();
            assert_eq!((a.kept, a.newest_ms), (8, Some(107)));
            q.append(&points(&ls, 200, 2), 5).unwrap();
            assert_eq!(q.samples(), 10);
            assert_eq!(q.series(), 4);
        }
        let mut q = Queue::open(dir.path(), "r", 1, 1 << 20, &ext).unwrap();
        assert_eq!(q.samples(), 10);
        assert_eq!(q.series(), 4);
        let a = q.next(0, None).unwrap().unwrap();
        let b = q.next(0, Some(a.seq)).unwrap().unwrap();
        let c = q.next(0, Some(b.seq)).unwrap().unwrap();
        assert!(q.next(0, Some(c.seq)).unwrap().is_none());
        assert_eq!((a.samples, b.samples, c.samples), (5, 3, 2));
        // Grouped by series, in the order given, bits kept (the stale NaN).
        let mut got = contents(&a);
        got.extend(contents(&b));
        assert_eq!(
            got.iter().filter(|s| s.0 == "d3").collect::<Vec<_>>(),
            [
                &("d3".to_string(), 103, 1.5f64.to_bits()),
                &("d3".to_string(), 107, STALE_NAN)
            ]
        );
        let req = decode(&a.body().unwrap()).unwrap();
        assert!(
            req.timeseries[0]
                .labels
                .iter()
                .any(|l| l.name == "site" && l.value == "p3")
        );
        q.remove(&[(0, a.seq)]).unwrap();
        assert_eq!(q.samples(), 5);
        // New sequence numbers follow the old ones after a reopen, and the
        // known series keep their ids.
        q.append(&points(&ls, 300, 1), 5).unwrap();
        assert_eq!(q.series(), 4);
        let d = q.next(0, Some(c.seq)).unwrap().unwrap();
        assert!(d.seq > c.seq);
        assert_eq!(contents(&d), [("d0".to_string(), 300, 0f64.to_bits())]);
        assert_eq!(q.newest_ms(), Some(300));
    }

    #[test]
    fn labels_are_stored_once_and_unused_series_leave_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let ls: Vec<Labels> = (0..500)
            .map(|i| labels(&format!("a-long-device-name-{i:04}")))
            .collect();
        let mut q = Queue::open(dir.path(), "r", 2, 1 << 24, &[]).unwrap();
        q.append(&points(&ls, 0, 500), 10_000).unwrap();
        let first = q.bytes();
        q.append(&points(&ls, 1000, 500), 10_000).unwrap();
        let second = q.bytes() - first;
        // The second block of the same series brings no labels: well under
        // the ~30 label bytes per sample of the first.
        assert!(second * 4 < first, "first {first} B, second {second} B");
        assert!(second < 500 * 6, "{second} B for 500 samples");
        // Queued blocks keep their series.
        assert_eq!(q.sweep_series(0).unwrap(), 0);
        let keys: Vec<(u32, u64)> = (0..2u32)
            .flat_map(|l| {
                let mut v = Vec::new();
                let mut after = None;
                while let Some(b) = q.next(l, after).unwrap() {
                    after = Some(b.seq);
                    v.push((l, b.seq));
                }
                v
            })
            .collect();
        q.remove(&keys).unwrap();
        assert_eq!(q.samples(), 0);
        assert_eq!(q.sweep_series(0).unwrap(), 500);
        assert_eq!(q.bytes(), 0);
        drop(q);
        let q = Queue::open(dir.path(), "r", 2, 1 << 24, &[]).unwrap();
        assert_eq!(q.series(), 0);
    }

    #[test]
    fn full_queue_drops_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let ls = [labels("d0")];
        let mut q = Queue::open(dir.path(), "r", 2, 1 << 20, &[]).unwrap();
        q.append(&points(&ls, 0, 1), 10).unwrap();
        let size = q.bytes();
        drop(q);
        std::fs::remove_dir_all(dir.path()).unwrap();
        // Room for the series and about three one-sample blocks.
        let mut q = Queue::open(dir.path(), "r", 2, size * 3, &[]).unwrap();
        for t in 0..3 {
            q.append(&points(&ls, t, 1), 10).unwrap();
        }
        let out = q.append(&points(&ls, 3, 1), 10).unwrap();
        assert!(out.dropped_oldest >= 1, "{out:?}");
        assert_eq!(q.samples() + out.dropped_oldest, 4);
        let head = q.next(q.series[&0].lane, None).unwrap().unwrap();
        assert_eq!(contents(&head)[0].1, out.dropped_oldest as i64);
        // A block larger than the whole queue is not kept.
        let many: Vec<Labels> = (0..2000).map(|i| labels(&format!("x{i}"))).collect();
        let out = q.append(&points(&many, 9, 2000), 5000).unwrap();
        assert_eq!(out.dropped_new, 2000);
        assert_eq!(out.kept, 0);
    }
}
