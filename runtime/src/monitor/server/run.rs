//! `skiff-monitor run <container-dir>`: start the container, then serve it until it exits.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::Spec;

use super::container;
use super::log::{CriLog, LineSplitter};
use super::util::*;
use crate::monitor::protocol::{self, Request, Response, StartReport};
use crate::monitor::types::*;

/// How long the monitor waits idle after the start before it trims its heap.
const TRIM_AFTER_MS: u16 = 200;
/// After the container exits, how long output still held open by other processes is read.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// `gated`: stdin is the gate of `spawn_gated`: the container is started only once a `g`
/// arrives on it (skiffd mounts the rootfs and makes the cgroup meanwhile; a `c` before it says
/// the cgroup is made, and the waiting process joins it); its end without one means the start
/// was called off, and the monitor exits having started nothing.
pub fn main(dir: &Path, gated: bool) -> i32 {
    let (report_fd, gate_fd) = take_stdio(gated);
    start(dir, report_fd, gated.then_some(gate_fd), true)
}

/// Keeps the report pipe (fd 1, read by `spawn`) and, when `gated`, the gate (fd 0) aside, on
/// fds above 2; stdio goes to /dev/null.
fn take_stdio(gated: bool) -> (RawFd, RawFd) {
    ignore_sigpipe();
    let report_fd = {
        close_inherited_fds();
        // SAFETY: fcntl with integer arguments; a failure (-1) makes the report go nowhere.
        unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) }
    };
    // SAFETY: fcntl with integer arguments; a failure (-1) is handled at the gate.
    let gate_fd = if gated { unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) } } else { -1 };
    stdio_to_null();
    (report_fd, gate_fd)
}

/// `skiff-monitor zygote <containers dir> <room>`: started once by skiffd
/// (`monitor::spawn_zygote`), exec'd and loaded once, it forks the monitor of every gated
/// start, so that a start waits neither for a fresh executable's exec and loading nor for its
/// CPU. Its stdin is a `SOCK_SEQPACKET` socket from skiffd; each message is the directory of a
/// container (beneath `<containers dir>`) with two fds: the gate's read end and the start
/// report's write end. The child forked for it is the monitor: it goes on as `run <dir>
/// --gated` does with those as its gate and report pipe (and its command line becomes that,
/// written over `<room>`, so that the monitor of a container is found by its directory as any
/// other), without the detaching fork (it is not skiffd's child); the kernel reaps it when it
/// exits (SIGCHLD ignored here). The end of its stdin (skiffd stopped or died) ends the
/// zygote; the monitors it forked live on.
pub fn zygote(containers: &Path) -> i32 {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    ignore_sigpipe();
    close_inherited_fds();
    // SAFETY: fcntl with integer arguments.
    let sock = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    stdio_to_null();
    if sock < 0 {
        return 1;
    }
    // A session of its own: signals sent to skiffd's process group (a terminal's SIGINT or
    // SIGHUP) do not reach it; the monitors it forks make sessions of their own again.
    let _ = nix::unistd::setsid();
    let ign = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no handler.
    let _ = unsafe { sigaction(Signal::SIGCHLD, &ign) };
    loop {
        let Some((dir, fds)) = receive_start(sock) else { return 0 };
        let Ok([gate_fd, report_fd]) = <[OwnedFd; 2]>::try_from(fds) else { continue };
        // SAFETY: this process is single-threaded, so the child may run any code.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                // SAFETY: SIG_DFL installs no handler.
                let _ = unsafe { sigaction(Signal::SIGCHLD, &dfl) };
                // SAFETY: the socket is this process's and never used again in the child.
                unsafe { libc::close(sock) };
                let (gate_fd, report_fd) = (gate_fd.into_raw_fd(), report_fd.into_raw_fd());
                let dir = PathBuf::from(dir);
                if !dir.is_absolute() || dir.parent() != Some(containers) {
                    let message = format!("zygote: {} is not in {}", dir.display(), containers.display());
                    report(report_fd, &StartReport::Error { message });
                    return 2;
                }
                set_command_line(&["run", &dir.to_string_lossy(), "--gated"]);
                // Not skiffd's child already: no detaching fork (the kernel reaps it when it
                // exits, as SIGCHLD is ignored in the zygote; if the zygote is gone by then, the
                // node's init or a subreaper does).
                return start(&dir, report_fd, Some(gate_fd), false);
            }
            Ok(ForkResult::Parent { .. }) => {}
            Err(e) => report(report_fd.as_raw_fd(), &StartReport::Error { message: format!("zygote: fork: {e}") }),
        }
    }
}

/// One start request of skiffd: (directory, fds). None when skiffd is gone.
fn receive_start(sock: RawFd) -> Option<(String, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    loop {
        let mut buf = vec![0u8; 4096];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let (n, flags, fds) = match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: received with this message just now: this process owns them.
                        fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
                (msg.bytes, msg.flags, fds)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        };
        if n == 0 && fds.is_empty() {
            return None;
        }
        match std::str::from_utf8(&buf[..n]) {
            Ok(dir) if !flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) => {
                return Some((dir.to_owned(), fds))
            }
            // A bad request: its fds close here, which skiffd's side sees as a failed start.
            _ => continue,
        }
    }
}

