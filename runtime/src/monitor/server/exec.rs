//! `skiff-monitor exec <container-dir> [--tty] -- cmd args…` (ExecSync).
//!
//! fd 0 is a socket shared with the client ([`exec_sync`](crate::monitor::exec_sync)); it
//! receives [`ExecReport`]s. fds 1 and 2 are the client's pipes and are handed straight to the
//! command. Process tree:
//!
//! ```text
//! helper (host pid ns; joins the container's cgroup, then its namespaces, mnt last)
//!  └─ stub (inside the container's pid ns; setsid → process group leader; child subreaper:
//!     │     reaps whatever the command orphans; reports the command's exit to the helper)
//!     └─ command (container user, caps, no_new_privs, seccomp, env, cwd)
//! ```
//!
//! Killing: SIGTERM/SIGINT/SIGHUP to the helper makes it send SIGTERM to the stub, which
//! SIGKILLs its children round after round (orphans are reparented to it) and reaps them, so
//! nothing is left, not even a zombie; if the stub does not finish within 3 s the helper kills
//! its process group. [`exec_sync`](crate::monitor::exec_sync) sends that SIGTERM on timeout.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::Spec;

use super::container;
use super::util::*;
use crate::monitor::protocol::{self, ExecReport};
use crate::monitor::types::*;

pub fn main(dir: &Path, rest: &[String]) -> i32 {
    ignore_sigpipe();
    let status_fd = {
        close_inherited_fds();
        unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) }
    };
    if let Ok(f) = std::fs::File::open("/dev/null") {
        let _ = dup_onto(f.as_raw_fd(), 0);
    }
    let mut tty = false;
    let mut cmd: &[String] = &[];
    for (i, a) in rest.iter().enumerate() {
        match a.as_str() {
            "--tty" | "-t" => tty = true,
            "--" => {
                cmd = &rest[i + 1..];
                break;
            }
            _ => {
                cmd = &rest[i..];
                break;
            }
        }
    }
    match exec_inner(dir, tty, cmd, status_fd) {
        Ok(code) => code,
        Err(e) => {
            send(status_fd, &ExecReport::Error { message: e.0 });
            126
        }
    }
}

fn send(fd: RawFd, r: &ExecReport) {
    let _ = write_all_raw(fd, &protocol::encode(r));
}

const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.ino() == y.ino() && x.dev() == y.dev()
        }
        _ => false,
    }
}

