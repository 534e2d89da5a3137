//! The redb file of the history store: its tables, the one write
//! transaction of a flush (new points, compaction, rollups, retention,
//! the size bound) and the reads.
//!
//! Tables (keys are `(series id, start ms)` so one series' chunks are
//! adjacent and ordered by time):
//! - `series`: id → `{"kind", "family", "labels"}` (JSON).
//! - `raw`: one chunk per flush per series and raw window, keyed by its
//!   first timestamp; a closed window is compacted into one chunk.
//! - `minute`: the 1-minute rows of one raw window (keyed by the window).
//! - `hour`: the 1-hour rows of one UTC day (keyed by the day).
//! - `dirty`: raw windows written since their last compaction.
//! - `events`: `(ms, n)` → one anomaly or rule event (JSON).
//! - `meta`: the format version and the bytes held per tier.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use rustc_hash::{FxHashMap, FxHashSet};

use super::codec::{self, Row};
use crate::query::reader::{ReadError, StoredEvent};

/// Raw chunks never cross a window of this length (ms), and a closed
/// window is rolled up at once; also the key unit of the minute tier.
pub const RAW_WINDOW: i64 = 3_600_000;
pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;

pub const FILE: &str = "history.redb";
const FORMAT: u64 = 1;

const SERIES: TableDefinition<u32, &str> = TableDefinition::new("series");
const RAW: TableDefinition<(u32, i64), &[u8]> = TableDefinition::new("raw");
const MINUTE_T: TableDefinition<(u32, i64), &[u8]> = TableDefinition::new("minute");
const HOUR_T: TableDefinition<(u32, i64), &[u8]> = TableDefinition::new("hour");
const DIRTY: TableDefinition<(u32, i64), u8> = TableDefinition::new("dirty");
const EVENTS: TableDefinition<(i64, u32), &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Bytes counted per stored entry beside its value (key and B-tree slot).
const ENTRY_OVERHEAD: u64 = 16;

/// The tiers, as indexes into per-tier arrays.
pub const TIERS: [&str; 4] = ["raw", "minute", "hour", "events"];
pub const T_RAW: usize = 0;
pub const T_MINUTE: usize = 1;
pub const T_HOUR: usize = 2;
pub const T_EVENTS: usize = 3;

/// Most closed windows compacted by one flush (the rest wait for the next).
const COMPACT_PER_FLUSH: usize = 512;

/// redb's page cache (its default is 1 GiB, which it fills with every page
/// written until the file is that big: resident memory growing with the
/// file). A flush touches a page or two per series; pages not cached are
/// read back from the OS page cache.
const CACHE_BYTES: usize = 2 << 20;

pub fn floor(ts: i64, step: i64) -> i64 {
    ts.div_euclid(step) * step
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("history store {path}: {source}")]
    Db { path: String, source: redb::Error },
    #[error(
        "history store {path} is in use by another process (two vitals on one --storage.path?)"
    )]
    InUse { path: String },
    #[error("cannot create the history directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

impl DiskError {
    /// A bounded reason for `vitals_history_write_errors_total`.
    pub fn reason(&self) -> &'static str {
        fn io_reason(e: &std::io::Error) -> &'static str {
            match e.raw_os_error() {
                Some(28) | Some(122) => "disk_full",
                _ => "io",
            }
        }
        match self {
            DiskError::Db { source, .. } => match source {
                redb::Error::Io(e) => io_reason(e),
                redb::Error::Corrupted(_) => "corrupt",
                redb::Error::PreviousIo => "io",
                _ => "other",
            },
            DiskError::InUse { .. } => "in_use",
            DiskError::Dir { source, .. } => io_reason(source),
        }
    }

    fn is_corrupt(&self) -> bool {
        match self {
            DiskError::Db { source, .. } => match source {
                redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => true,
                redb::Error::Io(e) => matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ),
                _ => false,
            },
            _ => false,
        }
    }
}

