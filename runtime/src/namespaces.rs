//! Pod namespace pins, like CRI-O's pinns, without forking from skiffd.
//!
//! [`pin`] spawns a dedicated OS thread (never a tokio worker) that `unshare`s the requested
//! namespaces. Network, IPC and UTS namespaces are per task in Linux (`task->nsproxy`), and
//! unsharing them needs no single-threaded process (unlike `CLONE_NEWUSER`, or `CLONE_NEWNS`
//! which drags `CLONE_FS` along and fails with EINVAL in a threaded process), so only this
//! thread moves. The thread sets the hostname in the new UTS namespace, brings `lo` up in the
//! new network namespace (SIOCSIFFLAGS ioctl, no shelling out), bind-mounts
//! `/proc/thread-self/ns/<type>` onto an empty regular file `<dir>/<type>` and exits; the bind
//! mount keeps the namespace alive. [`unpin`] undoes it (MNT_DETACH + unlink), idempotently.
//!
//! [`run_in_netns`] runs a closure inside a pinned network namespace, again on a dedicated
//! thread that exits afterwards (netplugin can reuse it).

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::ErrorKind;

/// A namespace type skiff pins for pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NsType {
    Net,
    Ipc,
    Uts,
}

impl NsType {
    /// The name in `/proc/<pid>/ns` and of the pin file.
    pub fn name(self) -> &'static str {
        match self {
            NsType::Net => "net",
            NsType::Ipc => "ipc",
            NsType::Uts => "uts",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            NsType::Net => CloneFlags::CLONE_NEWNET,
            NsType::Ipc => CloneFlags::CLONE_NEWIPC,
            NsType::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }

    pub const ALL: [NsType; 3] = [NsType::Net, NsType::Ipc, NsType::Uts];
}

/// Errors of namespace operations.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("invalid hostname {0:?}")]
    InvalidHostname(String),
    #[error("namespace pin {0} already exists")]
    AlreadyPinned(PathBuf),
    #[error(transparent)]
    Io(#[from] common::IoError),
    #[error("{op}: {errno}")]
    Sys { op: &'static str, errno: Errno },
    #[error("namespace thread panicked")]
    ThreadPanicked,
}

impl NamespaceError {
    fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NamespaceError::Io(common::IoError::new(op, path, source))
    }

    fn sys(op: &'static str, errno: Errno) -> Self {
        NamespaceError::Sys { op, errno }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            NamespaceError::InvalidHostname(_) => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }
}

/// The pin files of a pod (`None` for namespaces that were not pinned, i.e. shared with the host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinnedNamespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl PinnedNamespaces {
    pub fn get(&self, t: NsType) -> Option<&Path> {
        match t {
            NsType::Net => self.net.as_deref(),
            NsType::Ipc => self.ipc.as_deref(),
            NsType::Uts => self.uts.as_deref(),
        }
    }
}

/// Checks a hostname as sethostname(2) and RFC 1123 want it (≤ 64 bytes, letters, digits,
/// `-` and `.`).
pub fn validate_hostname(h: &str) -> Result<(), NamespaceError> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NamespaceError::InvalidHostname(h.to_string()))
    }
}

