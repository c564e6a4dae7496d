//! Linux capabilities for containers: containerd's default set, CRI add/drop (including `ALL`),
//! privileged = every capability skiffd itself holds (as containerd uses `cap.Current()`: a
//! capability skiffd lacks, such as CAP_SYS_RESOURCE on some hosts, cannot be given anyway).

use std::collections::HashSet;
use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability};

use crate::error::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
}

impl CapsError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// containerd's (and docker's) default capability set.
pub const DEFAULT: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

pub fn default_caps() -> Capabilities {
    DEFAULT.iter().copied().collect()
}

/// Parses `NET_ADMIN`, `net_admin` or `CAP_NET_ADMIN`.
pub fn parse(name: &str) -> Result<Capability, CapsError> {
    let up = name.trim().to_ascii_uppercase();
    let bare = up.strip_prefix("CAP_").unwrap_or(&up);
    Capability::from_str(bare).map_err(|_| CapsError::Unknown(name.to_string()))
}

/// `CAP_…` name of a capability.
pub fn name(c: Capability) -> String {
    format!("CAP_{c}")
}

/// Sorted `CAP_…` names (stable output for specs and tests).
pub fn names(set: &Capabilities) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|c| name(*c)).collect();
    v.sort();
    v
}

/// The capabilities in this process's effective set (what a privileged container gets).
pub fn current_caps() -> Capabilities {
    match caps::read(None, caps::CapSet::Effective) {
        Ok(set) => set.iter().filter_map(|c| parse(&c.to_string()).ok()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read own capabilities; using the default set");
            default_caps()
        }
    }
}

/// containerd's order: privileged → everything; else defaults, then `ALL` in add, `ALL` in drop,
/// individual adds, individual drops. Capabilities skiffd does not hold are left out with a
/// warning (the container could not receive them).
pub fn compute(privileged: bool, add: &[String], drop: &[String]) -> Result<Capabilities, CapsError> {
    let all = current_caps();
    if privileged {
        return Ok(all);
    }
    let is_all = |s: &String| s.trim().eq_ignore_ascii_case("ALL");
    let mut set = default_caps();
    if add.iter().any(is_all) {
        set = all.clone();
    }
    if drop.iter().any(is_all) {
        set.clear();
    }
    for a in add.iter().filter(|s| !is_all(s)) {
        set.insert(parse(a)?);
    }
    for d in drop.iter().filter(|s| !is_all(s)) {
        set.remove(&parse(d)?);
    }
    let missing: HashSet<Capability> = set.difference(&all).copied().collect();
    if !missing.is_empty() {
        tracing::warn!(missing = ?names(&missing), "skiffd lacks these capabilities; the container will not get them");
        set.retain(|c| all.contains(c));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        assert_eq!(parse("NET_ADMIN").unwrap(), Capability::NetAdmin);
        assert_eq!(parse("cap_sys_admin").unwrap(), Capability::SysAdmin);
        assert!(parse("NOPE").is_err());
        assert_eq!(name(Capability::NetBindService), "CAP_NET_BIND_SERVICE");
    }

    #[test]
    fn add_drop() {
        let s = compute(false, &[], &[]).unwrap();
        assert_eq!(s, default_caps().intersection(&current_caps()).copied().collect());
        let s = compute(false, &["NET_ADMIN".into()], &["CHOWN".into()]).unwrap();
        if current_caps().contains(&Capability::NetAdmin) {
            assert!(s.contains(&Capability::NetAdmin));
        }
        assert!(!s.contains(&Capability::Chown));
        let s = compute(false, &["CHOWN".into()], &["ALL".into()]).unwrap();
        assert!(s.len() <= 1);
        let s = compute(false, &["ALL".into()], &["CHOWN".into()]).unwrap();
        assert_eq!(s.len(), current_caps().len() - usize::from(current_caps().contains(&Capability::Chown)));
        assert!(compute(false, &["BOGUS".into()], &[]).is_err());
        assert_eq!(compute(true, &[], &[]).unwrap(), current_caps());
    }
}
