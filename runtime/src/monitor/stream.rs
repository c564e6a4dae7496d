//! Streaming exec and attach (CRI `Exec`/`Attach`): blocking client side, for skiffd's
//! streaming server. Call from `spawn_blocking` or a thread of its own; the fds handed out
//! are plain CLOEXEC pipe ends (blocking: set `O_NONBLOCK` yourself to wrap them in tokio).
//!
//! ## Exec ([`exec_stream`])
//! Runs `skiff-monitor exec <dir> [--tty] [--stdin] [--size CxR] -- cmd…`, which enters the
//! container as for [`exec_sync`](super::exec_sync) (namespaces, cgroup, user, caps, seccomp)
//! and runs the command below a subreaper stub. fd 0 of the helper is a socket pair with us:
//! the helper reports `Started`/`Error`/`Exited` ([`ExecReport`]), we send `Resize`/`Kill`
//! ([`ExecControl`]) and, before the spawn, the stdin pipe's read end (SCM_RIGHTS).
//! * Without a tty the command's stdin is our pipe itself; its stdout/stderr are pipes of the
//!   helper, copied into ours. With a tty, the helper allocates the terminal in the
//!   container's devpts (owned by the command's user, the command's controlling terminal) and
//!   copies between it and our pipes: `stdout` carries the terminal's output (stderr merged),
//!   `stderr` is `None`.
//! * A stream not asked for is `/dev/null` for the command.
//! * **EOF**: closing the stdin fd is EOF for the command (without a tty; with a tty the
//!   command keeps its terminal and just gets no more input: send `^D` through stdin to end
//!   a shell, or kill it). The stdout/stderr fds reach EOF once the command and its children
//!   have closed their output, and at the latest 1 s after the command's exit (background
//!   children still holding it are cut off: their further writes fail with EPIPE). Closing
//!   our stdout/stderr fd early is fine: that output is then discarded, never blocking the
//!   command.
//! * **Exit**: [`ExecSession::wait`] returns the command's exit code (128+signal when killed)
//!   once it has exited and its output has been handed to our pipes (and those closed), so
//!   `wait` and EOF on stdout/stderr come together. The output is pushed into the pipes with
//!   backpressure: a caller that neither reads nor closes stdout/stderr delays `wait` (and a
//!   command writing a lot blocks, as it would on any pipe).
//! * **Kill**: [`ExecSession::kill`] (and dropping the session before `wait` returned, which
//!   closes the socket) makes the helper's stub SIGKILL the command's whole tree, reparented
//!   orphans included, and reap it; `wait` then gives 137. Killing is idempotent and a no-op
//!   after the exit. If the helper itself dies (skiffd killed with its children…) while the
//!   command runs, its stub kills the tree too. Background children left by a command that
//!   ended normally are not killed (as with runc/containerd exec).
//! * The helper process lingers up to ~1 s after the exit (it waits for its stub); it is
//!   reaped when the session is dropped (by a short-lived background thread if it still
//!   runs), so drop sessions once done with them.
//!
//! ## Attach ([`attach`])
//! A request `attach{stdin,stdout,stderr}` on the container's `monitor.sock`; the monitor
//! answers `attached{tty,…}` with the fds (SCM_RIGHTS): stdin's write end, stdout's and
//! stderr's read ends. The connection stays open; dropping the [`AttachSession`] detaches
//! (the fds already taken keep working until the monitor closes its ends: stdout/stderr then
//! see EOF, stdin writes fail with EPIPE). Several attachers at once each get the live output
//! (not the log history) while the CRI log keeps being written.
//! * stdin is given only when the container has CRI `stdin: true` (else `take_stdin` is
//!   `None`). Without a tty and with `stdin_once`, EOF on the first attacher's stdin (or its
//!   detach) closes the container's stdin: the container sees EOF and no attacher gets input
//!   any more (their stdin fds are closed, later attachers get none). With a tty an
//!   attacher's EOF never closes anything (the terminal is the container's stdin; as with
//!   containerd).
//! * tty containers: `stdout` is the terminal's output, no `stderr`; [`AttachSession::resize`]
//!   sets the terminal size (a no-op without a tty).
//! * A slow attacher never blocks the container or the log: the monitor grows each
//!   attacher's output pipe to 1 MiB (best effort) and drops what does not fit for that
//!   attacher (it stays attached; the drop is noted in `monitor.log`).
//! * When the container exits, attachers' stdout/stderr see EOF.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{connect_unix, gone_or_io};
use super::protocol::{self, ExecControl, ExecReport, Request, Response};
use super::types::{MonitorConfig, MonitorError, SOCKET_FILE};

