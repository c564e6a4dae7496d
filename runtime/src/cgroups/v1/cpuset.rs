//! v1 `cpuset`: cpus and mems. A new v1 cpuset cgroup starts empty and accepts no task until
//! `cpuset.cpus`/`cpuset.mems` are set, so [`inherit`] copies the parent's values on creation.

use std::path::Path;

use oci_spec::runtime::LinuxCpu;

use crate::cgroups::util::{read, write};
use crate::cgroups::CgroupError;

pub const CPUS: &str = "cpuset.cpus";
pub const MEMS: &str = "cpuset.mems";

pub fn apply(dir: &Path, cpu: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
        write(&dir.join(CPUS), cpus)?;
    }
    if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
        write(&dir.join(MEMS), mems)?;
    }
    Ok(())
}

/// Copies cpuset.cpus and cpuset.mems from the parent when they are empty in `dir`.
pub fn inherit(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else { return Ok(()) };
    for f in [CPUS, MEMS] {
        let file = dir.join(f);
        if !file.exists() {
            continue;
        }
        if read(&file)?.trim().is_empty() {
            let v = read(&parent.join(f))?;
            let v = v.trim();
            if !v.is_empty() {
                write(&file, v)?;
            }
        }
    }
    Ok(())
}
