//! The container's filesystem, set up in the forked child inside its new mount namespace:
//! private propagation, rootfs bind, spec mounts in order (targets resolved inside the
//! rootfs with `openat2(RESOLVE_IN_ROOT)`, so a symlinked target never escapes to the host;
//! missing targets created the same way), /dev nodes and symlinks, pivot_root, sysctls,
//! masked and read-only paths, read-only root.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use super::util::{bail, diag, Ctx, Result};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).ctx(|| format!("path {}", p.display()))
}

fn proc_fd(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn do_mount(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> std::result::Result<(), Errno> {
    mount(src, target, fstype, flags, data)
}

/// Parsed OCI mount options.
#[derive(Debug)]
struct Opts {
    flags: MsFlags,
    propagation: MsFlags,
    bind: bool,
    rec: bool,
    rro: bool,
    data: Vec<String>,
}

fn parse_options(opts: &[String]) -> Opts {
    let mut o = Opts {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        bind: false,
        rec: false,
        rro: false,
        data: Vec::new(),
    };
    for opt in opts {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.rec = true;
                continue;
            }
            // Recursive read-only (CRI recursive_read_only): mount_setattr(AT_RECURSIVE).
            "rro" => {
                o.rro = true;
                continue;
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable" => {
                o.propagation = match opt.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                if opt.starts_with('r') {
                    o.propagation |= MsFlags::MS_REC;
                }
                continue;
            }
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o
}

/// The rootfs during setup (before pivot_root).
pub struct Rootfs {
    path: PathBuf,
    root: OwnedFd,
}

impl Rootfs {
    fn how() -> OpenHow {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    }

    fn dot(p: &Path) -> &Path {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    }

    fn rel(dest: &Path) -> PathBuf {
        dest.components().filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir)).collect()
    }

    /// Opens `dest` (a container path) inside the rootfs as an O_PATH fd, creating it
    /// (parents as directories, the last one as `kind`) when missing.
    fn resolve(&self, dest: &Path, create: Option<Kind>) -> Result<OwnedFd> {
        let rel = Self::rel(dest);
        if rel.as_os_str().is_empty() {
            return self.root.try_clone().ctx(|| "dup".into());
        }
        match openat2(self.root.as_fd(), &rel, Self::how()) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) if create.is_some() => self.create(&rel, create.unwrap_or(Kind::Dir)),
            Err(e) => bail!("resolve {} in rootfs: {e}", dest.display()),
        }
    }

    /// Creates the missing part of `rel`, following symlinks (also dangling ones) inside the
    /// rootfs, so that a link to `/somewhere` creates `<rootfs>/somewhere`.
    fn create(&self, rel: &Path, kind: Kind) -> Result<OwnedFd> {
        let mut todo: Vec<std::ffi::OsString> = rel.components().rev().map(|c| c.as_os_str().to_owned()).collect();
        let mut cur = PathBuf::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            let next = cur.join(&c);
            match openat2(self.root.as_fd(), &next, Self::how()) {
                Ok(_) => {
                    cur = next;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => bail!("resolve /{} in rootfs: {e}", next.display()),
            }
            let parent = openat2(self.root.as_fd(), Self::dot(&cur), Self::how())
                .ctx(|| format!("resolve /{} in rootfs", cur.display()))?;
            if let Ok(target) = nix::fcntl::readlinkat(parent.as_fd(), c.as_os_str()) {
                links += 1;
                if links > 40 {
                    bail!("resolve /{} in rootfs: too many levels of symbolic links", rel.display());
                }
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                for t in target.components().rev() {
                    if matches!(t, Component::Normal(_) | Component::ParentDir) {
                        todo.push(t.as_os_str().to_owned());
                    }
                }
                continue;
            }
            let name = cstr(Path::new(&c))?;
            let r = if todo.is_empty() && kind == Kind::File {
                // SAFETY: `name` is a NUL-terminated string alive across the call; `parent`
                // is an open directory fd.
                let fd = unsafe {
                    libc::openat(
                        parent.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                        0o644,
                    )
                };
                if fd >= 0 {
                    // SAFETY: `fd` was just opened here and is owned by nothing else.
                    unsafe { libc::close(fd) };
                    0
                } else {
                    -1
                }
            } else {
                // SAFETY: `name` is a NUL-terminated string alive across the call.
                unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) }
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    bail!("create /{} in rootfs: {e}", next.display());
                }
            }
            cur = next;
        }
        openat2(self.root.as_fd(), Self::dot(&cur), Self::how()).ctx(|| format!("resolve /{} in rootfs", cur.display()))
    }
}