/// Creates new namespaces of the given types and pins them as `<dir>/net`, `<dir>/ipc`,
/// `<dir>/uts` (see the module doc). `hostname` is set in the new UTS namespace (ignored when
/// UTS is not in `types`). On failure nothing is left pinned. Blocking: call it from
/// `spawn_blocking` in async code.
pub fn pin(dir: &Path, types: &[NsType], hostname: Option<&str>) -> Result<PinnedNamespaces, NamespaceError> {
    if let Some(h) = hostname {
        if types.contains(&NsType::Uts) {
            validate_hostname(h)?;
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| NamespaceError::io("create", dir, e))?;
    let mut out = PinnedNamespaces::default();
    if types.is_empty() {
        return Ok(out);
    }
    for t in types {
        let p = dir.join(t.name());
        if p.exists() {
            return Err(NamespaceError::AlreadyPinned(p));
        }
    }
    let dir2 = dir.to_path_buf();
    let types2: Vec<NsType> = types.to_vec();
    let hostname = hostname.map(str::to_string);
    let res = std::thread::Builder::new()
        .name("skiff-pinns".into())
        .spawn(move || pin_on_this_thread(&dir2, &types2, hostname.as_deref()))
        .map_err(|e| NamespaceError::io("spawn thread", dir, e))?
        .join()
        .map_err(|_| NamespaceError::ThreadPanicked)?;
    for (t, p) in res? {
        match t {
            NsType::Net => out.net = Some(p),
            NsType::Ipc => out.ipc = Some(p),
            NsType::Uts => out.uts = Some(p),
        }
    }
    tracing::debug!(dir = %dir.display(), ?types, "namespaces pinned");
    Ok(out)
}

/// Runs on the dedicated thread: unshare, configure, bind-mount. The thread exits afterwards.
fn pin_on_this_thread(
    dir: &Path,
    types: &[NsType],
    hostname: Option<&str>,
) -> Result<Vec<(NsType, PathBuf)>, NamespaceError> {
    let mut flags = CloneFlags::empty();
    for t in types {
        flags |= t.flag();
    }
    unshare(flags).map_err(|e| NamespaceError::sys("unshare", e))?;
    if types.contains(&NsType::Uts) {
        if let Some(h) = hostname {
            nix::unistd::sethostname(h).map_err(|e| NamespaceError::sys("sethostname", e))?;
        }
    }
    if types.contains(&NsType::Net) {
        loopback_up()?;
    }
    let mut done: Vec<(NsType, PathBuf)> = Vec::new();
    for t in types {
        let target = dir.join(t.name());
        let src = format!("/proc/thread-self/ns/{}", t.name());
        let mut created = false;
        let res = bind_pin(&src, &target, |_| created = true);
        match res {
            Ok(()) => done.push((*t, target)),
            Err(e) => {
                // the half-made pin first (its mount failed: a plain file), then the done ones
                if created {
                    let _ = std::fs::remove_file(&target);
                }
                for (_, p) in done.iter().rev() {
                    let _ = unpin_file(p);
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Makes one namespace pin: creates the empty file `target` (mode 0444; never an existing file)
/// and bind-mounts the namespace file `src` (`/proc/.../ns/<type>`) onto it. `created` is called
/// as soon as the file exists, before the mount, so that the caller can put it in its rollback:
/// if the mount fails, the file is left for the caller to remove. Shared by [`pin`] and
/// [`pin_in_user_namespace`], which roll back differently.
fn bind_pin(src: &str, target: &Path, created: impl FnOnce(&Path)) -> Result<(), NamespaceError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .custom_flags(libc::O_CLOEXEC)
        .open(target)
        .map_err(|e| NamespaceError::io("create pin file", target, e))?;
    created(target);
    mount(Some(src), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| NamespaceError::sys("bind-mount namespace", e))
}

/// One id mapping of a user namespace: ids `container_id..+length` inside are
/// `host_id..+length` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

/// Like [`pin`], but first creates a user namespace with the given mappings, pinned as
/// `<dir>/user`, and the other namespaces inside it, so that they are owned by it (a process
/// joining the pod's user namespace has its capabilities over them). A user namespace cannot be
/// entered or created by a thread of a threaded process, so this forks a helper from a
/// dedicated thread; between fork and `_exit` the helper makes only raw syscalls on memory
/// prepared before the fork. On failure nothing is left pinned. Blocking.
///
/// skiffd's RunPodSandbox uses it (through [`crate::pod::setup_pod`]) for pods with a user
/// namespace of their own (CRI `userns_options` mode POD); see the README, "User namespaces".
pub fn pin_in_user_namespace(
    dir: &Path,
    types: &[NsType],
    hostname: Option<&str>,
    uid: IdMap,
    gid: IdMap,
) -> Result<(PathBuf, PinnedNamespaces), NamespaceError> {
    if let Some(h) = hostname {
        validate_hostname(h)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| NamespaceError::io("create", dir, e))?;
    for name in std::iter::once("user").chain(types.iter().map(|t| t.name())) {
        let p = dir.join(name);
        if p.exists() {
            return Err(NamespaceError::AlreadyPinned(p));
        }
    }
    let (dir2, types2, hostname) = (dir.to_path_buf(), types.to_vec(), hostname.map(str::to_string));
    std::thread::Builder::new()
        .name("skiff-pinns-user".into())
        .spawn(move || pin_user_from_thread(&dir2, &types2, hostname.as_deref(), uid, gid))
        .map_err(|e| NamespaceError::io("spawn thread", dir, e))?
        .join()
        .map_err(|_| NamespaceError::ThreadPanicked)?
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), NamespaceError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| NamespaceError::sys("pipe", e))
}

fn pin_user_from_thread(
    dir: &Path,
    types: &[NsType],
    hostname: Option<&str>,
    uid: IdMap,
    gid: IdMap,
) -> Result<(PathBuf, PinnedNamespaces), NamespaceError> {
    let mut flags = CloneFlags::empty();
    for t in types {
        flags |= t.flag();
    }
    let want_net = types.contains(&NsType::Net);
    let host = hostname.filter(|_| types.contains(&NsType::Uts)).map(|h| h.as_bytes().to_vec());
    let (go_r, go_w) = pipe_pair()?;
    let (ready_r, ready_w) = pipe_pair()?;
    // SAFETY: the child below makes only async-signal-safe calls (close, unshare, write, read,
    // sethostname, socket, ioctl, _exit) on fds and buffers made before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(NamespaceError::sys("fork", Errno::last()));
    }
    if pid == 0 {
        // SAFETY: raw syscalls only; the child never returns and ends in _exit.
        unsafe {
            libc::close(go_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            let say = |b: u8| libc::write(ready_w.as_raw_fd(), &b as *const u8 as *const libc::c_void, 1);
            let mut b = 0u8;
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                libc::_exit(1);
            }
            say(1);
            // the parent writes the id maps, then says go
            if libc::read(go_r.as_raw_fd(), &mut b as *mut u8 as *mut libc::c_void, 1) != 1 {
                libc::_exit(1);
            }
            if libc::unshare(flags.bits()) != 0 {
                libc::_exit(2);
            }
            if let Some(h) = &host {
                if libc::sethostname(h.as_ptr() as *const libc::c_char, h.len()) != 0 {
                    libc::_exit(3);
                }
            }
            if want_net && loopback_up().is_err() {
                libc::_exit(4);
            }
            say(2);
            // keep the namespaces alive until the parent has bind-mounted them
            libc::read(go_r.as_raw_fd(), &mut b as *mut u8 as *mut libc::c_void, 1);
            libc::_exit(0);
        }
    }
    drop((ready_w, go_r));
    let mut pinned: Vec<PathBuf> = Vec::new();
    let res = (|| -> Result<(PathBuf, PinnedNamespaces), NamespaceError> {
        let mut b = [0u8; 1];
        let step = |b: &mut [u8; 1]| nix::unistd::read(&ready_r, b).map_err(|e| NamespaceError::sys("read", e));
        if step(&mut b)? != 1 || b[0] != 1 {
            return Err(NamespaceError::sys("unshare user namespace", Errno::EPERM));
        }
        for (file, m) in [("uid_map", uid), ("gid_map", gid)] {
            let p = format!("/proc/{pid}/{file}");
            std::fs::write(&p, format!("{} {} {}\n", m.container_id, m.host_id, m.length))
                .map_err(|e| NamespaceError::io("write", &p, e))?;
        }
        nix::unistd::write(&go_w, &[1]).map_err(|e| NamespaceError::sys("write", e))?;
        if step(&mut b)? != 1 || b[0] != 2 {
            return Err(NamespaceError::sys("create namespaces in the user namespace", Errno::EPERM));
        }
        let mut out = PinnedNamespaces::default();
        for name in std::iter::once("user").chain(types.iter().map(|t| t.name())) {
            let target = dir.join(name);
            // a pin file is rolled back (below, after waitpid) as soon as it exists, mounted or not
            bind_pin(&format!("/proc/{pid}/ns/{name}"), &target, |p| pinned.push(p.to_path_buf()))?;
            match name {
                "net" => out.net = Some(target),
                "ipc" => out.ipc = Some(target),
                "uts" => out.uts = Some(target),
                _ => {}
            }
        }
        Ok((dir.join("user"), out))
    })();
    drop(go_w);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if res.is_err() {
        for p in pinned.iter().rev() {
            let _ = unpin_file(p);
        }
    }
    res
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
pub fn loopback_up() -> Result<(), NamespaceError> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(NamespaceError::sys("socket", Errno::last()));
    }
    // SAFETY: raw is a fresh, valid fd.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write an ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
            return Err(NamespaceError::sys("SIOCGIFFLAGS lo", Errno::last()));
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) < 0 {
            return Err(NamespaceError::sys("SIOCSIFFLAGS lo", Errno::last()));
        }
    }
    Ok(())
}

