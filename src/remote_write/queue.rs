//! The durable queue of one remote: ready-to-send blocks (each a snappy
//! `WriteRequest`) in a redb file, committed (fsync'd) before the samples
//! count as taken, removed once sent.
//!
//! Blocks live in ordered lanes (`max_concurrency` of them); a series always
//! goes to the same lane, and each lane is sent oldest first, so a series'
//! samples arrive in order. A full queue drops its oldest blocks; a failed
//! commit (a full disk) drops the new block and reopens the file, which
//! brings it back to its last durable state.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::encoder::Encoded;

/// (lane, sequence) → [samples: u32 LE][newest ms: i64 LE][snappy body].
const BLOCKS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("blocks");
const HEADER: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("remote write queue storage error: {0}")]
    Store(#[from] redb::Error),
    #[error("cannot create the queue directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
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

/// A block read back for sending.
#[derive(Debug, Clone)]
pub struct Block {
    pub lane: u32,
    pub seq: u64,
    pub body: bytes::Bytes,
    pub samples: u32,
    pub newest_ms: i64,
}

/// What an append did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Samples of old blocks dropped to make room.
    pub dropped_oldest: u64,
    /// Samples of new blocks that could not be kept at all (a block larger
    /// than the whole queue).
    pub dropped_new: u64,
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
}

