//! `skiff-monitor infra <pod-dir> [--cgroup <cgroup> [--hierarchies <json>]]`: PID 1 of a
//! pod-level PID namespace (`--hierarchies`: skiffd's cgroup hierarchies, so that it need not
//! read mountinfo).
//! Joins the pod cgroup first (when given; through `tasks` on v1, see
//! [`crate::cgroups::join_self`]), then the pod's
//! `ns/{ipc,uts,net}` pins when present, then its `ns/user` when it has one (so that the PID
//! namespace is owned by the pod's user namespace, and PID 1 runs as the pod's root), creates
//! the PID namespace, forks its PID 1 (which is reparented away from skiffd when this process
//! exits), reports its pid on stdout. PID 1 reaps orphans until SIGTERM/SIGINT (its exit makes
//! the kernel kill the namespace).

use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult};

use super::util::*;
use crate::monitor::protocol::StartReport;

pub fn main(pod_dir: &Path, cgroup: Option<&str>) -> i32 {
    let report_fd = {
        close_inherited_fds();
        // SAFETY: fcntl with integer arguments; a failure (-1) makes the reports go nowhere.
        unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) }
    };
    stdio_to_null();
    match start(pod_dir, cgroup, report_fd) {
        Ok(pid) => {
            report(report_fd, &StartReport::Started { pid, monitor_pid: pid });
            0
        }
        Err(e) => {
            report(report_fd, &StartReport::Error { message: e.0 });
            1
        }
    }
}

fn start(pod_dir: &Path, cgroup: Option<&str>, report_fd: i32) -> Result<i32> {
    // Accounted in the pod cgroup, not skiffd's; before the user namespace is joined (the
    // cgroup files belong to the host's root).
    if let Some(cg) = cgroup {
        let h = hierarchies().ctx(|| "cgroup hierarchies".into())?;
        crate::cgroups::join_self_in(h, cg).ctx(|| format!("join cgroup {cg}"))?;
    }
    for (name, flag) in
        [("ipc", CloneFlags::CLONE_NEWIPC), ("uts", CloneFlags::CLONE_NEWUTS), ("net", CloneFlags::CLONE_NEWNET)]
    {
        let p = pod_dir.join("ns").join(name);
        if !p.exists() {
            continue;
        }
        let fd = nix::fcntl::open(&p, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .ctx(|| format!("open {}", p.display()))?;
        nix::sched::setns(&fd, flag).ctx(|| format!("join {}", p.display()))?;
    }
    let user = pod_dir.join("ns").join("user");
    if user.exists() {
        let fd = nix::fcntl::open(&user, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .ctx(|| format!("open {}", user.display()))?;
        nix::sched::setns(&fd, CloneFlags::CLONE_NEWUSER).ctx(|| format!("join {}", user.display()))?;
        let root_g = nix::unistd::Gid::from_raw(0);
        let root_u = nix::unistd::Uid::from_raw(0);
        nix::unistd::setgroups(&[]).ctx(|| "setgroups in the user namespace".into())?;
        nix::unistd::setresgid(root_g, root_g, root_g).ctx(|| "setgid 0 in the user namespace".into())?;
        nix::unistd::setresuid(root_u, root_u, root_u).ctx(|| "setuid 0 in the user namespace".into())?;
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWPID).ctx(|| "create pid namespace".into())?;
    // SAFETY: the monitor binary is single-threaded, so the child may run any code.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => Ok(child.as_raw()),
        Ok(ForkResult::Child) => {
            // SAFETY: closes our copy of the report pipe, never used again in the child.
            unsafe { libc::close(report_fd) };
            init()
        }
        Err(e) => bail!("fork: {e}"),
    }
}

fn init() -> ! {
    let _ = nix::unistd::setsid();
    let _ = nix::unistd::chdir("/");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string that lives across the call; a
    // failure only leaves the old name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"skiff-infra".as_ptr(), 0, 0, 0) };
    let sigfd = match signalfd(&[Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT]) {
        Ok(s) => s,
        // SAFETY: _exit takes no pointers and never returns.
        Err(_) => unsafe { libc::_exit(1) },
    };
    trim_heap();
    loop {
        let mut fds = [PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
            if e != nix::errno::Errno::EINTR {
                // SAFETY: _exit takes no pointers and never returns.
                unsafe { libc::_exit(1) }
            }
        }
        while let Ok(Some(si)) = sigfd.read_signal() {
            match Signal::try_from(si.ssi_signo as i32) {
                // SAFETY: _exit takes no pointers and never returns.
                Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => unsafe { libc::_exit(0) },
                _ => {}
            }
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