/// What a series is, as kept in the `series` table.
#[derive(Debug, Clone)]
pub struct SeriesInfo {
    pub family: Arc<str>,
    pub labels: crate::model::Labels,
    pub pairs: Vec<(String, String)>,
    /// Counters (and histogram parts) roll up as increase.
    pub counter: bool,
}

impl SeriesInfo {
    pub fn new(family: Arc<str>, labels: crate::model::Labels, counter: bool) -> SeriesInfo {
        let pairs = labels.pairs();
        SeriesInfo {
            family,
            labels,
            pairs,
            counter,
        }
    }

    fn encode(&self) -> String {
        serde_json::json!({
            "kind": if self.counter { "counter" } else { "gauge" },
            "family": &*self.family,
            "labels": &self.pairs,
        })
        .to_string()
    }

    fn decode(s: &str) -> Option<SeriesInfo> {
        #[derive(serde::Deserialize)]
        struct Disk {
            kind: String,
            family: String,
            labels: Vec<(String, String)>,
        }
        let d: Disk = serde_json::from_str(s).ok()?;
        Some(SeriesInfo::new(
            Arc::from(d.family.as_str()),
            crate::model::Labels::from_pairs(&d.labels),
            d.kind == "counter",
        ))
    }
}

/// An event as kept on disk.
#[derive(serde::Serialize, serde::Deserialize)]
struct DiskEvent {
    kind: String,
    severity: String,
    source: String,
    metric: String,
    labels: String,
    value: f64,
    score: f64,
    reason: String,
}

/// What is loaded at open.
pub struct Loaded {
    pub series: Vec<SeriesInfo>,
    pub dirty: FxHashSet<(u32, i64)>,
    pub bytes: [u64; 4],
    /// The file that was moved aside because it did not open as a store.
    pub moved_aside: Option<PathBuf>,
}

/// Name the file in a storage error.
trait At<T> {
    fn at(self, path: &Path) -> Result<T, DiskError>;
}

impl<T, E: Into<redb::Error>> At<T> for Result<T, E> {
    fn at(self, path: &Path) -> Result<T, DiskError> {
        self.map_err(|e| DiskError::Db {
            path: path.display().to_string(),
            source: e.into(),
        })
    }
}

fn corrupt(path: &Path, what: String) -> DiskError {
    DiskError::Db {
        path: path.display().to_string(),
        source: redb::Error::Corrupted(what),
    }
}

/// Open (or create) `<dir>/history.redb`. A file that is not a readable
/// store (damaged, truncated, not redb, a newer format) is renamed to
/// `history.redb.corrupt-<unix seconds>` and a new store is created; any
/// other failure (permissions, another process holding it) is an error.
pub fn open(dir: &Path) -> Result<(Database, Loaded), DiskError> {
    std::fs::create_dir_all(dir).map_err(|source| DiskError::Dir {
        path: dir.display().to_string(),
        source,
    })?;
    let path = dir.join(FILE);
    match open_file(&path) {
        Ok((db, loaded)) => Ok((db, loaded)),
        Err(e) if e.is_corrupt() => {
            let secs = crate::model::now_ms() / 1000;
            let aside = dir.join(format!("{FILE}.corrupt-{secs}"));
            std::fs::rename(&path, &aside).map_err(|source| DiskError::Dir {
                path: path.display().to_string(),
                source,
            })?;
            tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %e, "History store is damaged; moved it aside and started a new one.");
            let (db, mut loaded) = open_file(&path)?;
            loaded.moved_aside = Some(aside);
            Ok((db, loaded))
        }
        Err(e) => Err(e),
    }
}

/// Open the file again after a failed write (it comes back at its last
/// committed state).
pub fn reopen(dir: &Path) -> Result<(Database, Loaded), DiskError> {
    open_file(&dir.join(FILE))
}

