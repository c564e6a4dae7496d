//! The `mounts` section: the default container mounts, the pod's files, and CRI mounts
//! (bind mounts with readonly and propagation), ordered parents first.
//!
//! Image volumes (CRI `Mount.image`, KEP-4639): the image's layers are mounted read-only at the
//! container path, as an overlay of the layer directories without an upper dir (or a read-only
//! bind when a single layer holds the path); `image_sub_path` mounts that directory (or file) of
//! the image instead of its root. They are resolved by CreateContainer (which holds the image's
//! snapshots for the container) and added with [`add_image_volumes`].

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
    // With a user namespace, /dev and the tty group of /dev/pts are the mapped root's and tty's.
    let (dev_owner, tty_gid) =
        match (input.namespaces.user.as_ref(), super::userns::pod_mappings(&super::namespace_options(input.sandbox))) {
            (Some(_), Some((u, g))) => {
                let tty = if g.length > 5 { g.host_id + 5 } else { g.host_id };
                (Some(format!("uid={},gid={}", u.host_id, g.host_id)), format!("gid={tty}"))
            }
            _ => (None, "gid=5".to_string()),
        };
    let mut dev_opts = vec!["nosuid", "strictatime", "mode=755", "size=65536k"];
    if let Some(o) = &dev_owner {
        dev_opts.push(o);
    }
    let defaults = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &dev_opts),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", &tty_gid],
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
        if is_image_volume(m) {
            // resolved by CreateContainer and added with [`add_image_volumes`]
            check_image_volume(m)?;
            continue;
        }
        if m.host_path.is_empty() {
            return Err(SpecError::invalid(format!("mount {:?}", m.container_path), "empty host path"));
        }
        let idmapped = !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty();
        if idmapped {
            // Idmapped with the pod's user namespace: only its own mappings can be asked for
            // (what the kubelet sends for a pod with a user namespace).
            let pod = super::namespace_options(input.sandbox);
            let same = pod.userns_options.as_ref().is_some_and(|u| {
                u.mode == cri::NamespaceMode::Pod as i32 && u.uids == m.uid_mappings && u.gids == m.gid_mappings
            });
            if !same {
                return Err(SpecError::invalid(
                    format!("mount {:?}", m.container_path),
                    "uid/gid mappings of a mount must be those of the pod's user namespace",
                ));
            }
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
        let mut b = bind(&clean(&m.container_path), &src, opts);
        if idmapped {
            b = with_idmap(b, input)?;
        }
        user_mounts.push(b);
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
                let b = bind(dest, src, vec!["rbind".into(), "rprivate".into(), etc_opt.into()]);
                extra.push(with_idmap(b, input)?);
            }
        }
    }
    if let Some(shm) = &pf.shm {
        if !taken("/dev/shm") {
            let b = bind("/dev/shm", shm, vec!["rbind".into(), "rprivate".into(), "rw".into()]);
            // The pod's own tmpfs is idmapped like its files; the node's /dev/shm (IPC=NODE,
            // which a pod with a user namespace cannot have, as the kubelet refuses) is not.
            extra.push(if input.namespaces.ipc.is_some() { with_idmap(b, input)? } else { b });
        }
    }

    let mut out: Vec<Mount> = defaults.into_iter().filter(|d| !taken(&d.destination().to_string_lossy())).collect();
    let mut rest: Vec<Mount> = extra;
    rest.extend(user_mounts);
    rest.sort_by_key(|m| depth(m.destination()));
    out.extend(rest);
    Ok((out, propagation.map(str::to_string)))
}

/// For a pod with a user namespace: the bind idmapped with the pod's mappings (the monitor
/// idmaps it with the pod's user namespace), so that what root owns on the host appears owned
/// by the container's root. Without one, the bind as it is.
fn with_idmap(mut m: Mount, input: &SpecInput<'_>) -> Result<Mount, SpecError> {
    if input.namespaces.user.is_none() {
        return Ok(m);
    }
    let Some((u, g)) = super::userns::pod_mappings(&super::namespace_options(input.sandbox)) else {
        return Ok(m);
    };
    m.set_uid_mappings(Some(vec![super::userns::oci_mapping(u)?]));
    m.set_gid_mappings(Some(vec![super::userns::oci_mapping(g)?]));
    Ok(m)
}

/// Whether a CRI mount is an image volume.
pub fn is_image_volume(m: &cri::Mount) -> bool {
    m.image.as_ref().is_some_and(|i| !i.image.trim().is_empty())
}

