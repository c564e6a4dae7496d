//! Streaming exec and attach (CRI `Exec`/`Attach`): blocking client side.
//!
//! Work in progress: the signatures are final, the bodies return
//! `MonitorError::Protocol("… not implemented yet")` until the monitor side lands.

use std::os::fd::OwnedFd;
use std::path::Path;

use super::types::MonitorError;

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

/// A running exec'd command. Dropping it without [`ExecSession::wait`] kills the command's
/// whole process tree.
#[derive(Debug)]
pub struct ExecSession {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl ExecSession {
    /// Write end of the command's stdin; closing it is EOF for the command.
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

    /// Sets the terminal size (TIOCSWINSZ); a no-op without a tty.
    pub fn resize(&self, _cols: u16, _rows: u16) -> Result<(), MonitorError> {
        Err(MonitorError::Protocol("exec resize: not implemented yet".into()))
    }

    /// Kills the command's whole process tree. Idempotent.
    pub fn kill(&self) -> Result<(), MonitorError> {
        Err(MonitorError::Protocol("exec kill: not implemented yet".into()))
    }

    /// A cloneable, `Send + Sync` handle for [`ExecHandle::resize`] and [`ExecHandle::kill`]
    /// from other threads while one thread blocks in [`ExecSession::wait`].
    pub fn handle(&self) -> ExecHandle {
        ExecHandle { _p: () }
    }

    /// Blocks until the command has exited; its exit code (128+signal when killed).
    pub fn wait(&mut self) -> Result<i32, MonitorError> {
        Err(MonitorError::Protocol("exec wait: not implemented yet".into()))
    }
}

/// Resize and kill of an [`ExecSession`] from another thread. Once the session is dropped
/// or the command has exited, both are no-ops.
#[derive(Debug, Clone)]
pub struct ExecHandle {
    _p: (),
}

impl ExecHandle {
    /// Same as [`ExecSession::resize`].
    pub fn resize(&self, _cols: u16, _rows: u16) -> Result<(), MonitorError> {
        Err(MonitorError::Protocol("exec resize: not implemented yet".into()))
    }

    /// Same as [`ExecSession::kill`].
    pub fn kill(&self) -> Result<(), MonitorError> {
        Err(MonitorError::Protocol("exec kill: not implemented yet".into()))
    }
}

/// Starts `cmd` in the running container of `container_dir` with streams; returns once the
/// command has started (`MonitorError::StartError` when it cannot: not found…).
pub fn exec_stream(
    _monitor_bin: &Path,
    _container_dir: &Path,
    cmd: &[String],
    _opts: &ExecStreamOptions,
) -> Result<ExecSession, MonitorError> {
    if cmd.is_empty() {
        return Err(MonitorError::StartError("exec: empty command".into()));
    }
    Err(MonitorError::Protocol("exec_stream: not implemented yet".into()))
}

/// What an attach session connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttachOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// One attacher of a running container. Dropping it detaches (never stops the container).
#[derive(Debug)]
pub struct AttachSession {
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

    pub fn take_stdin(&mut self) -> Option<OwnedFd> {
        self.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<OwnedFd> {
        self.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<OwnedFd> {
        self.stderr.take()
    }

    /// Sets the container terminal's size; a no-op without a tty.
    pub fn resize(&self, _cols: u16, _rows: u16) -> Result<(), MonitorError> {
        Err(MonitorError::Protocol("attach resize: not implemented yet".into()))
    }
}

/// Attaches to the running container of `container_dir_or_socket` (its directory or its
/// `monitor.sock`).
pub fn attach(_container_dir_or_socket: &Path, _opts: &AttachOptions) -> Result<AttachSession, MonitorError> {
    Err(MonitorError::Protocol("attach: not implemented yet".into()))
}
