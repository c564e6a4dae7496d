//! Resource usage of one cgroup, in the units CRI stats want.

/// A snapshot of a cgroup's usage. `None` means the controller or file is not available.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Cumulative CPU time in nanoseconds (v1 cpuacct.usage, v2 cpu.stat usage_usec × 1000).
    pub cpu_usage_ns: Option<u64>,
    /// Memory usage including page cache (v1 memory.usage_in_bytes, v2 memory.current).
    pub memory_usage_bytes: Option<u64>,
    /// usage − inactive file cache (what the kubelet evicts on).
    pub memory_working_set_bytes: Option<u64>,
    /// Anonymous + swap cache memory (v1 total_rss, v2 anon).
    pub memory_rss_bytes: Option<u64>,
    /// The memory limit (None when unlimited).
    pub memory_limit_bytes: Option<u64>,
    /// Page faults (v1 total_pgfault, v2 pgfault).
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
    /// Number of tasks (pids.current).
    pub pids_current: Option<u64>,
    /// How many times the kernel OOM killer killed a task in this cgroup.
    pub oom_kills: Option<u64>,
}

impl CgroupStats {
    /// usage − inactive_file, not below 0.
    pub(crate) fn working_set(usage: u64, inactive_file: Option<u64>) -> u64 {
        usage.saturating_sub(inactive_file.unwrap_or(0))
    }

    /// The memory available before hitting the limit (CRI `available_bytes`).
    pub fn memory_available_bytes(&self) -> Option<u64> {
        match (self.memory_limit_bytes, self.memory_working_set_bytes) {
            (Some(l), Some(ws)) => Some(l.saturating_sub(ws)),
            _ => None,
        }
    }
}
