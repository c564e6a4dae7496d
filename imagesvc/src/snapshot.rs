//! Snapshots and container root filesystems.
//!
//! Each layer is unpacked once into `ROOT/snapshots/<chain-id hex>/fs`, holding only that layer's
//! diff; a container's rootfs is an overlayfs mount of the image's chain (top layer first) plus
//! its own `ROOT/containers/<id>/{upper,work}`. Unpacking happens in a temporary directory
//! `ROOT/snapshots/.tmp-*` that is renamed into place when complete; deleted snapshots are first
//! renamed to `.del-*`. Both kinds of leftovers are removed at startup.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};
use crate::reference::Digest;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Chain IDs of a list of diff IDs (OCI image spec: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The snapshot directory tree.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

impl Snapshots {
    /// Opens `root/snapshots`, removing interrupted unpacks and half-deleted snapshots.
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("snapshots");
        std::fs::create_dir_all(&dir).map_err(|e| ImageError::io("create snapshots dir", &dir, e))?;
        let rd = std::fs::read_dir(&dir).map_err(|e| ImageError::io("list snapshots", &dir, e))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") || name.starts_with(".del-") {
                tracing::info!(dir = %e.path().display(), "removing leftover snapshot directory");
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(dir = %e.path().display(), "cannot remove leftover snapshot: {err}");
                }
            }
        }
        Ok(Snapshots { dir })
    }

    /// `ROOT/snapshots`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The unpacked layer directory of a chain ID.
    pub fn fs_dir(&self, chain: &Digest) -> PathBuf {
        self.dir.join(chain.hex()).join("fs")
    }

    pub fn exists(&self, chain: &Digest) -> bool {
        self.dir.join(chain.hex()).join("fs").is_dir()
    }

    /// Unpacks a layer blob into the snapshot `chain` (blocking). Idempotent: an existing
    /// snapshot is kept. Nothing is visible under the final name unless unpacking completed.
    /// Nothing is fsynced (see `durable`).
    pub fn unpack(
        &self,
        chain: &Digest,
        blob: &Path,
        diff_id: &Digest,
        layer: &str,
    ) -> Result<crate::unpack::UnpackStats> {
        if self.exists(chain) {
            return Ok(Default::default());
        }
        let pending = self.prepare(chain)?;
        let stats = crate::unpack::unpack_layer_file(layer, blob, diff_id, &pending.fs())?;
        pending.commit()?;
        Ok(stats)
    }

    /// A temporary directory `ROOT/snapshots/.tmp-*` to unpack the snapshot `chain` into; it
    /// is removed unless [`PendingSnapshot::commit`] renames it into place.
    pub fn prepare(&self, chain: &Digest) -> Result<PendingSnapshot> {
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{}",
            chain.hex(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let pending = PendingSnapshot { tmp, dest: self.dir.join(chain.hex()), committed: false };
        std::fs::create_dir_all(pending.fs()).map_err(|e| ImageError::io("create snapshot", &pending.tmp, e))?;
        Ok(pending)
    }

    /// Makes a snapshot invisible at once (rename to `.del-*`); returns the path to delete later.
    pub fn doom(&self, chain: &Digest) -> Result<Option<PathBuf>> {
        let src = self.dir.join(chain.hex());
        if !src.exists() {
            return Ok(None);
        }
        let dest = self.dir.join(format!(".del-{}-{}", chain.hex(), SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::rename(&src, &dest).map_err(|e| ImageError::io("remove snapshot", &src, e))?;
        Ok(Some(dest))
    }

    /// Chain IDs of all committed snapshots.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| ImageError::io("list snapshots", &self.dir, e))?;
        Ok(rd
            .flatten()
            .filter_map(|e| Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok())
            .collect())
    }
}

/// A snapshot being unpacked (see [`Snapshots::prepare`]).
#[derive(Debug)]
pub struct PendingSnapshot {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl PendingSnapshot {
    /// The directory to unpack into.
    pub fn fs(&self) -> PathBuf {
        self.tmp.join("fs")
    }

    /// Renames the snapshot into place (no fsync; see `durable`).
    pub fn commit(mut self) -> Result<()> {
        let _commit = crate::durable::will_commit();
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| ImageError::io("commit snapshot", &self.dest, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// The overlay layout of one container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsMount {
    /// Read-only layers, top-most first (overlayfs `lowerdir` order).
    pub lowerdirs: Vec<PathBuf>,
    /// The container's writable layer (`ROOT/containers/<id>/upper`).
    pub upperdir: PathBuf,
    /// overlayfs work dir (`ROOT/containers/<id>/work`).
    pub workdir: PathBuf,
    /// Mount with overlayfs' `volatile`: no sync of the upper layer, neither on fsync/syncfs
    /// inside nor at unmount (which otherwise syncs the whole upper file system, a journal
    /// commit per container stop). Only for a writable layer that is never mounted again
    /// after a crash (see `RuntimeConfig::volatile_rootfs`).
    #[serde(default)]
    pub volatile: bool,
}

impl RootfsMount {
    /// The overlay mount options with absolute paths.
    pub fn options(&self) -> String {
        let lower: Vec<String> = self.lowerdirs.iter().map(|p| p.display().to_string()).collect();
        format!(
            "lowerdir={},upperdir={},workdir={}{}",
            lower.join(":"),
            self.upperdir.display(),
            self.workdir.display(),
            self.volatile_opt()
        )
    }

    fn volatile_opt(&self) -> &'static str {
        if self.volatile {
            ",volatile"
        } else {
            ""
        }
    }

    /// Mounts the overlay at `target` (blocking; call from `spawn_blocking`).
    ///
    /// Long lowerdir lists would overflow the one-page mount data of mount(2): they are passed
    /// one by one with the new mount API (`fsconfig` `lowerdir+`, Linux 6.8+), or on older
    /// kernels as paths relative to their common parent, which a dedicated thread changes
    /// into after `unshare(CLONE_FS)` (affecting only itself; it exits afterwards). Options
    /// that fit in one page are mounted on the calling thread.
    pub fn mount(&self, target: &Path) -> Result<()> {
        let opts = self.options();
        if opts.len() < 4000 {
            // Fits in one mount(2) page: on the calling thread (no thread to start).
            self.clear_volatile_mark()?;
            return legacy_mount(target, &opts);
        }
        let me = self.clone();
        let target = target.to_path_buf();
        std::thread::Builder::new()
            .name("overlay-mount".into())
            .spawn(move || me.mount_on_this_thread(&target))
            .map_err(|e| ImageError::Mount(format!("spawning mount thread: {e}")))?
            .join()
            .map_err(|_| ImageError::Mount("mount thread panicked".into()))?
    }

    fn clear_volatile_mark(&self) -> Result<()> {
        if self.volatile {
            // overlayfs refuses a work dir that a volatile mount used before (it cannot tell a
            // clean unmount from a crash). skiff never mounts a layer again after a crash (an
            // exited container does not start again), so one left here was unmounted cleanly.
            let mark = self.workdir.join("work/incompat/volatile");
            if mark.exists() {
                std::fs::remove_dir_all(&mark).map_err(|e| ImageError::io("remove", &mark, e))?;
            }
        }
        Ok(())
    }

    fn mount_on_this_thread(&self, target: &Path) -> Result<()> {
        self.clear_volatile_mark()?;
        let opts = self.options();
        if opts.len() < 4000 {
            return legacy_mount(target, &opts);
        }
        // Many layers: the new mount API takes one `lowerdir+` per layer (Linux 6.8+) …
        match self.fsconfig_mount(target) {
            Ok(()) => return Ok(()),
            Err(e) => tracing::debug!("lowerdir+ mount not available ({e}); using relative lowerdirs"),
        }
        self.relative_mount(target)
    }

    /// Relative lowerdirs from their common parent (…/snapshots), after unsharing this thread's
    /// cwd. Call on a dedicated thread only.
    fn relative_mount(&self, target: &Path) -> Result<()> {
        let base = self.lowerdirs.first().and_then(|p| p.parent()).and_then(|p| p.parent()).map(Path::to_path_buf);
        let Some(base) = base.filter(|b| self.lowerdirs.iter().all(|l| l.starts_with(b))) else {
            return Err(ImageError::Mount(format!("too many layers ({}) for one overlay mount", self.lowerdirs.len())));
        };
        let rel: Vec<String> =
            self.lowerdirs.iter().filter_map(|l| l.strip_prefix(&base).ok()).map(|p| p.display().to_string()).collect();
        let short = format!(
            "lowerdir={},upperdir={},workdir={}{}",
            rel.join(":"),
            self.upperdir.display(),
            self.workdir.display(),
            self.volatile_opt()
        );
        if short.len() >= 4096 {
            return Err(ImageError::Mount(format!("too many layers ({}) for one overlay mount", self.lowerdirs.len())));
        }
        // SAFETY: unshare(CLONE_FS) only detaches this thread's cwd/root/umask.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            return Err(ImageError::Mount(format!("unshare(CLONE_FS): {}", std::io::Error::last_os_error())));
        }
        std::env::set_current_dir(&base).map_err(|e| ImageError::Mount(format!("chdir {}: {e}", base.display())))?;
        legacy_mount(target, &short)
    }

    /// fsopen/fsconfig(`lowerdir+` per layer)/fsmount/move_mount.
    fn fsconfig_mount(&self, target: &Path) -> std::io::Result<()> {
        common::mountapi::overlay(&self.lowerdirs, &self.upperdir, &self.workdir, self.volatile, target)
    }

    /// Unmounts `target`; not mounted (or absent) is fine.
    pub fn unmount(target: &Path) -> Result<()> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let tgt =
            CString::new(target.as_os_str().as_bytes()).map_err(|_| ImageError::Mount("path contains NUL".into()))?;
        // SAFETY: valid C string.
        let mut r = unsafe { libc::umount2(tgt.as_ptr(), libc::UMOUNT_NOFOLLOW) };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
            // SAFETY: as above; lazy detach as a last resort.
            r = unsafe { libc::umount2(tgt.as_ptr(), libc::UMOUNT_NOFOLLOW | libc::MNT_DETACH) };
        }
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                return Ok(());
            }
            return Err(ImageError::Mount(format!("unmount {}: {e}", target.display())));
        }
        Ok(())
    }
}