/// Writes `args` over this process's arguments after `argv[0]` (as `/proc/<pid>/cmdline` and
/// `ps` show them), NUL-padded to the end of the area; leaves them when `args` do not fit.
fn set_command_line(args: &[&str]) {
    let Some((start, end)) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
        // The fields after the command name, which ends at the last ')': state is field 3,
        // arg_start and arg_end are fields 48 and 49.
        let rest = s.get(s.rfind(')')? + 2..)?;
        let f: Vec<&str> = rest.split(' ').collect();
        Some((f.get(45)?.trim().parse::<usize>().ok()?, f.get(46)?.trim().parse::<usize>().ok()?))
    }) else {
        return;
    };
    let Some(argv0) = std::fs::read("/proc/self/cmdline").ok().and_then(|c| c.iter().position(|b| *b == 0)) else {
        return;
    };
    let from = start + argv0 + 1;
    let mut new: Vec<u8> = Vec::new();
    for a in args {
        new.extend_from_slice(a.as_bytes());
        new.push(0);
    }
    if from >= end || new.len() > end - from {
        diag!("command line not rewritten: {} bytes do not fit in {}", new.len(), end.saturating_sub(from));
        return;
    }
    new.resize(end - from, 0);
    // SAFETY: [arg_start, arg_end) is the block of argument strings the kernel copied onto
    // this process's stack at exec: mapped, readable and writable, and owned by nothing in
    // Rust (std copied the arguments at start). It is overwritten within its bounds and stays
    // NUL-terminated, so the argv pointers into it still point at C strings.
    unsafe { std::ptr::copy_nonoverlapping(new.as_ptr(), from as *mut u8, new.len()) };
}

/// The monitor's life after its stdio is set aside: `gate_fd` is the gate of a gated start;
/// `detach`: fork away from the process skiffd spawned (a child of the zygote needs not).
fn start(dir: &Path, report_fd: RawFd, gate_fd: Option<RawFd>, detach: bool) -> i32 {
    let gated = gate_fd.is_some();
    let gate_fd = gate_fd.unwrap_or(-1);
    let dir = &std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let cfg = match MonitorConfig::load(dir) {
        Ok(c) => c,
        Err(e) => {
            report(report_fd, &StartReport::Error { message: e.to_string() });
            return 1;
        }
    };
    if let Some(p) = &cfg.debug_log_path {
        open_diag(p);
    }
    use_hierarchies(cfg.cgroup_hierarchies.as_ref());
    // A relative root.path is relative to the bundle (the container dir).
    if let Err(e) = std::env::set_current_dir(dir) {
        return start_failed(&cfg, report_fd, &format!("chdir {}: {e}", dir.display()), None);
    }
    let spec = match Spec::load(dir.join(CONFIG_FILE)) {
        Ok(s) => s,
        Err(e) => return start_failed(&cfg, report_fd, &format!("read config.json: {e}"), None),
    };
    // Detach: the process skiffd started exits at once; the monitor is reparented away.
    if detach {
        // SAFETY: the monitor is single-threaded, so the child may run any code.
        match unsafe { fork() } {
            // SAFETY: _exit takes no pointers and never returns.
            Ok(ForkResult::Parent { .. }) => unsafe { libc::_exit(0) },
            Ok(ForkResult::Child) => {}
            Err(e) => return start_failed(&cfg, report_fd, &format!("fork: {e}"), None),
        }
    }
    let _ = nix::unistd::setsid();
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        // Orphans then go to the node's init instead: not fatal.
        diag!("prctl(PR_SET_CHILD_SUBREAPER): {}", std::io::Error::last_os_error());
    }
    // What does not need the rootfs or the cgroup is made before the gate opens.
    let early = match Early::new(&cfg) {
        Ok(e) => e,
        Err(e) => return start_failed(&cfg, report_fd, &e.0, Some(())),
    };
    // The container's process is forked before the gate too: it joins the pod's namespaces
    // and waits (`container::child`), and only its cgroup join and what needs the rootfs are
    // left for after the gate.
    let prepared = match Monitor::prepare(&cfg, &spec, early) {
        Ok(p) => p,
        Err(e) => return start_failed(&cfg, report_fd, &e.0, Some(())),
    };
    if gated && !pass_gate(gate_fd, || prepared.cgroup_ready()) {
        diag!("start called off before the gate opened");
        drop(prepared);
        let _ = std::fs::remove_file(&cfg.socket_path);
        if let Some(p) = &cfg.pid_file {
            let _ = std::fs::remove_file(p);
        }
        return 1;
    }
    let mut m = match prepared.go() {
        Ok(m) => m,
        Err(e) => return start_failed(&cfg, report_fd, &e.0, Some(())),
    };
    diag!("container {} started, pid {}", m.cfg.container_id, m.pid);
    report(report_fd, &StartReport::Started { pid: m.pid.as_raw(), monitor_pid: std::process::id() as i32 });
    // SAFETY: the report pipe is ours and never used again.
    unsafe { libc::close(report_fd) };
    m.run()
}

