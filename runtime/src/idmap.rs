//! Idmapped mounts for pods with a user namespace: the container sees the image's files (and
//! its pod files) with their on-disk owners shifted by the pod's id mapping, with no copy and no
//! chown of the image.
//!
//! Linux 6.18 here cannot idmap an overlay mount itself (EINVAL), but an overlay accepts
//! idmapped layers: each lower dir is a detached copy of its snapshot directory
//! (`open_tree(OPEN_TREE_CLONE)`) idmapped with the pod's user namespace
//! (`mount_setattr(MOUNT_ATTR_IDMAP)`), handed to the overlay as `/proc/self/fd/<n>` (the
//! overlay keeps private clones of its layers, so the detached mounts go away with their fds
//! and nothing is left to unmount). The upper dir cannot be idmapped: overlayfs creates its
//! work dirs with the mounter's (host root's) credentials, which the idmapping cannot
//! represent (EOVERFLOW, the overlay falls back to read-only). So the upper dir is a plain
//! directory whose root belongs to the mapped root ([`own_upper`]); copy-ups keep the owners
//! seen through the idmapped lower (the mapped ids), and files the container creates get its
//! host ids.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::ErrorKind;

/// Errors of idmapped mounts.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("{op} {path}: {source}")]
    Sys { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("idmap thread panicked")]
    ThreadPanicked,
}

impl IdmapError {
    fn sys(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        IdmapError::Sys { op, path: path.to_path_buf(), source }
    }

    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// A detached copy of the mount tree at `path` (recursive: with its submounts), idmapped with
/// the user namespace `userns`. Dropping the fd drops the copy.
pub use common::mountapi::idmapped_tree;

/// Attaches a detached tree (from [`idmapped_tree`]) onto the file or directory `target` (an
/// fd, e.g. an O_PATH fd of a mount point resolved inside a rootfs).
pub fn attach(tree: &OwnedFd, target: BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    common::mountapi::attach(tree.as_fd(), target)
}

/// Mounts the overlay `lowerdirs` (top-most first) + `upperdir`/`workdir` at `target`, each
/// lower dir idmapped with the user namespace pinned at `userns` (see the module doc).
/// Blocking; runs on a dedicated thread.
pub fn mount_overlay(
    lowerdirs: &[PathBuf],
    upperdir: &Path,
    workdir: &Path,
    target: &Path,
    userns: &Path,
) -> Result<(), IdmapError> {
    let (l, u, w, t, n) =
        (lowerdirs.to_vec(), upperdir.to_path_buf(), workdir.to_path_buf(), target.to_path_buf(), userns.to_path_buf());
    std::thread::Builder::new()
        .name("idmap-overlay".into())
        .spawn(move || mount_overlay_here(&l, &u, &w, &t, &n))
        .map_err(|e| IdmapError::sys("spawn thread for", target, e))?
        .join()
        .map_err(|_| IdmapError::ThreadPanicked)?
}

fn mount_overlay_here(
    lowerdirs: &[PathBuf],
    upperdir: &Path,
    workdir: &Path,
    target: &Path,
    userns: &Path,
) -> Result<(), IdmapError> {
    use std::os::fd::AsFd;
    let ns = std::fs::File::open(userns).map_err(|e| IdmapError::sys("open user namespace", userns, e))?;
    let mut trees = Vec::with_capacity(lowerdirs.len());
    for l in lowerdirs {
        trees.push(idmapped_tree(l, ns.as_fd(), false).map_err(|e| IdmapError::sys("idmap layer", l, e))?);
    }
    let lower: Vec<String> = trees.iter().map(|t| format!("/proc/self/fd/{}", t.as_raw_fd())).collect();
    let opts = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upperdir.display(), workdir.display());
    if opts.len() < 4000 {
        let (src, tgt, data) = (
            cpath(Path::new("overlay")).map_err(|e| IdmapError::sys("mount", target, e))?,
            cpath(target).map_err(|e| IdmapError::sys("mount", target, e))?,
            CString::new(opts)
                .map_err(|_| IdmapError::sys("mount", target, std::io::ErrorKind::InvalidInput.into()))?,
        );
        // SAFETY: NUL-terminated strings alive across the call.
        let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), src.as_ptr(), 0, data.as_ptr().cast()) };
        if r != 0 {
            return Err(IdmapError::sys("mount idmapped overlay on", target, std::io::Error::last_os_error()));
        }
        return Ok(());
    }
    // Many layers: one `lowerdir+` per layer with the new mount API (Linux 6.8+).
    common::mountapi::overlay(&lower, upperdir, workdir, false, target)
        .map_err(|e| IdmapError::sys("mount idmapped overlay (lowerdir+) on", target, e))
}

/// Gives the container's upper dir (its root only) to the pod's mapped root `uid:gid`, so the
/// container's root owns its `/` (one chown of one directory; nothing of the image is copied).
/// Idempotent. Blocking.
pub fn own_upper(upperdir: &Path, uid: u32, gid: u32) -> Result<(), IdmapError> {
    std::os::unix::fs::chown(upperdir, Some(uid), Some(gid)).map_err(|e| IdmapError::sys("chown", upperdir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn overlay_over_idmapped_lowers() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let userns = match crate::features::new_user_namespace(100_000, 65536) {
            Ok(u) => u,
            Err(e) => return eprintln!("no user namespace: {e}"),
        };
        let d = tempfile::tempdir().unwrap();
        let p = |s: &str| d.path().join(s);
        for s in ["l1/etc", "l2", "upper", "work", "m", "ns"] {
            std::fs::create_dir_all(p(s)).unwrap();
        }
        std::fs::write(p("l1/etc/f"), "x").unwrap();
        std::fs::write(p("l2/g"), "y").unwrap();
        // the user namespace as a file path, as a pod pins it
        std::fs::write(p("ns/user"), "").unwrap();
        let src = format!("/proc/self/fd/{}", userns.as_raw_fd());
        nix::mount::mount(Some(src.as_str()), &p("ns/user"), None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
            .unwrap();
        own_upper(&p("upper"), 100_000, 100_000).unwrap();
        mount_overlay(&[p("l2"), p("l1")], &p("upper"), &p("work"), &p("m"), &p("ns/user")).unwrap();
        let md = std::fs::metadata(p("m/etc/f")).unwrap();
        assert_eq!((md.uid(), md.gid()), (100_000, 100_000), "image root is the mapped root");
        assert_eq!(std::fs::metadata(p("m")).unwrap().uid(), 100_000);
        assert_eq!(std::fs::metadata(p("l1/etc/f")).unwrap().uid(), 0, "the layer itself is untouched");
        std::fs::write(p("m/etc/f"), "changed").unwrap();
        assert_eq!(std::fs::metadata(p("upper/etc/f")).unwrap().uid(), 100_000, "a copy-up keeps the mapped owner");
        nix::mount::umount2(&p("m"), nix::mount::MntFlags::MNT_DETACH).unwrap();
        nix::mount::umount2(&p("ns/user"), nix::mount::MntFlags::MNT_DETACH).unwrap();
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mi.contains(d.path().to_str().unwrap()), "a mount is left: {mi}");
    }
}
