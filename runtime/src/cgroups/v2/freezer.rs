//! v2 freezing (cgroup.freeze) and killing (cgroup.kill, kernel ≥ 5.14).

use std::path::Path;

use crate::cgroups::util::write;
use crate::cgroups::CgroupError;

pub const FREEZE: &str = "cgroup.freeze";
pub const KILL: &str = "cgroup.kill";

pub fn freeze(dir: &Path) -> Result<(), CgroupError> {
    write(&dir.join(FREEZE), "1")
}

pub fn thaw(dir: &Path) -> Result<(), CgroupError> {
    write(&dir.join(FREEZE), "0")
}

/// SIGKILLs every process of the cgroup and its descendants; false when cgroup.kill is missing.
pub fn kill(dir: &Path) -> Result<bool, CgroupError> {
    let f = dir.join(KILL);
    if !f.exists() {
        return Ok(false);
    }
    write(&f, "1")?;
    Ok(true)
}
