//! A pod's files under `STATE/pods/<pod-id>/`: `resolv.conf`, `hosts`, `hostname` (bind-mounted
//! into its containers), the namespace pins under `ns/`, and `shm/`, a tmpfs shared as
//! `/dev/shm` by the pod's containers. Every file is written atomically.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::ErrorKind;
// The pod's files live in the volatile state dir: replaced atomically, never fsynced.
use crate::util::write_replace as write_atomic;

/// Default size of a pod's /dev/shm (as containerd and docker).
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// Errors while writing pod files or mounting the pod's shm.
#[derive(Debug, thiserror::Error)]
pub enum PodFilesError {
    #[error("invalid DNS config: {0}")]
    InvalidDns(String),
    #[error(transparent)]
    Io(#[from] common::IoError),
    #[error("{op} {path}: {errno}")]
    Sys { op: &'static str, path: PathBuf, errno: Errno },
}

impl PodFilesError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        PodFilesError::Io(common::IoError::new(op, path, source))
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            PodFilesError::InvalidDns(_) => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }
}

/// The paths of one pod's state directory (the contract in the GUIDE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPaths {
    /// `STATE/pods/<pod-id>`
    pub dir: PathBuf,
}

impl PodPaths {
    /// The files bind-mounted into each of the pod's containers: its resolv.conf, hosts and
    /// hostname, and its shm tmpfs (the node's `/dev/shm` when the pod shares the node's IPC).
    pub fn files(&self, host_ipc: bool) -> crate::pod::PodFilePaths {
        crate::pod::PodFilePaths {
            resolv_conf: Some(self.resolv_conf()),
            hosts: Some(self.hosts()),
            hostname: Some(self.hostname()),
            shm: Some(if host_ipc { PathBuf::from("/dev/shm") } else { self.shm() }),
        }
    }

    pub fn new(state_dir: &Path, pod_id: &str) -> Self {
        PodPaths { dir: state_dir.join("pods").join(pod_id) }
    }
    /// `…/ns` (holds the pins `net`, `ipc`, `uts`)
    pub fn ns_dir(&self) -> PathBuf {
        self.dir.join("ns")
    }
    pub fn netns(&self) -> PathBuf {
        self.ns_dir().join("net")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    pub fn hostname(&self) -> PathBuf {
        self.dir.join("hostname")
    }
    pub fn shm(&self) -> PathBuf {
        self.dir.join("shm")
    }
}

/// Renders resolv.conf from CRI DNS settings; `None` when they are all empty (then the host's
/// file is used).
pub fn render_resolv_conf(
    servers: &[String],
    searches: &[String],
    options: &[String],
) -> Result<Option<String>, PodFilesError> {
    if servers.is_empty() && searches.is_empty() && options.is_empty() {
        return Ok(None);
    }
    let mut out = String::new();
    for s in searches.iter().chain(options).chain(servers) {
        if s.chars().any(|c| c.is_whitespace() && c != ' ') || s.trim().is_empty() {
            return Err(PodFilesError::InvalidDns(format!("entry {s:?}")));
        }
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for s in servers {
        s.parse::<IpAddr>().map_err(|_| PodFilesError::InvalidDns(format!("nameserver {s:?} is not an IP address")))?;
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    Ok(Some(out))
}

/// A pod's DNS settings (the CRI `DNSConfig`, in plain types).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Writes the pod's resolv.conf: from the pod's DNS settings, or a copy of `host_resolv_conf`
/// (normally `/etc/resolv.conf`; empty content when it does not exist) when the config is empty.
pub fn write_resolv_conf(path: &Path, dns: Option<&DnsSettings>, host_resolv_conf: &Path) -> Result<(), PodFilesError> {
    let rendered = match dns {
        Some(d) => render_resolv_conf(&d.servers, &d.searches, &d.options)?,
        None => None,
    };
    let content = match rendered {
        Some(c) => c.into_bytes(),
        None => match std::fs::read(host_resolv_conf) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(PodFilesError::io("read", host_resolv_conf, e)),
        },
    };
    write_atomic(path, &content, 0o644).map_err(|e| PodFilesError::io("write", path, e))
}

/// The standard hosts entries (as containerd writes them) plus `<ip>\t<hostname>` per IP.
pub fn render_hosts(hostname: &str, ips: &[IpAddr]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        for ip in ips {
            s.push_str(&format!("{ip}\t{hostname}\n"));
        }
    }
    s
}

/// Writes the pod's hosts file; call it again once the pod IPs are known. For host-network pods
/// pass `copy_from = Some("/etc/hosts")` to copy the node's file instead.
pub fn write_hosts(path: &Path, hostname: &str, ips: &[IpAddr], copy_from: Option<&Path>) -> Result<(), PodFilesError> {
    let content = match copy_from {
        Some(src) => match std::fs::read(src) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => render_hosts(hostname, ips).into_bytes(),
            Err(e) => return Err(PodFilesError::io("read", src, e)),
        },
        None => render_hosts(hostname, ips).into_bytes(),
    };
    write_atomic(path, &content, 0o644).map_err(|e| PodFilesError::io("write", path, e))
}

/// Writes `<hostname>\n`.
pub fn write_hostname(path: &Path, hostname: &str) -> Result<(), PodFilesError> {
    write_atomic(path, format!("{hostname}\n").as_bytes(), 0o644).map_err(|e| PodFilesError::io("write", path, e))
}

