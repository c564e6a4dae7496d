//! v1 `cpuacct`: CPU usage.

use std::path::Path;

use crate::cgroups::util::read_u64;
use crate::cgroups::{CgroupError, CgroupStats};

pub const USAGE: &str = "cpuacct.usage";

pub fn stats(dir: &Path, s: &mut CgroupStats) -> Result<(), CgroupError> {
    s.cpu_usage_ns = Some(read_u64(&dir.join(USAGE))?);
    Ok(())
}
