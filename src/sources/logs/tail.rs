//! Tailing: files found by glob, followed by identity through rotation and
//! truncation, offsets saved in the state file, and the source's loop.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::process::Processor;
use super::{LogFormat, LogsConfig, StartAt};
use crate::events::Event;
use crate::model::{Batch, BatchMode, Sample, now_ms};
use crate::payload::record::split_csv;
use crate::payload::rules;
use crate::sources::{Health, Outcome, SourceContext};

/// A path that may hold wildcards (`globset` syntax: `*` and `?` within
/// one path component, `[...]`, `{a,b}`, `**` for any number of
/// directories), matched against the whole path.
#[derive(Debug, Clone)]
pub(super) struct Glob {
    /// The leading components without wildcards: where the walk starts.
    base: PathBuf,
    /// `None` for a literal path.
    matcher: Option<globset::GlobMatcher>,
    /// Directory levels below `base` the walk descends: the pattern's
    /// depth, or [`GLOB_MAX_DEPTH`] with `**`.
    depth: usize,
    literal: PathBuf,
}

/// Deepest a `**` pattern looks below its base directory.
const GLOB_MAX_DEPTH: usize = 16;
/// Most directory entries one expansion of a pattern visits (a `**` under
/// a large tree must not make a poll unbounded).
const GLOB_MAX_ENTRIES: usize = 100_000;

impl Glob {
    pub(super) fn new(pattern: &str) -> Result<Self, String> {
        let path = Path::new(pattern);
        if path.file_name().is_none() {
            return Err(format!("{pattern:?} has no file name"));
        }
        let wild = |s: &str| s.contains(['*', '?', '[', '{']);
        let mut base = PathBuf::new();
        let mut below = 0usize;
        let mut in_pattern = false;
        for c in path.components() {
            let text = c.as_os_str().to_string_lossy();
            if !in_pattern && wild(&text) {
                in_pattern = true;
            }
            if in_pattern {
                below += 1;
            } else {
                base.push(c);
            }
        }
        if !in_pattern {
            return Ok(Glob {
                base,
                matcher: None,
                depth: 0,
                literal: path.to_path_buf(),
            });
        }
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("{pattern:?}: {}", e.kind()))?;
        let depth = if pattern.contains("**") {
            GLOB_MAX_DEPTH
        } else {
            below
        };
        Ok(Glob {
            base,
            matcher: Some(glob.compile_matcher()),
            depth,
            literal: path.to_path_buf(),
        })
    }

    /// Paths matching now (a literal path is returned whether or not it
    /// exists). Directories are walked from the base without following
    /// symbolic links to directories, to the pattern's depth.
    fn expand(&self, out: &mut Vec<PathBuf>) {
        let Some(matcher) = &self.matcher else {
            out.push(self.literal.clone());
            return;
        };
        let mut budget = GLOB_MAX_ENTRIES;
        let mut stack = vec![(self.base.clone(), 1usize)];
        while let Some((dir, level)) = stack.pop() {
            let read = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir.as_path()
            };
            let Ok(entries) = std::fs::read_dir(read) else {
                continue;
            };
            for entry in entries.flatten() {
                if budget == 0 {
                    return;
                }
                budget -= 1;
                let path = dir.join(entry.file_name());
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                // A matching directory is returned too: reading it fails
                // and is counted (`unreadable`), as for any bad match.
                let descend = kind.is_dir() && level < self.depth;
                if matcher.is_match(&path) {
                    out.push(path.clone());
                }
                if descend {
                    stack.push((path, level + 1));
                }
            }
        }
    }
}

/// Device and inode: what a file is, whatever its name.
type FileId = (u64, u64);

fn file_id(m: &std::fs::Metadata) -> FileId {
    (m.dev(), m.ino())
}

/// The persisted offsets.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    files: Vec<SavedFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    offset: u64,
    /// Fingerprint of the file's first bytes, so a reused inode (another
    /// file) is not mistaken for the saved one.
    #[serde(default)]
    head: Head,
}

/// How many leading bytes identify a file's content.
const HEAD_BYTES: usize = 64;

/// Length and FNV-1a hash of a file's first (up to [`HEAD_BYTES`]) bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    len: usize,
    hash: u64,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The current head of `file` (at most `len` bytes are looked at).
