//! cgroups v1 and v2 behind one API (in the style of youki's libcgroups: one file per controller,
//! tested against fake trees in temp dirs).
//!
//! Paths are in cgroupfs form, relative to each hierarchy's root: `/kubepods/burstable/pod<uid>`
//! for a pod, `<pod cgroup>/<ctr-id>` for a container. On v1 (and hybrid) hosts a cgroup is one
//! directory in every mounted v1 hierarchy; on v2 it is one directory in the unified tree.
//!
//! * [`join`] moves a pid into a container cgroup (used by the monitor after fork; plain fs writes).
//! * [`CgroupManager`] creates cgroups (remembering in a registry file which directories skiff
//!   created, so that removal deletes only those), applies OCI `LinuxResources`, reads stats and
//!   the OOM-kill counter, kills every process of a cgroup and removes it.

mod error;
mod hierarchy;
mod manager;
mod registry;
mod stats;
mod util;
pub mod v1;
pub mod v2;

pub use error::CgroupError;
pub use hierarchy::{normalize, CgroupMode, Hierarchies, V1Hierarchy};
pub use manager::CgroupManager;
pub use stats::{parse_blkio, parse_io_stat, parse_psi, CgroupStats, IoDeviceStats, Psi, PsiLine};

/// Moves `pid` into cgroup `path` (cgroupfs form) in every mounted v1 hierarchy where the cgroup
/// exists, or in the unified tree on v2 hosts. Fails with [`CgroupError::NotFound`] when the
/// cgroup exists nowhere. Uses only `/proc/self/mountinfo` and plain writes, so it is safe to call
/// in a freshly forked single-threaded process.
pub fn join(path: &str, pid: i32) -> Result<(), CgroupError> {
    let h = Hierarchies::detect()?;
    join_in(&h, path, pid)
}

/// [`join`] with given hierarchies.
pub fn join_in(h: &Hierarchies, path: &str, pid: i32) -> Result<(), CgroupError> {
    let rel = normalize(path)?;
    let mut joined = false;
    for dir in h.dirs(&rel) {
        if !dir.is_dir() {
            continue;
        }
        util::write(&dir.join("cgroup.procs"), &pid.to_string())?;
        joined = true;
    }
    // On hybrid hosts also join the unified tree when the cgroup exists there (as runc does).
    if h.mode() == CgroupMode::Hybrid {
        if let Some(u) = &h.unified {
            let dir = u.join(&rel);
            if dir.is_dir() {
                util::write(&dir.join("cgroup.procs"), &pid.to_string())?;
            }
        }
    }
    if joined {
        Ok(())
    } else {
        Err(CgroupError::NotFound(path.to_string()))
    }
}
