//! v2 `memory`: memory.max, memory.swap.max (OCI swap is memory+swap, v2 wants swap alone),
//! stats from memory.current/memory.stat and the OOM-kill counter from memory.events.

use std::path::Path;

use oci_spec::runtime::LinuxMemory;

use crate::cgroups::util::{flat_keyed, read, read_u64, write};
use crate::cgroups::{CgroupError, CgroupStats};

pub const MAX: &str = "memory.max";
pub const SWAP_MAX: &str = "memory.swap.max";
pub const CURRENT: &str = "memory.current";
pub const STAT: &str = "memory.stat";
pub const EVENTS: &str = "memory.events";

pub fn apply(dir: &Path, mem: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = mem.limit().filter(|l| *l != 0);
    let swap = mem.swap().filter(|s| *s != 0);
    if let Some(l) = limit {
        write(&dir.join(MAX), &if l < 0 { "max".to_string() } else { l.to_string() })?;
    }
    if let Some(s) = swap {
        let v = match (s, limit) {
            (s, _) if s < 0 => "max".to_string(),
            (s, Some(l)) if l > 0 => {
                if s < l {
                    return Err(CgroupError::InvalidResource(format!(
                        "memory+swap limit {s} is below the memory limit {l}"
                    )));
                }
                (s - l).to_string()
            }
            // memory+swap without a memory limit: nothing meaningful to convert
            _ => return Ok(()),
        };
        let f = dir.join(SWAP_MAX);
        if f.exists() {
            write(&f, &v)?;
        }
    }
    Ok(())
}

pub fn stats(dir: &Path, s: &mut CgroupStats) -> Result<(), CgroupError> {
    let usage = read_u64(&dir.join(CURRENT))?;
    let stat = read(&dir.join(STAT))?;
    s.memory_usage_bytes = Some(usage);
    s.memory_working_set_bytes = Some(CgroupStats::working_set(usage, flat_keyed(&stat, "inactive_file")));
    s.memory_rss_bytes = flat_keyed(&stat, "anon");
    s.page_faults = flat_keyed(&stat, "pgfault");
    s.major_page_faults = flat_keyed(&stat, "pgmajfault");
    let max = read_u64(&dir.join(MAX)).unwrap_or(u64::MAX);
    s.memory_limit_bytes = (max != u64::MAX).then_some(max);
    s.oom_kills = oom_kills(dir).ok();
    Ok(())
}

pub fn oom_kills(dir: &Path) -> Result<u64, CgroupError> {
    Ok(flat_keyed(&read(&dir.join(EVENTS))?, "oom_kill").unwrap_or(0))
}
