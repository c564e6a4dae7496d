//! Exits: bringing a RUNNING record up to date with its monitor's exit record, the
//! termination message, releasing the rootfs mount and cgroup after the exit, and the
//! one-second sweep doing it for containers nobody asks about.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proto::cri::*;
use runtime::monitor;

use crate::context::Context;
use crate::store::{now_nanos, ContainerRecord, ContainerState};

/// The kubelet's annotations for the termination message.
const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
/// Longest termination message kept (the kubelet's limit is 4096 bytes).
const MAX_TERMINATION_MESSAGE: usize = 4096;

/// Brings a RUNNING record up to date with its monitor: the exit record when the process has
/// exited (then the rootfs is unmounted and the cgroup removed), or EXITED with reason Unknown
/// when the monitor died without writing one.
pub(crate) async fn refresh(ctx: &Arc<Context>, c: &mut ContainerRecord) {
    if c.state != ContainerState::Running {
        return;
    }
    let cdir = ctx.container_dir(&c.id);
    let exit = monitor::read_exit_record(&cdir.join(monitor::EXIT_FILE));
    let exit = match exit {
        Some(e) => Some(e),
        None => {
            let alive = c.monitor_pid.map(process_alive).unwrap_or(false);
            if alive {
                return;
            }
            // The monitor may have written the record between the two checks.
            monitor::read_exit_record(&cdir.join(monitor::EXIT_FILE))
        }
    };
    match exit {
        Some(e) => {
            c.exit_code = e.exit_code;
            c.finished_at = e.finished_at;
            c.reason = if e.oom_killed {
                "OOMKilled".into()
            } else if let Some(r) = e.reason.clone().filter(|r| !r.is_empty()) {
                r
            } else if e.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
            c.message = e.message.clone().unwrap_or_default();
        }
        None => {
            c.exit_code = 255;
            c.finished_at = now_nanos();
            c.reason = "Unknown".into();
            c.message = "the container's monitor exited without recording the container's exit".into();
        }
    }
    if c.message.is_empty() {
        c.message = termination_message(ctx, c);
    }
    c.state = ContainerState::Exited;
    c.pid = None;
    c.monitor_pid = None;
    release_runtime_resources(ctx, c).await;
    if let Err(e) = ctx.container_store.save(&c.id, &*c) {
        tracing::warn!(container_id = %c.id, error = %e, "cannot persist the container's exit");
    }
    tracing::info!(container_id = %c.id, exit_code = c.exit_code, reason = %c.reason, "container exited");
    ctx.events.emit(&c.id, &c.pod_id, ContainerEventType::ContainerStoppedEvent);
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
/// `terminationMessagePath` inside the container's own layer, or with the
/// `FallbackToLogsOnError` policy and a failed exit, the tail of the log.
fn termination_message(ctx: &Arc<Context>, c: &ContainerRecord) -> String {
    let annotations = &c.config.annotations;
    let mut message = String::new();
    if let Some(path) = annotations.get(TERMINATION_MESSAGE_PATH).filter(|p| !p.is_empty()) {
        let upper = ctx.config.root.join("containers").join(&c.id).join("upper");
        if let Ok(p) = runtime::mounts::resolve_in_root(&upper, Path::new(path)) {
            if let Ok(bytes) = std::fs::read(&p) {
                message = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_TERMINATION_MESSAGE)]).into_owned();
            }
        }
    }
    let fallback = annotations.get(TERMINATION_MESSAGE_POLICY).map(String::as_str) == Some("FallbackToLogsOnError");
    if message.is_empty() && fallback && c.exit_code != 0 && !c.log_path.is_empty() {
        if let Ok(log) = std::fs::read_to_string(&c.log_path) {
            let lines: Vec<&str> = log.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            let start = tail.len().saturating_sub(2048);
            let start = (start..tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
            message = tail[start..].to_owned();
        }
    }
    message
}

/// After the exit: unmount the rootfs and remove the container cgroup. Failures are recorded.
pub(crate) async fn release_runtime_resources(ctx: &Arc<Context>, c: &mut ContainerRecord) {
    let ctx2 = ctx.clone();
    let (id, cg) = (c.id.clone(), c.cgroup_path.clone());
    let res = tokio::task::spawn_blocking(move || {
        let mut failed = Vec::new();
        let target = ctx2.container_dir(&id).join("rootfs");
        if let Err(e) = imagesvc::RootfsMount::unmount(&target) {
            failed.push(format!("rootfs: {e}"));
        }
        if ctx2.cgroups.exists(&cg).unwrap_or(false) {
            let _ = ctx2.cgroups.kill_all(&cg);
            if let Err(e) = ctx2.cgroups.remove(&cg) {
                failed.push(format!("cgroup {cg}: {e}"));
            }
        }
        failed
    })
    .await;
    match res {
        Ok(failed) if failed.is_empty() => {}
        Ok(failed) => c.error = Some(failed.join("; ")),
        Err(e) => c.error = Some(e.to_string()),
    }
}

/// Every second: notice exits of running containers (and release their mounts and cgroups)
/// even when nobody asks about them.
pub(crate) fn spawn_exit_sweeper(ctx: Arc<Context>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (_, entry) in ctx.containers.all() {
                if let Ok(mut c) = entry.try_lock() {
                    refresh(&ctx, &mut c).await;
                }
            }
        }
    });
}
