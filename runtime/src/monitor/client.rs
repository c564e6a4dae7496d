//! skiffd's side: blocking std code, meant to be called from `spawn_blocking`.
//! Spawning a fresh executable is allowed from any thread; nothing here forks by hand,
//! unshares or calls setns.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::protocol::{self, ExecReport, Request, Response, StartReport};
use super::types::*;

/// How long [`spawn`] waits for the monitor's start report.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a request/response on the socket may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After an exec'd command exits, how long to keep reading output held open by its
/// background children.
const EXEC_DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Starts `monitor_bin run <container_dir>` and waits for the container to be started
/// (`Started`) or to fail (`MonitorError::StartError` with a message for the user; the
/// monitor has then also written the exit record with reason `StartError`).
/// `container_dir` must hold `config.json` and `monitor.json`; the rootfs must be mounted.
pub fn spawn(monitor_bin: &Path, container_dir: &Path) -> Result<Started, MonitorError> {
    match run_reporting(monitor_bin, "run", container_dir, &[])? {
        StartReport::Started { pid, monitor_pid } => Ok(Started { pid, monitor_pid }),
        StartReport::Error { message } => Err(MonitorError::StartError(message)),
    }
}

/// Starts `monitor_bin infra <pod_dir> [--cgroup <cgroup>]`: the PID 1 of a new pod-level PID
/// namespace, in the pod's `ns/{net,ipc,uts}` pins when present, and in `cgroup` (cgroupfs
/// form), which it joins itself before anything else (`cgroups::join_self`: no RCU grace
/// period, unlike moving it in from outside through `cgroup.procs`). It reaps orphans until
/// SIGTERM/SIGKILL. `hierarchies`: the host's cgroup hierarchies (else it reads mountinfo).
pub fn spawn_infra(
    monitor_bin: &Path,
    pod_dir: &Path,
    cgroup: Option<&str>,
    hierarchies: Option<&crate::cgroups::Hierarchies>,
) -> Result<InfraStarted, MonitorError> {
    let json = match (cgroup, hierarchies) {
        (Some(_), Some(h)) => {
            Some(serde_json::to_string(h).map_err(|e| MonitorError::Config(format!("encode the hierarchies: {e}")))?)
        }
        _ => None,
    };
    let mut extra: Vec<&str> = cgroup.map(|c| vec!["--cgroup", c]).unwrap_or_default();
    if let Some(j) = &json {
        extra.extend(["--hierarchies", j.as_str()]);
    }
    match run_reporting(monitor_bin, "infra", pod_dir, &extra)? {
        StartReport::Started { pid, .. } => Ok(InfraStarted { pid }),
        StartReport::Error { message } => Err(MonitorError::StartError(message)),
    }
}

/// A monitor started by [`spawn_gated`]: it loads its configuration and the OCI spec and
/// detaches meanwhile, and starts the container only once [`Gate::open`] is called (the
/// rootfs mounted and the cgroup made by then). Dropped unopened, the start is called off:
/// the monitor exits having started nothing (and the process spawned is reaped on a thread of
/// its own, so that dropping never blocks).
pub struct Gate {
    /// The process spawned, reaped after its report (none when the zygote forked it).
    child: Option<std::process::Child>,
    tx: Option<File>,
    report: Option<OwnedFd>,
}

/// As [`spawn`], but the container starts only at [`Gate::open`], so that the caller can mount
/// the rootfs and make the cgroup while the monitor starts up. `monitor.json` and
/// `config.json` must be in `container_dir` already.
pub fn spawn_gated(monitor_bin: &Path, container_dir: &Path) -> Result<Gate, MonitorError> {
    let mut child = Command::new(monitor_bin)
        .arg("run")
        .arg(container_dir)
        .arg("--gated")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| MonitorError::Spawn { path: monitor_bin.to_path_buf(), source })?;
    let tx = child.stdin.take().map(|t| File::from(OwnedFd::from(t)));
    let report = child.stdout.take().map(OwnedFd::from);
    Ok(Gate { child: Some(child), tx, report })
}