fn exec_inner(dir: &Path, tty: bool, cmd: &[String], status_fd: RawFd) -> Result<i32> {
    if tty {
        bail!("exec with a tty is not supported yet");
    }
    if cmd.is_empty() {
        bail!("exec: no command given");
    }
    let cfg = MonitorConfig::load(dir).map_err(|e| Error(e.to_string()))?;
    let spec = Spec::load(dir.join(CONFIG_FILE)).ctx(|| "read config.json".into())?;
    let Some(process) = spec.process().clone() else { bail!("config.json has no process") };
    let st = crate::monitor::Client::connect(&cfg.socket_path)
        .and_then(|mut c| c.status())
        .map_err(|e| Error(format!("container is not running ({e})")))?;
    if st.state != ContainerState::Running {
        bail!("container is not running");
    }
    let pid = st.pid;
    // Open every namespace first: after setns(mnt) /proc is the container's.
    let mut nsfds = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = Path::new("/proc").join(pid.to_string()).join("ns").join(name);
        let ours = Path::new("/proc/self/ns").join(name);
        if same_file(&theirs, &ours) {
            continue;
        }
        let fd = nix::fcntl::open(&theirs, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .ctx(|| format!("open {}", theirs.display()))?;
        nsfds.push((fd, *flag, *name));
    }
    if let Some(cg) = spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()) {
        let cg = cg.to_string_lossy();
        crate::cgroups::join(&cg, 0).ctx(|| format!("join cgroup {cg}"))?;
    }
    for (fd, flag, name) in &nsfds {
        nix::sched::setns(fd, *flag).ctx(|| format!("join {name} namespace of pid {pid}"))?;
    }
    drop(nsfds);
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    drop(spec);
    let sigfd = signalfd(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP])?;
    let (sp_r, sp_w) = pipe()?;
    let stub = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(sp_r);
            stub_main(&process, seccomp.as_ref(), cmd, sp_w.as_raw_fd(), status_fd)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => bail!("fork: {e}"),
    };
    drop(sp_w);
    // The command holds the client's pipes now; our copies must not delay its EOF.
    stdio_to_null();
    let mut buf: Vec<u8> = Vec::new();
    let mut killing: Option<std::time::Instant> = None;
    loop {
        let mut fds = [PollFd::new(sp_r.as_fd(), PollFlags::POLLIN), PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        let timeout = if killing.is_some() { PollTimeout::from(100u8) } else { PollTimeout::NONE };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("poll: {e}"),
        }
        let sig_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        let pipe_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        if sig_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            // Ask the stub to kill the command's whole tree (it reaps as it goes).
            let _ = nix::sys::signal::kill(stub, Signal::SIGTERM);
            killing.get_or_insert_with(std::time::Instant::now);
        }
        if killing.is_some_and(|t| t.elapsed() > KILL_GRACE) {
            // The stub does not answer: kill its process group and be done.
            kill_group(stub);
            let _ = waitpid(stub, None);
            send(status_fd, &ExecReport::Exited { exit_code: 137 });
            return Ok(137);
        }
        if pipe_ready {
            let mut chunk = [0u8; 4096];
            let n = match nix::unistd::read(sp_r.as_fd(), &mut chunk) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => bail!("read: {e}"),
            };
            if n == 0 {
                // The stub died without reporting (killed): reap it, report a kill.
                let code = match waitpid(stub, None) {
                    Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                    _ => 137,
                };
                send(status_fd, &ExecReport::Exited { exit_code: code });
                return Ok(code);
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                match line.split_at(line.len().min(1)) {
                    ("S", _) => send(status_fd, &ExecReport::Started { pgid: stub.as_raw() }),
                    ("E", msg) => {
                        let _ = waitpid(stub, None);
                        send(status_fd, &ExecReport::Error { message: msg.to_string() });
                        return Ok(126);
                    }
                    ("X", code) => {
                        let code: i32 = code.trim().parse().unwrap_or(255);
                        send(status_fd, &ExecReport::Exited { exit_code: code });
                        reap_stub(stub);
                        return Ok(code);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Waits (a bounded time) for the stub, which exits once the command's orphans are gone. If
/// we exited first, the stub would be reparented to the node's init (outside the container)
/// and linger as a zombie wherever that init does not reap.
fn reap_stub(stub: Pid) {
    for _ in 0..STUB_WAIT_TICKS {
        match waitpid(stub, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => return,
        }
    }
}

/// How long the helper waits for the stub to kill the command after SIGTERM.
const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// 10 ms ticks the helper waits for its stub after the command exited (the client's drain
/// grace for lingering output is 1 s too).
const STUB_WAIT_TICKS: u32 = 100;

fn kill_group(stub: Pid) {
    let _ = nix::sys::signal::kill(Pid::from_raw(-stub.as_raw()), Signal::SIGKILL);
    let _ = nix::sys::signal::kill(stub, Signal::SIGKILL);
}

/// The in-namespace stub: process group leader and child subreaper.
fn stub_main(
    process: &oci_spec::runtime::Process,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    cmd: &[String],
    sp: RawFd,
    status_fd: RawFd,
) -> ! {
    reset_signals();
    unsafe { libc::close(status_fd) };
    let _ = nix::unistd::setsid();
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // SIGCHLD: reap; SIGTERM (from the helper, on a timeout): kill the command's whole tree.
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None);
    let say = |s: &str| {
        let _ = write_all_raw(sp, s.as_bytes());
    };
    let (er_r, er_w) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            say(&format!("E{}\n", e.0.replace('\n', " ")));
            unsafe { libc::_exit(1) }
        }
    };
    let cmd_pid = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(er_r);
            reset_signals();
            let e = match container::exec_process(process, seccomp, Some(cmd), false) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            let _ = write_all_raw(er_w.as_raw_fd(), e.0.as_bytes());
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            say(&format!("Efork: {e}\n"));
            unsafe { libc::_exit(1) }
        }
    };
    drop(er_w);
    stdio_to_null();
    let msg = read_to_end_raw(er_r.as_raw_fd());
    if !msg.is_empty() {
        let _ = waitpid(cmd_pid, None);
        say(&format!("E{}\n", String::from_utf8_lossy(&msg).replace('\n', " ")));
        unsafe { libc::_exit(0) }
    }
    say("S\n");
    let mut killing = false;
    loop {
        loop {
            match waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(st) => {
                    if st.pid() == Some(cmd_pid) {
                        if let Some((code, _)) = decode_wait(st) {
                            say(&format!("X{code}\n"));
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                // No child left: the command and everything it left behind are gone.
                Err(_) => unsafe { libc::_exit(0) },
            }
        }
        if killing {
            kill_children(cmd_pid);
        }
        if let Ok(Signal::SIGTERM) = set.wait() {
            killing = true;
            kill_children(cmd_pid);
        }
    }
}

/// SIGKILLs every child of the stub (orphans of the command are reparented to it, the
/// subreaper, and are found on the next round).
fn kill_children(cmd_pid: Pid) {
    let me = nix::unistd::getpid();
    let list = std::fs::read_to_string(format!("/proc/self/task/{me}/children")).unwrap_or_default();
    let mut any = false;
    for p in list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
        any = true;
    }
    if !any {
        let _ = nix::sys::signal::kill(cmd_pid, Signal::SIGKILL);
    }
}
