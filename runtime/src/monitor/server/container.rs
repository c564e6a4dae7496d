//! Creating the container process: namespace plan (done partly in the monitor, pid, and
//! partly in the forked child, the rest), then the child's setup up to exec.

use std::convert::Infallible;
use std::os::fd::{OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccomp, Process, Spec};

use super::rootfs;
use super::security;
use super::util::{bail, reset_signals, write_all_raw, Ctx, Result};

/// Which namespaces to join (opened fds) and which to create.
pub struct NsPlan {
    /// setns in the child, in this order (mount last).
    pub join: Vec<(OwnedFd, CloneFlags, String)>,
    /// PID namespace to join in the monitor before the fork.
    pub pid_join: Option<(OwnedFd, String)>,
    /// unshare in the child (everything but PID).
    pub new: CloneFlags,
    /// unshare(CLONE_NEWPID) in the monitor before the fork.
    pub new_pid: bool,
    /// The pod's user namespace, joined in the child once the filesystem is set up (see
    /// `child_inner`).
    pub user: Option<(OwnedFd, String)>,
}

pub fn plan(spec: &Spec) -> Result<NsPlan> {
    let mut p = NsPlan { join: Vec::new(), pid_join: None, new: CloneFlags::empty(), new_pid: false, user: None };
    let mut mnt_join = None;
    for ns in spec.linux().as_ref().and_then(|l| l.namespaces().as_deref()).unwrap_or_default() {
        let flag = match ns.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
            other => bail!("{other:?} namespaces are not supported"),
        };
        match ns.path() {
            Some(path) => {
                let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                    .ctx(|| format!("open {} namespace {}", ns.typ(), path.display()))?;
                let what = format!("{} namespace {}", ns.typ(), path.display());
                match flag {
                    CloneFlags::CLONE_NEWPID => p.pid_join = Some((fd, what)),
                    CloneFlags::CLONE_NEWUSER => p.user = Some((fd, what)),
                    CloneFlags::CLONE_NEWNS => mnt_join = Some((fd, flag, what)),
                    _ => p.join.push((fd, flag, what)),
                }
            }
            None if flag == CloneFlags::CLONE_NEWPID => p.new_pid = true,
            None if flag == CloneFlags::CLONE_NEWUSER => {
                bail!("a user namespace of the container's own is not supported (join the pod's by path)")
            }
            None => p.new |= flag,
        }
    }
    if mnt_join.is_some() {
        bail!("joining an existing mount namespace is not supported");
    }
    if !p.new.contains(CloneFlags::CLONE_NEWNS) {
        bail!("the container needs a new mount namespace");
    }
    Ok(p)
}

/// The forked child: never returns; on failure writes the message to `errfd` and exits 127.
/// `go`: (read end, write end) of the pipe the monitor writes one byte to once the rootfs is
/// mounted and the cgroup made: until then the child joins only the pod's net, ipc and uts
/// namespaces (neither needs the rootfs nor the cgroup) and waits.
pub fn child(
    spec: &Spec,
    plan: NsPlan,
    cgroups_path: Option<&str>,
    stdio: [RawFd; 3],
    console: Option<RawFd>,
    errfd: RawFd,
    go: (RawFd, RawFd),
) -> ! {
    // SAFETY: the write end is the monitor's; this copy is never used (closed so that the
    // monitor's death is the pipe's end here too).
    unsafe { libc::close(go.1) };
    let e = match child_inner(spec, plan, cgroups_path, stdio, console, go.0) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let _ = write_all_raw(errfd, e.0.as_bytes());
    // SAFETY: _exit takes no pointers and never returns; skipping atexit handlers and
    // destructors is what a forked child wants.
    unsafe { libc::_exit(127) }
}