fn read_head(file: &File, len: u64) -> std::io::Result<(Head, [u8; HEAD_BYTES])> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; HEAD_BYTES];
    let want = (len as usize).min(HEAD_BYTES);
    let mut got = 0;
    while got < want {
        let n = file.read_at(&mut buf[got..want], got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok((
        Head {
            len: got,
            hash: fnv1a(&buf[..got]),
        },
        buf,
    ))
}

/// Whether the first `head.len` bytes of `bytes` still hash to `head`.
fn head_matches(head: Head, now: &Head, bytes: &[u8]) -> bool {
    head.len == 0 || (now.len >= head.len && fnv1a(&bytes[..head.len]) == head.hash)
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn load_state(path: &Path) -> Result<State, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(StateError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn save_state(path: &Path, state: &State) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        // On disk before the rename makes it the state: a crash right
        // after must not leave an empty or partial file under the name.
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    // And the rename itself (the directory entry).
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// One file being followed.
struct Tailed {
    path: PathBuf,
    file: File,
    /// Fingerprint of the first bytes, to notice a rewritten file.
    head: Head,
    /// Bytes consumed: every complete line before this offset was processed.
    offset: u64,
    /// Bytes read after `offset`, not yet ended by a newline.
    partial: Vec<u8>,
    /// Skipping the rest of an over-long line.
    discarding: bool,
    /// CSV header of this file (when the columns are not configured).
    header: Option<Vec<Box<str>>>,
    seen: bool,
}

impl Tailed {
    /// Position of the OS file handle.
    fn read_pos(&self) -> u64 {
        self.offset + self.partial.len() as u64
    }
}

/// Most bytes read from one file per poll, so one busy file cannot starve
/// the others or make a batch huge; the next poll follows at once.
const READ_PER_POLL: u64 = 4 << 20;

/// The tailer: files followed, offsets, and error bookkeeping.
pub struct Tailer {
    cfg: LogsConfig,
    globs: Vec<Glob>,
    files: FxHashMap<FileId, Tailed>,
    saved: FxHashMap<FileId, SavedFile>,
    first_scan: bool,
    /// Paths currently failing, so each failure is counted once.
    failing: FxHashSet<PathBuf>,
    proc: Processor,
    buf: Vec<u8>,
}

impl Tailer {
    pub fn new(cfg: LogsConfig, telemetry: Arc<crate::telemetry::Telemetry>) -> Self {
        let globs = cfg.paths.iter().filter_map(|p| Glob::new(p).ok()).collect();
        let mut saved = FxHashMap::default();
        if let Some(path) = &cfg.state_file {
            match load_state(path) {
                Ok(state) => {
                    for f in state.files {
                        saved.insert((f.dev, f.ino), f);
                    }
                }
                Err(error) => telemetry.source_error(&cfg.name, "state_file", &error),
            }
        }
        Tailer {
            proc: Processor::new(&cfg, telemetry),
            cfg,
            globs,
            files: FxHashMap::default(),
            saved,
            first_scan: true,
            failing: FxHashSet::default(),
            buf: vec![0; 256 * 1024],
        }
    }

    fn fail(&mut self, path: &Path, reason: &'static str, error: &dyn std::fmt::Display) {
        if self.failing.insert(path.to_path_buf()) {
            self.proc.telemetry.source_error(
                &self.cfg.name,
                reason,
                &format_args!("{}: {error}", path.display()),
            );
        }
    }

    /// Find files, follow rotation, read new lines. Returns the samples to
    /// send and whether a file has more to read right away.
    pub fn poll(&mut self) -> (Vec<Sample>, bool) {
        self.scan();
        self.read_all()
    }

    /// Find the files matching now: open new ones (positioned per
    /// `start_at` or the saved offset), notice truncation, mark the ones
    /// still present.
    pub fn scan(&mut self) {
        let mut paths = Vec::new();
        for g in &self.globs {
            g.expand(&mut paths);
        }
        paths.sort();
        paths.dedup();
        for t in self.files.values_mut() {
            t.seen = false;
        }
        for path in paths {
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // A literal path that does not exist (yet).
                    self.fail(&path, "file_missing", &e);
                    continue;
                }
                Err(e) => {
                    self.fail(&path, "unreadable", &e);
                    continue;
                }
            };
            if !meta.is_file() {
                self.fail(&path, "unreadable", &"not a regular file");
                continue;
            }
            let id = file_id(&meta);
            if let Some(t) = self.files.get_mut(&id) {
                t.seen = true;
                t.path = path.clone();
                // copytruncate: the file is shorter than what was read, or
                // its first bytes changed (truncated and written again
                // between two polls).
                let rewritten = match read_head(&t.file, meta.len()) {
                    Ok((now, bytes)) => {
                        let rewritten = !head_matches(t.head, &now, &bytes);
                        t.head = now;
                        rewritten
                    }
                    // A read error shows up (and is counted) when reading.
                    Err(_) => false,
                };
                if meta.len() < t.read_pos() || rewritten {
                    tracing::info!(source = %self.cfg.name, path = %path.display(), "Log file truncated; reading it from the start.");
                    if t.file.seek(SeekFrom::Start(0)).is_ok() {
                        t.offset = 0;
                        t.partial.clear();
                        t.discarding = false;
                        t.header = None;
                    }
                }
            } else {
                match self.open(&path, id, meta.len()) {
                    Ok(t) => {
                        self.failing.remove(&path);
                        self.files.insert(id, t);
                    }
                    Err(e) => {
                        self.fail(&path, "unreadable", &e);
                        continue;
                    }
                }
            }
            self.failing.remove(&path);
        }
        self.first_scan = false;
    }

    fn read_all(&mut self) -> (Vec<Sample>, bool) {
        let ts = now_ms();
        let mut more = false;
        // Read every file; gone ones (rotated away, deleted) to their end.
        let ids: Vec<FileId> = self.files.keys().copied().collect();
        let mut gone = Vec::new();
        for id in ids {
            let Some(mut t) = self.files.remove(&id) else {
                continue;
            };
            let limit = if t.seen { READ_PER_POLL } else { u64::MAX };
            match self.read(&mut t, ts, limit) {
                Ok(hit_limit) => more |= hit_limit,
                Err(e) => {
                    self.fail(&t.path.clone(), "unreadable", &e);
                    gone.push(id);
                    continue;
                }
            }
            if t.seen {
                self.files.insert(id, t);
            } else {
                if t.file.metadata().is_ok_and(|m| m.nlink() == 0) {
                    self.proc.telemetry.source_error(
                        &self.cfg.name,
                        "file_deleted",
                        &format_args!("{} was deleted", t.path.display()),
                    );
                } else {
                    tracing::info!(source = %self.cfg.name, path = %t.path.display(), "Log file rotated away; read to its end.");
                }
                gone.push(id);
            }
        }
        for id in gone {
            self.saved.remove(&id);
        }
        let mut out = Vec::new();
        self.proc.flush(ts, self.files.len(), &mut out);
        (out, more)
    }

    fn open(&mut self, path: &Path, id: FileId, len: u64) -> std::io::Result<Tailed> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        if file_id(&meta) != id {
            // Replaced between stat and open; the next poll picks it up.
            return Err(std::io::Error::other("file replaced while opening"));
        }
        let (head, bytes) = read_head(&file, len)?;
        let offset = match self.saved.get(&id) {
            Some(s) if s.offset <= len && head_matches(s.head, &head, &bytes) => s.offset,
            Some(_) => 0,
            None if self.first_scan && self.cfg.start_at == StartAt::End => len,
            None => 0,
        };
        let mut header = None;
        if offset > 0 && self.cfg.format == LogFormat::Csv && self.proc.columns.is_none() {
            header = read_header(&mut file, self.cfg.max_line_bytes);
        }
        file.seek(SeekFrom::Start(offset))?;
        tracing::info!(source = %self.cfg.name, path = %path.display(), offset, "Following log file.");
        Ok(Tailed {
            path: path.to_path_buf(),
            file,
            head,
            offset,
            partial: Vec::new(),
            discarding: false,
            header,
            seen: true,
        })
    }

    /// Read new complete lines of `t`, up to about `limit` bytes. Returns
    /// whether the limit cut the read short.
    fn read(&mut self, t: &mut Tailed, ts: i64, limit: u64) -> std::io::Result<bool> {
        let max = self.cfg.max_line_bytes;
        let mut read_total = 0u64;
        loop {
            if read_total >= limit {
                return Ok(true);
            }
            let n = match t.file.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            read_total += n as u64;
            let chunk = &self.buf[..n];
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', chunk) {
                let piece = &chunk[start..nl];
                if t.discarding {
                    // The end of an over-long line already counted.
                    t.discarding = false;
                    t.offset += piece.len() as u64 + 1;
                } else if t.partial.is_empty() {
                    if piece.len() > max {
                        self.proc.counts.too_long += 1;
                        self.proc.counts.dirty = true;
                    } else {
                        self.proc.line(piece, &mut t.header, ts);
                    }
                    t.offset += piece.len() as u64 + 1;
                } else {
                    t.partial.extend_from_slice(piece);
                    if t.partial.len() > max {
                        self.proc.counts.too_long += 1;
                        self.proc.counts.dirty = true;
                    } else {
                        self.proc.line(&t.partial, &mut t.header, ts);
                    }
                    t.offset += t.partial.len() as u64 + 1;
                    t.partial.clear();
                }
                start = nl + 1;
            }
            let rest = &chunk[start..];
            if t.discarding {
                t.offset += rest.len() as u64;
            } else {
                t.partial.extend_from_slice(rest);
                if t.partial.len() > max {
                    self.proc.counts.too_long += 1;
                    self.proc.counts.dirty = true;
                    t.offset += t.partial.len() as u64;
                    t.partial.clear();
                    t.discarding = true;
                }
            }
        }
    }

    /// Record the offsets reached as saved (call once their batch is queued).
    pub fn commit(&mut self) {
        for (id, t) in &self.files {
            self.saved.insert(
                *id,
                SavedFile {
                    path: t.path.clone(),
                    dev: id.0,
                    ino: id.1,
                    offset: t.offset,
                    head: t.head,
                },
            );
        }
    }

    /// Write the committed offsets to the state file, if one is configured.
    pub fn persist(&self) -> Result<(), StateError> {
        let Some(path) = &self.cfg.state_file else {
            return Ok(());
        };
        let mut files: Vec<SavedFile> = self.saved.values().cloned().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        save_state(path, &State { files })
    }

    /// Take the rule events collected since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.proc.events)
    }
}

