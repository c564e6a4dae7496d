//! v1 `memory`: limit, memory+swap limit, usage stats and the OOM-kill counter.

use std::path::Path;

use oci_spec::runtime::LinuxMemory;

use crate::cgroups::util::{flat_keyed, read, read_u64, write};
use crate::cgroups::{CgroupError, CgroupStats};

pub const LIMIT: &str = "memory.limit_in_bytes";
pub const MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";
pub const USAGE: &str = "memory.usage_in_bytes";
pub const STAT: &str = "memory.stat";
pub const OOM_CONTROL: &str = "memory.oom_control";
pub const SWAPPINESS: &str = "memory.swappiness";

/// Values ≥ this are "unlimited" in v1 (the kernel reports PAGE_COUNTER_MAX rounded to pages).
const UNLIMITED: u64 = 1 << 62;

pub fn apply(dir: &Path, mem: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = mem.limit().filter(|l| *l != 0).map(|l| if l < 0 { -1 } else { l });
    let swap = mem.swap().filter(|s| *s != 0).map(|s| if s < 0 { -1 } else { s });
    let memsw = dir.join(MEMSW_LIMIT);
    // memory.memsw.limit_in_bytes exists only with swap accounting; without it, swap limits
    // cannot be enforced and are ignored (as containerd does).
    let swap = if memsw.exists() {
        swap
    } else {
        if swap.is_some() {
            tracing::debug!(dir = %dir.display(), "swap accounting is off: memory+swap limit ignored");
        }
        None
    };
    match (limit, swap) {
        (Some(l), Some(s)) => {
            if s != -1 && l != -1 && s < l {
                return Err(CgroupError::InvalidResource(format!(
                    "memory+swap limit {s} is below the memory limit {l}"
                )));
            }
            // memory ≤ memsw must hold after each write (runc's order): when the new memsw is
            // above the current memory limit, write memsw first, else memory first.
            let cur_limit = read_u64(&dir.join(LIMIT)).unwrap_or(u64::MAX);
            if s == -1 || (s as u64) > cur_limit {
                write(&memsw, &s.to_string())?;
                write(&dir.join(LIMIT), &l.to_string())?;
            } else {
                write(&dir.join(LIMIT), &l.to_string())?;
                write(&memsw, &s.to_string())?;
            }
        }
        (Some(l), None) => {
            if write(&dir.join(LIMIT), &l.to_string()).is_err() && memsw.exists() {
                // the new limit is above the old memsw limit: lift memsw along with it
                write(&memsw, &l.to_string())?;
                write(&dir.join(LIMIT), &l.to_string())?;
            }
        }
        (None, Some(s)) => write(&memsw, &s.to_string())?,
        (None, None) => {}
    }
    if let Some(sw) = mem.swappiness() {
        if sw > 100 {
            return Err(CgroupError::InvalidResource(format!("swappiness {sw} is above 100")));
        }
        write(&dir.join(SWAPPINESS), &sw.to_string())?;
    }
    Ok(())
}

pub fn stats(dir: &Path, s: &mut CgroupStats) -> Result<(), CgroupError> {
    let usage = read_u64(&dir.join(USAGE))?;
    let stat = read(&dir.join(STAT))?;
    s.memory_usage_bytes = Some(usage);
    s.memory_working_set_bytes = Some(CgroupStats::working_set(usage, flat_keyed(&stat, "total_inactive_file")));
    s.memory_rss_bytes = flat_keyed(&stat, "total_rss");
    s.page_faults = flat_keyed(&stat, "total_pgfault");
    s.major_page_faults = flat_keyed(&stat, "total_pgmajfault");
    let limit = read_u64(&dir.join(LIMIT))?;
    s.memory_limit_bytes = (limit < UNLIMITED).then_some(limit);
    s.oom_kills = oom_kills(dir).ok();
    Ok(())
}

/// The `oom_kill` counter of memory.oom_control (kernel ≥ 4.13).
pub fn oom_kills(dir: &Path) -> Result<u64, CgroupError> {
    let f = dir.join(OOM_CONTROL);
    Ok(flat_keyed(&read(&f)?, "oom_kill").unwrap_or(0))
}