fn open_file(path: &Path) -> Result<(Database, Loaded), DiskError> {
    let db = match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(DiskError::InUse {
                path: path.display().to_string(),
            });
        }
        Err(x) => return Err(Err::<(), _>(x).at(path).unwrap_err()),
    };
    let txn = db.begin_write().at(path)?;
    {
        let mut meta = txn.open_table(META).at(path)?;
        let format = meta.get("format").at(path)?.map(|v| v.value());
        match format {
            None => {
                meta.insert("format", FORMAT).at(path)?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(corrupt(
                    path,
                    format!("history format {other}, this vitals reads {FORMAT}"),
                ));
            }
        }
        txn.open_table(SERIES).at(path)?;
        txn.open_table(RAW).at(path)?;
        txn.open_table(MINUTE_T).at(path)?;
        txn.open_table(HOUR_T).at(path)?;
        txn.open_table(DIRTY).at(path)?;
        txn.open_table(EVENTS).at(path)?;
    }
    txn.commit().at(path)?;
    let read = db.begin_read().at(path)?;
    let mut series = Vec::new();
    for row in read.open_table(SERIES).at(path)?.iter().at(path)? {
        let (k, v) = row.at(path)?;
        let id = k.value() as usize;
        let info = SeriesInfo::decode(v.value())
            .ok_or_else(|| corrupt(path, format!("series {id} does not decode")))?;
        if id != series.len() {
            return Err(corrupt(path, format!("series ids are not dense at {id}")));
        }
        series.push(info);
    }
    let mut dirty = FxHashSet::default();
    for row in read.open_table(DIRTY).at(path)?.iter().at(path)? {
        let (k, _) = row.at(path)?;
        dirty.insert(k.value());
    }
    let meta = read.open_table(META).at(path)?;
    let mut bytes = [0u64; 4];
    for (i, t) in TIERS.iter().enumerate() {
        bytes[i] = meta
            .get(&*format!("bytes.{t}"))
            .at(path)?
            .map(|v| v.value())
            .unwrap_or(0);
    }
    drop(meta);
    drop(read);
    Ok((
        db,
        Loaded {
            series,
            dirty,
            bytes,
            moved_aside: None,
        },
    ))
}

/// Points of one flush generation (what arrived in one flush interval).
#[derive(Debug, Default)]
pub struct Gen {
    /// Per series id, in arrival order.
    pub points: FxHashMap<u32, Vec<(i64, f64)>>,
    pub events: Vec<StoredEvent>,
    /// Points plus events held.
    pub n: usize,
}

/// Limits applied by a flush.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Retention per tier (ms); events keep as long as the minute tier.
    pub retention: [i64; 4],
    pub max_bytes: u64,
    /// A raw window is compacted this long after its end.
    pub grace_ms: i64,
}

/// What a committed flush did.
#[derive(Debug, Default)]
pub struct Flushed {
    pub samples: u64,
    /// Raw windows that got new chunks.
    pub dirtied: Vec<(u32, i64)>,
    /// Raw windows compacted and rolled up.
    pub compacted: Vec<(u32, i64)>,
    pub bytes: [u64; 4],
    pub oldest: [Option<i64>; 4],
    pub compaction_seconds: f64,
}

/// The write side: owns byte accounting between flushes.
pub struct Writer {
    pub bytes: [u64; 4],
    event_n: u32,
    /// Oldest timestamp per tier at the last commit (`None` inside: the
    /// tier is empty), so retention scans the series only when something
    /// is due; `None` until a flush has scanned the file.
    oldest: Option<[Option<i64>; 4]>,
    /// Tiers scanned series by series for retention, over all flushes.
    pub retention_scans: u64,
}

impl Writer {
    pub fn new(bytes: [u64; 4]) -> Writer {
        Writer {
            bytes,
            event_n: 0,
            oldest: None,
            retention_scans: 0,
        }
    }

