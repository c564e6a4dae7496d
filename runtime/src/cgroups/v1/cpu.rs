//! v1 `cpu`: shares and CFS bandwidth.

use std::path::Path;

use oci_spec::runtime::LinuxCpu;

use crate::cgroups::util::write;
use crate::cgroups::CgroupError;

pub const SHARES: &str = "cpu.shares";
pub const PERIOD: &str = "cpu.cfs_period_us";
pub const QUOTA: &str = "cpu.cfs_quota_us";

pub fn apply(dir: &Path, cpu: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
        write(&dir.join(SHARES), &shares.to_string())?;
    }
    let period = cpu.period().filter(|p| *p != 0);
    let quota = cpu.quota().filter(|q| *q != 0).map(|q| if q < 0 { -1 } else { q });
    match (period, quota) {
        (Some(p), Some(q)) => {
            // The kernel checks the pair on each write; if the new period does not fit the old
            // quota, write the quota first.
            if write(&dir.join(PERIOD), &p.to_string()).is_err() {
                write(&dir.join(QUOTA), &q.to_string())?;
                write(&dir.join(PERIOD), &p.to_string())?;
            } else {
                write(&dir.join(QUOTA), &q.to_string())?;
            }
        }
        (Some(p), None) => write(&dir.join(PERIOD), &p.to_string())?,
        (None, Some(q)) => write(&dir.join(QUOTA), &q.to_string())?,
        (None, None) => {}
    }
    Ok(())
}