/// Unmounts (MNT_DETACH) and deletes one pin file. Idempotent: a file that is not mounted or
/// already gone is fine.
pub fn unpin_file(path: &Path) -> Result<(), NamespaceError> {
    loop {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue, // stacked mounts: peel all of them
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(e) => return Err(NamespaceError::sys("umount namespace pin", e)),
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NamespaceError::io("remove", path, e)),
    }
}

/// Unpins `<dir>/{net,ipc,uts,user}` and removes `dir` if it is then empty. Idempotent.
pub fn unpin(dir: &Path) -> Result<(), NamespaceError> {
    let mut first_err = None;
    for name in NsType::ALL.iter().map(|t| t.name()).chain(["user"]) {
        if let Err(e) = unpin_file(&dir.join(name)) {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(e) => Err(NamespaceError::io("remove", dir, e)),
    }
}

/// Runs `f` inside the network namespace at `netns` (a pin file or `/proc/<pid>/ns/net`) on a
/// dedicated thread that exits afterwards, so no other thread ever changes namespace.
pub fn run_in_netns<F, T>(netns: &Path, f: F) -> Result<T, NamespaceError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    run_in_ns(netns, CloneFlags::CLONE_NEWNET, f)
}

/// [`run_in_netns`] for any namespace type that can be joined per thread (net, ipc, uts).
pub fn run_in_ns<F, T>(ns: &Path, kind: CloneFlags, f: F) -> Result<T, NamespaceError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let file = std::fs::File::open(ns).map_err(|e| NamespaceError::io("open", ns, e))?;
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("skiff-setns".into())
            .spawn_scoped(s, move || {
                setns(&file, kind).map_err(|e| NamespaceError::sys("setns", e))?;
                Ok(f())
            })
            .map_err(|e| NamespaceError::io("spawn thread", ns, e))?;
        h.join().map_err(|_| NamespaceError::ThreadPanicked)?
    })
}

/// The inode number of a namespace file (identifies the namespace).
pub fn ns_inode(path: &Path) -> Result<u64, NamespaceError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).map_err(|e| NamespaceError::io("stat", path, e))
}

/// Counters of one network interface (from `/proc/net/dev` of a network namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDevStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// Parses the text of `/proc/net/dev`.
pub fn parse_net_dev(text: &str) -> Vec<NetDevStats> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if f.len() < 12 {
                return None;
            }
            Some(NetDevStats {
                name: name.trim().to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
                rx_packets: f[1],
                rx_dropped: f[3],
                tx_packets: f[9],
                tx_dropped: f[11],
            })
        })
        .collect()
}

/// Interface counters inside the network namespace at `netns` (for CRI pod stats). Read on a
/// dedicated thread through `/proc/thread-self/net/dev` (`/proc/self` would show the main
/// thread's namespace).
pub fn net_dev_stats(netns: &Path) -> Result<Vec<NetDevStats>, NamespaceError> {
    let text = run_in_netns(netns, || std::fs::read_to_string("/proc/thread-self/net/dev"))?
        .map_err(|e| NamespaceError::io("read", "/proc/thread-self/net/dev", e))?;
    Ok(parse_net_dev(&text))
}