/// The checks of an image volume that need no image: read-only (all image mounts are, per the
/// CRI; the kubelet always sets `readonly`, so a writable request is refused), no host path,
/// no id mapping, a relative sub-path without `..`.
fn check_image_volume(m: &cri::Mount) -> Result<(), SpecError> {
    let what = || format!("mount {:?}", m.container_path);
    if !m.host_path.is_empty() {
        return Err(SpecError::invalid(what(), "host_path and image are mutually exclusive"));
    }
    if !m.readonly {
        return Err(SpecError::invalid(what(), "image volumes are read-only: readonly must be set"));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::invalid(what(), "id-mapped mounts are not supported"));
    }
    sub_path_components(&m.image_sub_path).map_err(|r| SpecError::invalid(what(), r))?;
    Ok(())
}

fn sub_path_components(sub: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    if sub.starts_with('/') {
        return Err("image_sub_path must be relative");
    }
    for c in Path::new(sub).components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return Err("image_sub_path must not leave the image"),
        }
    }
    Ok(out)
}

/// An image volume resolved by CreateContainer.
#[derive(Debug, Clone)]
pub struct ImageVolumeMount {
    pub container_path: String,
    /// The image's layer directories, topmost first.
    pub layers: Vec<PathBuf>,
    pub sub_path: String,
}

/// Whether `p` is an overlay whiteout (a 0:0 character device).
fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    xattr_is_y(dir, "trusted.overlay.opaque")
}

fn xattr_is_y(p: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(path), Ok(name)) = (std::ffi::CString::new(p.as_os_str().as_bytes()), std::ffi::CString::new(name)) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and live across the call; buf is writable for
    // its length.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

/// The OCI mount of one image volume: the layers that hold the (sub-)path, topmost first,
/// stopping at a whiteout, an opaque directory or a non-directory. Reads the layers.
pub fn image_volume_mount(v: &ImageVolumeMount) -> Result<Mount, SpecError> {
    let what = || format!("mount {:?}", v.container_path);
    let comps = sub_path_components(&v.sub_path).map_err(|r| SpecError::invalid(what(), r))?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut file: Option<PathBuf> = None;
    'layers: for layer in &v.layers {
        // walk the sub-path without following symlinks: a symlink could point out of the image
        let mut p = layer.clone();
        for (i, c) in comps.iter().enumerate() {
            p.push(c);
            let Ok(meta) = std::fs::symlink_metadata(&p) else { continue 'layers };
            if is_whiteout(&meta) {
                break 'layers;
            }
            let last = i + 1 == comps.len();
            if meta.file_type().is_symlink() {
                return Err(SpecError::invalid(what(), format!("image_sub_path {:?} has a symlink", v.sub_path)));
            }
            if !meta.is_dir() {
                if last && dirs.is_empty() {
                    file = Some(p.clone());
                }
                break 'layers;
            }
        }
        dirs.push(p.clone());
        if is_opaque(&p) {
            break;
        }
    }
    let dest = clean(&v.container_path);
    if let Some(f) = file {
        return Ok(bind(&dest, &f, vec!["rbind".into(), "rprivate".into(), "ro".into()]));
    }
    match dirs.len() {
        0 if comps.is_empty() => Err(SpecError::invalid(what(), "the image has no layers")),
        0 => Err(SpecError::invalid(what(), format!("image_sub_path {:?} does not exist in the image", v.sub_path))),
        1 => Ok(bind(&dest, &dirs[0], vec!["rbind".into(), "rprivate".into(), "ro".into()])),
        _ => {
            let lower: Vec<String> = dirs.iter().map(|d| d.display().to_string().replace(':', "\\:")).collect();
            let data = format!("lowerdir={}", lower.join(":"));
            if data.len() > 4000 {
                return Err(SpecError::invalid(what(), "the image has too many layers for one overlay mount"));
            }
            Ok(mount(&dest, "overlay", "overlay", &["ro", "nosuid", "nodev", &data]))
        }
    }
}

/// Inserts the image volumes into `mounts` (built by [`build`]), parents first.
pub fn add_image_volumes(mounts: &mut Vec<Mount>, vols: &[ImageVolumeMount]) -> Result<(), SpecError> {
    add_image_volumes_mapped(mounts, vols, None)
}

type Mappings = (Vec<oci_spec::runtime::LinuxIdMapping>, Vec<oci_spec::runtime::LinuxIdMapping>);

fn add_image_volumes_mapped(
    mounts: &mut Vec<Mount>,
    vols: &[ImageVolumeMount],
    idmap: Option<&Mappings>,
) -> Result<(), SpecError> {
    for v in vols {
        let mut m = image_volume_mount(v)?;
        if let Some((u, g)) = idmap {
            m.set_uid_mappings(Some(u.clone()));
            m.set_gid_mappings(Some(g.clone()));
        }
        let d = depth(m.destination());
        mounts.retain(|x| x.destination() != m.destination());
        let at = mounts.iter().position(|x| depth(x.destination()) > d).unwrap_or(mounts.len());
        mounts.insert(at, m);
    }
    Ok(())
}

