//! Kernel features skiff announces only when they work here (`skiffd check`, CRI `Status`).
//! Each probe runs once per process and is cached; they make syscalls that fail fast and
//! block on nothing.

use std::sync::OnceLock;

/// Whether the kernel has `mount_setattr(2)` (Linux 5.12+), needed for recursive read-only
/// mounts: called with a bad fd, it answers EBADF when it exists and ENOSYS when it does not.
pub fn mount_setattr() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        let attr = MountAttr { attr_set: 0, attr_clr: 0, propagation: 0, userns_fd: 0 };
        // SAFETY: a NUL-terminated literal path and a `#[repr(C)]` mount_attr alive across the
        // call with its size; fd -1 makes the call fail without touching any mount.
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
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_setattr_probe_answers() {
        // Linux 5.12+ everywhere skiff is tested; the probe must not panic in any case.
        let _ = super::mount_setattr();
    }
}