fn child_inner(
    spec: &Spec,
    plan: NsPlan,
    cgroups_path: Option<&str>,
    stdio: [RawFd; 3],
    console: Option<RawFd>,
    go: RawFd,
) -> Result<Infallible> {
    reset_signals();
    // The container lives only as long as its monitor: if the monitor is killed, nothing would
    // copy its output or record its exit, so it gets SIGKILL (skiffd then reports the
    // container EXITED/Unknown, never an unmonitored RUNNING one).
    let monitor = nix::unistd::getppid();
    set_pdeathsig()?;
    if nix::unistd::getppid() != monitor {
        bail!("the monitor died during the start");
    }
    // SAFETY: umask takes an integer and cannot fail.
    unsafe { libc::umask(0o022) };
    for (i, fd) in stdio.iter().enumerate() {
        super::util::dup_onto(*fd, i as RawFd)?;
    }
    // The pod's net, ipc and uts namespaces before the monitor says go; a cgroup namespace
    // (joined by path) only after the cgroup join, as before.
    let early_join = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    let (early, late): (Vec<_>, Vec<_>) = plan.join.into_iter().partition(|(_, f, _)| early_join.contains(*f));
    for (fd, flag, what) in &early {
        nix::sched::setns(fd, *flag).ctx(|| format!("join {what}"))?;
    }
    drop(early);
    // The monitor's bytes: 'c' once the cgroup is made (joined at once, while skiffd still
    // mounts the rootfs or waits for the start mark), then 'g' once everything is ready; a
    // 'g' alone (a start whose cgroup came last) joins the cgroup after it.
    let mut joined = false;
    loop {
        match read_byte(go) {
            Some(b'c') if !joined => {
                join_cgroup(cgroups_path)?;
                joined = true;
            }
            Some(b'g') => break,
            _ => bail!("the start was called off"),
        }
    }
    // SAFETY: the go pipe's read end is this process's and never used again.
    unsafe { libc::close(go) };
    if !joined {
        join_cgroup(cgroups_path)?;
    }
    for (fd, flag, what) in &late {
        nix::sched::setns(fd, *flag).ctx(|| format!("join {what}"))?;
    }
    drop(late);
    nix::sched::unshare(plan.new).ctx(|| "create namespaces".into())?;
    rootfs::setup(spec, cgroups_path, plan.user.as_ref().map(|(fd, _)| fd))?;
    if plan.new.contains(CloneFlags::CLONE_NEWUTS) {
        if let Some(h) = spec.hostname() {
            nix::unistd::sethostname(h).ctx(|| format!("sethostname {h}"))?;
        }
    }
    rootfs::finish(spec)?;
    // With a user namespace the terminal is made before joining it, by the host's root, which
    // can give it to the container's user as the host sees it (inside the user namespace the
    // unmapped host root's pty could not be chowned).
    let early_tty = plan.user.is_some();
    if early_tty {
        nix::unistd::setsid().ctx(|| "setsid".into())?;
        if let Some(sock) = console {
            let maps = spec.linux().as_ref().and_then(|l| l.uid_mappings().as_ref());
            let uid = spec.process().as_ref().map(|p| p.user().uid()).unwrap_or(0);
            setup_terminal(sock, rootfs::host_id(maps, uid))?;
        }
    }
    if let Some((fd, what)) = &plan.user {
        // The pod's user namespace comes last: the pid, cgroup and first mount namespace were
        // made, and the filesystem set up, with the host's privileges (a PID namespace can only
        // be joined with a process in it, and its PID 1 is the container's process). A new
        // mount namespace made inside the user namespace copies the finished tree, every mount
        // locked, so the container's root owns its mount namespace but cannot undo the setup.
        nix::sched::setns(fd, CloneFlags::CLONE_NEWUSER).ctx(|| format!("join {what}"))?;
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).ctx(|| "mount namespace in the user namespace".into())?;
    }
    drop(plan.user);
    let Some(p) = spec.process() else { bail!("config.json has no process") };
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    // A session of its own; with a tty, that terminal becomes its controlling terminal.
    if !early_tty {
        nix::unistd::setsid().ctx(|| "setsid".into())?;
        if let Some(sock) = console {
            setup_terminal(sock, spec.process().as_ref().map(|p| p.user().uid()))?;
        }
    }
    exec_process(p, seccomp, None, false)
}

/// One byte from `fd` (`None`: its end or an error).
fn read_byte(fd: RawFd) -> Option<u8> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads one byte into a live buffer from an fd this process owns.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return (n == 1).then_some(b[0]);
    }
}

