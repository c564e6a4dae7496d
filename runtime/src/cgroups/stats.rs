//! Resource usage of one cgroup, in the units CRI stats want.

use std::path::Path;

use super::util::{flat_keyed, read};

/// A snapshot of a cgroup's usage. `None` means the controller or file is not available.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    /// Cumulative CPU time in nanoseconds (v1 cpuacct.usage, v2 cpu.stat usage_usec × 1000).
    pub cpu_usage_ns: Option<u64>,
    /// CPU time in user mode, ns (v1 cpuacct.stat user ticks, v2 cpu.stat user_usec).
    pub cpu_user_ns: Option<u64>,
    /// CPU time in kernel mode, ns.
    pub cpu_system_ns: Option<u64>,
    /// CFS periods elapsed / throttled, and the time throttled in ns (cpu.stat).
    pub cpu_periods: Option<u64>,
    pub cpu_throttled_periods: Option<u64>,
    pub cpu_throttled_ns: Option<u64>,
    /// CPU shares (v1 cpu.shares; v2 cpu.weight converted back), quota and period in µs
    /// (None when unlimited).
    pub cpu_shares: Option<u64>,
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: Option<u64>,
    /// Memory usage including page cache (v1 memory.usage_in_bytes, v2 memory.current).
    pub memory_usage_bytes: Option<u64>,
    /// usage − inactive file cache (what the kubelet evicts on).
    pub memory_working_set_bytes: Option<u64>,
    /// Anonymous + swap cache memory (v1 total_rss, v2 anon).
    pub memory_rss_bytes: Option<u64>,
    /// Page cache (v1 total_cache, v2 file).
    pub memory_cache_bytes: Option<u64>,
    /// Memory-mapped files (v1 total_mapped_file, v2 file_mapped).
    pub memory_mapped_file_bytes: Option<u64>,
    /// Swap in use (v1 total_swap, v2 memory.swap.current).
    pub memory_swap_bytes: Option<u64>,
    /// Kernel memory (v1 memory.kmem.usage_in_bytes, v2 memory.stat kernel or
    /// kernel_stack + slab + sock).
    pub memory_kernel_bytes: Option<u64>,
    /// Peak usage (v1 memory.max_usage_in_bytes, v2 memory.peak where the kernel has it).
    pub memory_max_usage_bytes: Option<u64>,
    /// How often the limit was hit (v1 memory.failcnt, v2 memory.events max).
    pub memory_failcnt: Option<u64>,
    /// The memory limit (None when unlimited).
    pub memory_limit_bytes: Option<u64>,
    /// The memory+swap limit (v1 memsw) or the swap limit (v2), None when unlimited.
    pub memory_swap_limit_bytes: Option<u64>,
    /// Page faults (v1 total_pgfault, v2 pgfault).
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
    /// Number of tasks (pids.current).
    pub pids_current: Option<u64>,
    /// pids.max (None when unlimited).
    pub pids_max: Option<u64>,
    /// How many times the kernel OOM killer killed a task in this cgroup.
    pub oom_kills: Option<u64>,
    /// Pressure stall information (v2 `cpu.pressure`, `memory.pressure`, `io.pressure`); None
    /// on v1 and on kernels without PSI.
    pub cpu_psi: Option<Psi>,
    pub memory_psi: Option<Psi>,
    pub io_psi: Option<Psi>,
    /// Block I/O per device (v2 io.stat, v1 blkio.throttle.*_recursive).
    pub io: Vec<IoDeviceStats>,
}

/// One line (`some` or `full`) of a PSI file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Total stall time in microseconds.
    pub total_us: u64,
}

/// A `*.pressure` file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Psi {
    pub some: PsiLine,
    /// Absent in `cpu.pressure` before Linux 5.13.
    pub full: Option<PsiLine>,
}

/// Block I/O of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoDeviceStats {
    pub major: u64,
    pub minor: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
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

/// Parses a PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=123` (and a `full` line).
pub fn parse_psi(text: &str) -> Option<Psi> {
    fn line(rest: &str) -> Option<PsiLine> {
        let mut l = PsiLine::default();
        let mut seen = 0;
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "avg10" => l.avg10 = v.parse().ok()?,
                "avg60" => l.avg60 = v.parse().ok()?,
                "avg300" => l.avg300 = v.parse().ok()?,
                "total" => l.total_us = v.parse().ok()?,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 4).then_some(l)
    }
    let mut some = None;
    let mut full = None;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("some ") {
            some = line(rest);
        } else if let Some(rest) = l.strip_prefix("full ") {
            full = line(rest);
        }
    }
    Some(Psi { some: some?, full })
}