    /// One transaction: the new series, the generations' points and
    /// events, then compaction, rollups, retention and the size bound.
    /// Nothing of it is visible (or on disk) unless it all commits.
    #[allow(clippy::too_many_arguments)]
    pub fn flush(
        &mut self,
        db: &Database,
        path: &Path,
        new_series: &[(u32, SeriesInfo)],
        gens: &[Arc<Gen>],
        counters: &[bool],
        dirty: &FxHashSet<(u32, i64)>,
        limits: Limits,
        now_ms: i64,
    ) -> Result<Flushed, DiskError> {
        let mut bytes = self.bytes.map(|b| b as i64);
        let mut out = Flushed::default();
        // The earliest timestamp this flush writes to each tier.
        let mut low = [i64::MAX; 4];
        let mut cache;
        let mut scans = 0;
        let txn = db.begin_write().at(path)?;
        {
            let mut series_t = txn.open_table(SERIES).at(path)?;
            for (id, info) in new_series {
                series_t.insert(*id, info.encode().as_str()).at(path)?;
            }
            let mut raw = txn.open_table(RAW).at(path)?;
            let mut dirty_t = txn.open_table(DIRTY).at(path)?;
            // Every generation's points, per series and raw window.
            let mut per: FxHashMap<(u32, i64), Vec<(i64, f64)>> = FxHashMap::default();
            for g in gens {
                for (id, pts) in &g.points {
                    for &p in pts {
                        per.entry((*id, floor(p.0, RAW_WINDOW)))
                            .or_default()
                            .push(p);
                    }
                }
            }
            let mut keys: Vec<(u32, i64)> = per.keys().copied().collect();
            keys.sort_unstable();
            for key in keys {
                let mut pts = per.remove(&key).expect("key from the map");
                codec::sort_dedup(&mut pts);
                out.samples += pts.len() as u64;
                let k = (key.0, pts[0].0);
                let old = raw.get(k).at(path)?.map(|v| v.value().to_vec());
                if let Some(old) = old {
                    // A chunk starting at the same instant: merge, never lose it.
                    let mut merged = codec::decode_raw(&old).unwrap_or_default();
                    merged.extend_from_slice(&pts);
                    codec::sort_dedup(&mut merged);
                    pts = merged;
                    bytes[T_RAW] -= old.len() as i64 + ENTRY_OVERHEAD as i64;
                }
                let enc = codec::encode_raw(&pts).map_err(|c| corrupt(path, c.to_string()))?;
                bytes[T_RAW] += enc.len() as i64 + ENTRY_OVERHEAD as i64;
                raw.insert(k, enc.as_slice()).at(path)?;
                low[T_RAW] = low[T_RAW].min(k.1);
                if dirty_t.insert(key, 1).at(path)?.is_none() {
                    bytes[T_RAW] += ENTRY_OVERHEAD as i64;
                }
                out.dirtied.push(key);
            }
            let mut events_t = txn.open_table(EVENTS).at(path)?;
            for g in gens {
                for ev in &g.events {
                    let d = DiskEvent {
                        kind: ev.kind.clone(),
                        severity: ev.severity.clone(),
                        source: ev.source.clone(),
                        metric: ev.metric.clone(),
                        labels: ev.labels.clone(),
                        value: ev.value,
                        score: ev.score,
                        reason: ev.reason.clone(),
                    };
                    let json = serde_json::to_vec(&d).expect("an event serializes");
                    loop {
                        self.event_n = self.event_n.wrapping_add(1);
                        let k = (ev.timestamp_ms, self.event_n);
                        if events_t.get(k).at(path)?.is_none() {
                            events_t.insert(k, json.as_slice()).at(path)?;
                            break;
                        }
                    }
                    bytes[T_EVENTS] += json.len() as i64 + ENTRY_OVERHEAD as i64;
                }
            }
            let started = std::time::Instant::now();
            // Compaction and rollups of the closed windows.
            let mut all_dirty: Vec<(u32, i64)> = dirty
                .iter()
                .copied()
                .chain(out.dirtied.iter().copied())
                .filter(|(_, w)| w + RAW_WINDOW + limits.grace_ms <= now_ms)
                .collect();
            all_dirty.sort_unstable();
            all_dirty.dedup();
            all_dirty.truncate(COMPACT_PER_FLUSH);
            let mut minute_t = txn.open_table(MINUTE_T).at(path)?;
            let mut hour_t = txn.open_table(HOUR_T).at(path)?;
            for (s, w) in all_dirty {
                let counter = counters.get(s as usize).copied().unwrap_or(false);
                let chunks: Vec<((u32, i64), Vec<u8>)> = raw
                    .range((s, w)..(s, w + RAW_WINDOW))
                    .at(path)?
                    .map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())))
                    .collect::<Result<_, _>>()
                    .at(path)?;
                let mut pts = Vec::new();
                for (_, c) in &chunks {
                    match codec::decode_raw(c) {
                        Ok(p) => pts.extend(p),
                        Err(err) => {
                            tracing::warn!(path = %path.display(), series = s, window = w, error = %err, "History chunk does not decode; its points are dropped at compaction.")
                        }
                    }
                }
                codec::sort_dedup(&mut pts);
                if chunks.len() > 1 || pts.is_empty() {
                    for (k, c) in &chunks {
                        raw.remove(*k).at(path)?;
                        bytes[T_RAW] -= c.len() as i64 + ENTRY_OVERHEAD as i64;
                    }
                    if !pts.is_empty() {
                        let enc =
                            codec::encode_raw(&pts).map_err(|c| corrupt(path, c.to_string()))?;
                        bytes[T_RAW] += enc.len() as i64 + ENTRY_OVERHEAD as i64;
                        raw.insert((s, pts[0].0), enc.as_slice()).at(path)?;
                    }
                }
                if dirty_t.remove((s, w)).at(path)?.is_some() {
                    bytes[T_RAW] -= ENTRY_OVERHEAD as i64;
                }
                out.compacted.push((s, w));
                if pts.is_empty() {
                    continue;
                }
                let prev = if counter {
                    last_before(&raw, s, w).at(path)?
                } else {
                    None
                };
                let minutes = codec::rollup(&pts, prev, MINUTE, counter);
                low[T_MINUTE] = low[T_MINUTE].min(minutes.first().map_or(i64::MAX, |r| r.start));
                let enc = codec::encode_rows(&minutes).map_err(|c| corrupt(path, c.to_string()))?;
                bytes[T_MINUTE] += enc.len() as i64 + ENTRY_OVERHEAD as i64;
                if let Some(old) = minute_t.insert((s, w), enc.as_slice()).at(path)? {
                    bytes[T_MINUTE] -= old.value().len() as i64 + ENTRY_OVERHEAD as i64;
                }
                let hour = codec::rollup(&pts, prev, HOUR, counter);
                low[T_HOUR] = low[T_HOUR].min(hour.first().map_or(i64::MAX, |r| r.start));
                let day = floor(w, DAY);
                let mut rows = match hour_t.get((s, day)).at(path)? {
                    Some(v) => {
                        let old = v.value();
                        bytes[T_HOUR] -= old.len() as i64 + ENTRY_OVERHEAD as i64;
                        codec::decode_rows(old).unwrap_or_default()
                    }
                    None => Vec::new(),
                };
                rows.retain(|r| r.start != w);
                rows.extend(hour);
                rows.sort_by_key(|r| r.start);
                let enc = codec::encode_rows(&rows).map_err(|c| corrupt(path, c.to_string()))?;
                bytes[T_HOUR] += enc.len() as i64 + ENTRY_OVERHEAD as i64;
                hour_t.insert((s, day), enc.as_slice()).at(path)?;
            }
            // Retention, then the size bound (oldest first).
            let n_series = counters.len() as u32;
            let cut = |tier: usize, cutoff: i64| -> i64 {
                match tier {
                    T_RAW | T_MINUTE => floor(cutoff, RAW_WINDOW),
                    T_HOUR => floor(cutoff, DAY),
                    _ => cutoff,
                }
            };
            let mut cutoffs = [0i64; 4];
            for t in 0..4 {
                cutoffs[t] = cut(t, now_ms.saturating_sub(limits.retention[t]));
            }
            // What each tier held at the last commit plus what this flush
            // wrote; a tier is scanned (every series) only when its
            // oldest data is past its cutoff, or not known yet.
            let known: [Option<Option<i64>>; 4] = std::array::from_fn(|t| {
                let o = self.oldest.filter(|_| t != T_EVENTS)?[t];
                Some(match (o, low[t]) {
                    (o, i64::MAX) => o,
                    (Some(o), l) => Some(o.min(l)),
                    (None, l) => Some(l),
                })
            });
            let over = bytes.iter().sum::<i64>() > limits.max_bytes as i64;
            let due = |t: usize| !matches!(known[t], Some(o) if o.is_none_or(|o| o >= cutoffs[t]));
            let still_dirty = if due(T_RAW) || over {
                min_dirty(&dirty_t).at(path)?
            } else {
                FxHashMap::default()
            };
            let mut oldest = [None; 4];
            for t in 0..4 {
                if !due(t) {
                    oldest[t] = known[t].flatten();
                    continue;
                }
                scans += u64::from(t != T_EVENTS);
                let freed = trim(
                    t,
                    cutoffs[t],
                    n_series,
                    &still_dirty,
                    &mut raw,
                    &mut minute_t,
                    &mut hour_t,
                    &mut events_t,
                )
                .at(path)?;
                bytes[t] -= freed as i64;
                oldest[t] = oldest_of(t, n_series, &raw, &minute_t, &hour_t, &events_t).at(path)?;
            }
            // The size bound marks tiers it cannot cut as `None`: after it,
            // the next flush scans again.
            cache = Some(oldest);
            // Over the bound: cut the tier whose oldest data is oldest
            // relative to its retention, a slice at a time.
            for _ in 0..256 {
                let total: i64 = bytes.iter().sum();
                if total <= limits.max_bytes as i64 {
                    break;
                }
                cache = None;
                let pick = (0..4)
                    .filter_map(|t| {
                        oldest[t].map(|o: i64| {
                            (
                                t,
                                (now_ms - o) as f64 / limits.retention[t].max(1) as f64,
                                o,
                            )
                        })
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                let Some((t, _, o)) = pick else { break };
                let span = (now_ms - o).max(0);
                let step = match t {
                    T_HOUR => DAY,
                    T_EVENTS => MINUTE,
                    _ => RAW_WINDOW,
                }
                .max(span / 16);
                let cutoff = cut(t, o + step).max(o + 1);
                let freed = trim(
                    t,
                    cutoff,
                    n_series,
                    &still_dirty,
                    &mut raw,
                    &mut minute_t,
                    &mut hour_t,
                    &mut events_t,
                )
                .at(path)?;
                bytes[t] -= freed as i64;
                let next = oldest_of(t, n_series, &raw, &minute_t, &hour_t, &events_t).at(path)?;
                if freed == 0 && next == oldest[t] {
                    // Nothing more can go from this tier (unrolled windows).
                    oldest[t] = None;
                    continue;
                }
                oldest[t] = next;
            }
            out.oldest = oldest;
            out.compaction_seconds = started.elapsed().as_secs_f64();
            let mut meta = txn.open_table(META).at(path)?;
            for (i, t) in TIERS.iter().enumerate() {
                meta.insert(&*format!("bytes.{t}"), bytes[i].max(0) as u64)
                    .at(path)?;
            }
        }
        txn.commit().at(path)?;
        self.oldest = cache;
        self.retention_scans += scans;
        self.bytes = bytes.map(|b| b.max(0) as u64);
        out.bytes = self.bytes;
        Ok(out)
    }
}

