//! CRI resources → OCI `LinuxResources`, and the oom_score_adj clamp.

use oci_spec::runtime::{LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxResources};
use proto::cri;

use super::SpecError;

/// Converts CRI `LinuxContainerResources` (zero = unset) into OCI resources for the spec and for
/// [`runtime::cgroups::CgroupManager::apply`]. `oom_score_adj` is not a cgroup setting (see
/// [`clamp_oom_score_adj`]).
pub fn resources_from_cri(r: &cri::LinuxContainerResources) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    if r.cpu_shares != 0 {
        if r.cpu_shares < 0 {
            return Err(SpecError::invalid("cpu_shares", r.cpu_shares.to_string()));
        }
        cpu = cpu.shares(r.cpu_shares as u64);
        any_cpu = true;
    }
    if r.cpu_period != 0 {
        if r.cpu_period < 0 {
            return Err(SpecError::invalid("cpu_period", r.cpu_period.to_string()));
        }
        cpu = cpu.period(r.cpu_period as u64);
        any_cpu = true;
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
        any_cpu = true;
    }
    if !r.cpuset_cpus.is_empty() {
        check_cpuset(&r.cpuset_cpus, "cpuset_cpus")?;
        cpu = cpu.cpus(r.cpuset_cpus.clone());
        any_cpu = true;
    }
    if !r.cpuset_mems.is_empty() {
        check_cpuset(&r.cpuset_mems, "cpuset_mems")?;
        cpu = cpu.mems(r.cpuset_mems.clone());
        any_cpu = true;
    }
    if any_cpu {
        out.set_cpu(Some(cpu.build()?));
    }
    if r.memory_limit_in_bytes != 0 || r.memory_swap_limit_in_bytes != 0 {
        if r.memory_limit_in_bytes < 0 {
            return Err(SpecError::invalid("memory_limit_in_bytes", r.memory_limit_in_bytes.to_string()));
        }
        let mut m = LinuxMemoryBuilder::default();
        if r.memory_limit_in_bytes > 0 {
            m = m.limit(r.memory_limit_in_bytes);
        }
        if r.memory_swap_limit_in_bytes == 0 && r.memory_limit_in_bytes > 0 {
            // no swap asked: memory+swap = memory, so the container cannot swap (containerd does
            // the same; ignored where swap accounting is off)
            m = m.swap(r.memory_limit_in_bytes);
        } else if r.memory_swap_limit_in_bytes != 0 {
            if r.memory_swap_limit_in_bytes > 0
                && r.memory_limit_in_bytes > 0
                && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
            {
                return Err(SpecError::invalid(
                    "memory_swap_limit_in_bytes",
                    "must not be below memory_limit_in_bytes (it is memory + swap)",
                ));
            }
            m = m.swap(r.memory_swap_limit_in_bytes);
        }
        out.set_memory(Some(m.build()?));
    }
    if !r.hugepage_limits.is_empty() {
        let mut v = Vec::new();
        for h in &r.hugepage_limits {
            runtime::cgroups::v2::hugetlb::check_page_size(&h.page_size)
                .map_err(|e| SpecError::invalid("hugepage limit", e.to_string()))?;
            let limit =
                i64::try_from(h.limit).map_err(|_| SpecError::invalid("hugepage limit", h.limit.to_string()))?;
            v.push(LinuxHugepageLimitBuilder::default().page_size(h.page_size.clone()).limit(limit).build()?);
        }
        out.set_hugepage_limits(Some(v));
    }
    if !r.unified.is_empty() {
        for k in r.unified.keys() {
            if k.is_empty() || k.contains('/') || k.starts_with('.') {
                return Err(SpecError::invalid("unified resource key", k.clone()));
            }
        }
        out.set_unified(Some(r.unified.clone()));
    }
    Ok(out)
}

fn check_cpuset(s: &str, what: &str) -> Result<(), SpecError> {
    let ok = s.split(',').all(|part| {
        let mut it = part.splitn(2, '-');
        let a = it.next().unwrap_or("");
        let b = it.next();
        !a.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.map(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit())).unwrap_or(true)
    });
    if ok {
        Ok(())
    } else {
        Err(SpecError::invalid(what, format!("{s:?} is not a cpu list")))
    }
}

/// skiffd's own oom_score_adj: without CAP_SYS_RESOURCE nothing may go below it.
pub fn current_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Validates and clamps a CRI oom_score_adj to [`min`, 1000] (like containerd's
/// restrict_oom_score_adj), logging when it had to raise it.
pub fn clamp_oom_score_adj(want: i64, min: i32) -> Result<i32, SpecError> {
    if !(-1000..=1000).contains(&want) {
        return Err(SpecError::invalid("oom_score_adj", format!("{want} is outside [-1000, 1000]")));
    }
    let want = want as i32;
    if want < min {
        tracing::info!(requested = want, used = min, "oom_score_adj raised to skiffd's own value");
        return Ok(min);
    }
    Ok(want)
}
