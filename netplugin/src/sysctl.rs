//! Writing sysctls of skiffd's (host) network namespace through /proc/sys.

use std::fs;
use std::path::PathBuf;

use crate::error::{NetworkError, Result};

/// Set `/proc/sys/<key with dots as slashes>` to `value` unless it already has it.
pub(crate) fn set(key: &str, value: &str) -> Result<()> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    if let Ok(cur) = fs::read_to_string(&path) {
        if cur.trim() == value {
            return Ok(());
        }
    }
    fs::write(&path, value).map_err(|e| NetworkError::io("write sysctl", &path, e))?;
    tracing::info!(sysctl = key, value, "set sysctl");
    Ok(())
}
