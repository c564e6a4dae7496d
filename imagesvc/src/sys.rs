//! Thin, safe wrappers over the `*at` system calls that the hardened unpacker needs.
//!
//! All paths given here are either single file names (no `/`) relative to a directory fd that
//! was itself resolved inside the layer root, or paths resolved by `openat2(RESOLVE_IN_ROOT)`.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens a directory by absolute path (the layer root).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let p = cstr(path.as_os_str())?;
    // SAFETY: p is a valid NUL-terminated string; the returned fd is owned by us.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: every component,
/// including `..` and absolute symlink targets, resolves inside `root`.
pub fn open_in_root(root: RawFd, path: &Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let p = cstr(if path.as_os_str().is_empty() { OsStr::new(".") } else { path.as_os_str() })?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 { mode as u64 } else { 0 },
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: `how` is a properly initialised open_how of the size we pass; p is valid.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, root, p.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // EAGAIN: a concurrent rename raced the lookup; retry like the man page says.
            if e.raw_os_error() == Some(libc::EAGAIN) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: fd is a fresh, valid descriptor.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
}

/// Opens `name` (a single component) in `dir` without following a final symlink.
pub fn openat(dir: RawFd, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let p = cstr(name)?;
    // SAFETY: valid C string; fd owned on success.
    let fd = unsafe { libc::openat(dir, p.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn mkdirat(dir: RawFd, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let p = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mkdirat(dir, p.as_ptr(), mode) })
}

pub fn mknodat(dir: RawFd, name: &OsStr, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let p = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mknodat(dir, p.as_ptr(), mode, dev) })
}

pub fn symlinkat(target: &OsStr, dir: RawFd, name: &OsStr) -> io::Result<()> {
    let t = cstr(target)?;
    let p = cstr(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir, p.as_ptr()) })
}

/// Hard link `odir/oname` as `ndir/nname` (never following a symlink).
pub fn linkat(odir: RawFd, oname: &OsStr, ndir: RawFd, nname: &OsStr) -> io::Result<()> {
    let o = cstr(oname)?;
    let n = cstr(nname)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::linkat(odir, o.as_ptr(), ndir, n.as_ptr(), 0) })
}

pub fn unlinkat(dir: RawFd, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let p = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::unlinkat(dir, p.as_ptr(), if is_dir { libc::AT_REMOVEDIR } else { 0 }) })
}

/// `lstat` of `name` in `dir`; `Ok(None)` when absent.
pub fn lstatat(dir: RawFd, name: &OsStr) -> io::Result<Option<libc::stat>> {
    let p = cstr(name)?;
    // SAFETY: zeroed stat is a valid value to be overwritten by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    let r = unsafe { libc::fstatat(dir, p.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(st))
}

pub fn fchownat(dir: RawFd, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let p = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::fchownat(dir, p.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
}

/// chmod of a non-symlink `name` in `dir`.
pub fn fchmodat(dir: RawFd, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let p = cstr(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::fchmodat(dir, p.as_ptr(), mode, 0) })
}

pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold.
    check(unsafe { libc::fchown(fd, uid, gid) })
}

pub fn fchmod(fd: RawFd, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold.
    check(unsafe { libc::fchmod(fd, mode) })
}

/// Sets atime and mtime of `name` in `dir` (name may be "" with `fd_itself`), not following symlinks.
pub fn utimensat(dir: RawFd, name: &OsStr, secs: i64, nsecs: i64) -> io::Result<()> {
    let p = cstr(name)?;
    let ts = libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: nsecs as libc::c_long };
    let times = [ts, ts];
    let flags = if name.is_empty() { libc::AT_EMPTY_PATH } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: valid C string and a two-element timespec array.
    check(unsafe { libc::utimensat(dir, p.as_ptr(), times.as_ptr(), flags) })
}

/// `lsetxattr` on `name` in `dir`, through `/proc/self/fd/<dir>/<name>` (the fd was resolved
/// inside the root; the single final component is not followed).
pub fn lsetxattr_at(dir: RawFd, name: &OsStr, key: &str, value: &[u8]) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{dir}").into_bytes();
    if !name.is_empty() {
        path.push(b'/');
        path.extend_from_slice(name.as_bytes());
    }
    let p = CString::new(path).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let k = CString::new(key).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: valid C strings and a buffer of the given length. With no name, the path is the
    // magic link of the directory fd itself, which must be followed.
    check(unsafe {
        if name.is_empty() {
            libc::setxattr(p.as_ptr(), k.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        } else {
            libc::lsetxattr(p.as_ptr(), k.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        }
    })
}

/// Removes `name` in `dir` and everything below it, never following symlinks.
pub fn remove_all_at(dir: RawFd, name: &OsStr) -> io::Result<()> {
    match lstatat(dir, name)? {
        None => Ok(()),
        Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            let path = Path::new("/proc/self/fd").join(dir.to_string()).join(name);
            std::fs::remove_dir_all(path)
        }
        Some(_) => unlinkat(dir, name, false),
    }
}

pub fn makedev(major: u32, minor: u32) -> libc::dev_t {
    libc::makedev(major, minor)
}

/// Starts writeback of a file's dirty pages without waiting for it (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`): no durability by itself, it only moves the I/O earlier. Errors
/// are ignored (the later syncfs reports write errors).
pub fn start_writeback(fd: RawFd) {
    // SAFETY: plain syscall on a descriptor the caller holds.
    unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}