/// Everything up to and including pivot_root. Runs in the child, in its new mount namespace.
/// `userns` is the pod's user namespace the child joins afterwards: binds with uid/gid mappings
/// (the pod's files, volumes the kubelet asks to idmap) are idmapped with it.
pub fn setup(spec: &Spec, cgroups_path: Option<&str>, userns: Option<&OwnedFd>) -> Result<()> {
    let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| "rootfs".into());
    let root = std::fs::canonicalize(&root).ctx(|| format!("rootfs {}", root.display()))?;
    let linux = spec.linux().as_ref();
    let prop = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some("shared") | Some("rshared") => MsFlags::MS_SHARED,
        Some("slave") | Some("rslave") => MsFlags::MS_SLAVE,
        _ => MsFlags::MS_PRIVATE,
    };
    let rs = root.to_string_lossy().into_owned();
    // Bidirectional volumes (rootfsPropagation rshared) must stay in the host's peer group, so
    // the copies of the host's mounts keep their propagation; only "/" itself (pivot_root wants
    // the current root's parent not shared) and the rootfs mount (new_root's parent) are made
    // non-shared, and every bind that asks for nothing becomes rslave below.
    let bidirectional = prop == MsFlags::MS_SHARED;
    if bidirectional {
        do_mount(None, "/", None, MsFlags::MS_SLAVE, None).ctx(|| "make / slave".into())?;
        // (When the rootfs is a plain directory, not a mount point, make it one first.)
        if do_mount(None, &rs, None, MsFlags::MS_PRIVATE, None) == Err(Errno::EINVAL) {
            do_mount(Some(&rs), &rs, None, MsFlags::MS_BIND, None).ctx(|| format!("bind {rs}"))?;
            do_mount(None, &rs, None, MsFlags::MS_PRIVATE, None).ctx(|| format!("make {rs} private"))?;
        }
    } else {
        // Nothing we mount may propagate back to the host, but the host's mount events must
        // still reach rslave volumes: "/" becomes rslave (runc's default), not rprivate.
        do_mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_SLAVE, None).ctx(|| "make / rslave".into())?;
    }
    do_mount(Some(&rs), &rs, None, MsFlags::MS_BIND | MsFlags::MS_REC, None).ctx(|| format!("bind rootfs {rs}"))?;
    let rootfd = nix::fcntl::open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| format!("open rootfs {rs}"))?;
    let fs = Rootfs { path: root.clone(), root: rootfd };

    let mut dev_is_tmpfs = false;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        mount_one(&fs, m, cgroups_path, bidirectional, userns_for(spec, m, userns)?)
            .map_err(|e| super::util::Error(format!("mount {}: {}", m.destination().display(), e.0)))?;
    }
    if dev_is_tmpfs {
        create_default_devices(&fs, spec)?;
        dev_symlinks(&fs, spec)?;
    }
    for d in linux.and_then(|l| l.devices().as_deref()).unwrap_or_default() {
        create_device(&fs, d, spec)?;
    }
    // runc creates a missing working directory.
    if let Some(p) = spec.process() {
        if p.cwd().is_absolute() {
            let _ = fs.resolve(p.cwd(), Some(Kind::Dir));
        }
    }
    pivot(&fs.path)?;
    if prop != MsFlags::MS_PRIVATE {
        do_mount(None, "/", None, MsFlags::MS_REC | prop, None).ctx(|| "rootfs propagation".into())?;
    }
    Ok(())
}

