//! v1 `pids`: the task limit and count (same files as v2).

use std::path::Path;

use oci_spec::runtime::LinuxPids;

use crate::cgroups::util::{read_u64, write};
use crate::cgroups::{CgroupError, CgroupStats};

pub const MAX: &str = "pids.max";
pub const CURRENT: &str = "pids.current";

pub fn apply(dir: &Path, pids: &LinuxPids) -> Result<(), CgroupError> {
    let v = if pids.limit() > 0 { pids.limit().to_string() } else { "max".to_string() };
    write(&dir.join(MAX), &v)
}

pub fn stats(dir: &Path, s: &mut CgroupStats) -> Result<(), CgroupError> {
    s.pids_current = Some(read_u64(&dir.join(CURRENT))?);
    Ok(())
}
