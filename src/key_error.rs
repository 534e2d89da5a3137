//! [`KeyError`]: a configuration check that failed, with the key path it is
//! about. A leaf: the checks of every part (sources, pipeline, detectors)
//! return it, and `config` adds the file.

/// A rejected configuration key: its path (relative to the part that
/// checked it until [`KeyError::under`] places it) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {reason}")]
pub struct KeyError {
    pub key: String,
    pub reason: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        KeyError {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// [`KeyError::new`] for owned strings (`"key".into()` infers).
    pub fn at(key: String, reason: String) -> Self {
        KeyError { key, reason }
    }

    /// The same error with `prefix` in front of its key (`sources[2]` +
    /// `dsn` → `sources[2].dsn`); an empty key becomes `prefix` itself.
    pub fn under(mut self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        self.key = if self.key.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.key)
        };
        self
    }
}

/// The checks not yet typed return `(key, reason)`.
impl<K: Into<String>, R: Into<String>> From<(K, R)> for KeyError {
    fn from((key, reason): (K, R)) -> Self {
        KeyError::new(key, reason)
    }
}