/// The user namespace to idmap `m` with: `None` when the mount asks for no mapping; its
/// mappings must be the spec's (those of the user namespace the container joins).
fn userns_for<'a>(spec: &Spec, m: &Mount, userns: Option<&'a OwnedFd>) -> Result<Option<&'a OwnedFd>> {
    let (mu, mg) = (m.uid_mappings().as_deref().unwrap_or_default(), m.gid_mappings().as_deref().unwrap_or_default());
    if mu.is_empty() && mg.is_empty() {
        return Ok(None);
    }
    let linux = spec.linux().as_ref();
    let su = linux.and_then(|l| l.uid_mappings().as_deref()).unwrap_or_default();
    let sg = linux.and_then(|l| l.gid_mappings().as_deref()).unwrap_or_default();
    let Some(ns) = userns else { bail!("an idmapped mount needs the container's user namespace (joined by path)") };
    if mu != su || mg != sg {
        bail!("idmapped mounts with mappings other than the user namespace's are not supported");
    }
    Ok(Some(ns))
}

fn mount_one(
    fs: &Rootfs,
    m: &Mount,
    cgroups_path: Option<&str>,
    bidirectional: bool,
    idmap: Option<&OwnedFd>,
) -> Result<()> {
    let mut o = parse_options(m.options().as_deref().unwrap_or_default());
    if bidirectional && o.propagation.is_empty() {
        // "/" was not made rslave recursively: a bind of a shared host mount that asks for no
        // propagation must still not propagate back to the host.
        o.propagation = MsFlags::MS_SLAVE | MsFlags::MS_REC;
    }
    let typ = m.typ().as_deref().unwrap_or(if o.bind { "bind" } else { "none" });
    let bind = o.bind || typ == "bind";
    let data = o.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(fs, m.destination(), o.flags, cgroups_path);
    }
    if bind {
        let src = m.source().as_deref().unwrap_or(Path::new(""));
        let meta = std::fs::metadata(src).ctx(|| format!("bind source {}", src.display()))?;
        let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
        let target = fs.resolve(m.destination(), Some(kind))?;
        let t = proc_fd(&target);
        let srcs = src.to_string_lossy();
        if let Some(ns) = idmap {
            // A detached copy of the source, idmapped, attached at the target.
            let tree = crate::idmap::idmapped_tree(src, ns.as_fd(), o.rec).ctx(|| format!("idmap {srcs}"))?;
            crate::idmap::attach(&tree, target.as_fd()).ctx(|| format!("attach idmapped {srcs}"))?;
        } else {
            let mut flags = MsFlags::MS_BIND;
            if o.rec {
                flags |= MsFlags::MS_REC;
            }
            do_mount(Some(&srcs), &t, None, flags, None).ctx(|| format!("bind {srcs}"))?;
        }
        drop(target);
        let target = fs.resolve(m.destination(), None)?;
        let t = proc_fd(&target);
        if !o.flags.is_empty() {
            do_mount(None, &t, None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | o.flags, None)
                .ctx(|| "remount bind".into())?;
        }
        if o.rro {
            set_recursive_readonly(&target)?;
        }
        if !o.propagation.is_empty() {
            do_mount(None, &t, None, o.propagation, None).ctx(|| "set propagation".into())?;
        }
        return Ok(());
    }
    let target = fs.resolve(m.destination(), Some(Kind::Dir))?;
    let t = proc_fd(&target);
    let src = m.source().as_deref().map(|s| s.to_string_lossy().into_owned());
    let src = src.unwrap_or_else(|| typ.to_string());
    // An idmapped overlay (an image volume of a pod with a user namespace): each lower dir an
    // idmapped detached copy, as the container's rootfs (runtime::idmap); the copies live until
    // the overlay is mounted, which keeps its own.
    let mut trees = Vec::new();
    let idmapped_data;
    let data = match (idmap, typ) {
        (Some(ns), "overlay") => {
            let mut parts = Vec::new();
            for opt in o.data.iter() {
                match opt.strip_prefix("lowerdir=") {
                    Some(lower) => {
                        let mut fds = Vec::new();
                        for l in lower.split(':') {
                            let tree = crate::idmap::idmapped_tree(Path::new(l), ns.as_fd(), false)
                                .ctx(|| format!("idmap layer {l}"))?;
                            fds.push(format!("/proc/self/fd/{}", tree.as_raw_fd()));
                            trees.push(tree);
                        }
                        parts.push(format!("lowerdir={}", fds.join(":")));
                    }
                    None => parts.push(opt.clone()),
                }
            }
            idmapped_data = parts.join(",");
            Some(idmapped_data.as_str())
        }
        (Some(_), _) => bail!("{typ} mounts cannot be idmapped"),
        (None, _) => data,
    };
    let res = do_mount(Some(&src), &t, Some(typ), o.flags, data);
    drop(trees);
    match res {
        Ok(()) => {}
        // sysfs cannot be mounted in a netns we do not own: bind the host's read-only.
        Err(Errno::EPERM) if typ == "sysfs" => {
            do_mount(Some("/sys"), &t, None, MsFlags::MS_BIND | MsFlags::MS_REC, None).ctx(|| "bind /sys".into())?;
            do_mount(None, &t, None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | o.flags, None)
                .ctx(|| "remount /sys".into())?;
        }
        Err(e) => bail!("mount {typ}: {e}"),
    }
    if !o.propagation.is_empty() {
        let target = fs.resolve(m.destination(), None)?;
        do_mount(None, &proc_fd(&target), None, o.propagation, None).ctx(|| "set propagation".into())?;
    }
    Ok(())
}