/// How long [`exec_stream`] waits for the command to start.
const EXEC_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a control message or attach request may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What an exec session connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecStreamOptions {
    /// Run the command on a new pseudo terminal (its stderr is merged into stdout).
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Initial (cols, rows) of the terminal (tty only; default 80x24).
    pub size: Option<(u16, u16)>,
}

/// The sending half of the helper's socket, shared by the session and its handles.
#[derive(Debug)]
struct Ctl {
    sock: Mutex<UnixStream>,
    tty: bool,
}

impl Ctl {
    fn send(&self, msg: &ExecControl) -> Result<(), MonitorError> {
        let s = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        match send_frame(&s, msg) {
            Ok(()) => Ok(()),
            // The helper is gone (the command has exited) or the session was closed.
            Err(e)
                if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::NotConnected) =>
            {
                Ok(())
            }
            Err(e) => Err(gone_or_io(e)),
        }
    }

    fn resize(&self, cols: u16, rows: u16) -> Result<(), MonitorError> {
        if !self.tty {
            return Ok(());
        }
        self.send(&ExecControl::Resize { cols, rows })
    }
}

/// A running exec'd command. Dropping it before [`ExecSession::wait`] returned kills the
/// command's whole process tree. See the [module docs](self).
#[derive(Debug)]
pub struct ExecSession {
    ctl: Arc<Ctl>,
    /// Receiving half (a clone of the same socket).
    reader: UnixStream,
    rbuf: Vec<u8>,
    child: Option<Child>,
    exit: Option<i32>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl ExecSession {
    /// Write end of the command's stdin; closing it is EOF for the command (see the module
    /// docs for the tty case). `None` when not asked for or already taken.
    pub fn take_stdin(&mut self) -> Option<OwnedFd> {
        self.stdin.take()
    }

    /// Read end of the command's stdout (with a tty: the terminal's output, stderr merged).
    pub fn take_stdout(&mut self) -> Option<OwnedFd> {
        self.stdout.take()
    }

    /// Read end of the command's stderr; `None` with a tty.
    pub fn take_stderr(&mut self) -> Option<OwnedFd> {
        self.stderr.take()
    }

    /// Sets the terminal size (TIOCSWINSZ; the command gets SIGWINCH); a no-op without a
    /// tty or once the command has exited.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), MonitorError> {
        self.ctl.resize(cols, rows)
    }

    /// Kills the command's whole process tree ([`ExecSession::wait`] then returns 137).
    /// Idempotent; a no-op once the command has exited.
    pub fn kill(&self) -> Result<(), MonitorError> {
        if self.exit.is_some() {
            return Ok(());
        }
        self.ctl.send(&ExecControl::Kill)
    }

    /// A cloneable, `Send + Sync` handle for [`ExecHandle::resize`] and [`ExecHandle::kill`]
    /// from other threads while one thread blocks in [`ExecSession::wait`].
    pub fn handle(&self) -> ExecHandle {
        ExecHandle { ctl: self.ctl.clone() }
    }

