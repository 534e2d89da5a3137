//! What the store keeps for the detector-state file
//! ([`super::state`]): restored state waiting for its series or source,
//! and the live idempotency windows to save. A leaf below the store; the
//! saver in [`super::state`] reads and fills it through the store's lock.

use std::sync::Weak;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::live::SeriesDetector;
use crate::model::Labels;

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

/// The idempotency window of one push source: the keys (as SHA-256
/// digests) it accepted, with when (ms since the Unix epoch), oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowState {
    /// The source's name.
    pub source: String,
    /// The configured key field: a window of another field is not restored.
    pub key: String,
    pub entries: Vec<(i64, Digest32)>,
}

/// A live idempotency window, saved with the detector state.
pub trait SavedWindow: Send + Sync {
    /// The window now; `None` when there is nothing to keep.
    fn save_window(&self) -> Option<WindowState>;
}

/// What the store holds for persistence: restored state waiting for its
/// series or source, and the live windows to save.
#[derive(Default)]
pub struct Persisted {
    /// Restored detector state by family and series, taken by
    /// [`crate::store::Store::upsert`] when the series reappears.
    pub(super) detectors: FxHashMap<Box<str>, FxHashMap<Labels, Box<SeriesDetector>>>,
    pub(super) unclaimed: usize,
    /// Restored windows by source name, taken by the source when it starts.
    pub(super) windows: FxHashMap<String, WindowState>,
    pub(super) live: Vec<Weak<dyn SavedWindow>>,
    /// [`super::state::config_fingerprint`] of the configuration the
    /// store's detector state is built under (set at start, changed by a
    /// reload).
    pub(super) config: Digest32,
}

impl std::fmt::Debug for Persisted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persisted")
            .field("unclaimed", &self.unclaimed)
            .field("windows", &self.windows.len())
            .field("live", &self.live.len())
            .finish()
    }
}

impl Persisted {
    /// The restored detector state of a series that appears, if any.
    pub fn take_detector(&mut self, family: &str, labels: &Labels) -> Option<Box<SeriesDetector>> {
        if self.unclaimed == 0 {
            return None;
        }
        let series = self.detectors.get_mut(family)?;
        let state = series.remove(labels)?;
        self.unclaimed -= 1;
        if series.is_empty() {
            self.detectors.remove(family);
        }
        Some(state)
    }

    /// Drop restored detector state not claimed yet (a reload changed what
    /// detectors are built from, or its series did not come back).
    pub fn forget_detectors(&mut self) {
        self.detectors = FxHashMap::default();
        self.unclaimed = 0;
    }

    /// Record the configuration the detector state is now built under.
    pub fn set_config(&mut self, fingerprint: Digest32) {
        self.config = fingerprint;
    }

    /// The restored window of source `name` if it was kept for the same
    /// key field.
    pub fn take_window(&mut self, name: &str, key: &str) -> Option<WindowState> {
        self.windows.remove(name).filter(|w| w.key == key)
    }

    /// Save `window` with the detector state while it lives.
    pub fn watch_window(&mut self, window: Weak<dyn SavedWindow>) {
        self.live.retain(|w| w.strong_count() > 0);
        self.live.push(window);
    }
}