/// The monitors' zygote (`skiff-monitor zygote`): one monitor process, exec'd and loaded once,
/// that forks the monitor of every gated start ([`Zygote::spawn_gated`]), so that a start
/// waits neither for a fresh executable's exec and loading nor for its CPU (a fork of the
/// small zygote costs a fraction of an exec). Dropped, or when skiffd dies, its socket closes
/// and it exits; the monitors it forked live on, detached as any monitor.
pub struct Zygote {
    child: Option<std::process::Child>,
    sock: Option<OwnedFd>,
}

/// Starts the [`Zygote`] for containers whose directories are in `containers_dir` (named in
/// its command line; a monitor's becomes `run <dir> --gated`).
pub fn spawn_zygote(monitor_bin: &Path, containers_dir: &Path) -> Result<Zygote, MonitorError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| MonitorError::Protocol(format!("socketpair for the monitors' zygote: {e}")))?;
    // Room for "run <containers_dir>/<64-char id> --gated" over "zygote <containers_dir> <room>".
    let room = " ".repeat(80);
    let child = Command::new(monitor_bin)
        .arg("zygote")
        .arg(containers_dir)
        .arg(room)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| MonitorError::Spawn { path: monitor_bin.to_path_buf(), source })?;
    Ok(Zygote { child: Some(child), sock: Some(ours) })
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Its socket closes with this (the zygote then exits): reap it on a thread of its own,
        // so that dropping never blocks.
        let (child, sock) = (self.child.take(), self.sock.take());
        drop(sock);
        if let Some(mut child) = child {
            let _ = std::thread::Builder::new().name("zygote-reap".into()).spawn(move || child.wait());
        }
    }
}

impl Zygote {
    /// Whether the zygote still runs (not killed meanwhile).
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// As [`spawn_gated`]: the zygote forks the monitor of the container of `container_dir`
    /// (`monitor.json` and `config.json` in it), gated. An error when the zygote is gone.
    pub fn spawn_gated(&self, container_dir: &Path) -> Result<Gate, MonitorError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::unix::ffi::OsStrExt;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| MonitorError::Protocol(format!("pipe for a monitor: {e}")))
        };
        let (gate_r, gate_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let dir = container_dir.as_os_str().as_bytes();
        let fds = [gate_r.as_raw_fd(), report_w.as_raw_fd()];
        let iov = [std::io::IoSlice::new(dir)];
        let sock = self.sock.as_ref().ok_or_else(|| MonitorError::Protocol("the monitors' zygote is closed".into()))?;
        sendmsg::<()>(sock.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::MSG_NOSIGNAL, None)
            .map_err(|e| MonitorError::Protocol(format!("hand the start to the monitors' zygote: {e}")))?;
        // The zygote's child holds them now: the report's end is then seen when it exits.
        drop((gate_r, report_w));
        Ok(Gate { child: None, tx: Some(File::from(gate_w)), report: Some(report_r) })
    }
}

impl Gate {
    /// Tells the monitor that the container's cgroup is made, so that the container's process
    /// joins it while the rest of the start (the rootfs, the start mark) is under way. Does
    /// not block: one byte into the gate's empty pipe. Call it at most once, before
    /// [`Gate::release`]; a gate dropped afterwards still calls the start off, and the
    /// process then exits in the cgroup (the cgroup's rollback kills and waits for it).
    pub fn cgroup_ready(&mut self) {
        self.send(b"c");
    }

    /// Lets the monitor start the container: the rootfs is mounted and the cgroup made. Does
    /// not block (one byte into the gate's pipe); [`Gate::wait`] reads the report.
    pub fn release(&mut self) {
        self.send(b"g");
        // Closed after the byte: nothing more goes through the gate.
        drop(self.tx.take());
    }

    fn send(&mut self, byte: &[u8]) {
        use std::io::Write;
        if let Some(tx) = self.tx.as_mut() {
            // A monitor that failed before the gate (and reported why) is gone: EPIPE; its
            // report says what happened. The pipe is empty but for these two bytes: the write
            // never waits.
            let _ = tx.write_all(byte);
        }
    }

    /// Lets the monitor start the container; returns as [`spawn`] does.
    pub fn open(mut self) -> Result<Started, MonitorError> {
        self.release();
        self.wait()
    }