type RawTable<'t> = redb::Table<'t, (u32, i64), &'static [u8]>;
type EventTable<'t> = redb::Table<'t, (i64, u32), &'static [u8]>;

/// The earliest raw window still dirty, per series.
fn min_dirty(dirty: &redb::Table<'_, (u32, i64), u8>) -> Result<FxHashMap<u32, i64>, redb::Error> {
    let mut out: FxHashMap<u32, i64> = FxHashMap::default();
    for row in dirty.iter()? {
        let (s, w) = row?.0.value();
        let m = out.entry(s).or_insert(w);
        *m = (*m).min(w);
    }
    Ok(out)
}

fn last_before(raw: &RawTable<'_>, s: u32, w: i64) -> Result<Option<f64>, redb::Error> {
    let mut r = raw.range((s, i64::MIN)..(s, w))?;
    match r.next_back() {
        Some(row) => {
            let (_, v) = row?;
            Ok(codec::decode_raw(v.value())
                .ok()
                .and_then(|p| p.last().map(|p| p.1)))
        }
        None => Ok(None),
    }
}

/// Remove what is older than `cutoff` from one tier; returns bytes freed.
/// Raw windows not yet rolled up stay.
#[allow(clippy::too_many_arguments)]
fn trim<'t>(
    tier: usize,
    cutoff: i64,
    n_series: u32,
    dirty: &FxHashMap<u32, i64>,
    raw: &mut RawTable<'t>,
    minute: &mut RawTable<'t>,
    hour: &mut RawTable<'t>,
    events: &mut EventTable<'_>,
) -> Result<u64, redb::Error> {
    let mut freed = 0u64;
    if tier == T_EVENTS {
        for row in events.extract_from_if((i64::MIN, 0)..(cutoff, 0), |_, _| true)? {
            let (_, v) = row?;
            freed += v.value().len() as u64 + ENTRY_OVERHEAD;
        }
        return Ok(freed);
    }
    let table = match tier {
        T_RAW => raw,
        T_MINUTE => minute,
        _ => hour,
    };
    for s in 0..n_series {
        let mut c = cutoff;
        if tier == T_RAW
            && let Some(&d) = dirty.get(&s)
        {
            c = c.min(d);
        }
        for row in table.extract_from_if((s, i64::MIN)..(s, c), |_, _| true)? {
            let (_, v) = row?;
            freed += v.value().len() as u64 + ENTRY_OVERHEAD;
        }
    }
    Ok(freed)
}