/// Makes a mount and everything below it read-only (Linux 5.12+ `mount_setattr`).
fn set_recursive_readonly(target: &OwnedFd) -> Result<()> {
    use std::os::fd::AsFd;
    if let Err(e) = common::mountapi::set_attr(target.as_fd(), common::mountapi::MOUNT_ATTR_RDONLY, None, true) {
        bail!("recursive read-only: {e}");
    }
    Ok(())
}

/// `/sys/fs/cgroup` inside the container: cgroup2 on v2 hosts; on v1 hosts a tmpfs with one
/// bind mount of the container's own cgroup per hierarchy (plus `cpu -> cpu,cpuacct` links).
fn mount_cgroup(fs: &Rootfs, dest: &Path, flags: MsFlags, cgroups_path: Option<&str>) -> Result<()> {
    use crate::cgroups::{normalize, CgroupMode};
    let h = super::util::hierarchies().ctx(|| "cgroup hierarchies".into())?;
    let target = fs.resolve(dest, Some(Kind::Dir))?;
    if h.mode() == CgroupMode::Unified {
        return do_mount(Some("cgroup2"), &proc_fd(&target), Some("cgroup2"), flags, None)
            .ctx(|| "mount cgroup2".into());
    }
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    do_mount(Some("tmpfs"), &proc_fd(&target), Some("tmpfs"), base, Some("mode=755"))
        .ctx(|| "mount cgroup tmpfs".into())?;
    // The tmpfs just mounted: empty and only ours (the container has not run), so its
    // directories are made and bound by name beneath it, with no resolution inside the rootfs.
    let dir = fs.resolve(dest, None)?;
    let dpath = proc_fd(&dir);
    let rel = cgroups_path.and_then(|p| normalize(p).ok());
    let mut binds = Vec::new();
    for hier in &h.v1 {
        let Some(name) = hier.mountpoint.file_name() else { continue };
        let src = match &rel {
            Some(r) => hier.mountpoint.join(r),
            None => continue,
        };
        if !src.is_dir() {
            continue;
        }
        match nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => bail!("mkdir {}/{}: {e}", dest.display(), name.to_string_lossy()),
        }
        let t = format!("{dpath}/{}", name.to_string_lossy());
        let srcs = src.to_string_lossy();
        do_mount(Some(&srcs), &t, None, MsFlags::MS_BIND | MsFlags::MS_REC, None).ctx(|| format!("bind {srcs}"))?;
        binds.push(t);
        let name_s = name.to_string_lossy();
        if name_s.contains(',') {
            for c in name_s.split(',') {
                let _ = nix::unistd::symlinkat(name, dir.as_fd(), c);
            }
        }
    }
    // The tmpfs and every bind in it: nosuid, nodev, noexec and (as asked) read-only, in one
    // recursive mount_setattr (Linux 5.12+), else one remount each.
    use common::mountapi::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
    let ro = flags.contains(MsFlags::MS_RDONLY);
    let attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC | if ro { MOUNT_ATTR_RDONLY } else { 0 };
    match common::mountapi::set_attr(dir.as_fd(), attrs, None, true) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        Err(e) => bail!("cgroup mounts' attributes: {e}"),
    }
    for t in &binds {
        do_mount(None, t, None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | base | flags, None)
            .ctx(|| format!("remount {t}"))?;
    }
    if ro {
        do_mount(None, &dpath, None, MsFlags::MS_REMOUNT | base | MsFlags::MS_RDONLY, None)
            .ctx(|| "remount cgroup tmpfs read-only".into())?;
    }
    Ok(())
}