/// Waits for the gate's 'g' (true) or its end (false: called off); a 'c' before it (the
/// container's cgroup is made) calls `cgroup_ready`, once.
fn pass_gate(fd: RawFd, mut cgroup_ready: impl FnMut()) -> bool {
    if fd < 0 {
        return false;
    }
    let mut b = [0u8; 1];
    let mut told = false;
    let open = loop {
        // SAFETY: reads one byte into a live buffer from an fd this process owns.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        match (n, b[0]) {
            (1, b'c') => {
                if !told {
                    told = true;
                    cgroup_ready();
                }
            }
            (1, _) => break true,
            _ => break false,
        }
    };
    // SAFETY: the gate fd is ours and never used again.
    unsafe { libc::close(fd) };
    open
}

/// Records and reports a start failure.
fn start_failed(cfg: &MonitorConfig, report_fd: RawFd, msg: &str, cleanup: Option<()>) -> i32 {
    diag!("start failed: {msg}");
    let now = now_nanos();
    let rec = ExitRecord {
        version: EXIT_RECORD_VERSION,
        container_id: cfg.container_id.clone(),
        exit_code: 128,
        signal: None,
        oom_killed: false,
        started_at: None,
        finished_at: now,
        reason: Some("StartError".into()),
        message: Some(msg.to_string()),
    };
    if let Ok(data) = serde_json::to_vec_pretty(&rec) {
        if let Err(e) = write_atomic(&cfg.exit_record_path, &data) {
            diag!("write exit record: {e}");
        }
    }
    if cleanup.is_some() {
        let _ = std::fs::remove_file(&cfg.socket_path);
        if let Some(p) = &cfg.pid_file {
            let _ = std::fs::remove_file(p);
        }
    }
    report(report_fd, &StartReport::Error { message: msg.to_string() });
    1
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    waiting: bool,
    closed: bool,
    attach: Option<Attacher>,
}

/// The monitor's ends of one attacher's pipes.
struct Attacher {
    /// Write ends (non-blocking) of its stdout and stderr pipes; with a tty only stdout.
    out: [Option<OwnedFd>; 2],
    /// Read end (non-blocking) of its stdin pipe.
    stdin: Option<OwnedFd>,
    /// The first attacher with stdin of a `stdin_once` container: its EOF (or detach) closes
    /// the container's stdin.
    stdin_once: bool,
    /// Bytes of output dropped because its pipe was full.
    dropped: u64,
}

/// What a poll slot is.
#[derive(Clone, Copy)]
enum Tag {
    Signals,
    Listener,
    Output(usize),
    Client(usize),
    AttachStdin(usize),
    ContainerStdin,
}

/// Attachers' output pipes are grown to this (best effort) before output is dropped.
const ATTACH_PIPE_SIZE: libc::c_int = 1 << 20;

struct Output {
    fd: OwnedFd,
    split: LineSplitter,
}

/// What the monitor makes before the gate opens: its socket (bound, not yet served), its pid
/// file and the container's log file.
struct Early {
    listener: UnixListener,
    log: CriLog,
}

impl Early {
    fn new(cfg: &MonitorConfig) -> Result<Early> {
        let listener = bind_unix(&cfg.socket_path).ctx(|| format!("listen on {}", cfg.socket_path.display()))?;
        listener.set_nonblocking(true).ctx(|| "socket".into())?;
        if let Some(p) = &cfg.pid_file {
            write_atomic(p, std::process::id().to_string().as_bytes()).ctx(|| format!("write {}", p.display()))?;
        }
        let log = CriLog::open(cfg.log_path.clone(), cfg.log_dir.clone())
            .ctx(|| format!("open log file {}", cfg.log_path.as_deref().unwrap_or(Path::new("")).display()))?;
        Ok(Early { listener, log })
    }
}

/// A start up to the gate: the container's process forked and waiting ([`Monitor::prepare`]).
/// Dropped without [`Prepared::go`], the process is killed and reaped.
struct Prepared {
    cfg: MonitorConfig,
    child: ChildGuard,
    go: OwnedFd,
    sync_r: OwnedFd,
    io: Stdio,
    early: Early,
    sigfd: nix::sys::signalfd::SignalFd,
    cgroups_path: Option<String>,
    kill_rest_on_exit: bool,
}

