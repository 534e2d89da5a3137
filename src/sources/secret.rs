//! Secrets in source configurations (DSNs, tokens, passwords): given
//! literally, by environment variable or by file, and never shown by `Debug`
//! or in error messages.

use std::cell::Cell;

use serde::Deserialize;

/// A secret string from the configuration file; `Debug` never shows it
/// (except inside [`compare_by_value`], which never prints).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

thread_local! {
    /// Set only while [`compare_by_value`] runs on this thread.
    static BY_VALUE: Cell<bool> = const { Cell::new(false) };
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if BY_VALUE.get() {
            write!(f, "{:?}", self.0)
        } else {
            f.write_str("\"<secret>\"")
        }
    }
}

/// Run `f` with every [`Secret`] formatting its real value under `Debug`,
/// so a `Debug` rendering of a configuration changes when only a secret
/// does (the supervisor's reload fingerprint). `f` must not print or keep
/// what it formats other than in a digest; the previous state is restored
/// even if `f` panics.
pub fn compare_by_value<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BY_VALUE.set(self.0);
        }
    }
    let _restore = Restore(BY_VALUE.replace(true));
    f()
}

/// Read a secret given literally, by environment variable or by file.
/// Errors name where the secret was looked for, never its value.
pub fn resolve_secret(
    key: &str,
    literal: Option<&Secret>,
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    if let Some(s) = literal {
        return Ok(Some(s.expose().to_string()));
    }
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
            Ok(_) => Err(format!("environment variable {var} (`{key}_env`) is empty")),
            Err(_) => Err(format!(
                "environment variable {var} (`{key}_env`) is not set"
            )),
        };
    }
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
            Ok(_) => Err(format!("file {} (`{key}_file`) is empty", path.display())),
            Err(e) => Err(format!(
                "cannot read {} (`{key}_file`): {}",
                path.display(),
                e.kind()
            )),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_except_when_comparing_by_value() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), "\"<secret>\"");
        assert_eq!(compare_by_value(|| format!("{s:?}")), "\"hunter2\"");
        assert_eq!(format!("{s:?}"), "\"<secret>\"", "redacted again after");
        let _ = std::panic::catch_unwind(|| compare_by_value(|| panic!("inside")));
        assert_eq!(
            format!("{s:?}"),
            "\"<secret>\"",
            "redacted again after a panic"
        );
    }
}