const DEFAULT_DEVICES: &[(&str, u64, u64)] =
    &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// The host id of container id `id` under the spec's user namespace mappings (`None` without a
/// user namespace, or when `id` is not mapped).
pub(super) fn host_id(maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>, id: u32) -> Option<u32> {
    maps?.iter().find_map(|m| {
        (id >= m.container_id() && id - m.container_id() < m.size()).then(|| m.host_id() + (id - m.container_id()))
    })
}

/// The owner of a device node: with a user namespace, the container ids (root by default)
/// mapped to the host's, so that root inside owns its nodes.
fn node_owner(spec: &Spec, uid: Option<u32>, gid: Option<u32>) -> (Option<u32>, Option<u32>) {
    let linux = spec.linux().as_ref();
    let (um, gm) = (linux.and_then(|l| l.uid_mappings().as_ref()), linux.and_then(|l| l.gid_mappings().as_ref()));
    if um.is_none() && gm.is_none() {
        return (uid, gid);
    }
    (host_id(um, uid.unwrap_or(0)), host_id(gm, gid.unwrap_or(0)))
}

fn create_default_devices(fs: &Rootfs, spec: &Spec) -> Result<()> {
    let (uid, gid) = node_owner(spec, None, None);
    for (name, major, minor) in DEFAULT_DEVICES {
        make_node(fs, &Path::new("/dev").join(name), libc::S_IFCHR, *major, *minor, 0o666, uid, gid)?;
    }
    Ok(())
}

fn create_device(fs: &Rootfs, d: &LinuxDevice, spec: &Spec) -> Result<()> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => return Ok(()),
    };
    let (uid, gid) = node_owner(spec, d.uid(), d.gid());
    make_node(fs, d.path(), kind, d.major() as u64, d.minor() as u64, d.file_mode().unwrap_or(0o666), uid, gid)
}