/// Kills and reaps the forked container process unless disarmed.
struct ChildGuard(Option<Pid>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

impl Prepared {
    /// Tells the container's process that its cgroup is made: it joins it while the rest of
    /// the start is under way. (A failure shows at [`Prepared::go`]: the process is gone.)
    fn cgroup_ready(&self) {
        let _ = write_all_raw(self.go.as_raw_fd(), b"c");
    }

    /// Lets the container's process go on (the rootfs is mounted and the cgroup made by now)
    /// and waits for its exec.
    fn go(mut self) -> Result<Monitor> {
        let Some(pid) = self.child.0 else { bail!("the container's process is gone") };
        // A process that failed already (its early cgroup join) has closed the pipe: its
        // message, read below, says why.
        let sent = write_all_raw(self.go.as_raw_fd(), b"g");
        // Read while the child sets up: it execs nothing (so cannot run out of memory in the
        // container's cgroup) before the pipe closes.
        let oom_before = oom_count(self.cgroups_path.as_deref());
        let msg = read_to_end_raw(self.sync_r.as_raw_fd());
        // Its exec or its failure: either way it is this monitor's to reap from here on.
        self.child.0 = None;
        if !msg.is_empty() {
            let _ = waitpid(pid, None);
            bail!("{}", String::from_utf8_lossy(&msg));
        }
        if let Err(e) = sent {
            let _ = waitpid(pid, None);
            bail!("let the container's process go: {e}");
        }
        let started_at = now_nanos();
        let Prepared { cfg, io, early, sigfd, cgroups_path, kill_rest_on_exit, .. } = self;
        let Early { listener, log } = early;
        let (out_r, err_r, stdin_keep) = io.into_parent()?;
        for fd in [Some(&out_r), err_r.as_ref(), stdin_keep.as_ref()].into_iter().flatten() {
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
        }
        Ok(Monitor {
            stdin_open: cfg.stdin,
            cfg,
            pid,
            started_at,
            log,
            out: [
                Some(Output { fd: out_r, split: LineSplitter::new("stdout") }),
                err_r.map(|fd| Output { fd, split: LineSplitter::new("stderr") }),
            ],
            stdin_w: stdin_keep,
            stdin_buf: Vec::new(),
            stdin_close: false,
            stdin_once_taken: false,
            listener,
            clients: Vec::new(),
            sigfd,
            exited: None,
            cgroups_path,
            oom_before,
            kill_rest_on_exit,
        })
    }
}

struct Monitor {
    cfg: MonitorConfig,
    pid: Pid,
    started_at: i64,
    log: CriLog,
    out: [Option<Output>; 2],
    listener: UnixListener,
    clients: Vec<Conn>,
    sigfd: nix::sys::signalfd::SignalFd,
    /// (exit_code, signal, finished_at, when)
    exited: Option<(i32, Option<i32>, i64, Instant)>,
    cgroups_path: Option<String>,
    oom_before: Option<u64>,
    /// The container shares a PID namespace (the pod's, another container's or the node's):
    /// when its main process exits, the rest of its processes are killed (as containerd's
    /// shim does), instead of living on and holding its output open.
    kill_rest_on_exit: bool,
    /// Write end (non-blocking) of the container's stdin pipe (CRI `stdin` without tty), held
    /// open so that reads block; attachers' input goes there (with a tty: to the master).
    stdin_w: Option<OwnedFd>,
    /// Attachers may send input (CRI `stdin`, and not yet closed by `stdin_once`).
    stdin_open: bool,
    /// Input read from an attacher, not yet written to the container.
    stdin_buf: Vec<u8>,
    /// `stdin_once`: close the container's stdin once `stdin_buf` is written.
    stdin_close: bool,
    /// `stdin_once`: the first attacher with stdin has been given it.
    stdin_once_taken: bool,
}

/// The container's stdio: pipes, or a pseudo terminal (CRI `tty`: everything is "stdout").
/// The terminal is allocated by the child in the container's own devpts instance (so that
/// `ttyname` works inside) and its master sent back over a socketpair, as runc does.
enum Stdio {
    Pipes { stdin_r: OwnedFd, stdin_w: Option<OwnedFd>, out: (OwnedFd, OwnedFd), err: (OwnedFd, OwnedFd) },
    Pty { null: OwnedFd, ours: OwnedFd, theirs: OwnedFd },
}

impl Stdio {
    fn new(cfg: &MonitorConfig) -> Result<Stdio> {
        let null = || -> Result<OwnedFd> {
            Ok(OwnedFd::from(std::fs::File::open("/dev/null").ctx(|| "open /dev/null".into())?))
        };
        if cfg.tty {
            use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
            let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                .ctx(|| "socketpair".into())?;
            return Ok(Stdio::Pty { null: null()?, ours, theirs });
        }
        let (stdin_r, stdin_w) = if cfg.stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            (null()?, None)
        };
        Ok(Stdio::Pipes { stdin_r, stdin_w, out: pipe()?, err: pipe()? })
    }

    fn child_fds(&self) -> [RawFd; 3] {
        match self {
            Stdio::Pipes { stdin_r, out, err, .. } => [stdin_r.as_raw_fd(), out.1.as_raw_fd(), err.1.as_raw_fd()],
            Stdio::Pty { null, .. } => [null.as_raw_fd(); 3],
        }
    }

    fn console_socket(&self) -> Option<RawFd> {
        match self {
            Stdio::Pty { theirs, .. } => Some(theirs.as_raw_fd()),
            Stdio::Pipes { .. } => None,
        }
    }

    /// Parent side after a successful start: (stdout reader, stderr reader, stdin writer).
    fn into_parent(self) -> Result<(OwnedFd, Option<OwnedFd>, Option<OwnedFd>)> {
        match self {
            Stdio::Pipes { stdin_w, out, err, .. } => Ok((out.0, Some(err.0), stdin_w)),
            Stdio::Pty { ours, theirs, .. } => {
                drop(theirs);
                Ok((recv_fd(&ours)?, None, None))
            }
        }
    }
}

