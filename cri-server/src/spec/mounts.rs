//! The `mounts` section: the default container mounts, the pod's files, and CRI mounts
//! (bind mounts with readonly and propagation), ordered parents first.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;
use proto::cri;

use super::{SpecError, SpecInput};

/// containerd's default masked paths.
pub fn default_masked_paths() -> Vec<String> {
    [
        "/proc/asound",
        "/proc/acpi",
        "/proc/interrupts",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// containerd's default read-only paths.
pub fn default_readonly_paths() -> Vec<String> {
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"].iter().map(|s| s.to_string()).collect()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

fn bind(dest: &str, source: &Path, options: Vec<String>) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some("bind".to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options));
    m
}

/// Lexically cleaned absolute path (`/a//b/../c/` → `/a/c`).
fn clean(p: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

fn depth(p: &Path) -> usize {
    p.components().filter(|c| matches!(c, Component::Normal(_))).count()
}

pub(super) fn build(
    input: &SpecInput<'_>,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<(Vec<Mount>, Option<String>), SpecError> {
    let privileged = sc.privileged;
    let sys_ro = if privileged { "rw" } else { "ro" };
    let defaults = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", sys_ro]),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", sys_ro]),
    ];

    // CRI mounts
    let mut user_mounts: Vec<Mount> = Vec::new();
    let mut propagation: Option<&'static str> = None;
    for m in &input.config.mounts {
        if m.container_path.is_empty() || !m.container_path.starts_with('/') {
            return Err(SpecError::invalid(format!("mount {:?}", m.container_path), "container path must be absolute"));
        }
        if m.image.as_ref().map(|i| !i.image.is_empty()).unwrap_or(false) {
            return Err(SpecError::invalid(
                format!("mount {:?}", m.container_path),
                "image volume mounts are not supported",
            ));
        }
        if m.host_path.is_empty() {
            return Err(SpecError::invalid(format!("mount {:?}", m.container_path), "empty host path"));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(SpecError::invalid(
                format!("mount {:?}", m.container_path),
                "id-mapped mounts are not supported",
            ));
        }
        // resolve symlinks on the host side (as containerd does); nothing is created
        let src = std::fs::canonicalize(&m.host_path).map_err(|_| SpecError::MountSourceMissing {
            host_path: m.host_path.clone(),
            container_path: m.container_path.clone(),
        })?;
        let prop = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationPrivate) => "rprivate",
            Ok(cri::MountPropagation::PropagationHostToContainer) => {
                if propagation.is_none() {
                    propagation = Some("rslave");
                }
                "rslave"
            }
            Ok(cri::MountPropagation::PropagationBidirectional) => {
                // containerd also checks that the source is on a shared mount; skiff leaves
                // that to the kernel (without it the mount simply does not propagate)
                propagation = Some("rshared");
                "rshared"
            }
            Err(_) => return Err(SpecError::invalid(format!("mount {:?}", m.container_path), "unknown propagation")),
        };
        let mut opts = vec!["rbind".to_string(), prop.to_string()];
        if m.recursive_read_only {
            if !m.readonly {
                return Err(SpecError::invalid(
                    format!("mount {:?}", m.container_path),
                    "recursive_read_only needs readonly",
                ));
            }
            if prop != "rprivate" {
                return Err(SpecError::invalid(
                    format!("mount {:?}", m.container_path),
                    "recursive_read_only needs private propagation",
                ));
            }
            if !runtime::features::mount_setattr() {
                return Err(SpecError::invalid(
                    format!("mount {:?}", m.container_path),
                    "recursive_read_only needs mount_setattr (Linux 5.12+), which this kernel lacks",
                ));
            }
            opts.push("rro".into());
        } else {
            opts.push(if m.readonly { "ro" } else { "rw" }.into());
        }
        user_mounts.push(bind(&clean(&m.container_path), &src, opts));
    }
    let taken = |dest: &str| user_mounts.iter().any(|m| m.destination() == Path::new(dest));

    // the pod's files, unless the CRI config mounts something there itself
    let etc_opt = if sc.readonly_rootfs { "ro" } else { "rw" };
    let mut extra: Vec<Mount> = Vec::new();
    let pf = &input.pod_files;
    for (dest, src) in
        [("/etc/hosts", &pf.hosts), ("/etc/resolv.conf", &pf.resolv_conf), ("/etc/hostname", &pf.hostname)]
    {
        if let Some(src) = src {
            if !taken(dest) {
                extra.push(bind(dest, src, vec!["rbind".into(), "rprivate".into(), etc_opt.into()]));
            }
        }
    }
    if let Some(shm) = &pf.shm {
        if !taken("/dev/shm") {
            extra.push(bind("/dev/shm", shm, vec!["rbind".into(), "rprivate".into(), "rw".into()]));
        }
    }

    let mut out: Vec<Mount> = defaults.into_iter().filter(|d| !taken(&d.destination().to_string_lossy())).collect();
    let mut rest: Vec<Mount> = extra;
    rest.extend(user_mounts);
    rest.sort_by_key(|m| depth(m.destination()));
    out.extend(rest);
    Ok((out, propagation.map(str::to_string)))
}
