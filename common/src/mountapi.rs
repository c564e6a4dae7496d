//! The new mount API (Linux 5.2+, `lowerdir+` 6.8+, `mount_setattr` 5.12+) as safe functions:
//! an overlay made with `fsopen`/`fsconfig`/`fsmount`/`move_mount` (one `lowerdir+` per layer,
//! so no option string limits the layer count), detached copies of mount trees
//! (`open_tree(OPEN_TREE_CLONE)`), `mount_setattr` (idmapping, recursive read-only) and
//! attaching a detached tree. imagesvc (container rootfs), runtime (idmapped layers, the
//! monitor's recursive read-only binds) and the feature probes share these, so each syscall's
//! `unsafe` is written once.
//!
//! Every function is blocking and only makes syscalls; none forks or changes namespaces.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `mount_setattr` attribute: read-only.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `mount_setattr` attribute: set-uid bits ignored.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `mount_setattr` attribute: no device access.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
/// `mount_setattr` attribute: no exec.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
/// `mount_setattr` attribute: idmapped with the user namespace passed along.
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(b: &[u8]) -> std::io::Result<CString> {
    CString::new(b).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_long) -> std::io::Result<libc::c_long> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Mounts an overlay of `lowerdirs` (top-most first) with `upperdir` and `workdir` at `target`,
/// one `fsconfig(lowerdir+)` per layer; `volatile`: overlayfs' `volatile` flag. A lower dir may be a `/proc/self/fd/<n>` path of a
/// detached (e.g. idmapped) tree.
pub fn overlay(
    lowerdirs: impl IntoIterator<Item = impl AsRef<OsStr>>,
    upperdir: &Path,
    workdir: &Path,
    volatile: bool,
    target: &Path,
) -> std::io::Result<()> {
    let fstype = cstr(b"overlay")?;
    // SAFETY: a NUL-terminated string alive across the call; returns a new fd or -1.
    let fd = check(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fsopen returned a new fd owned here only.
    let fsfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let set = |key: &[u8], val: &[u8]| -> std::io::Result<()> {
        let (k, v) = (cstr(key)?, cstr(val)?);
        // SAFETY: a valid fd and NUL-terminated strings alive across the call.
        check(unsafe {
            libc::syscall(libc::SYS_fsconfig, fsfd.as_raw_fd(), FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr(), 0)
        })
        .map(drop)
    };
    for l in lowerdirs {
        set(b"lowerdir+", l.as_ref().as_bytes())?;
    }
    set(b"upperdir", upperdir.as_os_str().as_bytes())?;
    set(b"workdir", workdir.as_os_str().as_bytes())?;
    if volatile {
        let k = cstr(b"volatile")?;
        // SAFETY: a valid fd and a NUL-terminated key alive across the call; a flag has no value.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fsfd.as_raw_fd(),
                FSCONFIG_SET_FLAG,
                k.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        })?;
    }
    // SAFETY: a valid fd; CMD_CREATE takes no key or value.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fsfd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: a valid fs context fd.
    let m = check(unsafe { libc::syscall(libc::SYS_fsmount, fsfd.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
    // SAFETY: fsmount returned a new fd owned here only.
    let mfd = unsafe { OwnedFd::from_raw_fd(m as i32) };
    let tgt = cstr(target.as_os_str().as_bytes())?;
    // SAFETY: valid fds, a literal empty path and a NUL-terminated target alive across the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mfd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            tgt.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// A detached copy of the mount at `path` (`recursive`: with its submounts). Dropping the fd
/// drops the copy.
pub fn clone_tree(path: &Path, recursive: bool) -> std::io::Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: a NUL-terminated path alive across the call; integer flags.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec,
        )
    })?;
    // SAFETY: open_tree returned a new fd owned here only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE])` setting `attr_set` (one of the
/// `MOUNT_ATTR_*` above); `userns` goes with [`MOUNT_ATTR_IDMAP`]. `fd` is a mount (an O_PATH
/// fd of a mount point, or a detached tree).
pub fn set_attr(
    fd: BorrowedFd<'_>,
    attr_set: u64,
    userns: Option<BorrowedFd<'_>>,
    recursive: bool,
) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map(|u| u.as_raw_fd() as u64).unwrap_or(0),
    };
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: a literal empty path and a `#[repr(C)]` mount_attr alive across the call, its
    // size passed along.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | rec,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// Whether the kernel has `mount_setattr(2)`: called with a bad fd it answers EBADF when it
/// exists and ENOSYS when it does not (touching no mount).
pub fn has_set_attr() -> bool {
    let attr = MountAttr { attr_set: 0, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: a literal path and a `#[repr(C)]` mount_attr alive across the call with its size;
    // fd -1 makes the call fail without touching any mount.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// A detached copy of the mount at `path`, idmapped with the user namespace `userns`
/// (`recursive`: the copy and the idmapping include submounts).
pub fn idmapped_tree(path: &Path, userns: BorrowedFd<'_>, recursive: bool) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsFd;
    let tree = clone_tree(path, recursive)?;
    set_attr(tree.as_fd(), MOUNT_ATTR_IDMAP, Some(userns), recursive)?;
    Ok(tree)
}

/// Attaches a detached tree onto the file or directory `target` (an fd, e.g. an O_PATH fd of a
/// mount point resolved inside a rootfs).
pub fn attach(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: valid fds and literal empty paths.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_paths_are_errors_not_panics() {
        assert!(clone_tree(Path::new("a\0b"), false).is_err());
        assert!(overlay(["a\0b"], Path::new("/nonexistent-u"), Path::new("/nonexistent-w"), false, Path::new("/x"))
            .is_err());
    }

    #[test]
    fn probe_answers() {
        // Either answer is fine; the probe must not fail or touch a mount.
        let _ = has_set_attr();
    }
}
