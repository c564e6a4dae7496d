//! `skiff-monitor exec <container-dir> [--tty [--size CxR]] [--stdin] -- cmd args…`
//! (ExecSync and streaming exec).
//!
//! fd 0 is a socket shared with the client ([`exec_sync`](crate::monitor::exec_sync),
//! [`exec_stream`](crate::monitor::exec_stream)): it receives [`ExecReport`]s and sends
//! [`ExecControl`] frames (resize, kill; EOF = kill); with `--stdin` its first message
//! carries the command's stdin pipe (SCM_RIGHTS). fds 1 and 2 are the client's pipes (or
//! /dev/null). The helper relays: the command writes into pipes of the helper, copied to the
//! client's, so that the client's pipes reach EOF at most [`DRAIN_GRACE`] after the exit even
//! when background children keep the command's output open; `Exited` is sent once that
//! output is passed on. Without a tty stdin is the client's pipe itself. With `--tty` the
//! terminal is opened in the container's devpts (we are in its mount namespace), owned by the
//! command's user, made its controlling terminal, and relayed both ways. Process tree:
//!
//! ```text
//! helper (host pid ns; joins the container's cgroup, then its namespaces, mnt last)
//!  └─ stub (inside the container's pid ns; setsid → process group leader; child subreaper:
//!     │     reaps whatever the command orphans; reports the command's exit to the helper)
//!     └─ command (container user, caps, no_new_privs, seccomp, env, cwd)
//! ```
//!
//! Killing: SIGTERM/SIGINT/SIGHUP to the helper (or a `Kill` frame, or the client closing
//! the socket) makes it send SIGTERM to the stub, which SIGKILLs its children round after
//! round (orphans are reparented to it) and reaps them, so nothing is left, not even a
//! zombie; if the stub does not finish within 3 s the helper kills its process group. [`exec_sync`](crate::monitor::exec_sync) sends that SIGTERM on timeout.
//! The stub's parent-death signal (SIGUSR1) does the same if the helper itself dies while the
//! command runs (after a normal end, background children are left alone).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
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
use crate::monitor::protocol::{self, ExecControl, ExecReport};
use crate::monitor::types::*;

/// Parsed command line of the exec mode.
#[derive(Default)]
struct ExecArgs {
    tty: bool,
    /// The command's stdin comes over the status socket (SCM_RIGHTS, sent before the spawn).
    stdin: bool,
    /// Initial terminal size (cols, rows).
    size: Option<(u16, u16)>,
}

pub fn main(dir: &Path, rest: &[String]) -> i32 {
    ignore_sigpipe();
    close_inherited_fds();
    // SAFETY: plain fcntl on fd 0 (our status socket); the new fd is checked below.
    let status_fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if status_fd < 0 {
        return 126;
    }
    let mut a = ExecArgs::default();
    let mut cmd: &[String] = &[];
    let mut i = 0;
    while i < rest.len() {
        match rest[i].as_str() {
            "--tty" | "-t" => a.tty = true,
            "--stdin" | "-i" => a.stdin = true,
            "--size" => {
                i += 1;
                let v = rest.get(i).map(String::as_str).unwrap_or("");
                a.size = v.split_once('x').and_then(|(c, r)| Some((c.parse().ok()?, r.parse().ok()?)));
                if a.size.is_none() {
                    send(status_fd, &ExecReport::Error { message: format!("exec: bad --size {v:?}") });
                    return 126;
                }
            }
            "--" => {
                cmd = &rest[i + 1..];
                break;
            }
            _ => {
                cmd = &rest[i..];
                break;
            }
        }
        i += 1;
    }
    let stdin = if a.stdin {
        match recv_stdin(status_fd) {
            Ok(fd) => Some(fd),
            Err(e) => {
                send(status_fd, &ExecReport::Error { message: e.0 });
                return 126;
            }
        }
    } else {
        None
    };
    // fd 0 of the command: its stdin pipe (without a tty) or /dev/null.
    match (&stdin, a.tty) {
        (Some(fd), false) => {
            let _ = dup_onto(fd.as_raw_fd(), 0);
        }
        _ => {
            if let Ok(f) = std::fs::File::open("/dev/null") {
                let _ = dup_onto(f.as_raw_fd(), 0);
            }
        }
    }
    let stdin = if a.tty { stdin } else { None };
    match exec_inner(dir, &a, cmd, status_fd, stdin) {
        Ok(code) => code,
        Err(e) => {
            send(status_fd, &ExecReport::Error { message: e.0 });
            126
        }
    }
}

