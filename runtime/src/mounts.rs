//! Mount helpers: resolving a path inside a container rootfs without escaping it, and the
//! CRI mount checks.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::error::ErrorKind;

/// Symlinks followed before giving up (as Linux's MAXSYMLINKS in spirit).
const MAX_SYMLINKS: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("resolving {path} in {root}: too many levels of symbolic links")]
    SymlinkLoop { root: PathBuf, path: PathBuf },
    #[error(transparent)]
    Io(#[from] common::IoError),
}

impl MountError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            MountError::SymlinkLoop { .. } => ErrorKind::InvalidArgument,
            MountError::Io(_) => ErrorKind::Internal,
        }
    }
}

/// Resolves `path` (as seen inside the container) against `root` like a chroot would: every
/// symlink met on the way is followed with `root` as `/`, and `..` never climbs above `root`.
/// Components that do not exist are appended lexically (so the result is where a mount target
/// would be created). The result always starts with `root`.
///
/// This is the algorithm of filepath-securejoin; it is not race-free against a concurrently
/// changing rootfs (the rootfs is not running anything while skiff prepares it).
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, MountError> {
    let mut current = PathBuf::new(); // relative to root, never contains ..
    let mut pending: VecDeque<OsString> = components(path);
    let mut links = 0usize;
    while let Some(c) = pending.pop_front() {
        if c == "." || c.is_empty() {
            continue;
        }
        if c == ".." {
            current.pop();
            continue;
        }
        let next = current.join(&c);
        let full = root.join(&next);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(MountError::SymlinkLoop { root: root.to_path_buf(), path: path.to_path_buf() });
                }
                let target = std::fs::read_link(&full).map_err(|e| common::IoError::new("readlink", &full, e))?;
                if target.is_absolute() {
                    current = PathBuf::new();
                }
                let mut t = components(&target);
                t.extend(pending);
                pending = t;
            }
            Ok(_) => current = next,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => current = next,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => current = next,
            Err(e) => return Err(common::IoError::new("lstat", full, e).into()),
        }
    }
    Ok(root.join(current))
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("real/dir")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../..", root.join("up")).unwrap();
        symlink("real/dir", root.join("rel")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        symlink("/etc/passwd", root.join("etc/pw")).unwrap();
        let r = |p: &str| resolve_in_root(root, Path::new(p)).unwrap();
        assert_eq!(r("/abs/hosts"), root.join("etc/hosts"));
        assert_eq!(r("/up/etc/shadow"), root.join("etc/shadow"));
        assert_eq!(r("/../../x"), root.join("x"));
        assert_eq!(r("/rel/x/y"), root.join("real/dir/x/y"));
        assert_eq!(r("/rel/../z"), root.join("real/z"));
        assert_eq!(r("/etc/pw"), root.join("etc/passwd"));
        assert_eq!(r("/"), root.to_path_buf());
        assert!(resolve_in_root(root, Path::new("/loop1/x")).is_err());
    }
}