/// Receives one fd (SCM_RIGHTS) from a unix socket.
fn recv_fd(sock: &OwnedFd) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .ctx(|| "receive the terminal".into())?;
    for c in msg.cmsgs().ctx(|| "receive the terminal".into())? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    bail!("the container did not send its terminal")
}

/// Copies output of stream `i` to every attacher of it, never blocking: what does not fit in
/// an attacher's pipe is dropped for that attacher (counted in `monitor.log`).
fn fan_out(clients: &mut [Conn], i: usize, data: &[u8]) {
    for c in clients.iter_mut() {
        let Some(a) = c.attach.as_mut() else { continue };
        let Some(fd) = a.out[i].as_ref() else { continue };
        let mut rest = data;
        while !rest.is_empty() {
            match nix::unistd::write(fd, rest) {
                Ok(n) => rest = &rest[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => {
                    if a.dropped == 0 {
                        diag!("attacher too slow: dropping its output");
                    }
                    a.dropped += rest.len() as u64;
                    break;
                }
                Err(_) => {
                    // It closed its end: stop sending it this stream.
                    a.out[i] = None;
                    break;
                }
            }
        }
    }
}

fn set_nonblock(fd: BorrowedFd<'_>) {
    if let Ok(fl) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
        let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(fl));
    }
}

