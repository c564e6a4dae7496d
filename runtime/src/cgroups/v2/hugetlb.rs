//! v2 `hugetlb`: limits per page size (`hugetlb.2MB.max`).

use std::path::Path;

use oci_spec::runtime::LinuxHugepageLimit;

use crate::cgroups::util::write;
use crate::cgroups::CgroupError;

/// Accepts page sizes like `2MB`, `1GB`, `64KB` (what CRI and the kernel file names use).
pub fn check_page_size(size: &str) -> Result<&str, CgroupError> {
    let num = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &size[num.len()..];
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || !["KB", "MB", "GB"].contains(&unit) {
        return Err(CgroupError::InvalidResource(format!("invalid hugepage size {size:?}")));
    }
    Ok(size)
}

pub fn apply(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<(), CgroupError> {
    for l in limits {
        let size = check_page_size(l.page_size())?;
        write(&dir.join(format!("hugetlb.{size}.max")), &l.limit().to_string())?;
    }
    Ok(())
}
