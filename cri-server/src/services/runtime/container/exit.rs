//! Exits: bringing a RUNNING record up to date with its monitor's exit record, the
//! termination message, and releasing the rootfs mount and cgroup after the exit.
//!
//! Each running container has a watcher: a task (no thread) holding a connection to its
//! monitor with the protocol's `Wait` request, which the monitor answers when the container
//! has exited (after writing the exit record), or closes when it dies. So exits are recorded,
//! and their events sent, as they happen. A sweep every ten seconds is the safety net for a
//! watcher that lost its connection.
//!
//! Noticing an exit never waits for an operation on the container: the files are read on the
//! blocking pool, the record changes under its short lock (only the first to notice does), and
//! the release of the mount and cgroup runs in a task that takes the container's transition
//! like any other long operation.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proto::cri::*;
use runtime::monitor;

use super::ContainerEntry;
use crate::context::Context;
use crate::services::runtime::events;
use crate::store::{now_nanos, ContainerRecord, ContainerState, Mode, Transition};

/// The kubelet's annotations for the termination message.
const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
/// Longest termination message kept (the kubelet's limit is 4096 bytes).
const MAX_TERMINATION_MESSAGE: usize = 4096;
/// From the log (`FallbackToLogsOnError`): its last lines and bytes, as the kubelet takes them.
const MAX_LOG_MESSAGE_LINES: usize = 80;
const MAX_LOG_MESSAGE_BYTES: usize = 2048;
/// How much of the log's end is read to find those lines (CRI log lines carry a prefix).
const LOG_TAIL_READ: u64 = 64 * 1024;
/// The safety-net sweep (exits are pushed by the monitors).
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// How a container ended, as read from its files.
pub(crate) struct Exit {
    exit_code: i32,
    finished_at: i64,
    reason: String,
    message: String,
}

/// Brings a RUNNING container up to date with its monitor and returns a copy of its record:
/// the exit record when the process has exited, or EXITED with reason Unknown when the monitor
/// died without writing one. When this call is the one noticing the exit, a background task
/// unmounts the rootfs, removes the cgroup and persists the record.
pub(crate) async fn refresh(ctx: &Arc<Context>, entry: &ContainerEntry) -> ContainerRecord {
    let (c, noticed) = notice_exit(ctx, entry).await;
    if noticed {
        let (ctx, entry) = (ctx.clone(), entry.clone());
        tokio::spawn(async move { cleanup_after_exit(&ctx, &entry).await });
    }
    c
}

/// The in-memory half of [`refresh`]: returns the record and whether this call recorded the
/// exit (then the caller runs [`cleanup_after_exit`]).
pub(crate) async fn notice_exit(ctx: &Arc<Context>, entry: &ContainerEntry) -> (ContainerRecord, bool) {
    let c = entry.get();
    if c.state != ContainerState::Running {
        return (c, false);
    }
    let (ctx2, c2) = (ctx.clone(), c.clone());
    let exit = match tokio::task::spawn_blocking(move || read_exit(&ctx2, &c2)).await {
        Ok(Some(exit)) => exit,
        _ => return (c, false),
    };
    record_exit(ctx, entry, &c, exit)
}

/// Records an exit that [`read_exit`] found for the life `c` of the container (only the first
/// to notice does; no blocking work). Returns the record and whether this call recorded it
/// (then the caller runs [`cleanup_after_exit`]).
pub(crate) fn record_exit(
    ctx: &Arc<Context>,
    entry: &ContainerEntry,
    c: &ContainerRecord,
    exit: Exit,
) -> (ContainerRecord, bool) {
    let noticed = entry.update(|r| {
        // Only the first to notice, and only for the life that was read.
        if r.state != ContainerState::Running || r.monitor_pid != c.monitor_pid || r.started_at != c.started_at {
            return false;
        }
        r.exit_code = exit.exit_code;
        r.finished_at = exit.finished_at;
        r.reason = exit.reason;
        r.message = exit.message;
        r.state = ContainerState::Exited;
        r.pid = None;
        r.monitor_pid = None;
        true
    });
    let c = entry.get();
    if noticed {
        tracing::info!(container_id = %c.id, exit_code = c.exit_code, reason = %c.reason, "container exited");
        events::emit(ctx, &c.id, &c.pod_id, ContainerEventType::ContainerStoppedEvent);
    }
    (c, noticed)
}

