//! Small helpers of the monitor binary: a message-carrying error, diagnostics, time, fds.

use std::fmt::Display;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// An error carrying a message for the user ("mount /proc: EPERM: Operation not permitted").
#[derive(Debug)]
pub struct Error(pub String);

pub type Result<T> = std::result::Result<T, Error>;

impl Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub trait Ctx<T> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Result<T>;
}

impl<T, E: Display> Ctx<T> for std::result::Result<T, E> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::monitor::server::util::Error(format!($($t)*))) };
}
pub(crate) use bail;

/// fd of the monitor's diagnostics file (-1: none).
static DIAG_FD: AtomicI32 = AtomicI32::new(-1);

/// Sends diagnostics to `path` (append). The fd is kept for the whole process life.
pub fn open_diag(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(f) =
        std::fs::OpenOptions::new().append(true).create(true).mode(0o640).custom_flags(libc::O_CLOEXEC).open(path)
    {
        let fd = OwnedFd::from(f);
        let raw = fd.as_raw_fd();
        std::mem::forget(fd);
        DIAG_FD.store(raw, Ordering::Relaxed);
    }
}

/// One line of diagnostics: `<time> skiff-monitor[<pid>]: <msg>`.
pub fn diag_line(msg: &str) {
    let fd = DIAG_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let line =
        format!("{} skiff-monitor[{}]: {}\n", super::log::format_timestamp(now_nanos()), std::process::id(), msg);
    // SAFETY: DIAG_FD is set only by `open_diag`, to an fd deliberately leaked (never closed)
    // for the whole process life.
    let _ = nix::unistd::write(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, line.as_bytes());
}

macro_rules! diag {
    ($($t:tt)*) => { $crate::monitor::server::util::diag_line(&format!($($t)*)) };
}
pub(crate) use diag;

/// Wall clock, unix nanos.
pub fn now_nanos() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(_) => 0,
    }
}

/// Replaces `target` (0, 1 or 2) by `fd` (dup2), leaving `fd` open.
pub fn dup_onto(fd: RawFd, target: RawFd) -> Result<()> {
    if fd == target {
        // Make sure it survives exec.
        // SAFETY: fcntl with integer arguments only; errors are checked.
        let r = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        if r < 0 {
            bail!("fcntl: {}", std::io::Error::last_os_error());
        }
        return Ok(());
    }
    // SAFETY: dup2 with integer arguments; `target` is 0, 1 or 2, which the caller means to
    // replace (no OwnedFd elsewhere owns those).
    if unsafe { libc::dup2(fd, target) } < 0 {
        bail!("dup2 {fd} -> {target}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Points fds 0, 1 and 2 at /dev/null.
pub fn stdio_to_null() {
    if let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for t in 0..3 {
            let _ = dup_onto(f.as_raw_fd(), t);
        }
    }
}

/// A pipe with both ends close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe".into())
}

/// Writes all of `data` to a raw fd, retrying on EINTR.
pub fn write_all_raw(fd: RawFd, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        // SAFETY: the pointer and length come from a live slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Reads from a raw fd until EOF (retrying EINTR).
pub fn read_to_end_raw(fd: RawFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: the pointer and length come from a live, writable buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    out
}

/// Writes a one-line JSON start report to `fd` (the pipe read by the client).
pub fn report<T: serde::Serialize>(fd: RawFd, msg: &T) {
    let env = crate::monitor::protocol::Envelope { v: crate::monitor::protocol::PROTOCOL_VERSION, msg };
    let mut line = serde_json::to_vec(&env).unwrap_or_default();
    line.push(b'\n');
    let _ = write_all_raw(fd, &line);
}

/// Blocks the given signals and returns a non-blocking signalfd for them.
pub fn signalfd(sigs: &[nix::sys::signal::Signal]) -> Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::{SigSet, SigmaskHow};
    let mut set = SigSet::empty();
    for s in sigs {
        set.add(*s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).ctx(|| "sigprocmask".into())?;
    nix::sys::signalfd::SignalFd::with_flags(
        &set,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )
    .ctx(|| "signalfd".into())
}

/// In a forked child before exec: unblock every signal and restore default dispositions of
/// the ones the monitor changed.
pub fn reset_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for s in [Signal::SIGPIPE, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD, Signal::SIGQUIT] {
        // SAFETY: restoring SIG_DFL installs no handler.
        let _ = unsafe { sigaction(s, &dfl) };
    }
}

/// Ignores SIGPIPE (writes to a gone client must fail, not kill the monitor).
pub fn ignore_sigpipe() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let ign = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no handler.
    let _ = unsafe { sigaction(Signal::SIGPIPE, &ign) };
}

/// Decodes a wait status: (exit_code, signal).
pub fn decode_wait(status: nix::sys::wait::WaitStatus) -> Option<(i32, Option<i32>)> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some((code, None)),
        WaitStatus::Signaled(_, sig, _) => Some((128 + sig as i32, Some(sig as i32))),
        _ => None,
    }
}

/// Frees what the allocator keeps (the monitor is long-lived and small).
pub fn trim_heap() {
    // SAFETY: malloc_trim takes an integer; it only returns memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Closes every fd above 2 that the spawner leaked to us (the monitor lives long).
pub fn close_inherited_fds() {
    // SAFETY: called first thing in `main`, before any fd above 2 is owned by Rust code, so
    // closing them invalidates no OwnedFd/File. Failure leaves them open (harmless).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

static HIERARCHIES: std::sync::OnceLock<crate::cgroups::Hierarchies> = std::sync::OnceLock::new();

/// Takes the hierarchies skiffd handed over in `monitor.json` (before any [`hierarchies`] call).
pub fn use_hierarchies(h: Option<&crate::cgroups::Hierarchies>) {
    if let Some(h) = h {
        let _ = HIERARCHIES.set(h.clone());
    }
}

/// The host's cgroup hierarchies: those of `monitor.json` ([`use_hierarchies`]), or else read
/// from `/proc/self/mountinfo` once per monitor process: the container's and exec's children
/// are forked after the first call and inherit the parsed value instead of reading mountinfo
/// again (it grows with every pod on the node). The monitor lives for one container, during
/// which the hierarchies do not change.
pub fn hierarchies() -> std::result::Result<&'static crate::cgroups::Hierarchies, crate::cgroups::CgroupError> {
    if let Some(h) = HIERARCHIES.get() {
        return Ok(h);
    }
    let h = crate::cgroups::Hierarchies::detect()?;
    Ok(HIERARCHIES.get_or_init(|| h))
}
