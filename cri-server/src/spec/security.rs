//! Devices (cgroup allow rules, CRI devices, host devices for privileged containers) and the
//! seccomp profile choice.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxSeccomp,
};
use proto::cri;

use super::SpecError;
use runtime::seccomp;

fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup, SpecError> {
    let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).access(access.to_string());
    if let Some(t) = typ {
        b = b.typ(t);
    }
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    Ok(b.build()?)
}

fn device_of(host: &Path, container_path: &str, host_path_str: &str) -> Result<LinuxDevice, SpecError> {
    let md = std::fs::metadata(host)
        .map_err(|e| SpecError::BadDevice { host_path: host_path_str.to_string(), reason: e.to_string() })?;
    let ft = md.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(SpecError::BadDevice { host_path: host_path_str.to_string(), reason: "not a device node".into() });
    };
    let rdev = md.rdev();
    Ok(LinuxDeviceBuilder::default()
        .path(container_path.to_string())
        .typ(typ)
        .major(nix::sys::stat::major(rdev) as i64)
        .minor(nix::sys::stat::minor(rdev) as i64)
        .file_mode(md.mode() & 0o7777)
        .uid(md.uid())
        .gid(md.gid())
        .build()?)
}

/// The host's device nodes under /dev (for privileged containers), skipping pseudo-dirs.
fn host_devices() -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                let name = e.file_name();
                if !matches!(name.to_str(), Some("pts" | "shm" | "mqueue" | "fd" | ".lxc" | ".lxd-mounts" | ".udev")) {
                    stack.push(p);
                }
            } else if ft.is_char_device() || ft.is_block_device() {
                if p == Path::new("/dev/console") {
                    continue;
                }
                let s = p.to_string_lossy().into_owned();
                if let Ok(d) = device_of(&p, &s, &s) {
                    out.push(d);
                }
            }
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

/// Device nodes to create and the device cgroup rules.
pub(super) fn devices(
    config: &cri::ContainerConfig,
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut devs = Vec::new();
    let mut rules = Vec::new();
    if privileged {
        devs = host_devices();
        rules.push(rule(true, None, None, None, "rwm")?);
    } else {
        use LinuxDeviceType::{B, C};
        rules.push(rule(false, None, None, None, "rwm")?);
        rules.push(rule(true, Some(C), None, None, "m")?);
        rules.push(rule(true, Some(B), None, None, "m")?);
        for (maj, min) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2)] {
            rules.push(rule(true, Some(C), Some(maj), Some(min), "rwm")?);
        }
        rules.push(rule(true, Some(C), Some(136), None, "rwm")?);
    }
    for d in &config.devices {
        if !d.container_path.starts_with('/') {
            return Err(SpecError::BadDevice {
                host_path: d.host_path.clone(),
                reason: format!("container path {:?} is not absolute", d.container_path),
            });
        }
        let perms = if d.permissions.is_empty() { "rwm" } else { d.permissions.as_str() };
        if !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(SpecError::BadDevice {
                host_path: d.host_path.clone(),
                reason: format!("invalid permissions {perms:?}"),
            });
        }
        let dev = device_of(Path::new(&d.host_path), &d.container_path, &d.host_path)?;
        rules.push(rule(true, Some(dev.typ()), Some(dev.major()), Some(dev.minor()), perms)?);
        devs.retain(|x: &LinuxDevice| x.path() != dev.path());
        devs.push(dev);
    }
    Ok((devs, rules))
}

/// The seccomp filter from the security context (unset = unconfined, as containerd).
#[allow(deprecated)] // seccomp_profile_path is still sent by older kubelets
pub(super) fn seccomp(
    sc: &cri::LinuxContainerSecurityContext,
    bounding: &[String],
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if let Some(p) = &sc.seccomp {
        return match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Ok(Some(seccomp::default_profile(bounding)?)),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(None),
            Ok(cri::security_profile::ProfileType::Localhost) => {
                Ok(Some(seccomp::load_profile(Path::new(&p.localhost_ref))?))
            }
            Err(_) => Err(seccomp::SeccompError::Unsupported(format!("profile type {}", p.profile_type)).into()),
        };
    }
    match sc.seccomp_profile_path.as_str() {
        "" | "unconfined" => Ok(None),
        "runtime/default" | "docker/default" => Ok(Some(seccomp::default_profile(bounding)?)),
        p => match p.strip_prefix("localhost/") {
            Some(path) => Ok(Some(seccomp::load_profile(Path::new(path))?)),
            None => Err(seccomp::SeccompError::Unsupported(p.to_string()).into()),
        },
    }
}