/// [`add_image_volumes`] on a generated spec. With a user namespace (the spec's
/// `linux.uidMappings`) the volumes are idmapped like the rootfs's layers.
pub fn with_image_volumes(spec: &mut oci_spec::runtime::Spec, vols: &[ImageVolumeMount]) -> Result<(), SpecError> {
    if vols.is_empty() {
        return Ok(());
    }
    let linux = spec.linux().as_ref();
    let idmap = match (linux.and_then(|l| l.uid_mappings().clone()), linux.and_then(|l| l.gid_mappings().clone())) {
        (Some(u), Some(g)) => Some((u, g)),
        _ => None,
    };
    let mut ms = spec.mounts().clone().unwrap_or_default();
    add_image_volumes_mapped(&mut ms, vols, idmap.as_ref())?;
    spec.set_mounts(Some(ms));
    Ok(())
}

#[cfg(test)]
mod image_volume_tests {
    use super::*;

    fn vol(layers: &[PathBuf], sub: &str) -> ImageVolumeMount {
        ImageVolumeMount { container_path: "/mnt/v".into(), layers: layers.to_vec(), sub_path: sub.into() }
    }

    #[test]
    fn layers_and_sub_paths() {
        let t = tempfile::tempdir().unwrap();
        let (top, base) = (t.path().join("top"), t.path().join("base"));
        std::fs::create_dir_all(base.join("etc/ssl")).unwrap();
        std::fs::write(base.join("etc/passwd"), "root").unwrap();
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(top.join("only-top")).unwrap();
        let layers = vec![top.clone(), base.clone()];

        let m = image_volume_mount(&vol(&layers, "")).unwrap();
        assert_eq!(m.typ().as_deref(), Some("overlay"));
        let o = m.options().clone().unwrap();
        assert!(o.contains(&"ro".to_string()));
        assert!(o.contains(&format!("lowerdir={}:{}", top.display(), base.display())), "{o:?}");
        assert!(!o.iter().any(|x| x == "noexec"));

        let m = image_volume_mount(&vol(&layers, "etc")).unwrap();
        assert!(m.options().clone().unwrap().contains(&format!(
            "lowerdir={}:{}",
            top.join("etc").display(),
            base.join("etc").display()
        )));
        // a directory in a single layer: a read-only bind
        let m = image_volume_mount(&vol(&layers, "only-top")).unwrap();
        assert_eq!(m.typ().as_deref(), Some("bind"));
        assert_eq!(m.source().as_deref(), Some(top.join("only-top").as_path()));
        // a file
        let m = image_volume_mount(&vol(&layers, "./etc/passwd")).unwrap();
        assert_eq!(m.source().as_deref(), Some(base.join("etc/passwd").as_path()));
        assert!(m.options().clone().unwrap().contains(&"ro".to_string()));
        // missing, escaping, symlinked
        assert_eq!(image_volume_mount(&vol(&layers, "nope")).unwrap_err().kind(), runtime::ErrorKind::InvalidArgument);
        assert!(image_volume_mount(&vol(&layers, "../x")).is_err());
        assert!(image_volume_mount(&vol(&layers, "/etc")).is_err());
        std::os::unix::fs::symlink("/etc", top.join("link")).unwrap();
        assert!(image_volume_mount(&vol(&layers, "link")).is_err());

        // insertion keeps parents first
        let mut ms = vec![bind("/mnt", &base, vec![]), bind("/mnt/v/deeper", &base, vec![])];
        add_image_volumes(&mut ms, &[vol(&layers, "etc")]).unwrap();
        let dests: Vec<_> = ms.iter().map(|m| m.destination().display().to_string()).collect();
        assert_eq!(dests, ["/mnt", "/mnt/v", "/mnt/v/deeper"]);
    }

    #[test]
    fn checks_without_the_image() {
        let mut m = cri::Mount {
            container_path: "/v".into(),
            readonly: true,
            image: Some(cri::ImageSpec { image: "sha256:abc".into(), ..Default::default() }),
            ..Default::default()
        };
        assert!(is_image_volume(&m));
        check_image_volume(&m).unwrap();
        m.readonly = false;
        assert!(check_image_volume(&m).is_err());
        m.readonly = true;
        m.host_path = "/tmp".into();
        assert!(check_image_volume(&m).is_err());
        m.host_path.clear();
        m.image_sub_path = "../..".into();
        assert!(check_image_volume(&m).is_err());
    }
}