fn read_header(file: &mut File, max: usize) -> Option<Vec<Box<str>>> {
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut buf = vec![0u8; max.min(64 * 1024)];
    let mut len = 0;
    while len < buf.len() {
        let n = file.read(&mut buf[len..]).ok()?;
        if n == 0 {
            break;
        }
        len += n;
        if memchr::memchr(b'\n', &buf[..len]).is_some() {
            break;
        }
    }
    let end = memchr::memchr(b'\n', &buf[..len])?;
    let line = String::from_utf8_lossy(&buf[..end]);
    let fields = split_csv(line.trim_end_matches('\r')).ok()?;
    Some(fields.iter().map(|f| Box::from(f.trim())).collect())
}

/// Find and open the files present at start-up, so `start_at = "end"`
/// means the end as of start-up (before the exporter reports ready).
pub fn start(cfg: LogsConfig, ctx: &SourceContext) -> Tailer {
    let mut tailer = Tailer::new(cfg, ctx.telemetry.clone());
    tailer.scan();
    tailer
}

/// Run the source until shutdown. File I/O is blocking, so the loop runs on
/// a blocking thread and hands batches to the pipeline with `blocking_send`.
pub fn run(mut tailer: Tailer, ctx: SourceContext, health: Health) {
    let name = health.source().clone();
    let interval = tailer.cfg.poll_interval;
    let mut last_persist = Instant::now();
    let mut dirty_state = false;
    loop {
        // One poll: read what the files gained, hand it to the pipeline,
        // publish the rule events.
        let more = health.collect_blocking(|| {
            let (samples, more) = tailer.poll();
            let events = tailer.take_events();
            if !samples.is_empty() {
                let batch = Batch {
                    source: name.clone(),
                    mode: BatchMode::Update,
                    samples,
                };
                if ctx.tx.blocking_send(batch).is_err() {
                    // The pipeline is gone (shutdown): these lines were not
                    // applied, so their offsets are not saved.
                    return (None, Outcome::Stopped);
                }
                tailer.commit();
                dirty_state = true;
            }
            rules::publish(events, &ctx.events, &ctx.telemetry, &name);
            (Some(more), Outcome::Ok)
        });
        let Some(more) = more else { break };
        if dirty_state && last_persist.elapsed() >= Duration::from_secs(1) {
            if let Err(error) = tailer.persist() {
                health.error("state_file", &error);
            }
            last_persist = Instant::now();
            dirty_state = false;
        }
        if ctx.shutdown.is_cancelled() {
            break;
        }
        if !more {
            let until = Instant::now() + interval;
            while !ctx.shutdown.is_cancelled() {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                std::thread::sleep((until - now).min(Duration::from_millis(50)));
            }
        }
    }
    if let Err(error) = tailer.persist() {
        health.error("state_file", &error);
    }
    tracing::debug!(source = %name, "Logs source stopped.");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(pattern: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        Glob::new(pattern).unwrap().expand(&mut out);
        out.sort();
        out
    }

    #[test]
    fn globs_match_names_directories_and_double_stars() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "app-1.log",
            "app-1.log.1",
            "bc.csv",
            "ac.csv",
            "a/app.log",
            "a/b/c/app.log",
            "x/app.log",
        ] {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "").unwrap();
        }
        let at = |f: &str| d.join(f);
        let p = |s: &str| format!("{}/{s}", d.display());
        assert_eq!(expanded(&p("app-*.log")), vec![at("app-1.log")]);
        assert_eq!(expanded(&p("[!a]?.csv")), vec![at("bc.csv")]);
        assert_eq!(
            expanded(&p("{ac,bc}.csv")),
            vec![at("ac.csv"), at("bc.csv")]
        );
        // `*` stays within one directory; `**` crosses any number.
        assert_eq!(
            expanded(&p("*/app.log")),
            vec![at("a/app.log"), at("x/app.log")]
        );
        assert_eq!(
            expanded(&p("a/**/app.log")),
            vec![at("a/app.log"), at("a/b/c/app.log")]
        );
        assert_eq!(expanded(&p("**/*.log")).len(), 4);
        assert!(Glob::new("/x/[ab.log").is_err());
        assert!(Glob::new("/x/app.log").unwrap().matcher.is_none());
        assert_eq!(expanded("/x/app.log"), vec![PathBuf::from("/x/app.log")]);
    }

    fn tailer(path: &Path, max_line_bytes: usize) -> Tailer {
        let cfg: LogsConfig = serde_json::from_value(serde_json::json!({
            "name": "t",
            "paths": [path],
            "start_at": "beginning",
            "match": "v=(?P<v>[0-9]+)",
            "max_line_bytes": max_line_bytes,
            "metrics": [{"name": "v_total", "type": "counter", "value": "v"}],
        }))
        .unwrap();
        cfg.validate().unwrap();
        Tailer::new(cfg, Arc::new(crate::telemetry::Telemetry::new()))
    }

    fn write(path: &Path, s: &str) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    }

    fn value(samples: &[Sample], name: &str, labels: &str) -> Option<f64> {
        samples
            .iter()
            .find(|s| &*s.family.name == name && s.labels.as_str().contains(labels))
            .map(|s| s.value)
    }

    #[test]
    fn a_line_written_in_pieces_counts_once_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        write(&path, "v=1\nv=");
        let mut t = tailer(&path, 1024);
        let (out, _) = t.poll();
        assert_eq!(value(&out, "v_total", ""), Some(1.0));
        assert_eq!(
            t.files.values().next().unwrap().offset,
            4,
            "offset stops at the last newline"
        );
        write(&path, "20");
        let (out, _) = t.poll();
        assert_eq!(value(&out, "v_total", ""), None, "no newline yet");
        write(&path, "\n");
        let (out, _) = t.poll();
        assert_eq!(value(&out, "v_total", ""), Some(21.0));
        assert_eq!(t.files.values().next().unwrap().offset, 9);
    }

    #[test]
    fn over_long_lines_are_skipped_and_counted_and_offsets_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let long = format!("v=5 {}\n", "x".repeat(100));
        write(&path, &format!("v=1\n{long}v=2\n"));
        let mut t = tailer(&path, 32);
        let (out, _) = t.poll();
        assert_eq!(value(&out, "v_total", ""), Some(3.0));
        assert_eq!(
            value(&out, "vitals_log_lines_total", "outcome=\"too_long\""),
            Some(1.0)
        );
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(t.files.values().next().unwrap().offset, len);
        // An over-long line arriving in pieces across polls.
        write(&path, &"y".repeat(40));
        t.poll();
        write(&path, "yyy\nv=4\n");
        let (out, _) = t.poll();
        assert_eq!(value(&out, "v_total", ""), Some(7.0));
        assert_eq!(
            value(&out, "vitals_log_lines_total", "outcome=\"too_long\""),
            Some(2.0)
        );
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(t.files.values().next().unwrap().offset, len);
    }

    #[test]
    fn a_truncated_file_rewritten_longer_between_polls_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        write(&path, "v=1\nv=2\n");
        let mut t = tailer(&path, 1024);
        let (out, _) = t.poll();
        assert_eq!(value(&out, "v_total", ""), Some(3.0));
        // Truncated and written again, longer than before, before the next poll.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        write(&path, "v=30\nv=40\nv=50\n");
        let (out, _) = t.poll();
        assert_eq!(value(&out, "v_total", ""), Some(123.0));
    }
}
