//! Small file helpers for cgroup files.

use std::io::Write;
use std::path::Path;

use super::CgroupError;

/// Writes `value` to a cgroup file with one write(2) (cgroup files want the whole value at once).
pub(crate) fn write(file: &Path, value: &str) -> Result<(), CgroupError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .map_err(|e| CgroupError::io("open", file, e))?;
    f.write_all(value.as_bytes()).map_err(|e| CgroupError::io("write", file, e))
}

/// Reads a whole cgroup file as a string.
pub(crate) fn read(file: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(file).map_err(|e| CgroupError::io("read", file, e))
}

/// Reads a file holding one integer (`max` reads as u64::MAX).
pub(crate) fn read_u64(file: &Path) -> Result<u64, CgroupError> {
    let s = read(file)?;
    let s = s.trim();
    if s == "max" {
        return Ok(u64::MAX);
    }
    s.parse().map_err(|_| CgroupError::io("parse", file, std::io::Error::other(format!("not a number: {s:?}"))))
}

/// Parses flat-keyed files (`key value` per line: memory.stat, cpu.stat, memory.events…).
pub(crate) fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Whether `path` lives on a cgroup filesystem (real tree) rather than a fake one in a temp dir.
pub(crate) fn is_cgroupfs(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(s) => {
            let t = s.filesystem_type();
            t == nix::sys::statfs::CGROUP_SUPER_MAGIC || t == nix::sys::statfs::CGROUP2_SUPER_MAGIC
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat() {
        let t = "cache 10\nrss 20\ntotal_rss 30\n";
        assert_eq!(flat_keyed(t, "rss"), Some(20));
        assert_eq!(flat_keyed(t, "total_rss"), Some(30));
        assert_eq!(flat_keyed(t, "nope"), None);
    }
}