/// Receives the command's stdin (one fd, SCM_RIGHTS) from the status socket.
fn recv_stdin(sock: RawFd) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    // SAFETY: `sock` is our status socket, open for the whole process life.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock) };
    let mut pfd = [PollFd::new(bfd, PollFlags::POLLIN)];
    match poll(&mut pfd, PollTimeout::from(10_000u16)) {
        Ok(n) if n > 0 => {}
        _ => bail!("exec: no stdin received from the client"),
    }
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg =
        recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ctx(|| "receive stdin".into())?;
    for c in msg.cmsgs().ctx(|| "receive stdin".into())? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just gave us this fd; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    bail!("exec: the client sent no stdin")
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
    // Last: joined with the host's privileges, the others would be out of reach afterwards.
    ("user", CloneFlags::CLONE_NEWUSER),
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

/// A terminal allocated in the container's devpts (we are in its mount namespace).
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

fn open_pty(size: Option<(u16, u16)>, uid: u32) -> Result<Pty> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let m = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).ctx(|| "open /dev/ptmx".into())?;
    grantpt(&m).ctx(|| "grantpt".into())?;
    unlockpt(&m).ctx(|| "unlockpt".into())?;
    let name = ptsname_r(&m).ctx(|| "ptsname".into())?;
    let slave = nix::fcntl::open(name.as_str(), OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| format!("open {name}"))?;
    let (cols, rows) = size.unwrap_or((80, 24));
    set_winsize(slave.as_raw_fd(), cols, rows);
    // The terminal belongs to the command's user (so that it can reopen /dev/tty).
    if uid != 0 {
        let _ = nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(uid)), None);
    }
    // SAFETY: `m` is an open fd we own, so the fd number is valid.
    let master = unsafe { OwnedFd::from_raw_fd(m.into_raw_fd()) };
    Ok(Pty { master, slave })
}

fn set_winsize(fd: RawFd, cols: u16, rows: u16) {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a `winsize` that lives across the call; a bad fd is an error
    // return, which we ignore (the terminal may be gone).
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

fn set_nonblock(fd: BorrowedFd<'_>) {
    if let Ok(fl) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
        let fl = OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(fl));
    }
}

/// One output the helper copies to the client: the command's stdout/stderr pipe, or the
/// terminal's master.
struct RelayOut {
    src: OwnedFd,
    /// The client's pipe (None: it closed it; output is read and discarded).
    dst: Option<OwnedFd>,
    buf: Vec<u8>,
    /// Nothing more comes from `src` (EOF; EIO on a master whose slave fds are all closed;
    /// or given up on after the exit grace).
    eof: bool,
}

/// With a tty, the client's stdin copied to the terminal's master.
struct RelayIn {
    /// Read end of the client's stdin pipe (None: EOF; the terminal stays).
    src: Option<OwnedFd>,
    /// A dup of the master.
    dst: OwnedFd,
    buf: Vec<u8>,
}

/// The helper's copying between the command and the client's pipes. Without a tty the
/// command writes into pipes of the helper (so that the client's pipes reach EOF soon after
/// the exit even when a background child keeps the command's output open); its stdin is the
/// client's pipe itself. With a tty everything goes through the terminal's master.
struct Relay {
    outs: Vec<RelayOut>,
    input: Option<RelayIn>,
    /// The terminal's master (for resize).
    master: Option<RawFd>,
}

/// Which fd of the relay a poll slot is.
#[derive(Clone, Copy)]
enum Slot {
    OutSrc(usize),
    OutDst,
    InSrc,
    InDst,
}

/// Reads one chunk (non-blocking) into `buf`: false when nothing more will come.
fn read_into(fd: &OwnedFd, buf: &mut Vec<u8>, keep: bool) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    match nix::unistd::read(fd.as_fd(), &mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            if keep {
                buf.extend_from_slice(&chunk[..n]);
            }
            true
        }
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => true,
        // EIO: the terminal's last slave fd is closed.
        Err(_) => false,
    }
}

