//! When pulled data reaches the disk.
//!
//! Blobs and snapshots are written without any fsync and renamed into place; what makes them
//! durable is one `syncfs` per pull, right before the image record that references them is
//! committed ([`crate::meta`] writes it with fsync + rename + fsync of the directory). What a
//! crash can leave unsynced is therefore never referenced by a record, and unreferenced blobs
//! and snapshots are collected when the store opens. A process-wide generation counts commits
//! (bumped *before* each rename, so that whoever sees an object in place also sees the bump): a
//! pull whose store already synced at or after the current generation skips the `syncfs`
//! (pulling an image already present costs no flush).

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{ImageError, Result};

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Call right before renaming a blob or snapshot into place.
pub(crate) fn will_commit() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The current generation: every object committed so far was counted at or below it.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// `syncfs` of the file systems holding `dirs` (each file system once). Blocking.
pub(crate) fn syncfs(dirs: &[&Path]) -> Result<()> {
    let mut seen = Vec::new();
    for d in dirs {
        let f = std::fs::File::open(d).map_err(|e| ImageError::io("open for syncfs", d, e))?;
        let dev = f.metadata().map_err(|e| ImageError::io("stat for syncfs", d, e))?.dev();
        if seen.contains(&dev) {
            continue;
        }
        seen.push(dev);
        // SAFETY: syncfs on a descriptor we hold open.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(ImageError::io("syncfs", d, std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
