//! StopContainer: the stop signal, SIGKILL after the timeout, then the whole cgroup.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use proto::cri::*;
use runtime::monitor::{self, MonitorError};
use tonic::Status;
use tracing::Instrument;

use super::exit::refresh;
use super::{detached, find_container, monitor_status, ContainerEntry};
use crate::context::Context;
use crate::error::join_error;
use crate::services::runtime::RuntimeSvc;
use crate::store::{ContainerState, Mode, Transition};

/// How long to wait for the exit after SIGKILL before killing the whole cgroup.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn stop_container_impl(
        &self,
        req: StopContainerRequest,
    ) -> Result<StopContainerResponse, Status> {
        let ctx = self.ctx.clone();
        detached(async move {
            // Idempotent: stopping a container that does not exist (any more) is not an error.
            let Some(entry) = find_container(&ctx, &req.container_id)? else {
                return Ok(StopContainerResponse {});
            };
            let span = tracing::info_span!("stop_container", container_id = %entry.get().id);
            let timeout = Duration::from_secs(req.timeout.max(0) as u64);
            stop_container(&ctx, &entry, timeout).instrument(span).await?;
            Ok(StopContainerResponse {})
        })
        .await
    }

    /// Stops every container of a pod at once (no grace period), as StopPodSandbox does.
    pub(in crate::services::runtime) async fn stop_pod_containers(&self, pod_id: &str) -> Result<(), Status> {
        for (_, c) in self.ctx.containers.all() {
            if c.read(|c| c.pod_id == pod_id) {
                stop_container(&self.ctx, &c, Duration::ZERO).await?;
            }
        }
        Ok(())
    }
}

/// Stops a container: its stop signal, then SIGKILL after `timeout` (at once for 0), then the
/// whole cgroup if even that does not end it. Idempotent. Holds the container's (shared)
/// Stopping transition: waits for a start, removal or update under way, runs along other stops.
pub(crate) async fn stop_container(
    ctx: &Arc<Context>,
    entry: &ContainerEntry,
    timeout: Duration,
) -> Result<(), Status> {
    // Removed meanwhile: nothing to stop.
    let Ok(t) = entry.begin(Transition::Stopping, Mode::Shared).await else { return Ok(()) };
    stop_running(ctx, entry, timeout).await?;
    drop(t);
    // As containerd does, answer once the exit is handled: the rootfs unmounted, the cgroup
    // removed and the EXITED record durable (the cleanup the exit started, or this one if it
    // has not run yet; the second to get there finds nothing to do).
    if entry.read(|c| c.state == ContainerState::Exited && !c.cleaned_up) {
        super::exit::cleanup_after_exit(ctx, entry).await;
    }
    Ok(())
}

/// [`stop_container`] for a caller holding a transition of the container already.
pub(super) async fn stop_running(ctx: &Arc<Context>, entry: &ContainerEntry, timeout: Duration) -> Result<(), Status> {
    crate::failpoint::delay("stop:before_signal").await;
    let (socket, signal, cgroup, own_pid_ns) = {
        let c = refresh(ctx, entry).await;
        // Never started, or already exited: nothing to stop (containerd leaves a created
        // container CREATED too).
        if c.state != ContainerState::Running {
            return Ok(());
        }
        (
            ctx.container_dir(&c.id).join(monitor::SOCKET_FILE),
            c.stop_signal,
            c.cgroup_path.clone(),
            own_pid_namespace(ctx, &c),
        )
    };
    // The record is not locked while we wait, so that status calls keep answering.
    let ctx2 = ctx.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<(), MonitorError> {
        let mut client = match ctx2.monitors.connect(&socket) {
            Ok(c) => c,
            Err(MonitorError::MonitorGone) => return Ok(()),
            Err(e) => return Err(e),
        };
        let kill = Signal::SIGKILL as i32;
        if !timeout.is_zero() && signal != kill {
            client.signal(signal)?;
            match client.wait_exit(Some(timeout)) {
                Ok(_) | Err(MonitorError::MonitorGone) => return Ok(()),
                Err(MonitorError::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
        match client.signal(kill) {
            Ok(()) => {}
            Err(MonitorError::MonitorGone) => return Ok(()),
            Err(e) => return Err(e),
        }
        // Every other process of the container too (containerd's `kill --all`): in a shared
        // (pod or node) PID namespace they outlive the main process and hold its output open,
        // so the exit would be recorded only after the monitor's drain grace. One signal pass,
        // no freezing and no waiting for their deaths here (the thorough `kill_all` polls every
        // 10 ms, which a main process still dying from the SIGKILL above made every stop pay):
        // the monitor's Wait is what says they are gone, and the exit cleanup kills the whole
        // cgroup anyway.
        // Not needed with a PID namespace of its own: the kernel kills the rest of it when its
        // PID 1, the main process, dies.
        if !own_pid_ns {
            let _ = ctx2.cgroups.signal_all(&cgroup);
        }
        match client.wait_exit(Some(KILL_WAIT)) {
            Ok(_) | Err(MonitorError::MonitorGone) => Ok(()),
            Err(MonitorError::Timeout) => {
                // Something holds on (a process stuck in the kernel?): kill the whole cgroup.
                let _ = ctx2.cgroups.kill_all(&cgroup);
                match client.wait_exit(Some(KILL_WAIT)) {
                    Ok(_) | Err(MonitorError::MonitorGone) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(join_error)?;
    res.map_err(|e| monitor_status(e, "stop the container"))?;
    // The monitor writes the record before it answers the Wait and before it exits; give it
    // a moment if it is still at it.
    for _ in 0..200 {
        let c = refresh(ctx, entry).await;
        if c.state != ContainerState::Running {
            tracing::info!(exit_code = c.exit_code, "container stopped");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Whether the container has a PID namespace of its own (CRI `NamespaceMode::CONTAINER`, as
/// its own options or, without them, its pod's say), its main process being that namespace's
/// PID 1. False when unsure (its pod is gone).
fn own_pid_namespace(ctx: &Context, c: &crate::store::ContainerRecord) -> bool {
    let own =
        c.config.linux.as_ref().and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.clone());
    let opts = match own {
        Some(o) => o,
        None => match super::find_pod(ctx, &c.pod_id) {
            Ok(Some(p)) => crate::spec::namespace_options(&p.get().config),
            _ => return false,
        },
    };
    NamespaceMode::try_from(opts.pid).unwrap_or(NamespaceMode::Container) == NamespaceMode::Container
}