/// The oldest timestamp a tier holds.
fn oldest_of<'t>(
    tier: usize,
    n_series: u32,
    raw: &RawTable<'t>,
    minute: &RawTable<'t>,
    hour: &RawTable<'t>,
    events: &EventTable<'_>,
) -> Result<Option<i64>, redb::Error> {
    if tier == T_EVENTS {
        return Ok(events.first()?.map(|(k, _)| k.value().0));
    }
    let table = match tier {
        T_RAW => raw,
        T_MINUTE => minute,
        _ => hour,
    };
    let mut best: Option<(i64, u32)> = None;
    for s in 0..n_series {
        if let Some(row) = table.range((s, i64::MIN)..=(s, i64::MAX))?.next() {
            let (k, _) = row?;
            let start = k.value().1;
            if best.is_none_or(|b| start < b.0) {
                best = Some((start, s));
            }
        }
    }
    let Some((start, s)) = best else {
        return Ok(None);
    };
    if tier == T_RAW {
        return Ok(Some(start));
    }
    // A rollup chunk's key is its window; its first row may start later.
    let v = table.get((s, start))?;
    Ok(v.and_then(|v| codec::decode_rows(v.value()).ok())
        .and_then(|rows| rows.first().map(|r| r.start))
        .or(Some(start)))
}

