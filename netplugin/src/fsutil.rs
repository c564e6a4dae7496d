//! Atomic file writes (temp file, fsync, rename, fsync of the directory).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{NetworkError, Result};

/// Write `data` to `path` atomically: readers see the old or the new content, never a mix,
/// and the new content survives a crash once this returns.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| NetworkError::Internal(format!("{} has no parent", path.display())))?;
    fs::create_dir_all(dir).map_err(|e| NetworkError::io("create directory", dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}.{}", std::process::id(), rand::random::<u32>()));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| NetworkError::io("create", &tmp, e))?;
        f.write_all(data).map_err(|e| NetworkError::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| NetworkError::io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| NetworkError::io("rename to", path, e))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| NetworkError::io("fsync directory", dir, e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Remove a file and fsync its directory; a missing file is fine.
pub(crate) fn remove_durable(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(NetworkError::io("remove", path, e)),
    }
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| NetworkError::io("fsync directory", dir, e))?;
    }
    Ok(())
}
