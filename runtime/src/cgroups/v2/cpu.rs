//! v2 `cpu`: weight (from v1-style shares) and bandwidth (cpu.max), usage from cpu.stat.

use std::path::Path;

use oci_spec::runtime::LinuxCpu;

use crate::cgroups::util::{flat_keyed, read, write};
use crate::cgroups::{CgroupError, CgroupStats};

pub const WEIGHT: &str = "cpu.weight";
pub const MAX: &str = "cpu.max";
pub const STAT: &str = "cpu.stat";

/// Converts v1 cpu.shares [2, 262144] to v2 cpu.weight [1, 10000] (the formula runc and the
/// kubelet use).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

pub fn apply(dir: &Path, cpu: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
        write(&dir.join(WEIGHT), &shares_to_weight(shares).to_string())?;
    }
    let period = cpu.period().filter(|p| *p != 0);
    let quota = cpu.quota().filter(|q| *q != 0);
    if period.is_some() || quota.is_some() {
        let q = match quota {
            Some(q) if q > 0 => q.to_string(),
            Some(_) => "max".to_string(),
            None => {
                // keep the current quota, change the period only
                let cur = read(&dir.join(MAX)).unwrap_or_default();
                cur.split_whitespace().next().unwrap_or("max").to_string()
            }
        };
        let v = match period {
            Some(p) => format!("{q} {p}"),
            None => q,
        };
        write(&dir.join(MAX), &v)?;
    }
    Ok(())
}

pub fn stats(dir: &Path, s: &mut CgroupStats) -> Result<(), CgroupError> {
    let stat = read(&dir.join(STAT))?;
    s.cpu_usage_ns = flat_keyed(&stat, "usage_usec").map(|u| u.saturating_mul(1000));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn weight() {
        assert_eq!(super::shares_to_weight(2), 1);
        assert_eq!(super::shares_to_weight(1024), 39);
        assert_eq!(super::shares_to_weight(262_144), 10_000);
    }
}