impl Queue {
    /// Open (or create) `<dir>/<name>.redb` with at least `lanes` lanes
    /// (more if the file holds blocks of more lanes from an earlier run).
    pub fn open(dir: &Path, name: &str, lanes: usize, max_bytes: u64) -> Result<Queue, QueueError> {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::Dir {
            dir: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(format!("{name}.redb"));
        let db = Database::create(&path).map_err(store)?;
        let txn = db.begin_write().map_err(store)?;
        txn.open_table(BLOCKS).map_err(store)?;
        txn.commit().map_err(store)?;
        let mut q = Queue {
            path,
            db: None,
            lanes: (0..lanes.max(1)).map(|_| VecDeque::new()).collect(),
            next_seq: 1,
            bytes: 0,
            samples: 0,
            max_bytes,
        };
        {
            let read = db.begin_read().map_err(store)?;
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
        }
        q.db = Some(db);
        Ok(q)
    }

    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Payload bytes queued (headers included; the file is larger).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    fn db(&mut self) -> Result<&Database, QueueError> {
        if self.db.is_none() {
            self.db = Some(Database::create(&self.path).map_err(store)?);
        }
        Ok(self.db.as_ref().expect("opened above"))
    }

    /// Commit `blocks` (lane, encoded) in one transaction, dropping the
    /// oldest queued blocks first if they would not fit. On error nothing
    /// changed (the new blocks are not kept).
    pub fn append(&mut self, blocks: Vec<(u32, Encoded)>) -> Result<Appended, QueueError> {
        let mut out = Appended::default();
        let mut keep: Vec<(u32, Encoded)> = Vec::with_capacity(blocks.len());
        let mut need = 0u64;
        for (lane, b) in blocks {
            let size = (b.body.len() + HEADER) as u64;
            if need + size > self.max_bytes {
                out.dropped_new += b.samples as u64;
            } else {
                need += size;
                keep.push((lane.min(self.lanes.len() as u32 - 1), b));
            }
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
            return Ok(out);
        }
        let first_seq = self.next_seq;
        {
            let db = self.db()?;
            let result = (|| -> Result<(), QueueError> {
                let txn = db.begin_write().map_err(store)?;
                {
                    let mut t = txn.open_table(BLOCKS).map_err(store)?;
                    for (lane, m) in &evict {
                        t.remove((*lane, m.seq)).map_err(store)?;
                    }
                    let mut value = Vec::new();
                    for (i, (lane, b)) in keep.iter().enumerate() {
                        value.clear();
                        value.extend_from_slice(&b.samples.to_le_bytes());
                        value.extend_from_slice(&b.newest_ms.to_le_bytes());
                        value.extend_from_slice(&b.body);
                        t.insert((*lane, first_seq + i as u64), value.as_slice())
                            .map_err(store)?;
                    }
                }
                txn.commit().map_err(store)?;
                Ok(())
            })();
            if let Err(e) = result {
                // redb refuses further writes after a failed one; reopening
                // recovers the last durable state.
                self.db = None;
                return Err(e);
            }
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
        for (i, (lane, b)) in keep.into_iter().enumerate() {
            let m = Meta {
                seq: first_seq + i as u64,
                bytes: (b.body.len() + HEADER) as u64,
                samples: b.samples,
                newest_ms: b.newest_ms,
            };
            self.bytes += m.bytes;
            self.samples += m.samples as u64;
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
        let v = v.value();
        Ok(Some(Block {
            lane,
            seq: m.seq,
            body: bytes::Bytes::copy_from_slice(&v[HEADER..]),
            samples: m.samples,
            newest_ms: m.newest_ms,
        }))
    }

    /// Remove sent (or given up) blocks; already-gone keys are ignored.
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
        if keys.is_empty() {
            return Ok(());
        }
        let db = self.db()?;
        let result = (|| -> Result<(), QueueError> {
            let txn = db.begin_write().map_err(store)?;
            {
                let mut t = txn.open_table(BLOCKS).map_err(store)?;
                for k in &keys {
                    t.remove(*k).map_err(store)?;
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
            let l = &mut self.lanes[lane as usize];
            if let Some(pos) = l.iter().position(|m| m.seq == seq) {
                let m = l.remove(pos).expect("position found");
                self.bytes -= m.bytes;
                self.samples -= m.samples as u64;
            }
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
    use super::*;

    fn block(samples: u32, size: usize, newest_ms: i64) -> Encoded {
        Encoded {
            body: vec![7u8; size],
            samples,
            newest_ms,
        }
    }

    #[test]
    fn survives_reopen_in_lane_order_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut q = Queue::open(dir.path(), "r", 2, 1 << 20).unwrap();
            q.append(vec![(0, block(3, 10, 5)), (1, block(4, 10, 6))])
                .unwrap();
            q.append(vec![(0, block(5, 10, 7))]).unwrap();
            assert_eq!(q.samples(), 12);
        }
        let mut q = Queue::open(dir.path(), "r", 2, 1 << 20).unwrap();
        assert_eq!((q.samples(), q.bytes()), (12, 3 * 22));
        let a = q.next(0, None).unwrap().unwrap();
        let b = q.next(0, Some(a.seq)).unwrap().unwrap();
        assert_eq!((a.samples, b.samples), (3, 5));
        assert!(q.next(0, Some(b.seq)).unwrap().is_none());
        q.remove(&[(0, a.seq)]).unwrap();
        assert_eq!(q.samples(), 9);
        // New sequence numbers follow the old ones after a reopen.
        q.append(vec![(0, block(1, 10, 8))]).unwrap();
        let c = q.next(0, Some(b.seq)).unwrap().unwrap();
        assert!(c.seq > b.seq);
        assert_eq!(q.newest_ms(), Some(8));
    }

    #[test]
    fn full_queue_drops_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        // Room for three 112-byte blocks.
        let mut q = Queue::open(dir.path(), "r", 2, 340).unwrap();
        q.append(vec![(0, block(1, 100, 1))]).unwrap();
        q.append(vec![(1, block(2, 100, 2))]).unwrap();
        q.append(vec![(0, block(3, 100, 3))]).unwrap();
        let out = q.append(vec![(1, block(4, 100, 4))]).unwrap();
        assert_eq!(out.dropped_oldest, 1);
        assert_eq!(q.samples(), 9);
        assert_eq!(q.next(0, None).unwrap().unwrap().samples, 3);
        // A block larger than the whole queue is not kept.
        let out = q.append(vec![(0, block(9, 1000, 5))]).unwrap();
        assert_eq!(out.dropped_new, 9);
        assert_eq!(q.samples(), 9);
    }
}
