//! CRI `LinuxContainerResources`: ranges the kernel accepts, checked before any cgroup write,
//! and the merge of an UpdateContainerResources request into the effective resources.

#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use proto::cri::LinuxContainerResources;
use tonic::Status;

use super::common::{check_count, check_str, invalid};

/// `cpu.cfs_period_us` range (1 ms to 1 s).
pub const CPU_PERIOD: (i64, i64) = (1000, 1_000_000);
/// `cpu.cfs_quota_us`: at least 1 ms; at most the kernel's `max_cfs_runtime` (2^44 - 1 µs); -1
/// means unlimited.
pub const CPU_QUOTA: (i64, i64) = (1000, (1 << 44) - 1);
/// `cpu.shares` range (the kubelet's minimum is 2).
pub const CPU_SHARES: (i64, i64) = (2, 262_144);
/// Smallest memory limit (as Docker: below that a container cannot even start).
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// oom_score_adj range.
pub const OOM_SCORE_ADJ: (i64, i64) = (-1000, 1000);
/// Longest cpuset string.
pub const MAX_CPUSET: usize = 4096;
/// Highest CPU or memory node number accepted in a cpuset when the host's are unknown.
pub const MAX_CPU_NUMBER: u32 = 8191;
/// Most hugepage limits and unified entries.
pub const MAX_RESOURCE_ENTRIES: usize = 64;

/// The host's online CPUs and memory nodes, read once at startup.
struct HostLimits {
    cpus: Option<BTreeSet<u32>>,
    mems: Option<BTreeSet<u32>>,
    /// Hugepage sizes as the cgroup files name them (`2MB`, `1GB`).
    hugepages: Option<BTreeSet<String>>,
}

static HOST: OnceLock<HostLimits> = OnceLock::new();

/// Reads the host's online CPUs and memory nodes (call once, at startup, outside async code).
pub fn init_host_limits() {
    HOST.get_or_init(|| {
        let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| parse_cpuset(s.trim()).ok());
        HostLimits {
            cpus: read("/sys/devices/system/cpu/online"),
            mems: read("/sys/devices/system/node/online").or_else(|| Some(BTreeSet::from([0]))),
            hugepages: std::fs::read_dir("/sys/kernel/mm/hugepages")
                .ok()
                .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().and_then(hugepage_name)).collect()),
        }
    });
}

/// `hugepages-2048kB` → `2MB` (the name in `hugetlb.<size>.limit_in_bytes`).
fn hugepage_name(dir: &str) -> Option<String> {
    let kb: u64 = dir.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok()?;
    Some(if kb.is_multiple_of(1 << 20) {
        format!("{}GB", kb >> 20)
    } else if kb.is_multiple_of(1 << 10) {
        format!("{}MB", kb >> 10)
    } else {
        format!("{kb}KB")
    })
}

/// Parses a cpu list (`0-3,5,7-8`).
pub fn parse_cpuset(s: &str) -> Result<BTreeSet<u32>, String> {
    let mut out = BTreeSet::new();
    if s.is_empty() {
        return Ok(out);
    }
    for part in s.split(',') {
        let num = |t: &str| -> Result<u32, String> {
            if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
                return Err(format!("{part:?} is not a number or range"));
            }
            t.parse::<u32>().ok().filter(|n| *n <= MAX_CPU_NUMBER).ok_or_else(|| format!("{t} is too large"))
        };
        match part.split_once('-') {
            None => {
                out.insert(num(part)?);
            }
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range {part:?} is reversed"));
                }
                out.extend(a..=b);
            }
        }
    }
    Ok(out)
}

fn check_set(field: &str, s: &str, online: Option<&BTreeSet<u32>>, what: &str) -> Result<(), Status> {
    if s.is_empty() {
        return Ok(());
    }
    check_str(field, s, MAX_CPUSET)?;
    let set = parse_cpuset(s).map_err(|e| invalid(field, format!("{s:?}: {e}")))?;
    if let Some(online) = online {
        if let Some(missing) = set.iter().find(|c| !online.contains(c)) {
            return Err(invalid(
                field,
                format!("{s:?}: {what} {missing} is not online (online: {})", format_set(online)),
            ));
        }
    }
    Ok(())
}

fn format_set(s: &BTreeSet<u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = s.iter().copied().peekable();
    while let Some(a) = it.next() {
        let mut b = a;
        while it.peek() == Some(&b.saturating_add(1)) {
            b = it.next().unwrap_or(b);
        }
        out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
    }
    out.join(",")
}

fn range(field: &str, v: i64, (lo, hi): (i64, i64), unit: &str) -> Result<(), Status> {
    if v < lo || v > hi {
        return Err(invalid(field, format!("{v} is outside [{lo}, {hi}]{unit}")));
    }
    Ok(())
}