/// mount(2) of an overlay with the given option string.
fn legacy_mount(target: &Path, opts: &str) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |s: &[u8]| CString::new(s).map_err(|_| ImageError::Mount("path contains NUL".into()));
    let src = c(b"overlay")?;
    let tgt = c(target.as_os_str().as_bytes())?;
    let data = c(opts.as_bytes())?;
    // SAFETY: valid C strings; data is a NUL-terminated option string.
    let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), src.as_ptr(), 0, data.as_ptr().cast()) };
    if r != 0 {
        return Err(ImageError::Mount(format!("overlay on {}: {}", target.display(), std::io::Error::last_os_error())));
    }
    Ok(())
}

/// What `ROOT/containers/<id>/rootfs.json` records: the container's hold on its snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRootfs {
    pub version: u32,
    /// The journal's sequence number of the write (see `common::journal`; 0 in files written
    /// before the journal).
    #[serde(default)]
    pub seq: u64,
    pub container_id: String,
    pub image_id: Digest,
    pub chain_ids: Vec<Digest>,
    /// The snapshots of the images the container mounts as image volumes (CRI `Mount.image`),
    /// held like its own rootfs until the container is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_chain_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lowerdir_lists_mount() {
        long_lowerdirs(70, false);
    }

    #[test]
    fn long_lowerdir_lists_mount_on_old_kernels() {
        long_lowerdirs(55, true);
    }

    fn long_lowerdirs(n: u32, relative: bool) {
        // Many layers under a deep path: the absolute option string is far beyond one page.
        let base = tempfile::tempdir().unwrap();
        let snaps = base.path().join("a-rather-long-directory-name-for-the-root/snapshots");
        let mut lowerdirs = Vec::new();
        for i in 0..n {
            let d = Digest::of(&i.to_le_bytes());
            let fs = snaps.join(d.hex()).join("fs");
            std::fs::create_dir_all(&fs).unwrap();
            std::fs::write(fs.join(format!("f{i}")), b"x").unwrap();
            lowerdirs.push(fs);
        }
        lowerdirs.reverse();
        let ctr = base.path().join("ctr");
        let m = RootfsMount { lowerdirs, upperdir: ctr.join("upper"), workdir: ctr.join("work"), volatile: true };
        std::fs::create_dir_all(&m.upperdir).unwrap();
        std::fs::create_dir_all(&m.workdir).unwrap();
        assert!(m.options().len() > 4096);
        let target = base.path().join("mnt");
        std::fs::create_dir(&target).unwrap();
        let cwd = std::env::current_dir().unwrap();
        if relative {
            let (m2, t2) = (m.clone(), target.clone());
            std::thread::spawn(move || m2.relative_mount(&t2)).join().unwrap().unwrap();
        } else {
            m.mount(&target).unwrap();
        }
        let ok = (0..n).all(|i| target.join(format!("f{i}")).is_file());
        RootfsMount::unmount(&target).unwrap();
        assert!(ok, "all layers visible");
        assert_eq!(std::env::current_dir().unwrap(), cwd, "the process cwd is untouched");
        RootfsMount::unmount(&target).unwrap();
    }

    #[test]
    fn chain_id_formula() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], Digest::of(format!("{a} {b}").as_bytes()));
    }
}
