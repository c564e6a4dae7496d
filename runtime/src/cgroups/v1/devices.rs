//! v1 `devices`: the device allowlist (`devices.deny` / `devices.allow`). v2 uses an eBPF
//! program instead ([`crate::cgroups::v2::devices`]).

use std::io::Write;
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::cgroups::CgroupError;

pub const ALLOW: &str = "devices.allow";
pub const DENY: &str = "devices.deny";

/// `c 1:3 rwm` style rule text.
pub fn rule_text(r: &LinuxDeviceCgroup) -> Result<String, CgroupError> {
    let t = match r.typ() {
        None | Some(LinuxDeviceType::A) => 'a',
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
        Some(LinuxDeviceType::B) => 'b',
        Some(LinuxDeviceType::P) => {
            return Err(CgroupError::InvalidResource("device cgroup rules cannot name FIFOs".into()))
        }
    };
    let num = |n: Option<i64>| n.filter(|n| *n >= 0).map(|n| n.to_string()).unwrap_or_else(|| "*".into());
    let access = r.access().clone().filter(|a| !a.is_empty()).unwrap_or_else(|| "rwm".into());
    if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(CgroupError::InvalidResource(format!("device access {access:?}")));
    }
    if t == 'a' {
        return Ok(format!("a *:* {access}"));
    }
    Ok(format!("{t} {}:{} {access}", num(r.major()), num(r.minor())))
}

/// Writes the rules in order, one `write` per rule (the kernel reads one rule per write), each
/// of the two files opened once (13 opens for the default list before).
pub fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    let (mut allow, mut deny): (Option<std::fs::File>, Option<std::fs::File>) = (None, None);
    for r in rules {
        let text = rule_text(r)?;
        let (slot, name) = if r.allow() { (&mut allow, ALLOW) } else { (&mut deny, DENY) };
        let path = dir.join(name);
        let f = match slot {
            Some(f) => f,
            None => slot.insert(
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|e| CgroupError::io("open", &path, e))?,
            ),
        };
        f.write_all(text.as_bytes()).map_err(|e| CgroupError::io("write", &path, e))?;
    }
    Ok(())
}