/// Checks resources (`what` prefixes the field names: `resources`, `overhead`...).
pub fn check_resources(what: &str, r: &LinuxContainerResources) -> Result<(), Status> {
    let f = |name: &str| format!("{what}.{name}");
    if r.cpu_period != 0 {
        range(&f("cpu_period"), r.cpu_period, CPU_PERIOD, " µs")?;
    }
    if r.cpu_quota != 0 && r.cpu_quota != -1 {
        range(&f("cpu_quota"), r.cpu_quota, CPU_QUOTA, " µs (or -1 for no limit)")?;
    }
    if r.cpu_shares != 0 {
        range(&f("cpu_shares"), r.cpu_shares, CPU_SHARES, "")?;
    }
    if r.memory_limit_in_bytes != 0 && r.memory_limit_in_bytes < MIN_MEMORY {
        return Err(invalid(
            &f("memory_limit_in_bytes"),
            format!("{} is below the minimum of {MIN_MEMORY} bytes (6 MiB)", r.memory_limit_in_bytes),
        ));
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(invalid(
            &f("memory_swap_limit_in_bytes"),
            format!("{} (only -1 means no limit)", r.memory_swap_limit_in_bytes),
        ));
    }
    if r.memory_swap_limit_in_bytes > 0
        && r.memory_limit_in_bytes > 0
        && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
    {
        return Err(invalid(
            &f("memory_swap_limit_in_bytes"),
            "must not be below memory_limit_in_bytes (it is memory + swap)",
        ));
    }
    range(&f("oom_score_adj"), r.oom_score_adj, OOM_SCORE_ADJ, "")?;
    let host = HOST.get();
    check_set(&f("cpuset_cpus"), &r.cpuset_cpus, host.and_then(|h| h.cpus.as_ref()), "CPU")?;
    check_set(&f("cpuset_mems"), &r.cpuset_mems, host.and_then(|h| h.mems.as_ref()), "memory node")?;
    check_count(&f("hugepage_limits"), r.hugepage_limits.len(), MAX_RESOURCE_ENTRIES)?;
    for h in &r.hugepage_limits {
        runtime::cgroups::v2::hugetlb::check_page_size(&h.page_size)
            .map_err(|e| invalid(&f("hugepage_limits.page_size"), e))?;
        if let Some(sizes) = host.and_then(|h| h.hugepages.as_ref()) {
            if !sizes.contains(&h.page_size) {
                let known: Vec<&str> = sizes.iter().map(String::as_str).collect();
                return Err(invalid(
                    &f("hugepage_limits.page_size"),
                    format!("{:?} is not a hugepage size of this host ({})", h.page_size, known.join(", ")),
                ));
            }
        }
        if i64::try_from(h.limit).is_err() {
            return Err(invalid(&f("hugepage_limits.limit"), format!("{} is too large", h.limit)));
        }
    }
    check_count(&f("unified"), r.unified.len(), MAX_RESOURCE_ENTRIES)?;
    for (k, v) in &r.unified {
        let field = format!("{what}.unified[{k:?}]");
        check_str(&field, k, 255)?;
        if k.is_empty() || k.contains('/') || k.starts_with('.') || !k.contains('.') {
            return Err(invalid(&field, "not a cgroup interface file name"));
        }
        if k.starts_with("cgroup.") && !k.starts_with("cgroup.max.") {
            return Err(invalid(&field, "cgroup core files other than cgroup.max.* cannot be set"));
        }
        check_str(&field, v, 4096)?;
        if v.contains('\n') {
            return Err(invalid(&field, "value has a newline"));
        }
    }
    Ok(())
}