    /// Blocks until the command has exited; its exit code (128+signal when killed). Later
    /// calls return the same code.
    pub fn wait(&mut self) -> Result<i32, MonitorError> {
        if let Some(c) = self.exit {
            return Ok(c);
        }
        self.reader.set_read_timeout(None)?;
        loop {
            match read_report(&mut self.reader, &mut self.rbuf)? {
                Some(ExecReport::Exited { exit_code }) => {
                    self.exit = Some(exit_code);
                    self.reap(false);
                    return Ok(exit_code);
                }
                Some(ExecReport::Started { .. }) => {}
                Some(ExecReport::Error { message }) => return Err(MonitorError::Remote(message)),
                None => {
                    let st = self.reap(true);
                    return Err(MonitorError::Protocol(format!("exec helper ended without an exit report ({st})")));
                }
            }
        }
    }

    /// Reaps the helper if it is done (or, with `block`, waits for it).
    fn reap(&mut self, block: bool) -> String {
        let Some(c) = self.child.as_mut() else { return String::new() };
        let r = if block { c.wait().map(Some) } else { c.try_wait() };
        match r {
            Ok(Some(st)) => {
                self.child = None;
                st.to_string()
            }
            Ok(None) => String::new(),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.ctl.send(&ExecControl::Kill);
        }
        // Closes the helper's connection for every handle: the helper kills what is left.
        let _ = self.reader.shutdown(std::net::Shutdown::Both);
        self.reap(false);
        if let Some(mut c) = self.child.take() {
            // The helper finishes within a few seconds (its kill escalation is bounded).
            let spawned = std::thread::Builder::new().name("exec-reaper".into()).spawn(move || {
                let _ = c.wait();
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a thread to reap an exec helper");
            }
        }
    }
}

/// Resize and kill of an [`ExecSession`] from another thread. Once the session is dropped
/// or the command has exited, both are no-ops.
#[derive(Debug, Clone)]
pub struct ExecHandle {
    ctl: Arc<Ctl>,
}

impl ExecHandle {
    /// Same as [`ExecSession::resize`].
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), MonitorError> {
        self.ctl.resize(cols, rows)
    }

    /// Same as [`ExecSession::kill`].
    pub fn kill(&self) -> Result<(), MonitorError> {
        self.ctl.send(&ExecControl::Kill)
    }
}

fn read_report(s: &mut UnixStream, buf: &mut Vec<u8>) -> Result<Option<ExecReport>, MonitorError> {
    use std::io::Read;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((msg, used)) = protocol::take_frame::<ExecReport>(buf).map_err(gone_or_io)? {
            buf.drain(..used);
            return Ok(Some(msg));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(MonitorError::Timeout)
            }
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::NotConnected) => return Ok(None),
            Err(e) => return Err(MonitorError::Io(e)),
        }
    }
}

/// Writes one frame with MSG_NOSIGNAL: a gone peer is EPIPE, never SIGPIPE (whatever the
/// caller's SIGPIPE disposition). Honours the socket's write timeout.
fn send_frame<T: serde::Serialize>(s: &UnixStream, msg: &T) -> std::io::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    let data = protocol::encode(msg);
    let mut sent = 0;
    while sent < data.len() {
        match send(s.as_raw_fd(), &data[sent..], MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), MonitorError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| MonitorError::Io(e.into()))
}

/// Sends one fd over a unix stream (one data byte carries it).
fn send_fd(s: &UnixStream, fd: &OwnedFd) -> Result<(), MonitorError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"f")];
    loop {
        match sendmsg::<()>(s.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(MonitorError::Io(e.into())),
        }
    }
}

