//! Kernel features skiff announces only when they work here (`skiffd check`, CRI `Status`).
//! Each probe runs once per process and is cached; they make syscalls that fail fast and
//! block on nothing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

/// Whether the kernel has `mount_setattr(2)` (Linux 5.12+), needed for recursive read-only
/// mounts: called with a bad fd, it answers EBADF when it exists and ENOSYS when it does not.
pub fn mount_setattr() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(common::mountapi::has_set_attr)
}

/// A user namespace mapping ids `0..length` to `host_id..host_id+length`, held by its fd (the
/// helper process that made it is gone when this returns). Forks: call it from a plain thread,
/// never a tokio worker. The child only makes raw syscalls between fork and `_exit`.
pub fn new_user_namespace(host_id: u32, length: u32) -> std::io::Result<OwnedFd> {
    let last = std::io::Error::last_os_error;
    let mut go = [0i32; 2];
    let mut ready = [0i32; 2];
    // SAFETY: arrays of two fds as pipe2 wants.
    if unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last());
    }
    // SAFETY: the fds were just made by pipe2 and are owned here only.
    let (go_r, go_w) = unsafe { (OwnedFd::from_raw_fd(go[0]), OwnedFd::from_raw_fd(go[1])) };
    // SAFETY: as above.
    if unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last());
    }
    // SAFETY: as above.
    let (ready_r, ready_w) = unsafe { (OwnedFd::from_raw_fd(ready[0]), OwnedFd::from_raw_fd(ready[1])) };
    // SAFETY: the child makes only async-signal-safe syscalls (close, unshare, write, read,
    // _exit) on fds it inherited, and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last());
    }
    if pid == 0 {
        // SAFETY: raw syscalls on inherited fds in the forked child; it ends in _exit.
        unsafe {
            libc::close(go_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            let ok: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 { 1 } else { 0 };
            libc::write(ready_w.as_raw_fd(), &ok as *const u8 as *const libc::c_void, 1);
            let mut b = 0u8;
            libc::read(go_r.as_raw_fd(), &mut b as *mut u8 as *mut libc::c_void, 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(go_r);
    let res = (|| {
        let mut ok = [0u8; 1];
        let n = nix::unistd::read(&ready_r, &mut ok).map_err(std::io::Error::from)?;
        if n != 1 || ok[0] != 1 {
            return Err(std::io::Error::other("unshare(CLONE_NEWUSER) failed in the helper"));
        }
        let map = format!("0 {host_id} {length}\n");
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(f))
    })();
    drop(go_w);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    res
}

/// Whether a detached copy of the mount at `path` can be idmapped with `userns` (what the
/// kernel allows for that filesystem). Leaves no mount behind.
pub fn idmap_works(path: &Path, userns: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    common::mountapi::idmapped_tree(path, userns.as_fd(), false).map(drop)
}

/// Whether pods with a user namespace work here, probed once per process (cached): a user
/// namespace can be made, the filesystems of `root` (the image layers and containers' upper
/// dirs) and of `state` (the pod files and shm, usually tmpfs) can be idmapped, and an overlay
/// over an idmapped lower dir mounts (in a temporary directory under `root`, removed again).
/// Forks and mounts: call it from a plain thread (`spawn_blocking`), never a tokio worker.
pub fn user_namespaces(root: &Path, state: &Path) -> Result<(), String> {
    static RES: OnceLock<Result<(), String>> = OnceLock::new();
    RES.get_or_init(|| probe_user_namespaces(root, state)).clone()
}

fn existing(mut dir: &Path) -> &Path {
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    dir
}

fn probe_user_namespaces(root: &Path, state: &Path) -> Result<(), String> {
    let userns = new_user_namespace(1 << 30, 65536).map_err(|e| format!("user namespace: {e}"))?;
    let ns_path = format!("/proc/self/fd/{}", userns.as_raw_fd());
    for d in [existing(root), existing(state)] {
        idmap_works(d, &userns).map_err(|e| format!("idmapped mount of {}: {e}", d.display()))?;
    }
    let base = existing(root).join(format!(".skiff-userns-probe-{}", std::process::id()));
    let res = (|| -> Result<(), String> {
        for d in ["l", "u", "w", "m"] {
            std::fs::create_dir_all(base.join(d)).map_err(|e| format!("{}: {e}", base.display()))?;
        }
        let m = base.join("m");
        crate::idmap::mount_overlay(&[base.join("l")], &base.join("u"), &base.join("w"), &m, Path::new(&ns_path))
            .map_err(|e| format!("overlay over an idmapped lower dir: {e}"))?;
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&base);
    res
}

/// One probe's outcome: what was tried, and why it failed.
pub type Probe = (String, Result<(), String>);

/// What this kernel can idmap, for `skiffd check`: (filesystem, outcome) for the filesystem
/// holding `root` (the image layers), a tmpfs and an overlay (mounted in a temporary directory
/// and unmounted again). Forks and mounts: call it from a plain thread.
pub fn idmap_report(root: &Path) -> Vec<Probe> {
    let mut out = Vec::new();
    let userns = match new_user_namespace(1 << 30, 65536) {
        Ok(u) => u,
        Err(e) => {
            out.push(("user namespace".into(), Err(e.to_string())));
            return out;
        }
    };
    let mut dir = root;
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    out.push((format!("layers filesystem ({})", dir.display()), idmap_works(dir, &userns).map_err(|e| e.to_string())));
    let tmp = std::env::temp_dir().join(format!("skiff-idmap-probe-{}", std::process::id()));
    let res = (|| -> Result<Vec<Probe>, String> {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        mount(Some("tmpfs"), &tmp, Some("tmpfs"), MsFlags::empty(), Some("size=1m")).map_err(|e| e.to_string())?;
        let mut r = vec![("tmpfs".to_string(), idmap_works(&tmp, &userns).map_err(|e| e.to_string()))];
        for d in ["l", "u", "w", "m"] {
            let _ = std::fs::create_dir(tmp.join(d));
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            tmp.join("l").display(),
            tmp.join("u").display(),
            tmp.join("w").display()
        );
        let m = tmp.join("m");
        match mount(Some("overlay"), &m, Some("overlay"), MsFlags::empty(), Some(opts.as_str())) {
            Ok(()) => {
                r.push(("overlayfs".to_string(), idmap_works(&m, &userns).map_err(|e| e.to_string())));
                let _ = umount2(&m, MntFlags::MNT_DETACH);
            }
            Err(e) => r.push(("overlayfs".to_string(), Err(format!("mount overlay: {e}")))),
        }
        let _ = umount2(&tmp, MntFlags::MNT_DETACH);
        Ok(r)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    match res {
        Ok(r) => out.extend(r),
        Err(e) => out.push(("tmpfs".into(), Err(e))),
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_setattr_probe_answers() {
        // Linux 5.12+ everywhere skiff is tested; the probe must not panic in any case.
        let _ = super::mount_setattr();
    }

    #[test]
    fn idmap_probe_leaves_nothing() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let r = super::idmap_report(&std::env::temp_dir());
        assert!(r.len() >= 2, "{r:?}");
        let probe = std::env::temp_dir().join(format!("skiff-idmap-probe-{}", std::process::id()));
        assert!(!probe.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains("skiff-idmap-probe"), "a probe mount is left");
        eprintln!("{r:?}");
    }
}