/// The effective resources after an update: every field the update sets (non-zero, non-empty)
/// replaces the old one, as containerd merges them; the others stay.
pub fn merge_resources(
    old: Option<&LinuxContainerResources>,
    new: &LinuxContainerResources,
) -> LinuxContainerResources {
    let mut m = old.cloned().unwrap_or_default();
    let set = |o: &mut i64, n: i64| {
        if n != 0 {
            *o = n;
        }
    };
    set(&mut m.cpu_period, new.cpu_period);
    set(&mut m.cpu_quota, new.cpu_quota);
    set(&mut m.cpu_shares, new.cpu_shares);
    set(&mut m.memory_limit_in_bytes, new.memory_limit_in_bytes);
    set(&mut m.memory_swap_limit_in_bytes, new.memory_swap_limit_in_bytes);
    set(&mut m.oom_score_adj, new.oom_score_adj);
    if !new.cpuset_cpus.is_empty() {
        m.cpuset_cpus = new.cpuset_cpus.clone();
    }
    if !new.cpuset_mems.is_empty() {
        m.cpuset_mems = new.cpuset_mems.clone();
    }
    for h in &new.hugepage_limits {
        match m.hugepage_limits.iter_mut().find(|o| o.page_size == h.page_size) {
            Some(o) => o.limit = h.limit,
            None => m.hugepage_limits.push(h.clone()),
        }
    }
    for (k, v) in &new.unified {
        m.unified.insert(k.clone(), v.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn res(f: impl FnOnce(&mut LinuxContainerResources)) -> LinuxContainerResources {
        let mut r = LinuxContainerResources::default();
        f(&mut r);
        r
    }

    fn refused(r: LinuxContainerResources, field: &str) {
        let e = check_resources("resources", &r).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(&format!("resources.{field}")), "{}", e.message());
    }

    #[test]
    fn ranges() {
        check_resources("resources", &LinuxContainerResources::default()).unwrap();
        check_resources(
            "resources",
            &res(|r| {
                r.cpu_period = 100_000;
                r.cpu_quota = 50_000;
                r.cpu_shares = 2;
                r.memory_limit_in_bytes = 64 << 20;
                r.oom_score_adj = -999;
            }),
        )
        .unwrap();
        check_resources("resources", &res(|r| r.cpu_quota = -1)).unwrap();
        refused(res(|r| r.memory_limit_in_bytes = 1), "memory_limit_in_bytes");
        refused(res(|r| r.memory_limit_in_bytes = -5), "memory_limit_in_bytes");
        refused(res(|r| r.cpu_period = 1), "cpu_period");
        refused(res(|r| r.cpu_period = 1_000_001), "cpu_period");
        refused(res(|r| r.cpu_quota = 999), "cpu_quota");
        refused(res(|r| r.cpu_quota = -2), "cpu_quota");
        refused(res(|r| r.cpu_shares = 1), "cpu_shares");
        refused(res(|r| r.cpu_shares = 262_145), "cpu_shares");
        refused(res(|r| r.oom_score_adj = 5000), "oom_score_adj");
        refused(res(|r| r.oom_score_adj = -1001), "oom_score_adj");
        refused(res(|r| r.memory_swap_limit_in_bytes = -2), "memory_swap_limit_in_bytes");
        refused(
            res(|r| {
                r.memory_limit_in_bytes = 64 << 20;
                r.memory_swap_limit_in_bytes = 32 << 20;
            }),
            "memory_swap_limit_in_bytes",
        );
        refused(res(|r| r.cpuset_cpus = "0-999999".into()), "cpuset_cpus");
        refused(res(|r| r.cpuset_cpus = "3-1".into()), "cpuset_cpus");
        refused(res(|r| r.cpuset_cpus = "a".into()), "cpuset_cpus");
        refused(res(|r| r.cpuset_cpus = "0,,1".into()), "cpuset_cpus");
        refused(
            res(|r| r.hugepage_limits = vec![proto::cri::HugepageLimit { page_size: "3XB".into(), limit: 1 }]),
            "hugepage_limits",
        );
        refused(
            res(|r| r.hugepage_limits = vec![proto::cri::HugepageLimit { page_size: "2MB".into(), limit: u64::MAX }]),
            "hugepage_limits",
        );
        refused(res(|r| r.unified = [("cgroup.procs".to_string(), "1".to_string())].into()), "unified");
        refused(res(|r| r.unified = [("../x".to_string(), "1".to_string())].into()), "unified");
    }

    #[test]
    fn cpusets_against_the_host() {
        init_host_limits();
        let online = HOST.get().and_then(|h| h.cpus.clone()).expect("online CPUs readable");
        let first = *online.iter().next().unwrap();
        check_resources("resources", &res(|r| r.cpuset_cpus = first.to_string())).unwrap();
        refused(res(|r| r.cpuset_cpus = "0-999".into()), "cpuset_cpus");
        if HOST.get().and_then(|h| h.hugepages.as_ref()).is_some() {
            refused(
                res(|r| r.hugepage_limits = vec![proto::cri::HugepageLimit { page_size: "3MB".into(), limit: 1 }]),
                "hugepage_limits",
            );
        }
        assert_eq!(hugepage_name("hugepages-2048kB").as_deref(), Some("2MB"));
        assert_eq!(hugepage_name("hugepages-1048576kB").as_deref(), Some("1GB"));
        assert_eq!(parse_cpuset("0-2,5").unwrap(), BTreeSet::from([0, 1, 2, 5]));
        assert_eq!(format_set(&BTreeSet::from([0, 1, 2, 5, 7, 8])), "0-2,5,7-8");
    }

    #[test]
    fn merge() {
        let old = res(|r| {
            r.cpu_shares = 512;
            r.memory_limit_in_bytes = 64 << 20;
            r.cpuset_cpus = "0".into();
        });
        let new = res(|r| r.memory_limit_in_bytes = 128 << 20);
        let m = merge_resources(Some(&old), &new);
        assert_eq!((m.cpu_shares, m.memory_limit_in_bytes, m.cpuset_cpus.as_str()), (512, 128 << 20, "0"));
    }
}
