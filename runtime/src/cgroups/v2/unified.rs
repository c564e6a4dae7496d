//! The OCI/CRI `unified` map: raw v2 interface files written as given.

use std::collections::HashMap;
use std::path::Path;

use crate::cgroups::util::write;
use crate::cgroups::CgroupError;

pub fn apply(dir: &Path, unified: &HashMap<String, String>) -> Result<(), CgroupError> {
    let mut keys: Vec<&String> = unified.keys().collect();
    keys.sort();
    for k in keys {
        if k.is_empty() || k.contains('/') || k.starts_with('.') || !k.contains('.') {
            return Err(CgroupError::InvalidResource(format!("invalid unified cgroup key {k:?}")));
        }
        let f = dir.join(k);
        if !f.exists() {
            return Err(CgroupError::InvalidResource(format!(
                "unified cgroup key {k:?}: no such interface file (controller not enabled?)"
            )));
        }
        write(&f, &unified[k])?;
    }
    Ok(())
}