#[allow(clippy::too_many_arguments)]
fn make_node(
    fs: &Rootfs,
    path: &Path,
    kind: libc::mode_t,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/dev"));
    let name = path.file_name().map(Path::new).unwrap_or(Path::new(""));
    let dir = fs.resolve(parent, Some(Kind::Dir))?;
    let cname = cstr(name)?;
    let dev = libc::makedev(major as u32, minor as u32);
    // SAFETY: `cname` is a NUL-terminated string alive across the call.
    let r = unsafe { libc::mknodat(dir.as_raw_fd(), cname.as_ptr(), kind | (mode & 0o7777), dev) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EEXIST) => return Ok(()),
            Some(libc::EPERM) if kind == libc::S_IFCHR => {
                // No mknod allowed: bind the host's node.
                let t = fs.resolve(path, Some(Kind::File))?;
                let host = Path::new("/dev").join(name);
                return do_mount(Some(&*host.to_string_lossy()), &proc_fd(&t), None, MsFlags::MS_BIND, None)
                    .ctx(|| format!("bind {}", host.display()));
            }
            _ => bail!("mknod {}: {e}", path.display()),
        }
    }
    // SAFETY: `cname` is a NUL-terminated string alive across the call.
    if unsafe { libc::fchmodat(dir.as_raw_fd(), cname.as_ptr(), mode & 0o7777, 0) } != 0 {
        bail!("chmod {}: {}", path.display(), std::io::Error::last_os_error());
    }
    if uid.is_some() || gid.is_some() {
        let _ = nix::unistd::fchownat(
            dir.as_fd(),
            name,
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
    }
    Ok(())
}

fn dev_symlinks(fs: &Rootfs, spec: &Spec) -> Result<()> {
    let dev = fs.resolve(Path::new("/dev"), Some(Kind::Dir))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    let has_pts = spec.mounts().as_deref().unwrap_or_default().iter().any(|m| m.destination() == Path::new("/dev/pts"));
    if has_pts {
        links.push(("pts/ptmx", "ptmx"));
    }
    for (target, name) in links {
        match nix::unistd::symlinkat(target, dev.as_fd(), name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => bail!("symlink /dev/{name}: {e}"),
        }
    }
    Ok(())
}

/// pivot_root into `root` and detach the old root (runc's `pivot_root(".", ".")` trick).
fn pivot(root: &Path) -> Result<()> {
    let new = nix::fcntl::open(root, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| "open new root".into())?;
    let old = nix::fcntl::open("/", OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| "open old root".into())?;
    nix::unistd::fchdir(&new).ctx(|| "chdir rootfs".into())?;
    nix::unistd::pivot_root(".", ".").ctx(|| "pivot_root".into())?;
    nix::unistd::fchdir(&old).ctx(|| "chdir old root".into())?;
    do_mount(None, ".", None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None).ctx(|| "old root rslave".into())?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detach old root".into())?;
    nix::unistd::chdir("/").ctx(|| "chdir /".into())?;
    Ok(())
}

/// After pivot_root: sysctls, masked paths, read-only paths, read-only root.
pub fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
        for (k, v) in sysctl {
            if k.is_empty() || k.contains("..") || k.contains('/') {
                bail!("bad sysctl name {k:?}");
            }
            let p = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&p, v.as_bytes()).ctx(|| format!("sysctl {k}={v}"))?;
        }
    }
    for p in linux.and_then(|l| l.masked_paths().as_deref()).unwrap_or_default() {
        let md = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let r = if md.is_dir() {
            do_mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, None)
        } else {
            do_mount(Some("/dev/null"), p, None, MsFlags::MS_BIND, None)
        };
        r.ctx(|| format!("mask {p}"))?;
    }
    for p in linux.and_then(|l| l.readonly_paths().as_deref()).unwrap_or_default() {
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        do_mount(Some(p.as_str()), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None).ctx(|| format!("bind {p}"))?;
        do_mount(
            None,
            p,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_REC
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None,
        )
        .or_else(|_| do_mount(None, p, None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None))
        .ctx(|| format!("read-only {p}"))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        do_mount(None, "/", None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None)
            .ctx(|| "read-only root".into())?;
    }
    diag!("rootfs ready");
    Ok(())
}
