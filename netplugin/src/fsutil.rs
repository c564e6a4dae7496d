//! Atomic file writes (temp file, fsync, rename, fsync of the directory).

use std::path::Path;

use crate::error::{NetworkError, Result};

/// Write `data` to `path` atomically (mode 0600): readers see the old or the new content,
/// never a mix, and the new content survives a crash once this returns.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    common::fs::write_atomic(path, data, 0o600).map_err(|e| NetworkError::io("write atomically", path, e))
}

/// Remove a file and fsync its directory; a missing file is fine.
/// Replaces `path` atomically without fsync (see `common::fs::write_replace`).
pub(crate) fn write_replace(path: &Path, data: &[u8]) -> Result<()> {
    common::fs::write_replace(path, data, 0o600).map_err(|e| NetworkError::io("write atomically", path, e))
}

pub(crate) fn remove_durable(path: &Path) -> Result<()> {
    common::fs::remove_durable(path).map_err(|e| NetworkError::io("remove", path, e))
}
