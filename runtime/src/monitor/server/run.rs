//! `skiff-monitor run <container-dir>`: start the container, then serve it until it exits.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
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

/// After the container exits, how long output still held open by other processes is read.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

pub fn main(dir: &Path) -> i32 {
    ignore_sigpipe();
    // fd 1 is the report pipe read by `spawn`; keep it aside, stdio goes to /dev/null.
    let report_fd = {
        close_inherited_fds();
        unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) }
    };
    stdio_to_null();
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
    // A relative root.path is relative to the bundle (the container dir).
    if let Err(e) = std::env::set_current_dir(dir) {
        return start_failed(&cfg, report_fd, &format!("chdir {}: {e}", dir.display()), None);
    }
    let spec = match Spec::load(dir.join(CONFIG_FILE)) {
        Ok(s) => s,
        Err(e) => return start_failed(&cfg, report_fd, &format!("read config.json: {e}"), None),
    };
    // Detach: the process skiffd started exits at once; the monitor is reparented away.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => unsafe { libc::_exit(0) },
        Ok(ForkResult::Child) => {}
        Err(e) => return start_failed(&cfg, report_fd, &format!("fork: {e}"), None),
    }
    let _ = nix::unistd::setsid();
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut m = match Monitor::start(&cfg, spec) {
        Ok(m) => m,
        Err(e) => return start_failed(&cfg, report_fd, &e.0, Some(())),
    };
    diag!("container {} started, pid {}", m.cfg.container_id, m.pid);
    report(report_fd, &StartReport::Started { pid: m.pid.as_raw(), monitor_pid: std::process::id() as i32 });
    unsafe { libc::close(report_fd) };
    trim_heap();
    m.run()
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
}

struct Output {
    fd: OwnedFd,
    split: LineSplitter,
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
    /// Write end of the container's stdin pipe (CRI `stdin`), held open so that reads block.
    _stdin: Option<OwnedFd>,
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
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    bail!("the container did not send its terminal")
}

/// SIGKILLs every process left in the container's cgroup (a no-op without one).
fn kill_rest(cg: Option<&str>) {
    let Some(cg) = cg else { return };
    let Ok(h) = crate::cgroups::Hierarchies::detect() else { return };
    let Ok(m) = crate::cgroups::CgroupManager::new(h, None) else { return };
    if let Err(e) = m.kill_all(cg) {
        diag!("kill the container's remaining processes: {e}");
    }
}

fn oom_count(cg: Option<&str>) -> Option<u64> {
    let cg = cg?;
    let h = crate::cgroups::Hierarchies::detect().ok()?;
    let m = crate::cgroups::CgroupManager::new(h, None).ok()?;
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
    fn start(cfg: &MonitorConfig, spec: Spec) -> Result<Monitor> {
        let listener = bind_unix(&cfg.socket_path).ctx(|| format!("listen on {}", cfg.socket_path.display()))?;
        listener.set_nonblocking(true).ctx(|| "socket".into())?;
        if let Some(p) = &cfg.pid_file {
            write_atomic(p, std::process::id().to_string().as_bytes()).ctx(|| format!("write {}", p.display()))?;
        }
        let sigfd = signalfd(&[Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT])?;
        let log = CriLog::open(cfg.log_path.clone(), cfg.log_dir.clone())
            .ctx(|| format!("open log file {}", cfg.log_path.as_deref().unwrap_or(Path::new("")).display()))?;
        let cgroups_path =
            spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()).map(|p| p.to_string_lossy().into_owned());
        let oom_before = oom_count(cgroups_path.as_deref());
        let plan = container::plan(&spec)?;
        let kill_rest_on_exit = !plan.new_pid;
        let (sync_r, sync_w) = pipe()?;
        let io = Stdio::new(cfg)?;
        if let Some((fd, what)) = &plan.pid_join {
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWPID).ctx(|| format!("join {what}"))?;
        } else if plan.new_pid {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).ctx(|| "create pid namespace".into())?;
        }
        let pid = match unsafe { fork() } {
            Ok(ForkResult::Child) => container::child(
                &spec,
                plan,
                cgroups_path.as_deref(),
                io.child_fds(),
                io.console_socket(),
                sync_w.as_raw_fd(),
            ),
            Ok(ForkResult::Parent { child }) => child,
            Err(e) => bail!("fork: {e}"),
        };
        drop((sync_w, plan));
        let msg = read_to_end_raw(sync_r.as_raw_fd());
        if !msg.is_empty() {
            let _ = waitpid(pid, None);
            bail!("{}", String::from_utf8_lossy(&msg));
        }
        let started_at = now_nanos();
        let (out_r, err_r, stdin_keep) = io.into_parent()?;
        for fd in [Some(&out_r), err_r.as_ref()].into_iter().flatten() {
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
        }
        Ok(Monitor {
            cfg: cfg.clone(),
            pid,
            started_at,
            log,
            out: [
                Some(Output { fd: out_r, split: LineSplitter::new("stdout") }),
                err_r.map(|fd| Output { fd, split: LineSplitter::new("stderr") }),
            ],
            _stdin: stdin_keep,
            listener,
            clients: Vec::new(),
            sigfd,
            exited: None,
            cgroups_path,
            oom_before,
            kill_rest_on_exit,
        })
    }

    fn run(&mut self) -> i32 {
        let mut chunk = vec![0u8; 32 * 1024];
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
                None => PollTimeout::NONE,
            };
            // 0: signals, 1: listener, 2/3: stdout/stderr, 4..: clients
            let mut tags: Vec<usize> = Vec::new();
            let mut fds: Vec<PollFd> = Vec::new();
            fds.push(PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN));
            tags.push(0);
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            tags.push(1);
            for (i, o) in self.out.iter().enumerate() {
                if let Some(o) = o {
                    fds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLIN));
                    tags.push(2 + i);
                }
            }
            for (i, c) in self.clients.iter().enumerate() {
                fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLIN));
                tags.push(4 + i);
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    diag!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let ready: Vec<usize> = fds
                .iter()
                .zip(&tags)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, t)| *t)
                .collect();
            drop(fds);
            for t in ready {
                match t {
                    0 => self.on_signals(),
                    1 => self.on_accept(),
                    2 | 3 => self.on_output(t - 2, &mut chunk),
                    n => self.on_client(n - 4, &mut chunk),
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
            self.clients.push(Conn { stream, buf: Vec::new(), waiting: false, closed: false });
        }
    }

    fn on_output(&mut self, i: usize, chunk: &mut [u8]) {
        let Some(o) = self.out[i].as_mut() else { return };
        // Read what is there (bounded, so that one chatty stream cannot starve the loop).
        for _ in 0..16 {
            match nix::unistd::read(o.fd.as_fd(), chunk) {
                Ok(0) => {
                    o.split.flush(&mut self.log);
                    self.out[i] = None;
                    return;
                }
                Ok(n) => o.split.feed(&chunk[..n], &mut self.log),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(e) => {
                    diag!("read output: {e}");
                    o.split.flush(&mut self.log);
                    self.out[i] = None;
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
            };
            self.send(i, &resp);
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