    /// After [`Gate::release`]: waits for the monitor's report (blocking, at most the start's
    /// timeout) and returns as [`spawn`] does.
    pub fn wait(mut self) -> Result<Started, MonitorError> {
        let report = self.report.take().ok_or_else(|| MonitorError::Protocol("gate used twice".into()))?;
        if self.tx.is_some() {
            return Err(MonitorError::Protocol("gate waited for before its release".into()));
        }
        match read_start_report(report, self.child.take())? {
            StartReport::Started { pid, monitor_pid } => Ok(Started { pid, monitor_pid }),
            StartReport::Error { message } => Err(MonitorError::StartError(message)),
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Closing the gate unopened calls the start off.
        drop(self.tx.take());
        if let Some(mut child) = self.child.take() {
            let _ = std::thread::Builder::new().name("monitor-reap".into()).spawn(move || child.wait());
        }
    }
}

fn run_reporting(bin: &Path, mode: &str, dir: &Path, extra: &[&str]) -> Result<StartReport, MonitorError> {
    let mut child = Command::new(bin)
        .arg(mode)
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| MonitorError::Spawn { path: bin.to_path_buf(), source })?;
    finish_reporting(&mut child)
}

/// Reads the start report of a spawned monitor and reaps the process spawned (which forks
/// the monitor and exits at once).
fn finish_reporting(child: &mut std::process::Child) -> Result<StartReport, MonitorError> {
    let out = match child.stdout.take() {
        Some(o) => OwnedFd::from(o),
        None => return Err(MonitorError::Protocol("no stdout pipe".into())),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    let mut buf = Vec::new();
    let res = read_report(out.as_fd(), &mut buf, deadline);
    // The process we started forks the monitor and exits at once: reap it.
    let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
    res?;
    parse_report(&buf, &status)
}

/// The start report read from `report`; `child`, the process spawned, is reaped after it (a
/// monitor forked by the zygote has none: the kernel reaps it).
fn read_start_report(report: OwnedFd, child: Option<std::process::Child>) -> Result<StartReport, MonitorError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut buf = Vec::new();
    let res = read_report(report.as_fd(), &mut buf, deadline);
    let status = match child {
        Some(mut c) => c.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
        None => "forked by the zygote".to_owned(),
    };
    res?;
    parse_report(&buf, &status)
}

/// The first line of a start report; `status` says how its process ended when there is none.
fn parse_report(buf: &[u8], status: &str) -> Result<StartReport, MonitorError> {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    if line.is_empty() {
        return Err(MonitorError::Protocol(format!("monitor exited without a start report ({status})")));
    }
    let env: protocol::Envelope<StartReport> =
        serde_json::from_slice(line).map_err(|e| MonitorError::Protocol(format!("bad start report: {e}")))?;
    Ok(env.msg)
}

fn read_report(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), MonitorError> {
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(MonitorError::Timeout);
        }
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, timeout_of(Some(left))) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(MonitorError::Io(e.into())),
        }
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // One line is the whole report.
                if buf.contains(&b'\n') {
                    return Ok(());
                }
            }
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => return Err(MonitorError::Io(e.into())),
        }
    }
}

fn timeout_of(d: Option<Duration>) -> PollTimeout {
    match d {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = d.as_millis().clamp(1, i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Reads `exit.json`. `None` when it does not exist or cannot be parsed (logged).
pub fn read_exit_record(path: &Path) -> Option<ExitRecord> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read exit record");
            return None;
        }
    };
    match serde_json::from_slice::<ExitRecord>(&data) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "corrupt exit record");
            None
        }
    }
}

/// Connects to a unix socket; paths longer than `sun_path` go through `/proc/self/fd`.
pub(crate) fn connect_unix(path: &Path) -> std::io::Result<UnixStream> {
    if path.as_os_str().len() < 100 {
        return UnixStream::connect(path);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default();
    let d = File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd())).join(name);
    UnixStream::connect(short)
}

