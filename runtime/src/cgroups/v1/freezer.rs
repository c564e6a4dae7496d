//! v1 `freezer`: freeze and thaw a cgroup (used to kill every process without races).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cgroups::util::{read, write};
use crate::cgroups::CgroupError;

pub const STATE: &str = "freezer.state";

/// Freezes the cgroup and waits (bounded) until the kernel reports FROZEN.
pub fn freeze(dir: &Path) -> Result<(), CgroupError> {
    let file = dir.join(STATE);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        write(&file, "FROZEN")?;
        if read(&file)?.trim() == "FROZEN" || Instant::now() > deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn thaw(dir: &Path) -> Result<(), CgroupError> {
    write(&dir.join(STATE), "THAWED")
}
