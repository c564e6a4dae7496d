//! Disk usage: what ImageFsInfo reports (`ROOT/snapshots` and `ROOT/containers`) and the
//! du-like [`usage`] walk that container stats use for writable layers. Committed snapshots
//! never change, so their usage is cached per snapshot directory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use super::{blocking, FsInfo, FsUsage, ImageStore};
use crate::error::{ImageError, Result};

impl ImageStore {
    /// Real bytes and inodes used by the image filesystem (`ROOT/snapshots`) and the containers'
    /// writable layers (`ROOT/containers`).
    pub async fn fs_info(&self) -> Result<FsInfo> {
        let img = self.inner.snapshots.dir().to_path_buf();
        let ctr = self.inner.containers_dir.clone();
        let cache = self.inner.snapshot_usage.clone();
        blocking(move || {
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            Ok(FsInfo { timestamp, image: snapshots_usage(&img, &cache)?, container: usage(&ctr)? })
        })
        .await
    }
}

/// [`usage`] of the snapshots dir, summing the cached usage of committed snapshots (walked
/// once each) with a fresh walk of the entries still changing (`.tmp-*`, `.del-*`).
fn snapshots_usage(dir: &Path, cache: &Mutex<HashMap<String, FsUsage>>) -> Result<FsUsage> {
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::symlink_metadata(dir).map_err(|e| ImageError::io("stat", dir, e))?;
    let mut total = FsUsage { mountpoint: dir.to_path_buf(), used_bytes: top.blocks() * 512, inodes_used: 1 };
    let rd = std::fs::read_dir(dir).map_err(|e| ImageError::io("list snapshots", dir, e))?;
    let mut present = std::collections::HashSet::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&name).cloned();
        let u = match cached {
            Some(u) => u,
            None => {
                let Ok(u) = usage(&e.path()) else { continue };
                if !name.starts_with('.') {
                    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), u.clone());
                }
                u
            }
        };
        total.used_bytes += u.used_bytes;
        total.inodes_used += u.inodes_used;
        present.insert(name);
    }
    cache.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| present.contains(k));
    Ok(total)
}

/// du-like usage: allocated bytes and distinct inodes under `dir` (not crossing mounts).
pub fn usage(dir: &Path) -> Result<FsUsage> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let root_dev = std::fs::symlink_metadata(dir).map_err(|e| ImageError::io("stat", dir, e))?.dev();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
        if md.dev() != root_dev {
            continue;
        }
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        bytes += md.blocks() * 512;
        inodes += 1;
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    Ok(FsUsage { mountpoint: dir.to_path_buf(), used_bytes: bytes, inodes_used: inodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_usage_is_cached_for_committed_snapshots_only() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = dir.path();
        for (name, files) in [("aaaa", 3), ("bbbb", 2), (".tmp-cccc-1-0", 1)] {
            std::fs::create_dir_all(snaps.join(name).join("fs")).unwrap();
            for i in 0..files {
                std::fs::write(snaps.join(name).join("fs").join(format!("f{i}")), vec![7u8; 5000]).unwrap();
            }
        }
        let cache = Mutex::new(HashMap::new());
        let first = snapshots_usage(snaps, &cache).unwrap();
        assert_eq!(first, usage(snaps).unwrap(), "same answer as a full walk");
        assert_eq!(cache.lock().unwrap().len(), 2, "only committed snapshots are cached");

        // A committed snapshot is not walked again; an unpack in progress is.
        std::fs::write(snaps.join("aaaa/fs/late"), vec![1u8; 5000]).unwrap();
        std::fs::write(snaps.join(".tmp-cccc-1-0/fs/more"), vec![1u8; 5000]).unwrap();
        let second = snapshots_usage(snaps, &cache).unwrap();
        assert_eq!(second.inodes_used, first.inodes_used + 1);

        // A removed snapshot leaves the sum and the cache.
        std::fs::remove_dir_all(snaps.join("bbbb")).unwrap();
        let third = snapshots_usage(snaps, &cache).unwrap();
        assert_eq!(third.inodes_used, second.inodes_used - 4);
        assert_eq!(cache.lock().unwrap().len(), 1);
    }
}