/// Writes what it can of `buf` (non-blocking): false when `fd` is dead (EPIPE, EIO).
fn write_from(fd: &OwnedFd, buf: &mut Vec<u8>) -> bool {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => {
                buf.drain(..n);
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
    true
}

impl Relay {
    fn slots(&self) -> Vec<(Slot, BorrowedFd<'_>, PollFlags)> {
        let mut v = Vec::new();
        for (k, o) in self.outs.iter().enumerate() {
            if o.buf.is_empty() && !o.eof {
                v.push((Slot::OutSrc(k), o.src.as_fd(), PollFlags::POLLIN));
            }
            if let Some(d) = o.dst.as_ref().filter(|_| !o.buf.is_empty()) {
                v.push((Slot::OutDst, d.as_fd(), PollFlags::POLLOUT));
            }
        }
        if let Some(i) = &self.input {
            match &i.src {
                Some(src) if i.buf.is_empty() => v.push((Slot::InSrc, src.as_fd(), PollFlags::POLLIN)),
                _ if !i.buf.is_empty() => v.push((Slot::InDst, i.dst.as_fd(), PollFlags::POLLOUT)),
                _ => {}
            }
        }
        v
    }

    /// Handles the ready slots, then writes whatever is pending.
    fn pump(&mut self, ready: &[Slot]) {
        for s in ready {
            match *s {
                Slot::OutSrc(k) => {
                    let o = &mut self.outs[k];
                    if o.buf.is_empty() && !o.eof {
                        let keep = o.dst.is_some();
                        o.eof = !read_into(&o.src, &mut o.buf, keep);
                    }
                }
                Slot::InSrc => {
                    if let Some(i) = self.input.as_mut() {
                        if let Some(src) = &i.src {
                            if i.buf.is_empty() && !read_into(src, &mut i.buf, true) {
                                // EOF: the command keeps its terminal (nothing is sent to it).
                                i.src = None;
                            }
                        }
                    }
                }
                Slot::OutDst | Slot::InDst => {}
            }
        }
        for o in self.outs.iter_mut() {
            if let Some(d) = &o.dst {
                if !write_from(d, &mut o.buf) {
                    // The client closed its end: discard this output from now on.
                    o.dst = None;
                }
            }
            if o.dst.is_none() {
                o.buf.clear();
            }
        }
        if let Some(i) = self.input.as_mut() {
            if !write_from(&i.dst, &mut i.buf) {
                i.buf.clear();
                i.src = None;
            }
        }
    }

    /// Stops reading the command's output (after the exit grace): what is buffered is still
    /// passed on.
    fn give_up_reading(&mut self) {
        for o in self.outs.iter_mut() {
            o.eof = true;
        }
    }

    /// Everything the command produced has been passed on (or the client is gone).
    fn drained(&self) -> bool {
        self.outs.iter().all(|o| (o.eof || o.dst.is_none()) && o.buf.is_empty())
    }
}

/// After the command exited, how long output held open by its background children is still
/// relayed.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// fd is a pipe (so worth relaying; /dev/null is given to the command as it is).
fn is_fifo(fd: RawFd) -> bool {
    // SAFETY: `fd` is one of our open stdio fds for the duration of the call.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::sys::stat::fstat(b).map(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO).unwrap_or(false)
}

/// A CLOEXEC duplicate of one of our stdio fds.
fn dup_cloexec(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: fcntl with integer arguments; the result is checked and then owned.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if r < 0 {
        bail!("dup fd {fd}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `r` is a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

fn exec_inner(dir: &Path, a: &ExecArgs, cmd: &[String], status_fd: RawFd, stdin: Option<OwnedFd>) -> Result<i32> {
    if cmd.is_empty() {
        bail!("exec: no command given");
    }
    let cfg = MonitorConfig::load(dir).map_err(|e| Error(e.to_string()))?;
    super::util::use_hierarchies(cfg.cgroup_hierarchies.as_ref());
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
        let h = super::util::hierarchies().ctx(|| "cgroup hierarchies".into())?;
        crate::cgroups::join_self_in(h, &cg).ctx(|| format!("join cgroup {cg}"))?;
    }
    // The user namespace (last in the list) is joined after the terminal is made: the host's
    // root gives it to the command's user as the host sees it (inside the user namespace the
    // unmapped host root's pty could not be chowned).
    let user = nsfds.iter().position(|(_, f, _)| *f == CloneFlags::CLONE_NEWUSER).map(|i| nsfds.remove(i));
    for (fd, flag, name) in &nsfds {
        nix::sched::setns(fd, *flag).ctx(|| format!("join {name} namespace of pid {pid}"))?;
    }
    drop(nsfds);
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let uid = match &user {
        Some(_) => {
            let maps = spec.linux().as_ref().and_then(|l| l.uid_mappings().as_ref());
            super::rootfs::host_id(maps, process.user().uid()).unwrap_or(0)
        }
        None => process.user().uid(),
    };
    drop(spec);
    // With a tty: the terminal comes from the container's devpts (/dev/ptmx of its mount
    // namespace, which we are in now); we relay between it and the client's pipes.
    let pty = if a.tty { Some(open_pty(a.size, uid)?) } else { None };
    if let Some((fd, _, name)) = user {
        nix::sched::setns(&fd, CloneFlags::CLONE_NEWUSER).ctx(|| format!("join {name} namespace of pid {pid}"))?;
    }
    let mut relay = Relay { outs: Vec::new(), input: None, master: None };
    if let Some(p) = &pty {
        let src = dup_cloexec(p.master.as_raw_fd())?;
        let dst = dup_cloexec(1)?;
        relay.outs.push(RelayOut { src, dst: Some(dst), buf: Vec::new(), eof: false });
        if let Some(fd) = stdin {
            relay.input = Some(RelayIn { src: Some(fd), dst: dup_cloexec(p.master.as_raw_fd())?, buf: Vec::new() });
        }
        relay.master = Some(p.master.as_raw_fd());
    } else {
        // Our fds 1 and 2 become pipes of ours for the command; we copy them to the client's.
        for fd in [1, 2] {
            if !is_fifo(fd) {
                continue;
            }
            let dst = dup_cloexec(fd)?;
            let (r, w) = pipe()?;
            dup_onto(w.as_raw_fd(), fd)?;
            relay.outs.push(RelayOut { src: r, dst: Some(dst), buf: Vec::new(), eof: false });
        }
    }
    let sigfd = signalfd(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP])?;
    let (sp_r, sp_w) = pipe()?;
    let term = pty.as_ref().map(|p| (p.master.as_raw_fd(), p.slave.as_raw_fd()));
    // The stub never execs: it must close our fds itself (a copy of the client's pipes in
    // it would hold them open as long as the command's background children live).
    let mut ours: Vec<RawFd> = vec![status_fd, sigfd.as_raw_fd()];
    for o in &relay.outs {
        ours.push(o.src.as_raw_fd());
        ours.extend(o.dst.as_ref().map(|d| d.as_raw_fd()));
    }
    if let Some(i) = &relay.input {
        ours.push(i.dst.as_raw_fd());
        ours.extend(i.src.as_ref().map(|d| d.as_raw_fd()));
    }
    ours.extend(term.map(|t| t.0));
    // SAFETY: the helper is single-threaded, so the child may run arbitrary code.
    let stub = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(sp_r);
            stub_main(&process, seccomp.as_ref(), cmd, sp_w.as_raw_fd(), &ours, term.map(|t| t.1))
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => bail!("fork: {e}"),
    };
    drop(sp_w);
    // The command holds its pipes (or the terminal's slave) now; our copies must not delay
    // their EOF.
    stdio_to_null();
    let _pty = pty.map(|p| {
        drop(p.slave);
        p.master
    });
    for o in &relay.outs {
        set_nonblock(o.src.as_fd());
        if let Some(d) = &o.dst {
            set_nonblock(d.as_fd());
        }
    }
    if let Some(i) = &relay.input {
        set_nonblock(i.dst.as_fd());
        if let Some(s) = &i.src {
            set_nonblock(s.as_fd());
        }
    }
    // SAFETY: `status_fd` stays open for the whole process life.
    let status = unsafe { BorrowedFd::borrow_raw(status_fd) };
    let mut status_open = true;
    let mut sbuf: Vec<u8> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut killing: Option<std::time::Instant> = None;
    let mut exited: Option<(i32, std::time::Instant)> = None;
    let mut kill_now = false;
    loop {
        if let Some((code, at)) = exited {
            if at.elapsed() > DRAIN_GRACE {
                relay.give_up_reading();
            }
            if relay.drained() || killing.is_some() || !status_open {
                drop(relay);
                send(status_fd, &ExecReport::Exited { exit_code: code });
                reap_stub(stub);
                return Ok(code);
            }
        }
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        // Once the exit is known the stub's pipe is done with (and would poll as HUP).
        let pipe_ix = if exited.is_none() {
            fds.push(PollFd::new(sp_r.as_fd(), PollFlags::POLLIN));
            Some(fds.len() - 1)
        } else {
            None
        };
        let status_ix = if status_open {
            fds.push(PollFd::new(status, PollFlags::POLLIN));
            Some(fds.len() - 1)
        } else {
            None
        };
        let first_slot = fds.len();
        let slots = relay.slots();
        let kinds: Vec<Slot> = slots.iter().map(|(k, _, _)| *k).collect();
        for (_, fd, ev) in slots {
            fds.push(PollFd::new(fd, ev));
        }
        let timeout = if killing.is_some() || exited.is_some() { PollTimeout::from(100u8) } else { PollTimeout::NONE };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => bail!("poll: {e}"),
        }
        let ev = |i: Option<usize>| i.and_then(|i| fds[i].revents()).unwrap_or(PollFlags::empty());
        let sig_ready = !ev(Some(0)).is_empty();
        let pipe_ready = !ev(pipe_ix).is_empty();
        let status_ready = !ev(status_ix).is_empty();
        let ready: Vec<Slot> =
            kinds.iter().enumerate().filter(|(k, _)| !ev(Some(first_slot + k)).is_empty()).map(|(_, s)| *s).collect();
        drop(fds);
        relay.pump(&ready);
        if status_ready {
            let mut chunk = [0u8; 4096];
            match nix::unistd::read(status, &mut chunk) {
                Ok(0) => {
                    // The client is gone: nobody wants the command any more.
                    status_open = false;
                    kill_now = true;
                }
                Ok(n) => sbuf.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
                Err(_) => {
                    status_open = false;
                    kill_now = true;
                }
            }
            loop {
                match protocol::take_frame::<ExecControl>(&sbuf) {
                    Ok(Some((msg, used))) => {
                        sbuf.drain(..used);
                        match msg {
                            ExecControl::Resize { cols, rows } => {
                                if let Some(m) = relay.master {
                                    set_winsize(m, cols, rows);
                                }
                            }
                            ExecControl::Kill => kill_now = true,
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // Garbage from the client: treat it as gone.
                        sbuf.clear();
                        status_open = false;
                        kill_now = true;
                        break;
                    }
                }
            }
        }
        if sig_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            kill_now = true;
        }
        if kill_now && killing.is_none() && exited.is_none() {
            // Ask the stub to kill the command's whole tree (it reaps as it goes).
            let _ = nix::sys::signal::kill(stub, Signal::SIGTERM);
            killing = Some(std::time::Instant::now());
        }
        if exited.is_none() && killing.is_some_and(|t| t.elapsed() > KILL_GRACE) {
            // The stub does not answer: kill its process group and be done.
            kill_group(stub);
            let _ = waitpid(stub, None);
            send(status_fd, &ExecReport::Exited { exit_code: 137 });
            return Ok(137);
        }
        if pipe_ready && exited.is_none() {
            let mut chunk = [0u8; 4096];
            let n = match nix::unistd::read(sp_r.as_fd(), &mut chunk) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
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
                        exited = Some((code, std::time::Instant::now()));
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
    helpers: &[RawFd],
    term: Option<RawFd>,
) -> ! {
    reset_signals();
    // Reports to a helper that is gone must fail, not kill the stub (its orphans would go to
    // the container's PID 1, unkilled). The command's child resets this before its exec.
    ignore_sigpipe();
    for fd in helpers {
        // SAFETY: the helper's fds (status socket, signalfd, relay pipes, terminal master)
        // are never used in this process; the OwnedFds around them are never dropped here
        // either (the stub only leaves through _exit).
        unsafe { libc::close(*fd) };
    }
    let _ = nix::unistd::setsid();
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        let _ = write_all_raw(sp, b"Ecannot become a child subreaper\n");
        // SAFETY: _exit takes no pointers and never returns (no destructors run in a forked child).
        unsafe { libc::_exit(1) }
    }
    // SIGCHLD: reap; SIGTERM (from the helper: kill, timeout, client gone): kill the
    // command's whole tree; SIGUSR1 (parent-death signal): the helper died, e.g. SIGKILLed:
    // nobody relays or reports any more, so a command still running is killed too (its
    // background children after a normal end are left alone).
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGUSR1);
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None);
    let say = |s: &str| {
        let _ = write_all_raw(sp, s.as_bytes());
    };
    // The helper is outside our PID namespace (then this is 0) or our plain parent.
    let helper = nix::unistd::getppid();
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1 as libc::c_ulong, 0, 0, 0) } != 0 {
        say(&format!("Eprctl(PR_SET_PDEATHSIG): {}\n", std::io::Error::last_os_error()));
        // SAFETY: _exit takes no pointers and never returns (no destructors run in a forked child).
        unsafe { libc::_exit(1) }
    }
    if nix::unistd::getppid() != helper {
        // SAFETY: _exit takes no pointers and never returns (no destructors run in a forked child).
        unsafe { libc::_exit(1) }
    }
    let (er_r, er_w) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            say(&format!("E{}\n", e.0.replace('\n', " ")));
            // SAFETY: _exit takes no pointers and never returns (no destructors run in a forked child).
            unsafe { libc::_exit(1) }
        }
    };
    // SAFETY: the stub is single-threaded, so the child may run any code.
    let cmd_pid = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(er_r);
            reset_signals();
            if let Some(slave) = term {
                // A session of its own, with the terminal as its controlling terminal.
                if let Err(e) = take_terminal(slave) {
                    let _ = write_all_raw(er_w.as_raw_fd(), e.0.as_bytes());
                    // SAFETY: _exit takes no pointers and never returns (no destructors run in a forked child).
                    unsafe { libc::_exit(127) }
                }
            }
            let e = match container::exec_process(process, seccomp, Some(cmd), false) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            let _ = write_all_raw(er_w.as_raw_fd(), e.0.as_bytes());
            // SAFETY: _exit takes no pointers and never returns (no destructors run in a forked child).
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            say(&format!("Efork: {e}\n"));
            // SAFETY: _exit takes no pointers and never returns (no destructors run in a forked child).
            unsafe { libc::_exit(1) }
        }
    };
    drop(er_w);
    if let Some(slave) = term {
        // SAFETY: the command has its copy; ours would keep the terminal open after its exit.
        unsafe { libc::close(slave) };
    }
    stdio_to_null();
    let msg = read_to_end_raw(er_r.as_raw_fd());
    if !msg.is_empty() {
        let _ = waitpid(cmd_pid, None);
        say(&format!("E{}\n", String::from_utf8_lossy(&msg).replace('\n', " ")));
        // SAFETY: _exit takes no pointers and never returns (no destructors run in a forked child).
        unsafe { libc::_exit(0) }
    }
    say("S\n");
    let mut killing = false;
    let mut cmd_done = false;
    loop {
        loop {
            match waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(st) => {
                    if st.pid() == Some(cmd_pid) {
                        if let Some((code, _)) = decode_wait(st) {
                            cmd_done = true;
                            say(&format!("X{code}\n"));
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                // No child left: the command and everything it left behind are gone.
                // SAFETY: _exit takes no pointers and never returns.
                Err(_) => unsafe { libc::_exit(0) },
            }
        }
        if killing {
            kill_children(cmd_pid);
        }
        match set.wait() {
            Ok(Signal::SIGTERM) => {
                killing = true;
                kill_children(cmd_pid);
            }
            Ok(Signal::SIGUSR1) if !cmd_done => {
                killing = true;
                kill_children(cmd_pid);
            }
            _ => {}
        }
    }
}

/// In the command's process: new session, terminal as stdio and controlling terminal.
fn take_terminal(slave: RawFd) -> Result<()> {
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    for i in 0..3 {
        dup_onto(slave, i)?;
    }
    // SAFETY: TIOCSCTTY takes an integer argument; fd 0 is the terminal's slave.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        bail!("set controlling terminal: {}", std::io::Error::last_os_error());
    }
    Ok(())
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