/// Reads a PSI file; None when it is absent (v1, no CONFIG_PSI, psi=0) or unreadable.
pub(crate) fn read_psi(file: &Path) -> Option<Psi> {
    read(file).ok().as_deref().and_then(parse_psi)
}

/// Parses v2 `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`.
pub fn parse_io_stat(text: &str) -> Vec<IoDeviceStats> {
    let mut out = Vec::new();
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let Some((major, minor)) = it.next().and_then(parse_dev) else { continue };
        let mut d = IoDeviceStats { major, minor, ..Default::default() };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "rbytes" => d.read_bytes = v,
                "wbytes" => d.write_bytes = v,
                "rios" => d.reads = v,
                "wios" => d.writes = v,
                _ => {}
            }
        }
        out.push(d);
    }
    out
}

fn parse_dev(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Parses v1 `blkio.throttle.io_service_bytes_recursive` (bytes) and
/// `blkio.throttle.io_serviced_recursive` (operations): `MAJ:MIN Read N` lines.
pub fn parse_blkio(bytes: &str, ops: &str) -> Vec<IoDeviceStats> {
    let mut out: Vec<IoDeviceStats> = Vec::new();
    let mut add = |text: &str, is_bytes: bool| {
        for l in text.lines() {
            let mut it = l.split_whitespace();
            let (Some(dev), Some(op), Some(v)) = (it.next(), it.next(), it.next()) else { continue };
            let (Some((major, minor)), Ok(v)) = (parse_dev(dev), v.parse::<u64>()) else { continue };
            let i = match out.iter().position(|d| d.major == major && d.minor == minor) {
                Some(i) => i,
                None => {
                    out.push(IoDeviceStats { major, minor, ..Default::default() });
                    out.len() - 1
                }
            };
            let d = &mut out[i];
            match (op, is_bytes) {
                ("Read", true) => d.read_bytes = v,
                ("Write", true) => d.write_bytes = v,
                ("Read", false) => d.reads = v,
                ("Write", false) => d.writes = v,
                _ => {}
            }
        }
    };
    add(bytes, true);
    add(ops, false);
    out
}

fn num(file: &Path) -> Option<u64> {
    let s = read(file).ok()?;
    let s = s.trim();
    if s == "max" {
        return None;
    }
    s.parse().ok()
}

/// USER_HZ: the unit of v1 `cpuacct.stat` (100 on every Linux architecture skiff runs on).
const USER_HZ: u64 = 100;

/// v1 extras of the `cpu` and `cpuacct` hierarchies (either may be None when not mounted).
pub(crate) fn v1_cpu(cpu: Option<&Path>, cpuacct: Option<&Path>, s: &mut CgroupStats) {
    if let Some(d) = cpuacct {
        if let Ok(t) = read(&d.join("cpuacct.stat")) {
            s.cpu_user_ns = flat_keyed(&t, "user").map(|v| v.saturating_mul(1_000_000_000 / USER_HZ));
            s.cpu_system_ns = flat_keyed(&t, "system").map(|v| v.saturating_mul(1_000_000_000 / USER_HZ));
        }
    }
    if let Some(d) = cpu {
        if let Ok(t) = read(&d.join("cpu.stat")) {
            s.cpu_periods = flat_keyed(&t, "nr_periods");
            s.cpu_throttled_periods = flat_keyed(&t, "nr_throttled");
            s.cpu_throttled_ns = flat_keyed(&t, "throttled_time");
        }
        s.cpu_shares = num(&d.join("cpu.shares"));
        // -1 (unlimited) does not parse as u64
        s.cpu_quota_us = num(&d.join("cpu.cfs_quota_us"));
        s.cpu_period_us = num(&d.join("cpu.cfs_period_us"));
    }
}

/// v1 extras of the `memory` hierarchy.
pub(crate) fn v1_memory(d: &Path, s: &mut CgroupStats) {
    const UNLIMITED: u64 = 1 << 62;
    if let Ok(t) = read(&d.join("memory.stat")) {
        s.memory_cache_bytes = flat_keyed(&t, "total_cache");
        s.memory_mapped_file_bytes = flat_keyed(&t, "total_mapped_file");
        s.memory_swap_bytes = flat_keyed(&t, "total_swap").or(Some(0));
    }
    s.memory_kernel_bytes = num(&d.join("memory.kmem.usage_in_bytes")).or(Some(0));
    s.memory_max_usage_bytes = num(&d.join("memory.max_usage_in_bytes"));
    s.memory_failcnt = num(&d.join("memory.failcnt"));
    s.memory_swap_limit_bytes = num(&d.join("memory.memsw.limit_in_bytes")).filter(|l| *l < UNLIMITED);
}

/// v1 `pids.max`.
pub(crate) fn pids_max(d: &Path, s: &mut CgroupStats) {
    s.pids_max = num(&d.join("pids.max"));
}

/// v1 `blkio` (throttle counters are kept whichever I/O scheduler is in use).
pub(crate) fn v1_blkio(d: &Path, s: &mut CgroupStats) {
    let bytes = read(&d.join("blkio.throttle.io_service_bytes_recursive")).unwrap_or_default();
    let ops = read(&d.join("blkio.throttle.io_serviced_recursive")).unwrap_or_default();
    s.io = parse_blkio(&bytes, &ops);
}

/// v2 extras: cpu.stat details, cpu.max/weight, memory details, io.stat and PSI.
pub(crate) fn v2_extra(d: &Path, s: &mut CgroupStats) {
    if let Ok(t) = read(&d.join("cpu.stat")) {
        s.cpu_user_ns = flat_keyed(&t, "user_usec").map(|v| v.saturating_mul(1000));
        s.cpu_system_ns = flat_keyed(&t, "system_usec").map(|v| v.saturating_mul(1000));
        s.cpu_periods = flat_keyed(&t, "nr_periods");
        s.cpu_throttled_periods = flat_keyed(&t, "nr_throttled");
        s.cpu_throttled_ns = flat_keyed(&t, "throttled_usec").map(|v| v.saturating_mul(1000));
    }
    if let Some(w) = num(&d.join("cpu.weight")) {
        // the inverse of shares_to_weight: 1 + ((shares - 2) * 9999) / 262142
        s.cpu_shares = Some(2 + (w.saturating_sub(1) * 262_142).div_ceil(9999));
    }
    if let Ok(t) = read(&d.join("cpu.max")) {
        let mut it = t.split_whitespace();
        s.cpu_quota_us = it.next().and_then(|q| q.parse().ok());
        s.cpu_period_us = it.next().and_then(|p| p.parse().ok());
    }
    if let Ok(t) = read(&d.join("memory.stat")) {
        s.memory_cache_bytes = flat_keyed(&t, "file");
        s.memory_mapped_file_bytes = flat_keyed(&t, "file_mapped");
        s.memory_kernel_bytes = flat_keyed(&t, "kernel").or_else(|| {
            let parts = ["kernel_stack", "slab", "sock"].map(|k| flat_keyed(&t, k));
            parts.iter().any(Option::is_some).then(|| parts.iter().flatten().sum())
        });
    }
    s.memory_swap_bytes = num(&d.join("memory.swap.current")).or(Some(0));
    s.memory_max_usage_bytes = num(&d.join("memory.peak"));
    s.memory_failcnt = read(&d.join("memory.events")).ok().and_then(|t| flat_keyed(&t, "max"));
    s.memory_swap_limit_bytes = num(&d.join("memory.swap.max"));
    s.pids_max = num(&d.join("pids.max"));
    s.io = read(&d.join("io.stat")).map(|t| parse_io_stat(&t)).unwrap_or_default();
    s.cpu_psi = read_psi(&d.join("cpu.pressure"));
    s.memory_psi = read_psi(&d.join("memory.pressure"));
    s.io_psi = read_psi(&d.join("io.pressure"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi() {
        let t = "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n";
        let p = parse_psi(t).unwrap();
        assert_eq!(p.some.avg10, 1.5);
        assert_eq!(p.some.avg60, 0.25);
        assert_eq!(p.some.total_us, 12345);
        assert_eq!(p.full.unwrap().total_us, 7);
        let p = parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=3\n").unwrap();
        assert!(p.full.is_none());
        assert!(parse_psi("").is_none());
        assert!(parse_psi("some garbage\n").is_none());
    }

    #[test]
    fn io_stat() {
        let t = "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=1 wbytes=2 rios=3 wios=4\n";
        let v = parse_io_stat(t);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            IoDeviceStats { major: 8, minor: 0, read_bytes: 4096, write_bytes: 8192, reads: 1, writes: 2 }
        );
        assert_eq!(v[1].writes, 4);
    }

    #[test]
    fn blkio() {
        let b = "8:0 Read 100\n8:0 Write 200\n8:0 Sync 0\n8:0 Total 300\nTotal 300\n";
        let o = "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n";
        let v = parse_blkio(b, o);
        assert_eq!(
            v,
            vec![IoDeviceStats { major: 8, minor: 0, read_bytes: 100, write_bytes: 200, reads: 1, writes: 2 }]
        );
    }
}