/// Starts `cmd` in the running container of `container_dir` with streams; returns once the
/// command has started. `MonitorError::StartError` when it cannot start (not found, the
/// container is not running…). See the [module docs](self) for EOF, exit and kill.
pub fn exec_stream(
    monitor_bin: &Path,
    container_dir: &Path,
    cmd: &[String],
    opts: &ExecStreamOptions,
) -> Result<ExecSession, MonitorError> {
    if cmd.is_empty() {
        return Err(MonitorError::StartError("exec: empty command".into()));
    }
    let (ours, theirs) = UnixStream::pair()?;
    let mut stdin_w = None;
    if opts.stdin {
        let (r, w) = cloexec_pipe()?;
        // Queued in the socket before the helper even starts; it reads it first.
        send_fd(&ours, &r)?;
        stdin_w = Some(w);
    }
    let piped = |want: bool| if want { Stdio::piped() } else { Stdio::null() };
    let mut c = Command::new(monitor_bin);
    c.arg("exec").arg(container_dir);
    if opts.tty {
        c.arg("--tty");
        if let Some((cols, rows)) = opts.size {
            c.arg("--size").arg(format!("{cols}x{rows}"));
        }
    }
    if opts.stdin {
        c.arg("--stdin");
    }
    c.arg("--")
        .args(cmd)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(piped(opts.stdout))
        .stderr(piped(opts.stderr && !opts.tty));
    let mut child = c.spawn().map_err(|source| MonitorError::Spawn { path: monitor_bin.to_path_buf(), source })?;
    drop(c);
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    let reader = match ours.try_clone() {
        Ok(r) => r,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.into());
        }
    };
    let _ = ours.set_write_timeout(Some(CALL_TIMEOUT));
    let mut s = ExecSession {
        ctl: Arc::new(Ctl { sock: Mutex::new(ours), tty: opts.tty }),
        reader,
        rbuf: Vec::new(),
        child: Some(child),
        exit: None,
        stdin: stdin_w,
        stdout,
        stderr,
    };
    // Dropping `s` on an error path kills and reaps whatever started.
    s.reader.set_read_timeout(Some(EXEC_START_TIMEOUT))?;
    match read_report(&mut s.reader, &mut s.rbuf)? {
        Some(ExecReport::Started { .. }) => Ok(s),
        Some(ExecReport::Error { message }) => {
            s.exit = Some(126);
            s.reap(true);
            Err(MonitorError::StartError(message))
        }
        // Exited before Started cannot happen; keep it for `wait`.
        Some(ExecReport::Exited { exit_code }) => {
            s.exit = Some(exit_code);
            Ok(s)
        }
        None => {
            let st = s.reap(true);
            s.exit = Some(126);
            Err(MonitorError::Protocol(format!("exec helper ended early ({st})")))
        }
    }
}