/// After a noticed exit: unmounts the rootfs, removes the cgroup and persists the record,
/// holding the container's transition (so never during its removal; nothing once removed).
pub(crate) async fn cleanup_after_exit(ctx: &Arc<Context>, entry: &ContainerEntry) {
    let Ok(_t) = entry.begin(Transition::CleaningUp, Mode::Exclusive).await else { return };
    let c = entry.get();
    if c.state != ContainerState::Exited || c.cleaned_up {
        return;
    }
    let failed = release_runtime_resources(ctx, &c).await;
    let clean = failed.is_none();
    if let Some(e) = failed {
        entry.update(|r| r.error = Some(e));
    }
    match ctx.container_store.save_entry(&c.id, entry).await {
        // Done; a failed step is retried by the next cleanup (RemoveContainer's, recovery's).
        Ok(()) => entry.update(|r| r.cleaned_up = clean),
        Err(e) => tracing::warn!(container_id = %c.id, error = %e, "cannot persist the container's exit"),
    }
}

/// How the container ended, or `None` while its monitor runs (blocking: file and /proc reads).
pub(crate) fn read_exit(ctx: &Context, c: &ContainerRecord) -> Option<Exit> {
    let cdir = ctx.container_dir(&c.id);
    let exit = match ctx.monitors.read_exit_record(&cdir.join(monitor::EXIT_FILE)) {
        Some(e) => Some(e),
        None => {
            if c.monitor_pid.map(|pid| ctx.monitors.process_alive(pid)).unwrap_or(false) {
                return None;
            }
            // The monitor may have written the record between the two checks.
            ctx.monitors.read_exit_record(&cdir.join(monitor::EXIT_FILE))
        }
    };
    let mut exit = match exit {
        Some(e) => Exit {
            exit_code: e.exit_code,
            finished_at: e.finished_at,
            reason: if e.oom_killed {
                "OOMKilled".into()
            } else if let Some(r) = e.reason.clone().filter(|r| !r.is_empty()) {
                r
            } else if e.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            message: e.message.clone().unwrap_or_default(),
        },
        None => Exit {
            exit_code: 255,
            finished_at: now_nanos(),
            reason: "Unknown".into(),
            message: "the container's monitor exited without recording the container's exit".into(),
        },
    };
    if exit.message.is_empty() {
        exit.message = termination_message(ctx, c, exit.exit_code);
    }
    Some(exit)
}

/// Whether a process exists (not a zombie of ours: monitors are not our children).
pub(crate) fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state is the field after the parenthesised command name.
            let state = s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// The termination message the kubelet asks for through its annotations: the file at
