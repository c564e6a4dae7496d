//! v1 `hugetlb`: limits per page size (`hugetlb.2MB.limit_in_bytes`).

use std::path::Path;

use oci_spec::runtime::LinuxHugepageLimit;

use crate::cgroups::util::write;
use crate::cgroups::CgroupError;

pub fn apply(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<(), CgroupError> {
    for l in limits {
        let size = super::super::v2::hugetlb::check_page_size(l.page_size())?;
        write(&dir.join(format!("hugetlb.{size}.limit_in_bytes")), &l.limit().to_string())?;
    }
    Ok(())
}