/// What an attach session connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttachOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// One attacher of a running container. Dropping it detaches (never stops the container).
/// `Send + Sync`: share it (e.g. in an `Arc`) to resize from another task.
#[derive(Debug)]
pub struct AttachSession {
    conn: Mutex<UnixStream>,
    tty: bool,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl AttachSession {
    /// The container has a terminal (its output comes on stdout only).
    pub fn tty(&self) -> bool {
        self.tty
    }

    /// Write end of the container's input (`None` unless asked for and the container has
    /// CRI `stdin`). Closing it detaches this attacher's input; with `stdin_once` the first
    /// attacher's EOF closes the container's stdin.
    pub fn take_stdin(&mut self) -> Option<OwnedFd> {
        self.stdin.take()
    }

    /// Live output (with a tty: the terminal's output); EOF when the container exits.
    pub fn take_stdout(&mut self) -> Option<OwnedFd> {
        self.stdout.take()
    }

    /// Live stderr; `None` with a tty.
    pub fn take_stderr(&mut self) -> Option<OwnedFd> {
        self.stderr.take()
    }

    /// Sets the container terminal's size; a no-op without a tty. `MonitorGone` once the
    /// monitor has exited.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), MonitorError> {
        if !self.tty {
            return Ok(());
        }
        let mut s = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        send_frame(&s, &Request::Resize { cols, rows }).map_err(gone_or_io)?;
        match protocol::read_frame::<_, Response>(&mut *s).map_err(gone_or_io)? {
            Some(Response::Ok) => Ok(()),
            Some(Response::Error { message }) => Err(MonitorError::Remote(message)),
            None => Err(MonitorError::MonitorGone),
            Some(other) => Err(MonitorError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }
}

/// Receives one response frame and the fds sent with it.
fn recv_with_fds(s: &UnixStream) -> Result<(Response, Vec<OwnedFd>), MonitorError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf: Vec<u8> = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((msg, used)) = protocol::take_frame::<Response>(&buf).map_err(gone_or_io)? {
            if used != buf.len() {
                return Err(MonitorError::Protocol("unexpected data after the attach answer".into()));
            }
            return Ok((msg, fds));
        }
        let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
        let mut space = nix::cmsg_space!([RawFd; 3]);
        let msg = match recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(gone_or_io(e.into())),
        };
        let n = msg.bytes;
        for c in msg.cmsgs().map_err(|e| MonitorError::Io(e.into()))? {
            if let ControlMessageOwned::ScmRights(got) = c {
                for fd in got {
                    // SAFETY: the kernel just installed these fds for us; nothing else owns them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if n == 0 {
            return Err(MonitorError::MonitorGone);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Attaches to the running container of `container_dir_or_socket` (its directory, whose
/// `monitor.json` names the socket, or the `monitor.sock` itself). `MonitorGone` when its
/// monitor is not running, `Remote` when the container has exited. See the
/// [module docs](self).
pub fn attach(container_dir_or_socket: &Path, opts: &AttachOptions) -> Result<AttachSession, MonitorError> {
    let sock: PathBuf = if container_dir_or_socket.is_dir() {
        MonitorConfig::load(container_dir_or_socket)
            .map(|c| c.socket_path)
            .unwrap_or_else(|_| container_dir_or_socket.join(SOCKET_FILE))
    } else {
        container_dir_or_socket.to_path_buf()
    };
    let s = connect_unix(&sock).map_err(gone_or_io)?;
    s.set_read_timeout(Some(CALL_TIMEOUT))?;
    s.set_write_timeout(Some(CALL_TIMEOUT))?;
    let req = Request::Attach { stdin: opts.stdin, stdout: opts.stdout, stderr: opts.stderr };
    send_frame(&s, &req).map_err(gone_or_io)?;
    let (resp, fds) = recv_with_fds(&s)?;
    let (tty, has_in, has_out, has_err) = match resp {
        Response::Attached { tty, stdin, stdout, stderr } => (tty, stdin, stdout, stderr),
        Response::Error { message } => return Err(MonitorError::Remote(message)),
        other => return Err(MonitorError::Protocol(format!("unexpected answer {other:?}"))),
    };
    let want = [has_in, has_out, has_err].iter().filter(|b| **b).count();
    if fds.len() != want {
        return Err(MonitorError::Protocol(format!("attach: expected {want} fds, got {}", fds.len())));
    }
    let mut it = fds.into_iter();
    let mut next = |has: bool| if has { it.next() } else { None };
    let stdin = next(has_in);
    let stdout = next(has_out);
    let stderr = next(has_err);
    Ok(AttachSession { conn: Mutex::new(s), tty, stdin, stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn sessions_cross_threads() {
        send::<ExecSession>();
        send_sync::<ExecHandle>();
        send_sync::<AttachSession>();
    }

    #[test]
    fn empty_command_is_a_start_error() {
        let r = exec_stream(Path::new("/nonexistent"), Path::new("/nonexistent"), &[], &ExecStreamOptions::default());
        assert!(matches!(r, Err(MonitorError::StartError(_))));
        let r = exec_stream(
            Path::new("/nonexistent/skiff-monitor"),
            Path::new("/nonexistent"),
            &["true".to_string()],
            &ExecStreamOptions::default(),
        );
        assert!(matches!(r, Err(MonitorError::Spawn { .. })), "{r:?}");
        let r = attach(Path::new("/nonexistent/monitor.sock"), &AttachOptions::default());
        assert!(matches!(r, Err(MonitorError::MonitorGone)), "{r:?}");
    }
}