/// Writes one whole message on a (blocking, write-timeout) unix stream, `fds` attached to
/// its first byte.
fn send_with_fds(stream: &UnixStream, data: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let mut sent = 0;
    while sent < data.len() {
        let iov = [std::io::IoSlice::new(&data[sent..])];
        let c: &[ControlMessage] = if sent == 0 && !raw.is_empty() { &cmsg } else { &[] };
        match sendmsg::<()>(stream.as_raw_fd(), &iov, c, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// SIGKILLs every process left in the container's cgroup (a no-op without one).
fn kill_rest(cg: Option<&str>) {
    let Some(cg) = cg else { return };
    let Ok(h) = hierarchies() else { return };
    let Ok(m) = crate::cgroups::CgroupManager::new(h.clone(), None) else { return };
    if let Err(e) = m.kill_all(cg) {
        diag!("kill the container's remaining processes: {e}");
    }
}

fn oom_count(cg: Option<&str>) -> Option<u64> {
    let cg = cg?;
    let h = hierarchies().ok()?;
    let m = crate::cgroups::CgroupManager::new(h.clone(), None).ok()?;
    m.oom_kills(cg).ok()
}

/// Binds a unix socket; long paths go through `/proc/self/fd/<dir>/<name>`.
fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    if path.as_os_str().len() < 100 {
        return UnixListener::bind(path);
    }
    let dir = std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(path.file_name().unwrap_or_default());
    UnixListener::bind(short)
}

impl Monitor {
    /// Everything of the start that needs neither the rootfs nor the cgroup: the signalfd,
    /// the namespace plan, the stdio pipes, the PID namespace, and the container's process,
    /// forked and waiting in the pod's namespaces for [`Prepared::go`].
    fn prepare(cfg: &MonitorConfig, spec: &Spec, early: Early) -> Result<Prepared> {
        let sigfd = signalfd(&[Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT])?;
        let cgroups_path =
            spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()).map(|p| p.to_string_lossy().into_owned());
        let plan = container::plan(spec)?;
        let kill_rest_on_exit = !plan.new_pid;
        let (sync_r, sync_w) = pipe()?;
        let (go_r, go_w) = pipe()?;
        let io = Stdio::new(cfg)?;
        if let Some((fd, what)) = &plan.pid_join {
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWPID).ctx(|| format!("join {what}"))?;
        } else if plan.new_pid {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).ctx(|| "create pid namespace".into())?;
        }
        // SAFETY: the monitor is single-threaded, so the child may run any code.
        let pid = match unsafe { fork() } {
            Ok(ForkResult::Child) => container::child(
                spec,
                plan,
                cgroups_path.as_deref(),
                io.child_fds(),
                io.console_socket(),
                sync_w.as_raw_fd(),
                (go_r.as_raw_fd(), go_w.as_raw_fd()),
            ),
            Ok(ForkResult::Parent { child }) => child,
            Err(e) => bail!("fork: {e}"),
        };
        drop((sync_w, go_r, plan));
        Ok(Prepared {
            cfg: cfg.clone(),
            child: ChildGuard(Some(pid)),
            go: go_w,
            sync_r,
            io,
            early,
            sigfd,
            cgroups_path,
            kill_rest_on_exit,
        })
    }

    fn run(&mut self) -> i32 {
        let mut chunk = vec![0u8; 32 * 1024];
        // The heap of the start is returned to the system once the monitor has been idle for a
        // moment, not right after the start report: then the CPU is wanted by skiffd
        // (answering the start) and the container (its exec).
        let mut trim_pending = true;
        loop {
            if let Some((_, _, _, at)) = self.exited {
                if self.out.iter().all(Option::is_none) || at.elapsed() >= DRAIN_GRACE {
                    return self.finish();
                }
            }
            let timeout = match self.exited {
                Some((_, _, _, at)) => {
                    let left = DRAIN_GRACE.saturating_sub(at.elapsed()).as_millis().max(1) as i32;
                    PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
                }
                None if trim_pending => PollTimeout::from(TRIM_AFTER_MS),
                None => PollTimeout::NONE,
            };
            let mut tags: Vec<Tag> = Vec::new();
            let mut fds: Vec<PollFd> = Vec::new();
            fds.push(PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN));
            tags.push(Tag::Signals);
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            tags.push(Tag::Listener);
            for (i, o) in self.out.iter().enumerate() {
                if let Some(o) = o {
                    fds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLIN));
                    tags.push(Tag::Output(i));
                }
            }
            for (i, c) in self.clients.iter().enumerate() {
                fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLIN));
                tags.push(Tag::Client(i));
            }
            // Input: read from attachers only when the previous chunk is written.
            if self.stdin_buf.is_empty() {
                for (i, c) in self.clients.iter().enumerate() {
                    if let Some(fd) = c.attach.as_ref().and_then(|a| a.stdin.as_ref()) {
                        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                        tags.push(Tag::AttachStdin(i));
                    }
                }
            } else if let Some(fd) = self.stdin_target() {
                fds.push(PollFd::new(fd, PollFlags::POLLOUT));
                tags.push(Tag::ContainerStdin);
            }
            match poll(&mut fds, timeout) {
                Ok(0) if trim_pending && self.exited.is_none() => {
                    trim_pending = false;
                    trim_heap();
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    diag!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let ready: Vec<Tag> = fds
                .iter()
                .zip(&tags)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, t)| *t)
                .collect();
            drop(fds);
            for t in ready {
                match t {
                    Tag::Signals => self.on_signals(),
                    Tag::Listener => self.on_accept(),
                    Tag::Output(i) => self.on_output(i, &mut chunk),
                    Tag::Client(i) => self.on_client(i, &mut chunk),
                    Tag::AttachStdin(i) => self.on_attach_stdin(i, &mut chunk),
                    Tag::ContainerStdin => self.write_stdin(),
                }
            }
            for i in 0..self.clients.len() {
                if self.clients[i].closed {
                    // Detach; the first stdin_once attacher going away is its EOF.
                    if self.clients[i].attach.as_ref().is_some_and(|a| a.stdin.is_some() && a.stdin_once) {
                        self.stdin_eof_once();
                    }
                }
            }
            self.clients.retain(|c| !c.closed);
        }
    }

    fn on_signals(&mut self) {
        while let Ok(Some(si)) = self.sigfd.read_signal() {
            match Signal::try_from(si.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap(),
                // Stop request aimed at the monitor: pass it on to the container.
                Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) if self.exited.is_none() => {
                    let _ = nix::sys::signal::kill(self.pid, Signal::SIGTERM);
                }
                _ => {}
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(st) => {
                    if st.pid() == Some(self.pid) {
                        if let Some((code, sig)) = decode_wait(st) {
                            diag!("container exited: code {code} signal {sig:?}");
                            self.exited = Some((code, sig, now_nanos(), Instant::now()));
                            if self.kill_rest_on_exit {
                                kill_rest(self.cgroups_path.as_deref());
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
            self.clients.push(Conn { stream, buf: Vec::new(), waiting: false, closed: false, attach: None });
        }
    }

    fn on_output(&mut self, i: usize, chunk: &mut [u8]) {
        let Some(o) = self.out[i].as_mut() else { return };
        // Read what is there (bounded, so that one chatty stream cannot starve the loop).
        for _ in 0..16 {
            match nix::unistd::read(o.fd.as_fd(), chunk) {
                Ok(n) if n > 0 => {
                    o.split.feed(&chunk[..n], &mut self.log);
                    fan_out(&mut self.clients, i, &chunk[..n]);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                res => {
                    if let Err(e) = res {
                        // EIO on a terminal's master: its last user closed it.
                        if !(self.cfg.tty && e == nix::errno::Errno::EIO) {
                            diag!("read output: {e}");
                        }
                    }
                    o.split.flush(&mut self.log);
                    self.out[i] = None;
                    // EOF for the attachers too.
                    for c in self.clients.iter_mut() {
                        if let Some(a) = c.attach.as_mut() {
                            a.out[i] = None;
                        }
                    }
                    return;
                }
            }
        }
    }

    fn on_client(&mut self, i: usize, chunk: &mut [u8]) {
        let n = match self.clients[i].stream.read(chunk) {
            Ok(0) | Err(_) => {
                self.clients[i].closed = true;
                return;
            }
            Ok(n) => n,
        };
        self.clients[i].buf.extend_from_slice(&chunk[..n]);
        loop {
            let parsed = protocol::take_frame::<Request>(&self.clients[i].buf);
            let (req, used) = match parsed {
                Ok(Some(x)) => x,
                Ok(None) => return,
                Err(e) => {
                    self.send(i, &Response::Error { message: format!("bad request: {e}") });
                    self.clients[i].closed = true;
                    return;
                }
            };
            self.clients[i].buf.drain(..used);
            let resp = match req {
                Request::Status => Response::Status { status: self.status() },
                Request::Signal { signal } => self.signal(signal),
                Request::ReopenLog => match self.log.reopen() {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::Error { message: format!("reopen log: {e}") },
                },
                Request::Wait => {
                    self.clients[i].waiting = true;
                    continue;
                }
                Request::Resize { cols, rows } => self.resize(cols, rows),
                Request::Attach { stdin, stdout, stderr } => {
                    if let Err(e) = self.attach(i, stdin, stdout, stderr) {
                        self.send(i, &Response::Error { message: e.0 });
                    }
                    continue;
                }
            };
            self.send(i, &resp);
        }
    }

    /// The fd attachers' input is written to: the stdin pipe, or the terminal's master.
    fn stdin_target(&self) -> Option<BorrowedFd<'_>> {
        if !self.cfg.stdin {
            return None;
        }
        if self.cfg.tty {
            self.out[0].as_ref().map(|o| o.fd.as_fd())
        } else {
            self.stdin_w.as_ref().map(|f| f.as_fd())
        }
    }

    fn resize(&mut self, cols: u16, rows: u16) -> Response {
        if !self.cfg.tty {
            return Response::Ok;
        }
        let Some(o) = &self.out[0] else { return Response::Ok };
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads the `winsize` above, valid across the call.
        if unsafe { libc::ioctl(o.fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Response::Error { message: format!("resize: {}", std::io::Error::last_os_error()) };
        }
        Response::Ok
    }

    /// `Attach` on connection `i`: pipes for what was asked (and is available), their other
    /// ends sent back with the answer.
    fn attach(&mut self, i: usize, stdin: bool, stdout: bool, stderr: bool) -> Result<()> {
        if self.exited.is_some() {
            bail!("container is not running");
        }
        if self.clients[i].attach.is_some() {
            bail!("this connection is already attached");
        }
        let stdin = stdin && self.stdin_open && self.stdin_target().is_some();
        let stderr = stderr && !self.cfg.tty;
        let mut send_fds: Vec<OwnedFd> = Vec::new();
        let mut a = Attacher { out: [None, None], stdin: None, stdin_once: false, dropped: 0 };
        if stdin {
            let (r, w) = pipe()?;
            set_nonblock(r.as_fd());
            a.stdin = Some(r);
            send_fds.push(w);
            if self.cfg.stdin_once && !self.stdin_once_taken {
                self.stdin_once_taken = true;
                a.stdin_once = true;
            }
        }
        for (k, want) in [stdout, stderr].into_iter().enumerate() {
            if !want {
                continue;
            }
            let (r, w) = pipe()?;
            set_nonblock(w.as_fd());
            // SAFETY: F_SETPIPE_SZ takes an integer; failure (limit) just keeps 64 KiB.
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, ATTACH_PIPE_SIZE) };
            // A stream already at EOF: the attacher gets EOF at once.
            if self.out[k].is_some() {
                a.out[k] = Some(w);
            }
            send_fds.push(r);
        }
        let resp = protocol::encode(&Response::Attached { tty: self.cfg.tty, stdin, stdout, stderr });
        send_with_fds(&self.clients[i].stream, &resp, &send_fds).ctx(|| "send the attach answer".into())?;
        diag!("attached (stdin {stdin}, stdout {stdout}, stderr {stderr})");
        self.clients[i].attach = Some(a);
        Ok(())
    }

    fn on_attach_stdin(&mut self, i: usize, chunk: &mut [u8]) {
        let Some(a) = self.clients[i].attach.as_mut() else { return };
        let Some(fd) = a.stdin.as_ref() else { return };
        match nix::unistd::read(fd.as_fd(), chunk) {
            Ok(0) | Err(nix::errno::Errno::EPIPE) => {
                a.stdin = None;
                if a.stdin_once {
                    self.stdin_eof_once();
                }
            }
            Ok(n) => {
                if self.stdin_open {
                    self.stdin_buf.extend_from_slice(&chunk[..n]);
                    self.write_stdin();
                }
            }
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => {
                diag!("read attacher input: {e}");
                a.stdin = None;
            }
        }
    }

    /// Writes pending input to the container without blocking.
    fn write_stdin(&mut self) {
        while !self.stdin_buf.is_empty() {
            let Some(fd) = self.stdin_target() else {
                self.stdin_buf.clear();
                break;
            };
            match nix::unistd::write(fd, &self.stdin_buf) {
                Ok(n) => {
                    self.stdin_buf.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(e) => {
                    // The container closed its stdin (or exited): no more input.
                    diag!("write container stdin: {e}");
                    self.stdin_buf.clear();
                    self.close_stdin();
                }
            }
        }
        if self.stdin_close {
            self.close_stdin();
        }
    }

    /// `stdin_once`: the first attacher's input ended; close the container's stdin once its
    /// pending input is written. With a tty there is no stdin to close (the terminal is the
    /// container's stdio): nothing happens, as with containerd.
    fn stdin_eof_once(&mut self) {
        if self.cfg.tty {
            return;
        }
        self.stdin_close = true;
        if self.stdin_buf.is_empty() {
            self.close_stdin();
        }
    }

    /// No more input: the stdin pipe is closed (EOF for the container; with a tty the
    /// terminal stays, it just gets no more input) and every attacher's stdin too. With a tty
    /// only when writing to the terminal fails (it is gone).
    fn close_stdin(&mut self) {
        self.stdin_open = false;
        self.stdin_close = false;
        self.stdin_w = None;
        for c in self.clients.iter_mut() {
            if let Some(a) = c.attach.as_mut() {
                a.stdin = None;
            }
        }
    }

    fn send(&mut self, i: usize, resp: &Response) {
        if protocol::write_frame(&mut self.clients[i].stream, resp).is_err() {
            self.clients[i].closed = true;
        }
    }

    fn signal(&mut self, sig: i32) -> Response {
        let Ok(s) = Signal::try_from(sig) else {
            return Response::Error { message: format!("bad signal {sig}") };
        };
        if self.exited.is_some() {
            return Response::Ok;
        }
        match nix::sys::signal::kill(self.pid, s) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Response::Ok,
            Err(e) => Response::Error { message: format!("kill {}: {e}", self.pid) },
        }
    }

    fn record(&self) -> Option<ExitRecord> {
        let (code, sig, finished, _) = self.exited?;
        let oom_killed = match (self.oom_before, oom_count(self.cgroups_path.as_deref())) {
            (Some(b), Some(a)) => a > b,
            _ => false,
        };
        let reason = if oom_killed {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        Some(ExitRecord {
            version: EXIT_RECORD_VERSION,
            container_id: self.cfg.container_id.clone(),
            exit_code: code,
            signal: sig,
            oom_killed,
            started_at: Some(self.started_at),
            finished_at: finished,
            reason: Some(reason.into()),
            message: None,
        })
    }

    fn status(&self) -> Status {
        Status {
            pid: self.pid.as_raw(),
            state: if self.exited.is_some() { ContainerState::Exited } else { ContainerState::Running },
            started_at: self.started_at,
            exit: self.record(),
        }
    }

    fn finish(&mut self) -> i32 {
        // Orphans we adopted (host PID namespace) that just exited: reap them rather than
        // leave zombies to the node's init (bounded: live ones stay with init).
        let children = format!("/proc/self/task/{}/children", std::process::id());
        for _ in 0..20 {
            self.reap();
            if std::fs::read_to_string(&children).map(|c| c.trim().is_empty()).unwrap_or(true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for o in self.out.iter_mut() {
            if let Some(o) = o.as_mut() {
                o.split.flush(&mut self.log);
            }
        }
        self.out = [None, None];
        let Some(rec) = self.record() else { return 1 };
        match serde_json::to_vec_pretty(&rec) {
            Ok(data) => {
                if let Err(e) = write_atomic(&self.cfg.exit_record_path, &data) {
                    diag!("write exit record {}: {e}", self.cfg.exit_record_path.display());
                }
            }
            Err(e) => diag!("encode exit record: {e}"),
        }
        let resp = Response::Exited { record: rec };
        for i in 0..self.clients.len() {
            if self.clients[i].waiting && !self.clients[i].closed {
                self.send(i, &resp);
            }
        }
        let _ = std::fs::remove_file(&self.cfg.socket_path);
        if let Some(p) = &self.cfg.pid_file {
            let _ = std::fs::remove_file(p);
        }
        diag!("exit recorded, monitor done");
        0
    }
}
