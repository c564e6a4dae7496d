//! Durable file writes, the one implementation every skiff crate uses.
//!
//! [`write_atomic`] replaces a file so that readers see the old or the new content, never a
//! mix, and the new content survives a crash once it returns: a uniquely named temp file in the
//! same directory (created exclusively, with the final mode), written, fsynced, renamed over the
//! target, then the directory fsynced. The temp file is removed on every error path.
//! [`write_replace`] does the same without the two fsyncs, for files of the volatile state
//! directory (`/run/skiff`, gone after a reboot: readers see the old or the new content after
//! any crash of a process, and a power cut takes the whole directory).
//! [`remove_durable`] removes a file and fsyncs its directory. Errors are plain
//! `std::io::Error`s; each crate wraps them in its own error type with the path and operation.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A temp name beside `path` that no other writer (thread or process) uses at the same time.
fn temp_name(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    parent_dir(path).join(format!(".{name}.tmp.{}.{}.{nanos:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Writes `bytes` to `path` atomically and durably with permissions `mode` (not masked by the
/// umask), creating missing parent directories. See the module doc.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, bytes, mode, true, true)
}

/// Replaces `path` atomically with `bytes` (mode `mode`), without fsync: for files under the
/// volatile state directory only (see the module doc). Creates missing parent directories; the
/// temp file is removed on every error path.
pub fn write_replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, bytes, mode, false, true)
}

/// [`write_replace`] into a directory that must exist: `NotFound` when it does not (or is
/// renamed away meanwhile), never made again.
pub fn write_replace_in_place(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, bytes, mode, false, false)
}

/// A unique temp file beside `path`, renamed over it; `durable`: the file and then its
/// directory fsynced. The temp file is removed on every error path.
fn replace(path: &Path, bytes: &[u8], mode: u32, durable: bool, make_dir: bool) -> std::io::Result<()> {
    let dir = parent_dir(path);
    if make_dir {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temp_name(path);
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, path)?;
        if durable {
            fsync_dir(dir)?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Removes `path` and fsyncs its directory; a missing file is not an error.
pub fn remove_durable(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => fsync_dir(parent_dir(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsyncs a directory, making the renames and removals in it durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replace_replaces_with_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/state.json");
        write_replace(&p, b"one", 0o600).unwrap();
        write_replace(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
    }

    #[test]
    fn replaces_with_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/rec.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temp file left");
        remove_durable(&p).unwrap();
        remove_durable(&p).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn failure_removes_the_temp_file() {
        let d = tempfile::tempdir().unwrap();
        // renaming a file over a non-empty directory fails after the temp file was written
        let p = d.path().join("target");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("x"), b"").unwrap();
        assert!(write_atomic(&p, b"data", 0o644).is_err());
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("target")]);
    }

    #[test]
    fn concurrent_writers_do_not_share_a_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(p, &[i; 64], 0o644).unwrap();
                    }
                });
            }
        });
        let b = std::fs::read(&p).unwrap();
        assert!(b.len() == 64 && b.iter().all(|&x| x == b[0]));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