/// The pod hostname: the CRI one, or the node's when empty (host network pods).
pub fn pod_hostname(cri_hostname: &str) -> String {
    if !cri_hostname.is_empty() {
        return cri_hostname.to_string();
    }
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

/// Mounts a tmpfs (mode 1777, nosuid/nodev/noexec) of `size` bytes at `path`, creating the dir.
/// Idempotent: when something is mounted there already it is kept (mounting again would stack).
pub fn mount_shm(path: &Path, size: u64) -> Result<(), PodFilesError> {
    std::fs::create_dir_all(path).map_err(|e| PodFilesError::io("create", path, e))?;
    if is_mountpoint(path) {
        return Ok(());
    }
    let data = format!("mode=1777,size={size}");
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|errno| PodFilesError::Sys { op: "mount tmpfs", path: path.to_path_buf(), errno })
}

/// Unmounts the shm tmpfs (all stacked mounts, lazily) and removes the dir. Idempotent.
pub fn unmount_shm(path: &Path) -> Result<(), PodFilesError> {
    loop {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(errno) => return Err(PodFilesError::Sys { op: "umount", path: path.to_path_buf(), errno }),
        }
    }
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PodFilesError::io("remove", path, e)),
    }
}

/// Whether `path` (symlinks followed) is a mount point, bind mounts of files (namespace pins)
/// included: `statx`'s `STATX_ATTR_MOUNT_ROOT` (Linux 5.8+), or else a line of mountinfo. One
/// system call instead of reading mountinfo, which grows with every mount on the node (1.2 ms
/// for 1000 mounts on the development VM).
pub fn is_mountpoint(path: &Path) -> bool {
    match mount_root_attribute(path) {
        Some(answer) => answer,
        None => is_mountpoint_in_mountinfo(path),
    }
}

/// `statx`'s answer, `None` when the kernel does not give it.
fn mount_root_attribute(path: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is NUL-terminated and outlives the call; `stx` is a writable buffer of the
    // type statx fills.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, 0, stx.as_mut_ptr()) };
    if r != 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        return matches!(e, Some(libc::ENOENT) | Some(libc::ENOTDIR)).then_some(false);
    }
    // SAFETY: statx succeeded, so it filled the buffer (zeroed before, every field is plain data).
    let stx = unsafe { stx.assume_init() };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    (stx.stx_attributes_mask & bit != 0).then_some(stx.stx_attributes & bit != 0)
}

/// [`is_mountpoint`] by mountinfo: `path` is listed as a mount point.
fn is_mountpoint_in_mountinfo(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else { return false };
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    mi.lines().any(|l| l.split(' ').nth(4).map(|mp| Path::new(&unescape_mountinfo(mp)) == canon).unwrap_or(false))
}

pub(crate) fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Removes the pod's files (resolv.conf, hosts, hostname) and the pod dir when it is empty;
/// the shm and the pins must be gone first ([`unmount_shm`], [`crate::namespaces::unpin`]).
/// Idempotent.
pub fn remove_pod_files(paths: &PodPaths) -> Result<(), PodFilesError> {
    for p in [paths.resolv_conf(), paths.hosts(), paths.hostname()] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PodFilesError::io("remove", &p, e)),
        }
    }
    match std::fs::remove_dir(&paths.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PodFilesError::io("remove", &paths.dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv() {
        let r = render_resolv_conf(
            &["10.0.0.10".into()],
            &["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            &["ndots:5".into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(r, "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n");
        assert!(render_resolv_conf(&[], &[], &[]).unwrap().is_none());
        assert!(render_resolv_conf(&["not-an-ip".into()], &[], &[]).is_err());
    }

    /// Needs root (mounts in a temp dir, removed at the end).
    #[test]
    fn mount_points_by_statx_agree_with_mountinfo() {
        let d = tempfile::tempdir().unwrap();
        let (dir, file, link) = (d.path().join("dir"), d.path().join("ns"), d.path().join("link"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&file, b"").unwrap();
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let both = |p: &Path| (mount_root_attribute(p), is_mountpoint_in_mountinfo(p));
        assert_eq!(both(&dir), (Some(false), false));
        assert_eq!(both(&file), (Some(false), false));
        assert_eq!(both(&d.path().join("missing")), (Some(false), false));
        assert_eq!(both(&file.join("below-a-file")), (Some(false), false));
        mount_shm(&dir, 1 << 20).unwrap();
        // A namespace pin: a bind mount of a file.
        mount(Some("/proc/self/ns/net"), &file, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        let got = (both(&dir), both(&file), both(&link));
        let _ = umount2(&file, MntFlags::MNT_DETACH);
        unmount_shm(&dir).unwrap();
        assert_eq!(got, ((Some(true), true), (Some(true), true), (Some(true), true)));
        assert!(!is_mountpoint(&dir));
    }

    #[test]
    fn files() {
        let d = tempfile::tempdir().unwrap();
        let p = PodPaths::new(d.path(), "pod1");
        let host = d.path().join("host-resolv");
        std::fs::write(&host, "nameserver 1.1.1.1\n").unwrap();
        write_resolv_conf(&p.resolv_conf(), None, &host).unwrap();
        assert_eq!(std::fs::read_to_string(p.resolv_conf()).unwrap(), "nameserver 1.1.1.1\n");
        let dns = DnsSettings { servers: vec!["8.8.8.8".into()], searches: vec![], options: vec![] };
        write_resolv_conf(&p.resolv_conf(), Some(&dns), &host).unwrap();
        assert_eq!(std::fs::read_to_string(p.resolv_conf()).unwrap(), "nameserver 8.8.8.8\n");
        write_hosts(&p.hosts(), "web", &["10.1.0.5".parse().unwrap()], None).unwrap();
        let h = std::fs::read_to_string(p.hosts()).unwrap();
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.1.0.5\tweb\n"));
        write_hostname(&p.hostname(), "web").unwrap();
        assert_eq!(std::fs::read_to_string(p.hostname()).unwrap(), "web\n");
        remove_pod_files(&p).unwrap();
        assert!(!p.dir.exists());
        remove_pod_files(&p).unwrap();
    }
}