/// `terminationMessagePath` inside the container's own layer (its first 4 KiB), or with the
/// `FallbackToLogsOnError` policy and a failed exit, the tail of the log (its last 80 lines,
/// at most 2 KiB; only the end of the file is read).
fn termination_message(ctx: &Context, c: &ContainerRecord, exit_code: i32) -> String {
    let annotations = &c.config.annotations;
    let mut message = String::new();
    if let Some(path) = annotations.get(TERMINATION_MESSAGE_PATH).filter(|p| !p.is_empty()) {
        let upper = ctx.config.root.join("containers").join(&c.id).join("upper");
        if let Ok(p) = runtime::mounts::resolve_in_root(&upper, Path::new(path)) {
            // The container made that file: a FIFO or a device node must not hang or flood us.
            if let Ok(bytes) = runtime::util::read_regular_head(&p, MAX_TERMINATION_MESSAGE as u64, true) {
                message = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    let fallback = annotations.get(TERMINATION_MESSAGE_POLICY).map(String::as_str) == Some("FallbackToLogsOnError");
    if message.is_empty() && fallback && exit_code != 0 && !c.log_path.is_empty() {
        if let Some(tail) = read_tail(Path::new(&c.log_path), LOG_TAIL_READ) {
            message = log_message(&tail);
        }
    }
    message
}

/// The last `max` bytes of a file, from the first whole line in them.
fn read_tail(path: &Path, max: u64) -> Option<String> {
    let (mut f, len) = runtime::util::open_regular(path, true).ok()?;
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    if start > 0 {
        let first = bytes.iter().position(|b| *b == b'\n').map(|i| i + 1).unwrap_or(bytes.len());
        bytes.drain(..first);
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The message part of the last CRI log lines (`<time> <stream> <tag> <message>`).
fn log_message(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect();
    let tail = lines[lines.len().saturating_sub(MAX_LOG_MESSAGE_LINES)..].join("\n");
    let start = tail.len().saturating_sub(MAX_LOG_MESSAGE_BYTES);
    let start = (start..tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
    tail[start..].to_owned()
}

/// After the exit: unmounts the rootfs and removes the container cgroup; returns what failed.
pub(crate) async fn release_runtime_resources(ctx: &Arc<Context>, c: &ContainerRecord) -> Option<String> {
    let ctx2 = ctx.clone();
    let (id, cg) = (c.id.clone(), c.cgroup_path.clone());
    let res = tokio::task::spawn_blocking(move || {
        let mut failed = Vec::new();
        let target = ctx2.container_dir(&id).join("rootfs");
        if let Err(e) = ctx2.images.unmount_rootfs(&target) {
            failed.push(format!("rootfs: {e}"));
        }
        if ctx2.cgroups.exists(&cg).unwrap_or(false) {
            // Mostly empty by now (the stop killed the whole cgroup): remove at once, and kill
            // what is left only when something is.
            let removed = match ctx2.cgroups.remove(&cg) {
                Err(runtime::cgroups::CgroupError::Busy { .. }) => {
                    let _ = ctx2.cgroups.kill_all(&cg);
                    ctx2.cgroups.remove(&cg)
                }
                other => other,
            };
            if let Err(e) = removed {
                failed.push(format!("cgroup {cg}: {e}"));
            }
        }
        failed
    })
    .await;
    match res {
        Ok(failed) if failed.is_empty() => None,
        Ok(failed) => Some(failed.join("; ")),
        Err(e) => Some(e.to_string()),
    }
}

/// Watches a running container for its exit, pushed by its monitor (see the module doc).
pub(crate) fn spawn_exit_watcher(ctx: &Arc<Context>, entry: &ContainerEntry) {
    let (ctx, entry) = (ctx.clone(), entry.clone());
    tokio::spawn(async move {
        let c = entry.get();
        let (life, socket) = (c.started_at, ctx.container_dir(&c.id).join(monitor::SOCKET_FILE));
        let same_life = |c: &ContainerRecord| c.state == ContainerState::Running && c.started_at == life;
        loop {
            if entry.is_removed() || !same_life(&entry.get()) {
                return;
            }
            let pushed = ctx.monitors.wait_pushed_exit(&socket).await;
            if let Err(e) = &pushed {
                tracing::debug!(container_id = %c.id, error = %e, "exit watcher: no answer from the monitor");
            }
            if !same_life(&refresh(&ctx, &entry).await) {
                return;
            }
            // Still running: the record is being written, or the connection broke; try again.
            let pause = if pushed.is_ok() { Duration::from_millis(20) } else { Duration::from_secs(1) };
            tokio::time::sleep(pause).await;
        }
    });
}

/// Sends `Wait` to a monitor and waits (asynchronously) for its answer.
pub(crate) async fn wait_pushed_exit(socket: &Path) -> std::io::Result<()> {
    use monitor::protocol;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = socket.to_owned();
    let std_stream =
        tokio::task::spawn_blocking(move || connect_unix(&socket)).await.map_err(std::io::Error::other)??;
    std_stream.set_nonblocking(true)?;
    let mut s = tokio::net::UnixStream::from_std(std_stream)?;
    s.write_all(&protocol::encode(&protocol::Request::Wait)).await?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > protocol::MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    match protocol::decode::<protocol::Response>(&body)? {
        protocol::Response::Exited { .. } => Ok(()),
        other => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected answer {other:?}"))),
    }
}

/// Connects to a unix socket whose path may be longer than `sun_path` allows (through
/// `/proc/self/fd/<dir>`, as the monitor client does).
fn connect_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::AsRawFd;
    if path.as_os_str().len() < 100 {
        return std::os::unix::net::UnixStream::connect(path);
    }
    let dir = std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?;
    let short = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(path.file_name().unwrap_or_default());
    std::os::unix::net::UnixStream::connect(short)
}

/// Every ten seconds: notice exits of running containers (and release their mounts and
/// cgroups) that no watcher reported.
pub(crate) fn spawn_exit_sweeper(ctx: Arc<Context>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (_, entry) in ctx.containers.all() {
                refresh(&ctx, &entry).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_message_takes_the_last_lines_and_bytes() {
        let log: String = (0..200).map(|i| format!("2026-01-01T00:00:00Z stderr F line {i}\n")).collect();
        let m = log_message(&log);
        assert!(m.ends_with("line 199"));
        assert!(m.lines().count() <= MAX_LOG_MESSAGE_LINES);
        assert!(m.len() <= MAX_LOG_MESSAGE_BYTES);
        assert!(!m.contains("line 119\n"));
    }

    #[test]
    fn read_tail_starts_at_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let text: String = (0..1000).map(|i| format!("2026 stdout F n{i}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        let tail = read_tail(&p, 100).unwrap();
        assert!(tail.len() <= 100);
        assert!(tail.starts_with("2026 stdout F n"));
        assert!(tail.ends_with("n999\n"));
        assert_eq!(read_tail(&p, 1 << 20).unwrap(), text);
    }
}