pub(crate) fn gone_or_io(e: std::io::Error) -> MonitorError {
    match e.kind() {
        ErrorKind::NotFound
        | ErrorKind::ConnectionRefused
        | ErrorKind::ConnectionReset
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof => MonitorError::MonitorGone,
        ErrorKind::WouldBlock | ErrorKind::TimedOut => MonitorError::Timeout,
        _ => MonitorError::Io(e),
    }
}

/// A connection to one monitor's `monitor.sock`.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
}

impl Client {
    /// Connects; `MonitorGone` when nobody listens (the monitor has exited: read the record).
    pub fn connect(socket: &Path) -> Result<Client, MonitorError> {
        let stream = connect_unix(socket).map_err(gone_or_io)?;
        Ok(Client { path: socket.to_path_buf(), stream })
    }

    fn call(&mut self, req: &Request) -> Result<Response, MonitorError> {
        self.stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        self.stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        protocol::write_frame(&mut self.stream, req).map_err(gone_or_io)?;
        match protocol::read_frame::<_, Response>(&mut self.stream).map_err(gone_or_io)? {
            None => Err(MonitorError::MonitorGone),
            Some(Response::Error { message }) => Err(MonitorError::Remote(message)),
            Some(r) => Ok(r),
        }
    }

    /// Pid, state and start time of the container process.
    pub fn status(&mut self) -> Result<Status, MonitorError> {
        match self.call(&Request::Status)? {
            Response::Status { status } => Ok(status),
            other => Err(MonitorError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Sends signal `sig` to the container process (a no-op once it has exited).
    pub fn signal(&mut self, sig: i32) -> Result<(), MonitorError> {
        match self.call(&Request::Signal { signal: sig })? {
            Response::Ok => Ok(()),
            other => Err(MonitorError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Reopens the CRI log file (after the kubelet rotated it).
    pub fn reopen_log(&mut self) -> Result<(), MonitorError> {
        match self.call(&Request::ReopenLog)? {
            Response::Ok => Ok(()),
            other => Err(MonitorError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Waits until the container exits (`None`: no limit) and returns its exit record.
    /// Uses a connection of its own, so a timeout leaves this client usable.
    /// `MonitorGone` when the monitor exits or is not there: read the exit record file.
    pub fn wait_exit(&mut self, timeout: Option<Duration>) -> Result<ExitRecord, MonitorError> {
        let mut s = connect_unix(&self.path).map_err(gone_or_io)?;
        s.set_write_timeout(Some(CALL_TIMEOUT))?;
        protocol::write_frame(&mut s, &Request::Wait).map_err(gone_or_io)?;
        if let Some(t) = timeout {
            s.set_read_timeout(Some(t.max(Duration::from_millis(1))))?;
        }
        match protocol::read_frame::<_, Response>(&mut s).map_err(gone_or_io)? {
            None => Err(MonitorError::MonitorGone),
            Some(Response::Exited { record }) => Ok(record),
            Some(Response::Error { message }) => Err(MonitorError::Remote(message)),
            Some(other) => Err(MonitorError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }
}

/// Runs `cmd` inside the running container of `container_dir` (all its namespaces, cgroup,
/// user, capabilities, no_new_privs, seccomp, env, cwd) and collects its output, each stream
/// capped at `max_output` bytes. On timeout the command's process group is killed and
/// `MonitorError::Timeout` returned. A command that cannot be started (not found…) gives
/// `MonitorError::StartError`.
pub fn exec_sync(
    monitor_bin: &Path,
    container_dir: &Path,
    cmd: &[String],
    timeout: Option<Duration>,
    max_output: usize,
) -> Result<ExecOutput, MonitorError> {
    if cmd.is_empty() {
        return Err(MonitorError::StartError("exec: empty command".into()));
    }
    let (ours, theirs) = UnixStream::pair()?;
    let mut child = Command::new(monitor_bin)
        .arg("exec")
        .arg(container_dir)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| MonitorError::Spawn { path: monitor_bin.to_path_buf(), source })?;
    let mut out = ExecOutput::default();
    let res = exec_loop(&mut child, ours, timeout, max_output, &mut out);
    let _ = child.wait();
    res.map(|code| {
        out.exit_code = code;
        out
    })
}

fn exec_loop(
    child: &mut std::process::Child,
    mut status: UnixStream,
    timeout: Option<Duration>,
    max_output: usize,
    out: &mut ExecOutput,
) -> Result<i32, MonitorError> {
    let mut stdout = child.stdout.take().map(OwnedFd::from);
    let mut stderr = child.stderr.take().map(OwnedFd::from);
    // A timeout too large for an Instant (i64::MAX seconds) is no timeout at all.
    let deadline = timeout.filter(|t| !t.is_zero()).and_then(|t| Instant::now().checked_add(t));
    let mut status_open = true;
    let mut sbuf: Vec<u8> = Vec::new();
    let mut pgid: Option<i32> = None;
    let mut exit: Option<(i32, Instant)> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some((code, at)) = exit {
            if (stdout.is_none() && stderr.is_none()) || at.elapsed() >= EXEC_DRAIN_GRACE {
                return Ok(code);
            }
        }
        let now = Instant::now();
        if let Some(d) = deadline {
            if now >= d {
                stop_exec(child, pgid);
                return Err(MonitorError::Timeout);
            }
        }
        let mut wait = deadline.map(|d| d.saturating_duration_since(now));
        if let Some((_, at)) = exit {
            let g = EXEC_DRAIN_GRACE.saturating_sub(at.elapsed());
            wait = Some(wait.map_or(g, |w| w.min(g)));
        }
        if !status_open && exit.is_none() {
            // The helper died without reporting an exit.
            let st = child.wait()?;
            return Err(MonitorError::Protocol(format!("exec helper ended early: {st}")));
        }
        let mut fds = Vec::with_capacity(3);
        let mut which = Vec::with_capacity(3);
        if let Some(f) = &stdout {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            which.push(1);
        }
        if let Some(f) = &stderr {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            which.push(2);
        }
        if status_open {
            fds.push(PollFd::new(status.as_fd(), PollFlags::POLLIN));
            which.push(0);
        }
        match poll(&mut fds, timeout_of(wait)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(MonitorError::Io(e.into())),
        }
        let ready: Vec<i32> = fds
            .iter()
            .zip(&which)
            .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, w)| *w)
            .collect();
        drop(fds);
        for w in ready {
            match w {
                0 => match status.read(&mut chunk) {
                    Ok(0) | Err(_) => status_open = false,
                    Ok(n) => {
                        sbuf.extend_from_slice(&chunk[..n]);
                        while let Some((msg, used)) = protocol::take_frame::<ExecReport>(&sbuf).map_err(gone_or_io)? {
                            sbuf.drain(..used);
                            match msg {
                                ExecReport::Started { pgid: g } => pgid = Some(g),
                                ExecReport::Error { message } => return Err(MonitorError::StartError(message)),
                                ExecReport::Exited { exit_code } => exit = Some((exit_code, Instant::now())),
                            }
                        }
                    }
                },
                _ => {
                    let (slot, buf, trunc) = if w == 1 {
                        (&mut stdout, &mut out.stdout, &mut out.stdout_truncated)
                    } else {
                        (&mut stderr, &mut out.stderr, &mut out.stderr_truncated)
                    };
                    let Some(fd) = slot.as_ref() else { continue };
                    match nix::unistd::read(fd.as_fd(), &mut chunk) {
                        Ok(0) => *slot = None,
                        Ok(n) => {
                            let room = max_output.saturating_sub(buf.len());
                            if n > room {
                                *trunc = true;
                            }
                            buf.extend_from_slice(&chunk[..n.min(room)]);
                        }
                        Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                        Err(_) => *slot = None,
                    }
                }
            }
        }
    }
}

/// On timeout: SIGTERM to the helper, which has the in-container stub kill and reap the
/// command's whole tree; if that takes too long, SIGKILL the stub's process group and the
/// helper.
fn stop_exec(child: &mut std::process::Child, pgid: Option<i32>) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(g) = pgid {
        kill_group(g);
    }
    let _ = child.kill();
}

/// SIGKILLs a process group (and its leader).
fn kill_group(pgid: i32) {
    if pgid > 1 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pgid), nix::sys::signal::Signal::SIGKILL);
    }
}