/// Moves this process into the container's cgroup (every hierarchy).
fn join_cgroup(cgroups_path: Option<&str>) -> Result<()> {
    if let Some(cg) = cgroups_path {
        let h = super::util::hierarchies().ctx(|| "cgroup hierarchies".into())?;
        crate::cgroups::join_self_in(h, cg).ctx(|| format!("join cgroup {cg}"))?;
    }
    Ok(())
}

/// Process attributes and exec. `args` overrides `process.args` (exec mode).
pub fn exec_process(
    p: &Process,
    seccomp: Option<&LinuxSeccomp>,
    args: Option<&[String]>,
    new_session: bool,
) -> Result<Infallible> {
    let args: &[String] = match args {
        Some(a) => a,
        None => p.args().as_deref().unwrap_or_default(),
    };
    let Some(arg0) = args.first() else { bail!("process.args is empty") };
    let env: &[String] = p.env().as_deref().unwrap_or_default();
    let nnp = p.no_new_privileges().unwrap_or(false);
    let caps = p.capabilities().as_ref();
    if new_session {
        nix::unistd::setsid().ctx(|| "setsid".into())?;
    }
    security::rlimits(p)?;
    security::oom_score_adj(p)?;
    security::bounding(caps)?;
    if !nnp {
        // Without no_new_privs the filter must be loaded while we still have CAP_SYS_ADMIN.
        if let Some(s) = seccomp {
            security::seccomp(s)?;
        }
    }
    security::switch_user(p)?;
    // A credential change clears the parent-death signal: set it again.
    set_pdeathsig()?;
    let cwd = p.cwd();
    nix::unistd::chdir(cwd).ctx(|| format!("chdir to cwd {:?} set in config.json", cwd))?;
    security::capabilities(caps)?;
    let exe = security::find_executable(arg0, env)?;
    if nnp {
        security::no_new_privs()?;
        if let Some(s) = seccomp {
            security::seccomp(s)?;
        }
    }
    // Every fd but 0-2 closes on exec (our error pipe reports success that way).
    // SAFETY: close_range with integer arguments only; with CLOSE_RANGE_CLOEXEC it closes
    // nothing now, so no fd owned elsewhere in this process is invalidated.
    let r = unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32 /* CLOSE_RANGE_CLOEXEC */)
    };
    if r != 0 {
        bail!("close_range: {}", std::io::Error::last_os_error());
    }
    Err(security::exec(&exe, args, env))
}

/// SIGKILL when the parent (the monitor, or the exec stub) dies.
fn set_pdeathsig() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        bail!("prctl(PR_SET_PDEATHSIG): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Allocates a terminal in the container's devpts (after pivot_root), makes it stdio and the
/// controlling terminal, and sends the master to the monitor over `sock`.
fn setup_terminal(sock: RawFd, uid: Option<u32>) -> Result<()> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let m = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).ctx(|| "open /dev/ptmx".into())?;
    grantpt(&m).ctx(|| "grantpt".into())?;
    unlockpt(&m).ctx(|| "unlockpt".into())?;
    let name = ptsname_r(&m).ctx(|| "ptsname".into())?;
    let slave = nix::fcntl::open(name.as_str(), OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| format!("open {name}"))?;
    let ws = libc::winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads the `winsize` above, alive across the call; `slave` is open.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        bail!("set terminal size: {}", std::io::Error::last_os_error());
    }
    // The terminal belongs to the container's user (so that it can reopen /dev/tty).
    if let Some(uid) = uid.filter(|u| *u != 0) {
        let _ = nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(uid)), None);
    }
    for i in 0..3 {
        super::util::dup_onto(slave.as_raw_fd(), i)?;
    }
    // SAFETY: TIOCSCTTY takes an integer argument; fd 0 is the terminal's slave.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        bail!("set controlling terminal: {}", std::io::Error::last_os_error());
    }
    let fds = [m.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"t")];
    sendmsg::<()>(sock, &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        .ctx(|| "send the terminal to the monitor".into())?;
    Ok(())
}
