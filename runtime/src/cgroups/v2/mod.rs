//! cgroup v2 (unified) controllers: one module per controller, plus the raw `unified` map.

pub mod cpu;
pub mod cpuset;
pub mod devices;
pub mod freezer;
pub mod hugetlb;
pub mod memory;
pub mod pids;
pub mod unified;

use std::path::Path;

use crate::cgroups::util::{read, write};
use crate::cgroups::CgroupError;

/// Controllers skiff enables for its subtrees when the parent offers them.
pub const WANTED: &[&str] = &["cpu", "cpuset", "memory", "pids", "hugetlb", "io"];

/// Enables the wanted controllers (those listed in `dir/cgroup.controllers`) in
/// `dir/cgroup.subtree_control`, so that children get their interface files.
pub fn enable_subtree(dir: &Path) -> Result<(), CgroupError> {
    let available = match read(&dir.join("cgroup.controllers")) {
        Ok(s) => s,
        Err(_) => return Ok(()),
    };
    let enabled = read(&dir.join("cgroup.subtree_control")).unwrap_or_default();
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    let mut want = Vec::new();
    for c in available.split_whitespace() {
        if WANTED.contains(&c) && !enabled.contains(&c) {
            want.push(format!("+{c}"));
        }
    }
    if want.is_empty() {
        return Ok(());
    }
    let file = dir.join("cgroup.subtree_control");
    if write(&file, &want.join(" ")).is_err() {
        // one at a time, so one refused controller does not block the others
        for w in &want {
            if let Err(e) = write(&file, w) {
                tracing::debug!(error = %e, controller = %w, "cannot enable cgroup v2 controller");
            }
        }
    }
    Ok(())
}
