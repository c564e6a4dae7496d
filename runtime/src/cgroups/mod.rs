//! cgroups v1 and v2 behind one API (in the style of youki's libcgroups: one file per controller,
//! tested against fake trees in temp dirs).
//!
//! Paths are in cgroupfs form, relative to each hierarchy's root: `/kubepods/burstable/pod<uid>`
//! for a pod, `<pod cgroup>/<ctr-id>` for a container. On v1 (and hybrid) hosts a cgroup is one
//! directory in every mounted v1 hierarchy; on v2 it is one directory in the unified tree.
//!
//! * [`join`] moves a pid into a container cgroup; [`join_self`] moves the calling
//!   single-threaded process (used by the monitor's children after fork; plain fs writes).
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
    join_with(h, path, &pid.to_string(), "cgroup.procs")
}

/// Moves the calling process into cgroup `path`, as [`join`] does; the caller must be
/// single-threaded (a freshly forked child).
///
/// On v1 hierarchies it writes `0` to `tasks`, which moves the calling thread only: for the
/// kernel that is a single-thread migration of `current`, which skips the global
/// `cgroup_threadgroup_rwsem` that a write to `cgroup.procs` takes for writing (its
/// `percpu_down_write` waits for an RCU grace period: 7-9 ms per join measured on the
/// development VM, against 0.3-0.5 ms through `tasks`). For a single-threaded process both
/// move the same (only) thread. On v2 there is no such file for domain cgroups, so
/// `cgroup.procs` is written.
pub fn join_self(path: &str) -> Result<(), CgroupError> {
    let h = Hierarchies::detect()?;
    join_self_in(&h, path)
}

/// [`join_self`] with given hierarchies.
pub fn join_self_in(h: &Hierarchies, path: &str) -> Result<(), CgroupError> {
    let file = if h.mode() == CgroupMode::Unified { "cgroup.procs" } else { "tasks" };
    join_with(h, path, "0", file)
}

fn join_with(h: &Hierarchies, path: &str, pid: &str, file: &str) -> Result<(), CgroupError> {
    let rel = normalize(path)?;
    let mut joined = false;
    for dir in h.dirs(&rel) {
        if !dir.is_dir() {
            continue;
        }
        util::write(&dir.join(file), pid)?;
        joined = true;
    }
    // On hybrid hosts also join the unified tree when the cgroup exists there (as runc does).
    if h.mode() == CgroupMode::Hybrid {
        if let Some(u) = &h.unified {
            let dir = u.join(&rel);
            if dir.is_dir() {
                util::write(&dir.join("cgroup.procs"), pid)?;
            }
        }
    }
    if joined {
        Ok(())
    } else {
        Err(CgroupError::NotFound(path.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(root: &std::path::Path, dirs: &[&str], files: &[&str]) {
        for d in dirs {
            let dir = root.join(d).join("pod/ctr");
            std::fs::create_dir_all(&dir).unwrap();
            for f in files {
                std::fs::write(dir.join(f), "").unwrap();
            }
        }
    }

    #[test]
    fn join_self_writes_tasks_on_v1_and_cgroup_procs_on_v2() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path().display().to_string();
        let mountinfo = format!(
            "30 25 0:26 / {r}/cpu rw - cgroup cgroup rw,cpu\n31 25 0:27 / {r}/memory rw - cgroup cgroup rw,memory\n\
             32 25 0:28 / {r}/unified rw - cgroup2 cgroup2 rw\n"
        );
        let h = Hierarchies::from_mountinfo(&mountinfo);
        assert_eq!(h.mode(), CgroupMode::Hybrid);
        fake(tmp.path(), &["cpu", "memory"], &["tasks", "cgroup.procs"]);
        join_self_in(&h, "/pod/ctr").unwrap();
        for d in ["cpu", "memory"] {
            let dir = tmp.path().join(d).join("pod/ctr");
            assert_eq!(std::fs::read_to_string(dir.join("tasks")).unwrap(), "0");
            assert_eq!(std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(), "");
        }
        assert_eq!(join_self_in(&h, "/pod/other").unwrap_err().kind(), common::ErrorKind::NotFound);

        let v2 = tempfile::tempdir().unwrap();
        fake(v2.path(), &[""], &["cgroup.procs"]);
        let h = Hierarchies::unified_at(v2.path());
        join_self_in(&h, "/pod/ctr").unwrap();
        assert_eq!(std::fs::read_to_string(v2.path().join("pod/ctr/cgroup.procs")).unwrap(), "0");
        assert!(!v2.path().join("pod/ctr/tasks").exists());
    }
}
