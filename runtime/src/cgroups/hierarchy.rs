//! Finding the mounted cgroup hierarchies (v1, v2 unified, or both = hybrid) from
//! `/proc/self/mountinfo`, and turning a cgroupfs-form path into directories.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CgroupError;

/// Which cgroup layout the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Only v1 hierarchies (controllers are managed through them).
    Legacy,
    /// v1 hierarchies with controllers plus a cgroup2 mount (usually `/sys/fs/cgroup/unified`)
    /// that holds no useful controller. Controllers are managed through v1.
    Hybrid,
    /// Only the cgroup2 unified hierarchy.
    Unified,
}

/// One mounted cgroup v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Hierarchy {
    /// Where the hierarchy is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mountpoint: PathBuf,
    /// Controllers (and `name=` entries) attached to it, e.g. `["cpu", "cpuacct"]`, `["name=systemd"]`.
    pub controllers: Vec<String>,
}

/// The set of cgroup hierarchies skiff manages (serializable: skiffd hands its own to each
/// monitor in `monitor.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchies {
    /// Mounted v1 hierarchies (empty on a pure v2 host).
    pub v1: Vec<V1Hierarchy>,
    /// The cgroup2 mount point, if any.
    pub unified: Option<PathBuf>,
}

/// v1 controllers skiff knows (others are still joined but never configured).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

impl Hierarchies {
    /// Reads `/proc/self/mountinfo`.
    pub fn detect() -> Result<Self, CgroupError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| CgroupError::io("read", "/proc/self/mountinfo", e))?;
        let h = Self::from_mountinfo(&text);
        if h.v1.is_empty() && h.unified.is_none() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(h)
    }

    /// Parses the text of a mountinfo file. The first mount of each hierarchy wins (later bind
    /// mounts of the same superblock are ignored).
    pub fn from_mountinfo(text: &str) -> Self {
        let mut v1: Vec<V1Hierarchy> = Vec::new();
        let mut seen_dev: Vec<String> = Vec::new();
        let mut unified = None;
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else { continue };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let dev = pre[2];
            let mountpoint = PathBuf::from(unescape(pre[4]));
            match post[0] {
                "cgroup" => {
                    if seen_dev.iter().any(|d| d == dev) {
                        continue;
                    }
                    seen_dev.push(dev.to_string());
                    let controllers: Vec<String> = post[2]
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_string)
                        .collect();
                    if !controllers.is_empty() {
                        v1.push(V1Hierarchy { mountpoint, controllers });
                    }
                }
                "cgroup2" if unified.is_none() => unified = Some(mountpoint),
                _ => {}
            }
        }
        Hierarchies { v1, unified }
    }

    /// A pure v2 layout rooted at `root` (used by tests with fake trees).
    pub fn unified_at(root: impl Into<PathBuf>) -> Self {
        Hierarchies { v1: Vec::new(), unified: Some(root.into()) }
    }

    /// The layout.
    pub fn mode(&self) -> CgroupMode {
        match (self.v1.iter().any(|h| h.controllers.iter().any(|c| !c.starts_with("name="))), &self.unified) {
            (true, Some(_)) => CgroupMode::Hybrid,
            (true, None) => CgroupMode::Legacy,
            (false, _) => CgroupMode::Unified,
        }
    }

    /// The v1 hierarchy holding `controller`, if mounted.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1.iter().find(|h| h.controllers.iter().any(|c| c == controller)).map(|h| h.mountpoint.as_path())
    }

    /// Every directory that makes up cgroup `path` (already normalized, relative):
    /// one per v1 hierarchy (and the unified one on hybrid hosts is left out: it has no
    /// controllers and skiff does not manage it), or the unified one on v2.
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        match self.mode() {
            CgroupMode::Unified => self.unified.iter().map(|u| join_rel(u, rel)).collect(),
            _ => self.v1.iter().map(|h| join_rel(&h.mountpoint, rel)).collect(),
        }
    }
}

pub(crate) fn join_rel(base: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Normalizes a cgroupfs-form path (`/kubepods/burstable/pod1/ctr`) to a relative path
/// without leading or trailing slashes (`kubepods/burstable/pod1/ctr`). Rejects `.`, `..`, NUL
/// and the root itself.
pub fn normalize(path: &str) -> Result<String, CgroupError> {
    let bad = |reason| CgroupError::InvalidPath { path: path.to_string(), reason };
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" => {}
            "." | ".." => return Err(bad("contains . or .. components")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(bad("is the root cgroup"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
99 31 0:32 / /mnt/memory\\040copy rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_hybrid() {
        let h = Hierarchies::from_mountinfo(MI);
        assert_eq!(h.mode(), CgroupMode::Hybrid);
        assert_eq!(h.v1.len(), 4);
        assert_eq!(h.v1[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(h.v1_mount("cpuacct"), Some(Path::new("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(h.v1_mount("memory"), Some(Path::new("/sys/fs/cgroup/memory")));
        assert_eq!(h.v1[3].controllers, vec!["name=systemd"]);
        assert_eq!(h.unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(h.dirs("a/b")[2], PathBuf::from("/sys/fs/cgroup/memory/a/b"));
    }

    #[test]
    fn parses_unified_and_escapes() {
        let h = Hierarchies::from_mountinfo("1 0 0:1 / /sys/fs/cg\\040x rw - cgroup2 cgroup2 rw\n");
        assert_eq!(h.mode(), CgroupMode::Unified);
        assert_eq!(h.dirs("k"), vec![PathBuf::from("/sys/fs/cg x/k")]);
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize("/kubepods//burstable/pod1/").unwrap(), "kubepods/burstable/pod1");
        assert_eq!(normalize("skiff/x").unwrap(), "skiff/x");
        assert!(normalize("/").is_err());
        assert!(normalize("").is_err());
        assert!(normalize("/a/../b").is_err());
    }
}