/// Reads, on a snapshot of the file.
pub struct Reader<'a> {
    txn: redb::ReadTransaction,
    path: &'a Path,
}

fn read_err(path: &Path) -> impl Fn(redb::Error) -> ReadError + '_ {
    move |e| ReadError::Storage(format!("{}: {e}", path.display()))
}

impl<'a> Reader<'a> {
    pub fn new(db: &Database, path: &'a Path) -> Result<Reader<'a>, ReadError> {
        let txn = db.begin_read().map_err(|e| read_err(path)(e.into()))?;
        Ok(Reader { txn, path })
    }

    /// Raw points of a series in `[start, end]` (chunks that do not decode
    /// are left out).
    pub fn raw(&self, s: u32, start: i64, end: i64) -> Result<Vec<(i64, f64)>, ReadError> {
        let e = read_err(self.path);
        let t = self.txn.open_table(RAW).map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        for row in t
            .range((s, floor(start, RAW_WINDOW))..=(s, end))
            .map_err(|x| e(x.into()))?
        {
            let (_, v) = row.map_err(|x| e(x.into()))?;
            if let Ok(p) = codec::decode_raw(v.value()) {
                out.extend(p.into_iter().filter(|p| p.0 >= start && p.0 <= end));
            }
        }
        Ok(out)
    }

    /// The last raw value before `ts`, looking back one window.
    pub fn raw_before(&self, s: u32, ts: i64) -> Result<Option<f64>, ReadError> {
        let p = self.raw(s, ts - RAW_WINDOW, ts - 1)?;
        Ok(p.iter().max_by_key(|p| p.0).map(|p| p.1))
    }

    /// Stored rollup rows (`step` MINUTE or HOUR) starting in `[start, end]`.
    pub fn rows(&self, step: i64, s: u32, start: i64, end: i64) -> Result<Vec<Row>, ReadError> {
        let e = read_err(self.path);
        let (def, unit) = if step == MINUTE {
            (MINUTE_T, RAW_WINDOW)
        } else {
            (HOUR_T, DAY)
        };
        let t = self.txn.open_table(def).map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        for row in t
            .range((s, floor(start, unit))..=(s, end))
            .map_err(|x| e(x.into()))?
        {
            let (_, v) = row.map_err(|x| e(x.into()))?;
            if let Ok(rows) = codec::decode_rows(v.value()) {
                out.extend(
                    rows.into_iter()
                        .filter(|r| r.start >= start && r.start <= end),
                );
            }
        }
        Ok(out)
    }

    /// Does any tier hold a chunk of the series near `[start, end]`?
    pub fn has_any(&self, s: u32, start: i64, end: i64) -> Result<bool, ReadError> {
        let e = read_err(self.path);
        for (def, unit) in [(RAW, RAW_WINDOW), (MINUTE_T, RAW_WINDOW), (HOUR_T, DAY)] {
            let t = self.txn.open_table(def).map_err(|x| e(x.into()))?;
            if t.range((s, floor(start, unit))..=(s, end))
                .map_err(|x| e(x.into()))?
                .next()
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn events(
        &self,
        start: i64,
        end: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, ReadError> {
        let e = read_err(self.path);
        let t = self.txn.open_table(EVENTS).map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        for row in t
            .range((start, 0)..=(end, u32::MAX))
            .map_err(|x| e(x.into()))?
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(|x| e(x.into()))?;
            if let Ok(d) = serde_json::from_slice::<DiskEvent>(v.value()) {
                out.push(StoredEvent {
                    timestamp_ms: k.value().0,
                    kind: d.kind,
                    severity: d.severity,
                    source: d.source,
                    metric: d.metric,
                    labels: d.labels,
                    value: d.value,
                    score: d.score,
                    reason: d.reason,
                });
            }
        }
        Ok(out)
    }
}
