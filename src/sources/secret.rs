//! Secrets in source configurations (DSNs, tokens, passwords): given
//! literally, by environment variable or by file, and never shown by `Debug`
//! or in error messages.

use serde::Deserialize;

/// A secret string from the configuration file; `Debug` never shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<secret>\"")
    }
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
